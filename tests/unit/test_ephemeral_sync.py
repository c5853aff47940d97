"""What is urgent: fresh game or match data on an ephemeral node (the pure decision of the
`ephemeral_sync` sensor), property-tested against an independently written oracle."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from resources.transport.base import RemoteFile
from sensors.ephemeral_sync import (
    SeenDb,
    UrgentCollection,
    collection_job,
    urgent_collections,
    urgent_run,
)
from sync_assets.engine.freshness import is_fresh, seen_fingerprint
from sync_assets.engine.live_db import fingerprint

NODES = ["gpu-1", "gpu-2", "store-1", "train-1"]
PATHS = [
    "games/selfplay.db",
    "games/selfplay_hex8_2p.db",
    "games/tournament_sq8_2p.db",
    "games/gauntlet_hexagonal_4p.db",
    "games/canonical_hex8_2p.db",  # merged corpus: never collected from a node
    "elo/unified_elo.db",
    "elo/fleet_ratings.db",  # published by fleetsync: not collected
]
GAMES = {"games/selfplay.db", "games/selfplay_hex8_2p.db", "games/tournament_sq8_2p.db",
         "games/gauntlet_hexagonal_4p.db"}  # fmt: skip
FINGERPRINTS = ["1:1:-", "1:2:-", "2:2:5:9"]
NOW = 10_000.0
EVERY_S = 900.0


def oracle(
    seen: list[SeenDb], ephemeral: set[str], busy: set[tuple[str, str]]
) -> list[UrgentCollection]:
    """Written from the rule, not from the code: per node and job, the DBs on a reachable
    ephemeral node that the job collects, whose probe came after the last snapshot and
    saw another state (or that were never snapshotted), unless snapshotted within EVERY_S
    or already being collected; each in the EVERY_S-long slot NOW falls in, naming the DBs
    never snapshotted."""
    slot = math.floor(NOW / EVERY_S)
    out = []
    for node in sorted(ephemeral):
        for job, paths in (("collect_games", GAMES), ("collect_matches", {"elo/unified_elo.db"})):
            if (job, node) in busy:
                continue
            fresh = []
            for db in seen:
                if db.node != node or db.path not in paths or not db.reachable:
                    continue
                if db.collected_at is None or (
                    NOW - db.collected_at >= EVERY_S
                    and db.seen_at > db.collected_at
                    and db.fingerprint != db.collected_fingerprint
                ):
                    fresh.append(db)
            if fresh:
                paths = tuple(sorted(db.path for db in fresh))
                new = tuple(sorted(db.path for db in fresh if db.collected_at is None))
                out.append(UrgentCollection(job, node, slot, paths, new))
    return sorted(out)


@st.composite
def seen_dbs(draw: st.DrawFn) -> list[SeenDb]:
    keys = draw(st.sets(st.tuples(st.sampled_from(NODES), st.sampled_from(PATHS)), max_size=20))
    reachable = {n: draw(st.booleans()) for n in NODES}  # one latest probe per node
    dbs = []
    for node, path in sorted(keys):
        collected = draw(st.none() | st.sampled_from(FINGERPRINTS))
        seen_at = draw(st.floats(NOW - 3 * EVERY_S, NOW))
        collected_at = None if collected is None else draw(st.floats(NOW - 3 * EVERY_S, NOW))
        dbs.append(
            SeenDb(
                node,
                path,
                reachable[node],
                draw(st.sampled_from(FINGERPRINTS)),
                seen_at,
                collected,
                collected_at,
            )  # fmt: skip
        )
    return dbs


@settings(max_examples=2000, deadline=None)
@given(
    seen=seen_dbs(),
    ephemeral=st.sets(st.sampled_from(NODES)),
    busy=st.sets(
        st.tuples(st.sampled_from(["collect_games", "collect_matches"]), st.sampled_from(NODES))
    ),
)
def test_urgent_collections_match_the_oracle(
    seen: list[SeenDb], ephemeral: set[str], busy: set[tuple[str, str]]
) -> None:
    got = urgent_collections(seen, ephemeral, busy, NOW, EVERY_S)
    assert got == oracle(seen, ephemeral, busy)
    # Invariants: only ephemeral nodes, never a busy (job, node), never an uncollected name.
    assert all(u.node in ephemeral and (u.job, u.node) not in busy for u in got)
    assert all(collection_job(p) == u.job for u in got for p in u.paths)


def test_the_three_cases_the_sensor_exists_for() -> None:
    fresh = SeenDb("gpu-1", "games/selfplay.db", True, "2:2:-", NOW, "1:1:-", NOW - EVERY_S)
    # Fresh data on an ephemeral node: one urgent collection of that node.
    assert urgent_collections([fresh], {"gpu-1"}, set(), NOW, EVERY_S) == [
        UrgentCollection("collect_games", "gpu-1", 11, ("games/selfplay.db",), ())
    ]
    # The same on a durable (not ephemeral) node: nothing urgent.
    assert urgent_collections([fresh._replace(node="store-1")], {"gpu-1"}, set(), NOW) == []
    # Already collected (the last snapshot saw this state): nothing.
    done = fresh._replace(collected_fingerprint="2:2:-")
    assert urgent_collections([done], {"gpu-1"}, set(), NOW, EVERY_S) == []


def test_urgent_run_is_high_priority_for_that_node_and_keyed_by_slot_and_new_dbs() -> None:
    urgent = UrgentCollection("collect_matches", "gpu-2", 1_995_537, ("elo/unified_elo.db",), ())
    run = urgent_run(urgent)
    assert run.job_name == "collect_matches" and run.partition_key == "gpu-2"
    assert run.tags["dagster/priority"] == "10"
    assert run.run_key is not None and ":1995537:" in run.run_key
    later = urgent_run(urgent._replace(slot=urgent.slot + 1))
    assert later.run_key != run.run_key  # the next slot may collect it again
    # A DB never collected makes a new key in the same slot: it is asked for at once.
    new = urgent._replace(never_collected=("elo/unified_elo.db",))
    assert urgent_run(new).run_key not in (run.run_key, later.run_key)
    assert urgent_run(urgent).run_key == run.run_key  # the same request: the same key


@given(
    seen=st.sampled_from(FINGERPRINTS), collected=st.none() | st.sampled_from(FINGERPRINTS),
    seen_at=st.floats(0, 100), collected_at=st.floats(0, 100),
)  # fmt: skip
def test_fresh_means_a_later_probe_saw_another_state(
    seen: str, collected: str | None, seen_at: float, collected_at: float
) -> None:
    got = is_fresh(seen, seen_at, collected, None if collected is None else collected_at)
    if collected is None:
        assert got  # never snapshotted: everything on it is at risk
    else:
        assert got == (seen != collected and seen_at > collected_at)


@given(
    size=st.integers(0, 2**50), mtime=st.integers(0, 2**63),
    wal=st.none() | st.tuples(st.integers(0, 2**40), st.integers(0, 2**63)),
)  # fmt: skip
def test_seen_fingerprint_is_the_collectors_fingerprint(
    size: int, mtime: int, wal: tuple[int, int] | None
) -> None:
    got = seen_fingerprint(size, mtime, *(wal or (None, None)))
    wal_file = RemoteFile("x.db-wal", *wal) if wal else None
    assert got == fingerprint(RemoteFile("x.db", size, mtime), wal_file)
    # Independently: "size:mtime:" then the WAL's "size:mtime", or "-" for none or empty.
    wal_part = f"{wal[0]}:{wal[1]}" if wal and wal[0] else "-"
    assert got == f"{size}:{mtime}:{wal_part}"


def test_collection_job_names_what_the_collectors_take() -> None:
    assert {p: collection_job(p) for p in PATHS} == {
        **{p: "collect_games" for p in GAMES},
        "games/canonical_hex8_2p.db": None,
        "elo/unified_elo.db": "collect_matches",
        "elo/fleet_ratings.db": None,
    }
