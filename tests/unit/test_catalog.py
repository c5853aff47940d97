"""The catalog on a real SQLite file: artifacts by content, replicas, leases, schema version."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import sqlite3

import pytest
import sqlalchemy as sa

from resources.catalog import SCHEMA_VERSION, Catalog, LeaseHeld
from sensors.node_discovery import last_copy_holders, partition_changes
from sync_assets.engine.placement import durable_copies
from sync_assets.fleet.inventory import Node


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


def test_sqlite_catalog_uses_wal_and_records_schema_version(catalog, tmp_path):
    catalog.nodes_frame()  # first use creates the schema
    db = sqlite3.connect(tmp_path / "catalog.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_v1_catalog_is_migrated_and_keeps_its_merge_log(tmp_path):
    """A catalog written by v1 (merges keyed by config + snapshot) is brought to the
    current version: its merge log survives, with the canonical version unknown, and the
    same snapshot can now be merged again into another canonical version."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    v1 = sqlite3.connect(tmp_path / "v1.db")
    v1.executescript(
        """
        CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at FLOAT NOT NULL);
        INSERT INTO schema_version VALUES (1, 0);
        CREATE TABLE merges (config VARCHAR(32) NOT NULL, snapshot_sha256 VARCHAR(64) NOT NULL,
            merged_at FLOAT NOT NULL, stats_json TEXT NOT NULL,
            PRIMARY KEY (config, snapshot_sha256));
        INSERT INTO merges VALUES ('hex8_2p', 'aa', 5.0, '{"added": 7}');
        INSERT INTO merges VALUES ('hex8_2p', 'bb', 6.0, '{"added": 3}');
        """
    )
    v1.commit()
    v1.close()
    catalog = Catalog(url=url)
    assert sorted(catalog.merge_log()) == [("hex8_2p", '{"added": 3}'), ("hex8_2p", '{"added": 7}')]
    catalog.record_merges("hex8_2p", "c1", {"aa": {"added": 7}})  # again, into version c1
    db = sqlite3.connect(tmp_path / "v1.db")
    rows = db.execute("SELECT snapshot_sha256, canonical_sha256 FROM merges ORDER BY id").fetchall()
    assert rows == [("aa", None), ("bb", None), ("aa", "c1")]
    assert db.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    assert len(catalog.merge_log()) == 2  # the newest merge of each snapshot counts once


def test_newer_catalog_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                "applied_at FLOAT NOT NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO schema_version VALUES (99, 0)"))
    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        Catalog(url=url).nodes_frame()


def test_artifacts_are_keyed_by_content(catalog):
    for _ in range(2):
        catalog.add_artifact(
            "ab" * 32,
            kind="games_snapshot",
            config=None,
            name="games/x.db",
            size=10,
            origin_node="gpu-1",
        )
    assert len(catalog.artifacts_frame()) == 1


def test_replacing_a_file_replaces_its_replica(catalog):
    for sha in ("a" * 64, "b" * 64):
        catalog.add_artifact(
            sha,
            kind="games_canonical",
            config="hex8_2p",
            name="games/canonical_hex8_2p.db",
            size=1,
            origin_node="s",
        )
    catalog.record_replica("a" * 64, "store-1", "games/canonical_hex8_2p.db", 1)
    catalog.record_replica("b" * 64, "store-1", "games/canonical_hex8_2p.db", 1)
    reps = catalog.replicas_frame()
    assert list(reps["sha256"]) == ["b" * 64]


def _try_lease(url: str, name: str, queue) -> None:
    try:
        with Catalog(url=url).lease(name):
            queue.put("got")
    except LeaseHeld as exc:
        queue.put(str(exc))


def test_lease_excludes_another_process_and_is_released(catalog):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with catalog.lease("games/canonical/hex8_2p") as holder:
        p = ctx.Process(target=_try_lease, args=(catalog.url, "games/canonical/hex8_2p", queue))
        p.start()
        p.join(60)
        message = queue.get(timeout=5)
        assert "is held by" in message and holder in message
    p = ctx.Process(target=_try_lease, args=(catalog.url, "games/canonical/hex8_2p", queue))
    p.start()
    p.join(60)
    assert queue.get(timeout=5) == "got"


def test_expired_lease_of_a_dead_holder_is_taken_over(catalog):
    with catalog.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO leases (name, holder, expires_at) VALUES ('x', 'dead:1', 0)")
        )
    with catalog.lease("x") as holder:
        assert holder != "dead:1"


def test_sync_nodes_retires_departed_nodes(catalog, tmp_path):
    def n(name):
        return Node(name=name, transport="local", roles=["storage"], data_root=str(tmp_path))

    catalog.sync_nodes([n("a"), n("b")])
    catalog.sync_nodes([n("a")])
    states = catalog.nodes_frame().set_index("name")["state"].to_dict()
    assert states == {"a": "active", "b": "retired"}


def test_node_discovery_adds_in_batches_and_keeps_last_copy_holders():
    to_add, to_remove = partition_changes(
        [f"n{i:03d}" for i in range(120)], ["gone", "holder"], {"holder"}, batch=50
    )
    assert to_add == [f"n{i:03d}" for i in range(50)]
    assert to_remove == ["gone"]


def test_last_copy_holders(catalog):
    import pandas as pd

    reps = pd.DataFrame(
        [
            ("a", "n1", "verified"),
            ("a", "n2", "verified"),
            ("b", "n3", "staging"),
            ("c", "n4", "verified"),
        ],
        columns=["sha256", "node", "state"],
    )
    assert last_copy_holders(reps) == {"n3", "n4"}


def test_below_policy_counts_exactly_like_the_planner(catalog, tmp_path):
    """The database's deficit count (what a no-op re-sync asks) must agree with the
    planner's own (pandas, `durable_copies`) on a messy random catalog: retired and
    ephemeral nodes, staging copies, two paths on one node, kinds without a policy."""
    rng = random.Random(11)
    roles = {
        "store-1": ["storage"],
        "store-2": ["storage"],
        "store-3": ["storage"],
        "coord-1": ["coordinator"],
        "gpu-1": ["selfplay"],
        "cloud-store": ["storage"],
    }
    nodes = [
        Node(
            name=n,
            transport="local",
            roles=r,
            data_root=str(tmp_path / n),
            ephemeral=n == "cloud-store",
        )
        for n, r in roles.items()
    ]
    catalog.sync_nodes(nodes)
    catalog.sync_nodes([n for n in nodes if n.name != "store-3"])  # store-3 retired
    mins = {"games_snapshot": 2, "games_canonical": 3, "npz": 1, "model": 2, "elo_snapshot": 0}
    kinds = [*mins, "elo_ratings"]  # elo_ratings: no entry, wants nothing
    for i in range(400):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        catalog.add_artifact(
            sha, kind=rng.choice(kinds), config=None, name=f"a/{i}", size=1, origin_node="gpu-1"
        )
        for node in rng.sample(sorted(roles), rng.randint(0, 4)):
            for path in rng.sample([f"a/{i}", f"b/{i}"], rng.randint(1, 2)):
                state = rng.choice(["verified", "verified", "staging"])
                catalog.record_replica(sha, node, path, 1, state=state)
    artifacts, replicas = catalog.artifacts_frame(), catalog.replicas_frame()
    copies = durable_copies(replicas, catalog.nodes_frame())
    expected = {
        a.sha256 for a in artifacts.itertuples() if copies.get(a.sha256, 0) < mins.get(a.kind, 0)
    }
    assert 50 < len(expected) < 350  # both sides of the line are exercised
    assert catalog.below_policy(mins) == expected
    assert catalog.below_policy({}) == set()
