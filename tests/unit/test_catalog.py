"""The catalog on a real SQLite file: artifacts by content, replicas, leases, schema version."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import sqlite3

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.catalog import SCHEMA_VERSION, Catalog, LeaseHeld, NodeState, Replica
from sensors.node_discovery import partition_changes
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


def test_sync_nodes_registers_new_nodes_active_and_keeps_lifecycle_states(catalog, tmp_path):
    """Departures and every other state change are the node lifecycle's
    (tests/unit/test_catalog_lifecycle.py), never reset here."""

    def n(name):
        return Node(name=name, transport="local", roles=["storage"], data_root=str(tmp_path))

    catalog.sync_nodes([n("a"), n("b")])
    catalog.set_node_states({"b": (NodeState.LOST, "no answer")})
    catalog.sync_nodes([n("a"), n("b")])
    states = catalog.nodes_frame().set_index("name")["state"].to_dict()
    assert states == {"a": "active", "b": "lost"}


def test_node_discovery_adds_in_batches_and_keeps_last_copy_holders():
    to_add, to_remove = partition_changes(
        [f"n{i:03d}" for i in range(120)], ["gone", "holder"], {"holder"}, batch=50
    )
    assert to_add == [f"n{i:03d}" for i in range(50)]
    assert to_remove == ["gone"]


def test_last_copy_holders(catalog, tmp_path):
    """Another copy counts only on an inventory node outside `among`, in a counted state."""
    names = ["n1", "n2", "n3", "n4", "n5"]
    catalog.sync_nodes(
        [Node(name=n, transport="local", roles=["storage"], data_root=str(tmp_path)) for n in names]
    )
    for sha in "abc":
        catalog.add_artifact(sha, kind="k", config=None, name=sha, size=1, origin_node="n1")
    catalog.record_replica("a", "n1", "a", 1)
    catalog.record_replica("a", "n2", "a", 1)
    catalog.record_replica("b", "n3", "b", 1, state="staging")
    catalog.record_replica("c", "n4", "c", 1)
    assert catalog.last_copy_holders(set(names), names) == {"n1", "n2", "n3", "n4"}
    assert catalog.last_copy_holders({"n1", "n4"}, names) == {"n4"}
    assert catalog.last_copy_holders({"n1", "n4"}, ["n1", "n4"]) == {"n1", "n4"}  # n2 delisted
    catalog.set_node_states({"n2": (NodeState.LOST, "test")})
    assert catalog.last_copy_holders({"n1", "n4"}, names) == {"n1", "n4"}  # n2 uncounted
    assert catalog.last_copy_holders(set(), names) == set()


def test_below_policy_counts_like_a_plain_sql_oracle(catalog, tmp_path):
    """The database's deficit count (what a no-op re-sync asks) must agree with a count
    written independently in plain SQL on a messy random catalog: departed and
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
    durable = {n.name for n in nodes if n.durable and n.name != "store-3"}  # store-3 departed
    copies = _oracle_durable_counts(tmp_path, durable)
    db = sqlite3.connect(tmp_path / "catalog.db")
    expected = {
        sha for sha, kind in db.execute("SELECT sha256, kind FROM artifacts")
        if copies.get(sha, 0) < mins.get(kind, 0)
    }  # fmt: skip
    assert 50 < len(expected) < 350  # both sides of the line are exercised
    assert catalog.below_policy(mins, durable) == expected
    assert catalog.below_policy({}, durable) == set()
    assert catalog.durable_copy_counts(durable) == copies
    assert catalog.durable_copy_counts(durable, kind="npz") == {
        sha: n
        for sha, n in copies.items()
        if db.execute("SELECT kind FROM artifacts WHERE sha256 = ?", (sha,)).fetchone()[0] == "npz"
    }


def _oracle_durable_counts(tmp_path, durable: set[str]) -> dict[str, int]:
    """Durable copies per artifact, in plain SQL: distinct durable nodes with a verified row."""
    db = sqlite3.connect(tmp_path / "catalog.db")
    marks = ",".join("?" * len(durable))
    rows = db.execute(
        f"SELECT sha256, COUNT(DISTINCT node) FROM replicas WHERE state = 'verified' "
        f"AND node IN ({marks}) GROUP BY sha256",
        sorted(durable),
    )
    return dict(rows)


