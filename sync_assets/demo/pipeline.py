"""`fleetsync demo`: an embedded fleet of local nodes, seeded with realistic data, run once.

The fleet is built once under the demo directory; running the demo again reuses it,
so the second pass shows what an idle fleet costs: zero bytes moved, zero rows added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from sync_assets.demo.sshd_fleet import SshdFleet

DEMO_CONFIGS = ["hex8_2p", "hex8_4p", "square8_2p", "square19_3p", "hexagonal_2p"]
GAMES_PER_NODE = 400
ELO_MATCHES_PER_CONFIG = 600
# The demo prints its own summary; the per-event log stays in the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class DemoNode:
    name: str
    roles: list[str]
    ephemeral: bool
    provider: str


def demo_nodes(count: int) -> list[DemoNode]:
    """Two durable nodes, a training node, and GPU self-play boxes, some ephemeral."""
    if count < 4:
        raise ValueError("a demo fleet needs at least 4 nodes (2 durable, 2 self-play)")
    fixed = [
        DemoNode("coord-1", ["coordinator", "storage"], False, "none"),
        DemoNode("store-1", ["storage"], False, "hetzner"),
        DemoNode("train-1", ["training", "selfplay"], False, "lambda"),
    ]
    gpus = [
        DemoNode(f"gpu-{i}", ["selfplay", "eval"], i % 2 == 0, "vast" if i % 2 == 0 else "runpod")
        for i in range(1, count - len(fixed) + 1)
    ]
    return fixed + gpus


def fleet_document(
    root: Path, nodes: list[DemoNode], sshd: SshdFleet | None = None
) -> dict[str, object]:
    """The demo inventory: local directories, or the given sshd nodes (durable nodes pull
    directly from their peers; the others are reached through the orchestrator)."""
    entries = []
    for n in nodes:
        entry: dict[str, object] = {
            "name": n.name,
            "transport": "local",
            "data_root": str(root / "nodes" / n.name),
        }
        if sshd is not None:
            entry = sshd.nodes[n.name].inventory_entry(sshd.client_key, sshd.user)
            if "storage" in n.roles:
                entry["pull_key"] = str(sshd.client_key)  # same machine: same key path
        entry.update(
            roles=n.roles, ephemeral=n.ephemeral, provider={"kind": n.provider, "id": n.name}
        )
        entries.append(entry)
    return {
        "fleet": "demo-ssh" if sshd else "demo",
        "configs": DEMO_CONFIGS,
        # The demo's nodes share this machine's disk, whatever else fills it.
        "policy": {
            "min_replicas": {"games": 2},
            "disk": {"max_target_use": 0.98, "min_free_gb": 0.5},
        },
        "nodes": entries,
    }


def seed_demo_data(
    root: Path, node_count: int, games_per_node: int = GAMES_PER_NODE, seed: int = 7
) -> list[DemoNode]:
    """Create node directories and seed game DBs once; later calls reuse them."""
    from sync_assets.demo.synth_games import seed_fleet_games

    nodes = demo_nodes(node_count)
    marker = root / ".seeded"
    if marker.exists():
        return nodes
    for n in nodes:
        (root / "nodes" / n.name / "games").mkdir(parents=True, exist_ok=True)
    selfplay_roots = {n.name: root / "nodes" / n.name for n in nodes if "selfplay" in n.roles}
    seed_fleet_games(selfplay_roots, DEMO_CONFIGS, games_per_node, seed)
    _seed_elo(root, [n for n in nodes if "eval" in n.roles], seed)
    marker.write_text("seeded\n")  # last: its presence means the data is complete
    return nodes


def _seed_elo(root: Path, eval_nodes: list[DemoNode], seed: int) -> None:
    """Each eval node has played its own share of rated matches per config."""
    from sync_assets.demo.synth_elo import anchored_strengths, match_rows, simulate, write_elo_db

    for i, node in enumerate(eval_nodes):
        rows = []
        for config in DEMO_CONFIGS:
            strengths = anchored_strengths(config, 8, seed)
            players = int(config.rsplit("_", 1)[1].rstrip("p"))
            sim = simulate(strengths, ELO_MATCHES_PER_CONFIG, (players,), seed=seed + i)
            rows += match_rows(sim, config, id_prefix=f"{node.name}-{config}")
        write_elo_db(root / "nodes" / node.name / "elo" / "unified_elo.db", rows)


def write_candidate(root: Path, node: str, config: str, seed: int) -> str:
    """Stand-in for a training repo's output: a small model file (+ .sha256 sidecar).

    examples/training_repo/ is the real example; the demo only needs bytes to promote."""
    import hashlib

    import numpy as np

    models = root / "nodes" / node / "models"
    models.mkdir(parents=True, exist_ok=True)
    config_seed = int.from_bytes(hashlib.sha256(config.encode()).digest()[:4], "big")
    weights = np.random.default_rng([seed, config_seed]).standard_normal((64, 64))
    path = models / f"candidate_{config}.pth"
    path.write_bytes(weights.astype(np.float32).tobytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (models / f"candidate_{config}.pth.sha256").write_text(f"{digest}  {path.name}\n")
    return f"models/{path.name}"


def build_demo_fleet(
    root: Path,
    node_count: int,
    games_per_node: int = GAMES_PER_NODE,
    seed: int = 7,
    sshd: SshdFleet | None = None,
) -> Path:
    """Seed the demo fleet (once) and write its fleet.yaml (every time: sshd ports change)."""
    nodes = seed_demo_data(root, node_count, games_per_node, seed)
    fleet_file = root / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet_document(root, nodes, sshd), sort_keys=False))
    return fleet_file


def run_pipeline(fleet_file: Path) -> None:
    """Register the nodes, then run the whole graph once on the Dagster instance under
    DAGSTER_HOME: games → canonical → NPZ → shards on training nodes; Elo matches →
    ratings; a reported candidate → promotion → the promoted model on every GPU node."""
    os.environ["FLEETSYNC_FLEET"] = str(fleet_file)
    # Imported here: the static config partitions are read from FLEETSYNC_FLEET at load.
    import dagster as dg

    from sync_assets.cli.report import report
    from sync_assets.definitions import defs
    from sync_assets.fleet.inventory import load_inventory
    from sync_assets.partitions import NODES

    fleet = load_inventory(fleet_file)
    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(NODES))
    new = [n.name for n in fleet.nodes if n.name not in known]
    if new:
        instance.add_dynamic_partitions(NODES, new)
    nodes = [n.name for n in fleet.nodes]
    configs = list(fleet.configs)

    def run(job: str, keys: list[str]) -> None:
        job_def = defs.resolve_job_def(job)
        for key in keys:
            result = job_def.execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False, run_config=QUIET
            )
            if not result.success:
                raise RuntimeError(f"demo run {job}[{key}] failed; see `make dev` for its logs")

    run("probe_nodes", nodes)
    run("collect_games", nodes)
    run("merge_games", configs)
    run("export_npz", configs)
    run("npz_to_nodes", nodes)
    run("collect_matches", nodes)
    run("rate_models", configs)
    run("ratings_to_nodes", nodes)
    trainer = fleet.nodes_with_role("training")[0]
    for config in configs:
        path = write_candidate(fleet_file.parent, trainer.name, config, seed=7)
        report("candidate", config, trainer.name, path, instance=instance).raise_for_problems()
    run("promote_models", configs)
    run("models_to_nodes", nodes)
