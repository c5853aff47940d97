"""The whole fleet probed in ONE run per tick, each node partition with its own
materialization; and `ephemeral_sync` turning fresh data on an ephemeral node into an
urgent collection of that node."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors import ephemeral_sync as ephemeral_sync_module
from sensors.ephemeral_sync import ephemeral_sync, routine_sync
from sensors.fleet_probe import fleet_probe
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.elo.assets import elo_matches
from sync_assets.elo.collect import ELO_DB
from sync_assets.fleet.assets import NODE_STATUS, node_status
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.games.assets import games_selfplay
from sync_assets.jobs import COLLECT_GAMES, COLLECT_MATCHES
from sync_assets.partitions import NODES

PROBE_JOB = dg.define_asset_job("probe_nodes", selection=[node_status])
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class Env:
    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance) -> None:
        self.fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=6, games_per_node=10)
        self.fleet: Fleet = load_inventory(self.fleet_file)
        self.catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
        self.inventory = FleetInventory(path=str(self.fleet_file))
        self.instance = instance
        self.defs = dg.Definitions(
            assets=[node_status, games_selfplay, elo_matches],
            jobs=[PROBE_JOB, COLLECT_GAMES, COLLECT_MATCHES],
            resources={
                "inventory": self.inventory,
                "catalog": self.catalog,
                "transports": Transports(),
            },
        )
        instance.add_dynamic_partitions(NODES, [n.name for n in self.fleet.nodes])

    def tick(self, sensor: dg.SensorDefinition) -> Any:
        resources = {"inventory": self.inventory, "catalog": self.catalog}
        return sensor(dg.build_sensor_context(instance=self.instance, resources=resources))

    def execute(self, request: dg.RunRequest, job: str) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            tags=request.tags,
            run_config=QUIET,
            raise_on_error=False,
        )

    def probe_once(self) -> dg.ExecuteInProcessResult:
        result = self.tick(fleet_probe)
        assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
        return self.execute(result.run_requests[0], "probe_nodes")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with dg.instance_for_test() as instance:
        yield Env(tmp_path, instance)


def listed_dbs(root: Path) -> list[str]:
    """Oracle: the game and Elo DBs directly under games/ and elo/ of a data root."""
    return sorted(
        f"{d}/{p.name}" for d in ("games", "elo") for p in (root / d).glob("*.db") if p.is_file()
    )


def test_one_run_per_tick_probes_every_node_each_partition_its_own_metadata(
    env: Env, tmp_path: Path
) -> None:
    gone = env.fleet.node("gpu-3")
    Path(gone.data_root).rename(tmp_path / "gpu-3-away")  # this node does not answer
    busy = env.fleet.node("gpu-1")
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        cwd=Path(busy.data_root) / "games",
        stdout=subprocess.PIPE,
    )
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline() == b"up\n"
        result = env.probe_once()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.success
    # One run, one materialization per node partition, each with that node's own facts.
    events = {
        e.materialization.partition: e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == NODE_STATUS
    }
    names = [n.name for n in env.fleet.nodes]
    assert len(result.get_asset_materialization_events()) == len(names)
    assert sorted(events) == sorted(names)
    for node in env.fleet.nodes:
        seen = events[node.name]
        if node.name == "gpu-3":
            assert seen["reachable"].value is False
            assert "data root is not a directory" in str(seen["error"].value)
            assert "databases" not in seen
            continue
        assert seen["reachable"].value is True
        assert seen["gpu_util_percent"].value == "unknown"  # a local node's: never 0
        assert seen["ssh_sessions"].value == "unknown"
        assert seen["jobs"].value == (1 if node.name == "gpu-1" else 0)
        table = seen["databases"].value
        assert sorted(r.data["path"] for r in table.records) == listed_dbs(Path(node.data_root))
    # The run's check names the node that did not answer; the catalog kept every probe.
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "gpu-3" in str(check.metadata["error"].value)
    history = env.catalog.probe_history_frame()
    assert sorted(history["node"]) == sorted(names)
    assert history.set_index("node")["reachable"].to_dict() == {n: n != "gpu-3" for n in names}
    # The next tick: again exactly one run over every node.
    again = env.probe_once()
    assert again.success and len(again.get_asset_materialization_events()) == len(names)
    assert len(env.catalog.probe_history_frame()) == 2 * len(names)


def test_fleet_probe_skips_without_partitions(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        env = Env(tmp_path, instance)
        for name in instance.get_dynamic_partitions(NODES):
            instance.delete_dynamic_partition(NODES, name)
        assert isinstance(env.tick(fleet_probe), dg.SkipReason)


def add_games(db: Path, count: int) -> None:
    """New games written on the node, the way a generator does (WAL mode)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        game = conn.execute("SELECT * FROM games LIMIT 1").fetchone()
        columns = [c[1] for c in conn.execute("PRAGMA table_info(games)")]
        for i in range(count):
            row = dict(zip(columns, game, strict=True)) | {"game_id": f"fresh-{i}"}
            marks = ",".join("?" * len(row))
            conn.execute(
                f"INSERT INTO games ({','.join(row)}) VALUES ({marks})", list(row.values())
            )
        conn.commit()
    finally:
        conn.close()