def test_typed_replica_queries_match_plain_sql(catalog, tmp_path):
    rng = random.Random(5)
    nodes = ["store-1", "store-2", "gpu-1", "gpu-2"]
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(60)]
    for i, sha in enumerate(shas):
        origin = rng.choice(nodes)
        catalog.add_artifact(sha, kind=rng.choice(["x", "y"]), config=rng.choice(["a", "b"]),
                             name=f"f/{i}", size=i + 1, origin_node=origin)  # fmt: skip
        for node in rng.sample(nodes, rng.randint(0, 3)):
            catalog.record_replica(
                sha, node, f"p/{i}", i + 1, state=rng.choice(["verified", "staging"])
            )
    db = sqlite3.connect(tmp_path / "catalog.db")
    some = set(rng.sample(shas, 20))
    marks = ",".join("?" * len(some))
    expected = db.execute(
        f"SELECT sha256, node, path, size FROM replicas WHERE state = 'verified' "
        f"AND sha256 IN ({marks}) ORDER BY node, path, sha256",
        sorted(some),
    ).fetchall()
    assert catalog.replicas_of(some) == [Replica(*r) for r in expected]
    on_store = [Replica(*r) for r in expected if r[1] == "store-1"]
    assert catalog.replicas_of(some, nodes=["store-1"]) == on_store
    staged = db.execute(
        f"SELECT sha256 FROM replicas WHERE state = 'staging' AND sha256 IN ({marks})", sorted(some)
    ).fetchall()
    assert {r.sha256 for r in catalog.replicas_of(some, ["staging"])} == {s for (s,) in staged}
    originated = db.execute(
        "SELECT sha256 FROM artifacts WHERE kind = 'x' AND origin_node = 'gpu-1'"
    ).fetchall()
    assert sorted(catalog.originated("x", "gpu-1")) == sorted(s for (s,) in originated)
    # snapshots_to_merge: census says config a, durable verified copy, not quarantined.
    for sha in shas[:30]:
        catalog.record_census(sha, {"a": rng.randint(0, 2), "b": 1}, 0)
    catalog.quarantine(shas[3], "unreadable")
    durable = {"store-1", "store-2"}
    oracle = db.execute(
        "SELECT c.snapshot_sha256 FROM snapshot_configs c WHERE c.config = 'a' AND c.games > 0 "
        "AND EXISTS (SELECT 1 FROM replicas r WHERE r.sha256 = c.snapshot_sha256 "
        "  AND r.state = 'verified' AND r.node IN ('store-1', 'store-2')) "
        "AND c.snapshot_sha256 NOT IN (SELECT sha256 FROM quarantine)"
    ).fetchall()
    assert catalog.snapshots_to_merge("a", durable) == {s for (s,) in oracle}
    assert 0 < len(oracle) < 30


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from("abcd"),
            st.sampled_from(["n1", "n2", "n3", "n4"]),
            st.sampled_from(["p", "q"]),
            st.sampled_from(["verified", "staging"]),
        ),
        max_size=25,
    ),
    durable=st.sets(st.sampled_from(["n1", "n2", "n3", "n4"])),
)
def test_durable_copy_definition_agrees_with_brute_force(tmp_path_factory, rows, durable):
    """One definition: a verified replica on a durable node the caller trusts, counted per
    distinct node. `durable_copy_counts` and `below_policy` agree with counting by hand."""
    catalog = Catalog(url=f"sqlite:///{tmp_path_factory.mktemp('c') / 'catalog.db'}")
    for sha in "abcd":
        catalog.add_artifact(sha, kind="k", config=None, name=sha, size=1, origin_node="n1")
    kept: dict[tuple[str, str], tuple[str, str]] = {}  # (node, path) → the last recorded
    for sha, node, path, state in rows:
        catalog.record_replica(sha, node, path, 1, state=state)
        kept[(node, path)] = (sha, state)  # a file replaced: one artifact per place
    brute = {
        sha: n
        for sha in "abcd"
        if (
            n := len(
                {
                    node
                    for (node, _), (s, st_) in kept.items()
                    if s == sha and st_ == "verified" and node in durable
                }
            )
        )  # fmt: skip
    }
    assert catalog.durable_copy_counts(durable) == brute
    assert catalog.below_policy({"k": 2}, durable) == {s for s in "abcd" if brute.get(s, 0) < 2}


def test_bytes_without_durable_copy(catalog):
    for sha, size in (("a", 100), ("b", 7), ("c", 5)):
        catalog.add_artifact(sha, kind="games", config=None, name=sha, size=size, origin_node="x")
    catalog.record_replica("a", "gpu-1", "a", 100)
    catalog.record_replica("b", "store-1", "b", 7)
    copies = catalog.durable_copy_counts({"store-1", "store-2"})
    assert copies == {"b": 1}
    assert sum(size for sha, size in (("a", 100), ("b", 7), ("c", 5)) if sha not in copies) == 105


def test_v2_catalog_moves_probes_out_of_nodes(tmp_path):
    """A v2 catalog kept probe results on the nodes rows; v3 keeps them in `probes`."""
    db = sqlite3.connect(tmp_path / "v2.db")
    db.executescript(
        """
        CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at FLOAT NOT NULL);
        INSERT INTO schema_version VALUES (2, 0);
        CREATE TABLE nodes (name VARCHAR(128) PRIMARY KEY, roles VARCHAR(256) NOT NULL,
            durable BOOLEAN NOT NULL, ephemeral BOOLEAN NOT NULL, provider VARCHAR(32) NOT NULL,
            state VARCHAR(16) NOT NULL, reachable BOOLEAN, last_probe_at FLOAT,
            disk_total_bytes BIGINT, disk_free_bytes BIGINT, gpu_util_percent FLOAT,
            probe_error TEXT);
        INSERT INTO nodes VALUES ('s1', 'storage', 1, 0, 'none', 'active', 0, 5.0, 100, 40,
            NULL, 'timed out');
        INSERT INTO nodes VALUES ('g1', 'selfplay', 0, 0, 'none', 'active', NULL, NULL, NULL,
            NULL, NULL, NULL);
        """
    )
    db.commit()
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'v2.db'}")
    assert catalog.unreachable_nodes() == {"s1"}
    assert catalog.disk_space(["s1", "g1"]) == {"s1": (100, 40)}
    frame = catalog.nodes_frame().set_index("name")
    assert frame.at["s1", "probe_error"] == "timed out" and frame.at["g1", "state"] == "active"
