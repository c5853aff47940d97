"""Scenarios under a real `dagster-daemon` (issue 10): the fleet looks after itself.

Each test starts the daemon on a temporary instance over a local demo fleet
(`tests/deployment/daemon.py`), with the scenario's sensors (on by default) ticking every
`FLEETSYNC_SENSOR_INTERVAL_S` = 2 s and the others stopped, changes the world the way the
fleet would — a new canonical DB, new matches, a durable node gone (found by the fleet
probe), copies deleted or rotted behind fleetsync's back, fresh games on an ephemeral
node — and waits, against a deadline, for the outcome on the nodes' disks. No run is
started by the test. The daemon and every process it started are stopped at the end.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from resources.catalog import NodeState, Replica
from sync_assets.elo.collect import collect_node_matches
from sync_assets.elo.publish import RATINGS_ALIAS, RATINGS_DB
from sync_assets.games.canonical import merge_canonical
from sync_assets.games.collect import SNAPSHOT_KIND, collect_node_games
from sync_assets.kinds import GAMES_CANONICAL, NPZ
from sync_assets.training.shards import NPZ_SOURCE_ALIAS, node_shard_path
from tests.deployment.daemon import CONFIG, Deployment

pytestmark = pytest.mark.slow

# A generous ceiling for a loaded 2-core machine; a scenario takes well under it alone.
DEADLINE_S = 240.0


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, **getattr(request, "param", {}))
    yield deployment
    deployment.stop()
    assert not deployment.processes(), "daemon processes survived the teardown"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _copies_on_disk(d: Deployment, shas: list[str], nodes: list[str]) -> dict[str, set[str]]:
    """sha256 -> the `nodes` whose catalog records a verified copy that is right on disk."""
    found: dict[str, set[str]] = {sha: set() for sha in shas}
    for r in d.catalog.replicas_of(shas, nodes=nodes):
        if _sha256(Path(d.fleet.node(r.node).data_root) / r.path) == r.sha256:
            found[r.sha256].add(r.node)
    return found


def _collected(d: Deployment) -> tuple[list[str], list[str], dict[str, list[Replica]]]:
    """Collect every node's games (before the daemon starts): the snapshots, the durable
    nodes, and each durable node's copies."""
    for node in d.fleet.nodes:
        assert not collect_node_games(node, d.fleet, d.catalog, d.transports).replication.failures
    snapshots = sorted(d.catalog.artifacts_of(SNAPSHOT_KIND))
    durable = [n.name for n in d.fleet.durable_nodes]
    held = {n: d.catalog.replicas_of(snapshots, nodes=[n]) for n in durable}
    return snapshots, durable, held


def _succeeded(deployment: Deployment) -> set[tuple[str, str]]:
    """(job, sensor that requested it) of every successful run."""
    return {(r["job"], r["sensor"]) for r in deployment.runs() if r["status"] == "SUCCESS"}


def test_new_canonical_db_is_exported_and_its_shard_reaches_the_training_node(deployment):
    d = deployment
    d.run_only({"training_trigger", "shard_distribution"})
    d.start()
    for node in d.fleet.nodes:
        assert not collect_node_games(node, d.fleet, d.catalog, d.transports).replication.failures
    merge_canonical(CONFIG, d.fleet, d.catalog, d.transports)
    canonical = d.catalog.alias(GAMES_CANONICAL.alias, CONFIG)
    assert canonical is not None
    on_node = Path(d.fleet.node("train-1").data_root) / node_shard_path(CONFIG)

    chain = {("export_npz", "training_trigger"), ("npz_to_nodes", "shard_distribution")}

    def shard_on_training_node() -> bool:
        sha = d.catalog.alias(NPZ.alias, CONFIG)
        return sha is not None and _sha256(on_node) == sha and chain <= _succeeded(d)

    d.wait_for("the new canonical DB's shard on train-1", shard_on_training_node, DEADLINE_S)
    assert d.catalog.alias(NPZ_SOURCE_ALIAS, CONFIG) == canonical  # exported from it


def test_new_matches_are_rated_and_the_ratings_reach_the_eval_node(deployment):
    d = deployment
    d.run_only({"ratings_trigger", "ratings_distribution"})
    d.start()
    gpu = d.fleet.node("gpu-1")  # the eval node, whose Elo DB holds new matches
    collected = collect_node_matches(gpu, d.fleet, d.catalog, d.transports)
    assert collected.snapshot_taken and not collected.replication.failures
    on_node = Path(gpu.data_root) / RATINGS_DB

    chain = {("rate_models", "ratings_trigger"), ("ratings_to_nodes", "ratings_distribution")}

    def ratings_on_eval_node() -> bool:
        sha = d.catalog.alias(*RATINGS_ALIAS)
        return (
            sha is not None
            and _sha256(on_node) == sha
            and stat.S_IMODE(on_node.stat().st_mode) == 0o444
            and chain <= _succeeded(d)
        )

    d.wait_for("ratings of the new matches on gpu-1", ratings_on_eval_node, DEADLINE_S)
    with sqlite3.connect(f"file:{on_node}?mode=ro", uri=True) as db:
        (rated,) = db.execute(
            "SELECT count(*) FROM ratings WHERE board_type || '_' || num_players || 'p' = ?",
            (CONFIG,),
        ).fetchone()
    assert rated > 0