def test_ephemeral_sync_requests_urgent_collection_of_fresh_data_on_ephemeral_nodes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ephemeral = sorted(n.name for n in env.fleet.nodes if n.ephemeral)
    assert ephemeral and "gpu-2" in ephemeral
    # A durable node with fresh games too: never urgent (its copy is safe where it is).
    store = env.fleet.node("store-1")
    (Path(store.data_root) / "games").mkdir(exist_ok=True)
    sqlite3.connect(Path(store.data_root) / "games" / "selfplay.db").close()
    assert env.probe_once().success
    result = env.tick(ephemeral_sync)
    assert isinstance(result, dg.SensorResult)
    requested = {(r.job_name, r.partition_key) for r in result.run_requests}
    with_elo = {
        n
        for n in ephemeral
        if (Path(env.fleet.node(n).data_root) / "elo" / "unified_elo.db").exists()
    }
    assert requested == {("collect_games", n) for n in ephemeral} | {
        ("collect_matches", n) for n in with_elo
    }
    assert all(r.tags["dagster/priority"] == "10" for r in result.run_requests)

    # Collect gpu-2's games as asked; probe again: nothing fresh there any more.
    games_run = next(
        r
        for r in result.run_requests
        if r.partition_key == "gpu-2" and r.job_name == "collect_games"
    )
    assert env.execute(games_run, "collect_games").success
    assert env.probe_once().success
    monkeypatch.setattr(ephemeral_sync_module, "URGENT_EVERY_S", 0.0)  # no rate limit here
    after = env.tick(ephemeral_sync)
    still = (
        set()
        if isinstance(after, dg.SkipReason)
        else {(r.job_name, r.partition_key) for r in after.run_requests}
    )
    assert ("collect_games", "gpu-2") not in still
    assert requested - {("collect_games", "gpu-2")} == still

    # New games on gpu-2: fresh again, a new run key (a later change is collected again).
    add_games(Path(env.fleet.node("gpu-2").data_root) / "games" / "selfplay.db", 3)
    assert env.probe_once().success
    fresh = env.tick(ephemeral_sync)
    assert isinstance(fresh, dg.SensorResult)
    [again] = [
        r
        for r in fresh.run_requests
        if r.partition_key == "gpu-2" and r.job_name == "collect_games"
    ]
    assert again.run_key != games_run.run_key and again.tags["dagster/priority"] == "10"


def running(instance: dg.DagsterInstance, job: str, tags: dict[str, str] | None = None) -> None:
    """A run of `job` started and not finished yet."""
    instance.add_run(dg.DagsterRun(job_name=job, status=dg.DagsterRunStatus.STARTED, tags=tags))


def test_nothing_asked_twice_while_a_run_is_still_going(env: Env) -> None:
    assert env.probe_once().success
    urgent = env.tick(ephemeral_sync)
    assert isinstance(urgent, dg.SensorResult)
    asked = {(r.job_name, r.partition_key) for r in urgent.run_requests}
    assert ("collect_games", "gpu-2") in asked
    # A probe run still going: no second probe run; a collection of gpu-2's games going:
    # gpu-2's games are not asked for again (its matches still are).
    running(env.instance, "probe_nodes")
    running(env.instance, "collect_games", {"dagster/partition": "gpu-2"})
    skipped = env.tick(fleet_probe)
    assert isinstance(skipped, dg.SkipReason) and "still going" in str(skipped.skip_message)
    again = env.tick(ephemeral_sync)
    left = (
        set()
        if isinstance(again, dg.SkipReason)
        else {(r.job_name, r.partition_key) for r in again.run_requests}
    )
    assert left == asked - {("collect_games", "gpu-2")}


def test_routine_sync_collects_the_other_nodes_at_normal_priority(env: Env) -> None:
    """Games and matches on nodes that do not vanish are collected too, with no person in
    the chain: at normal priority, never for an ephemeral node (that is ephemeral_sync's)."""
    assert env.probe_once().success
    result = env.tick(routine_sync)
    assert isinstance(result, dg.SensorResult)
    requested = {(r.job_name, r.partition_key) for r in result.run_requests}
    oracle = {
        (job, n.name)
        for n in env.fleet.nodes
        if not n.ephemeral
        for job, pattern in (("collect_games", "games/*.db"), ("collect_matches", ELO_DB))
        if any(Path(n.data_root).glob(pattern))
    }
    assert requested == oracle and oracle
    assert all("dagster/priority" not in r.tags for r in result.run_requests)
    assert {r.run_key for r in result.run_requests} == {
        r.run_key for r in env.tick(routine_sync).run_requests
    }  # the same slot: the same keys, which Dagster runs once

    first = next(r for r in result.run_requests if r.job_name == "collect_games")
    assert env.execute(first, "collect_games").success
    assert env.probe_once().success
    after = env.tick(routine_sync)
    still = (
        set()
        if isinstance(after, dg.SkipReason)
        else {(r.job_name, r.partition_key) for r in after.run_requests}
    )
    assert still == requested - {("collect_games", first.partition_key)}
