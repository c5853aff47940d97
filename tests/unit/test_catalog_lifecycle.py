"""The node lifecycle in a real SQLite catalog: the v3 → v4 migration, transitions logged,
and a lost node's replicas out of every durable count (checked against plain SQL)."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from resources.catalog import SCHEMA_VERSION, Catalog, NodeState
from resources.transport import Transports
from resources.transport.base import NodeProbe
from sensors.node_discovery import partition_changes
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.engine.probe import probe_and_record, sync_inventory
from sync_assets.engine.replication import counted_durable_nodes
from sync_assets.fleet.inventory import Fleet, load_inventory


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


def test_v3_catalog_is_migrated_and_keeps_its_nodes_and_probes(
    catalog: Catalog, tmp_path: Path
) -> None:
    """A catalog as v3 left it (no lifecycle clock, no node events) keeps its nodes and
    probes; a node whose last probe missed starts the lifecycle clock at it, one whose last
    probe answered has no clock (one miss later makes it suspect, not lost)."""
    fleet = _fleet(tmp_path)
    catalog.sync_nodes(fleet.nodes)
    catalog.record_probe("coord-1", NodeProbe(True, 100, 60))
    catalog.record_probe("store-1", NodeProbe(False, 100, 40, error="timed out"))
    db = sqlite3.connect(tmp_path / "catalog.db")
    probed_at = db.execute("SELECT last_probe_at FROM probes WHERE node = 'store-1'").fetchone()[0]
    # Back to v3, in a copy: this process has already migrated the original.
    db.execute(f"VACUUM INTO '{tmp_path / 'v3.db'}'")
    v3 = sqlite3.connect(tmp_path / "v3.db")
    v3.executescript(
        """
        ALTER TABLE probes DROP COLUMN silent_since;
        DROP TABLE node_events;
        UPDATE nodes SET state = 'retired' WHERE name = 'gpu-2';
        DELETE FROM schema_version;
        INSERT INTO schema_version VALUES (3, 0);
        """
    )
    v3.commit()
    migrated = Catalog(url=f"sqlite:///{tmp_path / 'v3.db'}")
    lifecycle = migrated.node_lifecycle()
    assert lifecycle["store-1"] == (NodeState.ACTIVE, probed_at)
    assert lifecycle["coord-1"] == (NodeState.ACTIVE, None)
    assert lifecycle["gpu-2"] == (NodeState.RETIRED, None)
    assert lifecycle.keys() == {n.name for n in fleet.nodes}
    assert migrated.unreachable_nodes() == {"store-1"}
    assert migrated.disk_space(["store-1"]) == {"store-1": (100, 40)}
    assert migrated.node_events_frame().empty
    versions = v3.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(3,), (4,)] and SCHEMA_VERSION == 4


def test_the_lifecycle_clock_starts_at_the_first_miss_after_an_answer(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.sync_nodes([])  # schema
    clock = iter([10.0, 20.0, 30.0, 40.0, 50.0])
    monkeypatch.setattr("resources.catalog._now", lambda: next(clock))
    silent = []
    for reachable in (False, False, True, False, False):
        catalog.record_probe("n", NodeProbe(reachable))
        db = sqlite3.connect(catalog.url.removeprefix("sqlite:///"))
        silent.append(db.execute("SELECT silent_since FROM probes").fetchone()[0])
    assert silent == [10.0, 10.0, None, 40.0, 40.0]


def test_state_changes_are_logged_once_each(catalog: Catalog, tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    catalog.sync_nodes(fleet.nodes)
    catalog.set_node_states({"store-1": (NodeState.SUSPECT, "probe missed")})
    catalog.set_node_states({"store-1": (NodeState.SUSPECT, "probe missed again")})  # no change
    catalog.set_node_states({"store-1": (NodeState.LOST, "silent"), "nobody": (NodeState.LOST, "")})
    db = sqlite3.connect(tmp_path / "catalog.db")
    rows = db.execute("SELECT node, from_state, to_state, reason FROM node_events ORDER BY id")
    assert rows.fetchall() == [
        ("store-1", "active", "suspect", "probe missed"),
        ("store-1", "suspect", "lost", "silent"),
    ]
    assert db.execute("SELECT state FROM nodes WHERE name = 'store-1'").fetchone() == ("lost",)


def test_a_departed_node_is_lost_while_it_holds_a_last_copy_then_retired(
    catalog: Catalog, tmp_path: Path
) -> None:
    fleet = _fleet(tmp_path)
    sync_inventory(fleet, catalog)
    _snapshot_on(catalog, {"store-1": "verified"})
    without = _without(fleet, {"store-1"})
    sync_inventory(without, catalog)
    assert catalog.node_lifecycle()["store-1"][0] == NodeState.LOST
    catalog.record_replica("a", "coord-1", "a", 1)  # evacuated: no longer the last copy
    sync_inventory(without, catalog)
    assert catalog.node_lifecycle()["store-1"][0] == NodeState.RETIRED
    sync_inventory(fleet, catalog)  # listed again: counts only once audited
    assert catalog.node_lifecycle()["store-1"][0] == NodeState.LOST
    events = catalog.node_events_frame()
    assert list(events["to_state"]) == ["lost", "retired", "lost"]
    assert "holds a last copy" in events["reason"].iloc[0]


def test_a_listed_node_is_lost_only_by_a_probe_missed_lost_after_s_after_its_first_miss(
    catalog: Catalog, tmp_path: Path
) -> None:
    """Rare probes: an answer, then a miss long after it is suspect, not lost; inventory
    syncs past lost_after_s leave it suspect; the next missed probe makes it lost."""
    fleet, transports = _fleet(tmp_path, lost_after_s=0.05), Transports()
    sync_inventory(fleet, catalog)
    assert probe_and_record(fleet.node("store-1"), fleet, catalog, transports).reachable
    time.sleep(0.1)
    root = Path(fleet.node("store-1").data_root)
    root.rename(root.with_name("store-1.away"))
    assert not probe_and_record(fleet.node("store-1"), fleet, catalog, transports).reachable
    assert catalog.node_lifecycle()["store-1"][0] == NodeState.SUSPECT
    time.sleep(0.1)
    for _ in range(3):
        sync_inventory(fleet, catalog)
        assert catalog.node_lifecycle()["store-1"][0] == NodeState.SUSPECT
    assert not probe_and_record(fleet.node("store-1"), fleet, catalog, transports).reachable
    assert catalog.node_lifecycle()["store-1"][0] == NodeState.LOST
    assert list(catalog.node_events_frame()["to_state"]) == ["suspect", "lost"]
    assert "since its first miss" in catalog.node_events_frame()["reason"].iloc[-1]


def test_nodes_leaving_together_with_the_only_two_copies_are_neither_retired_nor_removed(
    catalog: Catalog, tmp_path: Path
) -> None:
    fleet = _fleet(tmp_path)
    sync_inventory(fleet, catalog)
    _snapshot_on(catalog, {"store-1": "verified", "coord-1": "staging"})
    leaving = {"store-1", "coord-1"}
    without = _without(fleet, leaving)
    listed = [n.name for n in without.nodes]
    holders = catalog.last_copy_holders(leaving, listed)
    assert holders == leaving
    assert partition_changes(listed, [n.name for n in fleet.nodes], holders) == ([], [])
    sync_inventory(without, catalog)
    sync_inventory(without, catalog)
    states = {name: catalog.node_lifecycle()[name][0] for name in leaving}
    assert states == {"store-1": NodeState.LOST, "coord-1": NodeState.LOST}


def test_last_copy_holders_like_a_hand_written_oracle(catalog: Catalog, tmp_path: Path) -> None:
    """Random states, inventories and replicas: a node of `among` is a holder iff it has a
    copy of something with no copy on a listed, counted node outside `among` (plain SQL)."""
    rng = random.Random(11)
    fleet = _fleet(tmp_path, stores=4)
    names = sorted(n.name for n in fleet.nodes)
    sync_inventory(fleet, catalog)
    catalog.set_node_states({name: (rng.choice(list(NodeState)), "test") for name in names})
    for i in range(200):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        catalog.add_artifact(sha, kind="games_snapshot", config=None, name=f"a/{i}", size=1,
                             origin_node="gpu-1")  # fmt: skip
        for node in rng.sample(names, rng.randint(1, 3)):
            state = rng.choice(["verified", "staging"])
            catalog.record_replica(sha, node, f"a/{i}", 1, state=state)
    db = sqlite3.connect(tmp_path / "catalog.db")
    state_of = dict(db.execute("SELECT name, state FROM nodes"))
    copies: dict[str, set[str]] = {}
    for sha, node in db.execute("SELECT sha256, node FROM replicas"):
        copies.setdefault(sha, set()).add(node)
    for _ in range(40):
        among = set(rng.sample(names, rng.randint(1, 5)))
        inventory = set(rng.sample(names, rng.randint(0, len(names))))
        vouching = {n for n in inventory - among if state_of[n] in ("active", "suspect")}
        expected = {
            node for held in copies.values() if not held & vouching for node in held & among
        }
        assert catalog.last_copy_holders(among, inventory) == expected


def test_lost_nodes_copies_do_not_count_like_a_plain_sql_oracle(
    catalog: Catalog, tmp_path: Path
) -> None:
    """Random node states and replicas: the durable counts and the below-policy set over
    `counted_durable_nodes` equal a plain SQL count that joins the node states."""
    rng = random.Random(7)
    fleet = _fleet(tmp_path, stores=4)
    durable = sorted(n.name for n in fleet.durable_nodes)
    sync_inventory(fleet, catalog)
    states = {name: rng.choice(list(NodeState)[:3]) for name in durable}
    catalog.set_node_states({name: (state, "test") for name, state in states.items()})
    for i in range(300):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        catalog.add_artifact(sha, kind="games_snapshot", config=None, name=f"a/{i}", size=1,
                             origin_node="gpu-1")  # fmt: skip
        for node in rng.sample([*durable, "gpu-1"], rng.randint(0, 4)):
            state = rng.choice(["verified", "verified", "staging"])
            catalog.record_replica(sha, node, f"a/{i}", 1, state=state)
    assert set(states.values()) >= {NodeState.ACTIVE, NodeState.LOST}

    db = sqlite3.connect(tmp_path / "catalog.db")
    marks = ",".join("?" * len(durable))
    expected = dict(
        db.execute(
            "SELECT r.sha256, COUNT(DISTINCT r.node) FROM replicas r JOIN nodes n "
            "ON n.name = r.node WHERE r.state = 'verified' AND n.state IN ('active', 'suspect') "
            f"AND r.node IN ({marks}) GROUP BY r.sha256",
            durable,
        )
    )
    counted = counted_durable_nodes(fleet, catalog)
    assert counted == {n for n, s in states.items() if s != NodeState.LOST}
    assert catalog.durable_copy_counts(counted) == expected
    below = {
        sha for (sha,) in db.execute("SELECT sha256 FROM artifacts") if expected.get(sha, 0) < 2
    }
    assert 30 < len(below) < 270
    assert catalog.below_policy({"games_snapshot": 2}, counted) == below


def _snapshot_on(catalog: Catalog, copies: dict[str, str]) -> None:
    """Snapshot "a", with a copy in the given state on each node of `copies`."""
    catalog.add_artifact("a", kind="games_snapshot", config=None, name="a", size=1,
                         origin_node="gpu-1")  # fmt: skip
    for node, state in copies.items():
        catalog.record_replica("a", node, "a", 1, state=state)


def _without(fleet: Fleet, leaving: set[str]) -> Fleet:
    return fleet.model_copy(update={"nodes": [n for n in fleet.nodes if n.name not in leaving]})


def _fleet(tmp_path: Path, stores: int = 0, **policy: object) -> Fleet:
    """The demo fleet (coord-1 and store-1 durable), with `stores` more storage nodes."""
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=5, games_per_node=2)
    doc = yaml.safe_load(fleet_file.read_text())
    doc["policy"].update(policy)
    for i in range(stores):
        name = f"store-x{i}"
        doc["nodes"].append(
            {"name": name, "transport": "local", "data_root": str(tmp_path / name),
             "roles": ["storage"], "provider": {"kind": "none", "id": name}}
        )  # fmt: skip
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_inventory(fleet_file)