def test_a_lost_durable_node_is_repaired_from_the_other_replicas(deployment):
    d = deployment
    snapshots, durable, held = _collected(d)
    victim = max(durable, key=lambda n: len(held[n]))  # the durable node holding the most
    assert held[victim]
    d.run_only({"fleet_probe", "replication_deficit"})
    d.start()

    # The box vanishes with every copy on it: the fleet probe misses it, then misses it
    # again lost_after_s later, and it is lost; its copies stop counting.
    node = d.fleet.node(victim)
    Path(node.data_root).rename(f"{node.data_root}.gone")
    survivors = [n for n in durable if n != victim]

    def every_snapshot_on_both_survivors() -> bool:
        if d.catalog.node_lifecycle()[victim][0] != NodeState.LOST:
            return False
        on_disk = _copies_on_disk(d, snapshots, survivors)
        repaired = all(nodes == set(survivors) for nodes in on_disk.values())
        return repaired and ("repair_replicas", "replication_deficit") in _succeeded(d)

    d.wait_for("the node lost and every snapshot back on the two others",
               every_snapshot_on_both_survivors, DEADLINE_S)  # fmt: skip
    events = d.catalog.node_events_frame()
    lost = events[(events["node"] == victim) & (events["to_state"] == NodeState.LOST)]
    assert list(lost["reason"].str.startswith("probe missed")) == [True]


def _two_good_copies_each(d: Deployment, snapshots: list[str], durable: list[str]) -> bool:
    """Every snapshot back at policy: two durable copies, recorded and right on disk."""
    return all(len(nodes) >= 2 for nodes in _copies_on_disk(d, snapshots, durable).values())


def test_files_deleted_behind_fleetsyncs_back_are_found_by_the_audit_and_repaired(deployment):
    d = deployment
    snapshots, durable, held = _collected(d)
    victim = max(durable, key=lambda n: len(held[n]))
    for replica in held[victim]:  # gone, and the catalog was not told
        (Path(d.fleet.node(victim).data_root) / replica.path).unlink()
    assert not _two_good_copies_each(d, snapshots, durable)
    d.run_only({"fleet_audit", "replication_deficit"})
    d.start()

    chain = {("audit_fleet", "fleet_audit"), ("repair_replicas", "replication_deficit")}
    d.wait_for(
        "the deleted copies found by the audit and repaired",
        lambda: _two_good_copies_each(d, snapshots, durable) and chain <= _succeeded(d),
        DEADLINE_S,
    )


def test_a_flipped_bit_is_found_by_the_scrub_quarantined_and_repaired(deployment):
    d = deployment
    snapshots, durable, held = _collected(d)
    # The scrub's rotation starts with the nodes never scrubbed, by name: the first durable
    # node holding copies is scrubbed in the first run.
    victim = min(n for n in durable if held[n])
    replica = held[victim][0]
    path = Path(d.fleet.node(victim).data_root) / replica.path
    with path.open("r+b") as f:  # one bit, same size: a listing cannot see it
        f.seek(replica.size // 2)
        byte = f.read(1)
        f.seek(replica.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    assert not _two_good_copies_each(d, snapshots, durable)
    d.run_only({"fleet_audit", "replication_deficit"})
    d.start()

    quarantine = Path(d.fleet.node(victim).data_root) / ".quarantine"
    chain = {("audit_fleet", "fleet_audit"), ("repair_replicas", "replication_deficit")}
    d.wait_for(
        "the corrupt copy quarantined and repaired",
        lambda: (
            _two_good_copies_each(d, snapshots, durable)
            and any(quarantine.rglob(f"{path.name}.*"))
            and chain <= _succeeded(d)
        ),
        DEADLINE_S,
    )


@pytest.mark.parametrize("deployment", [{"ephemeral": ("gpu-1",)}], indirect=True)
def test_fresh_games_on_an_ephemeral_node_are_collected_urgently(deployment):
    d = deployment
    assert not d.catalog.originated(SNAPSHOT_KIND, "gpu-1")  # games no snapshot holds
    durable = [n.name for n in d.fleet.durable_nodes]
    d.run_only({"fleet_probe", "ephemeral_sync"})
    d.start()

    def collected_urgently() -> bool:
        urgent = [
            r
            for r in d.instance.get_runs(dg.RunsFilter(job_name="collect_games"))
            if r.status == dg.DagsterRunStatus.SUCCESS
            and r.tags.get("dagster/partition") == "gpu-1"
            and r.tags.get("dagster/priority") == "10"
            and r.tags.get("dagster/sensor_name") == "ephemeral_sync"
        ]
        snapshots = d.catalog.originated(SNAPSHOT_KIND, "gpu-1")
        copies = _copies_on_disk(d, snapshots, durable)
        return bool(urgent and snapshots) and all(len(n) >= 2 for n in copies.values())

    d.wait_for("gpu-1's games collected urgently", collected_urgently, DEADLINE_S)
