"""ephemeral_sync asks for a DB whose collection keeps failing (never snapshotted) on a
node that writes all the time at most once per URGENT_EVERY_S, not at every tick (from a
hostile review: the only limit used to be the last *successful* snapshot, and each tick's
run key held the newest mtime, so every tick was a new urgent run at priority 10). What
counts is the distinct run keys: Dagster requests a run key once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.ephemeral_sync import URGENT_EVERY_S, SeenDb, urgent_collections, urgent_run

NODE = "gpu-eph"


def test_failing_collection_is_not_requested_every_tick() -> None:
    run_keys = set()
    t0 = 1_000_000.0
    for tick in range(15):  # 15 one-minute ticks, every previous run already failed
        now = t0 + 60 * tick
        mtime = int((now - 5) * 1e9)  # self-play wrote 5 s ago
        db = SeenDb(NODE, "games/selfplay.db", True, f"{tick}:{mtime}:-", now - 1, None, None)
        for urgent in urgent_collections([db], {NODE}, busy=set(), now=now):
            run_keys.add(urgent_run(urgent).run_key)
    # At most one urgent collection of a DB per URGENT_EVERY_S (15 min): the 14 minutes
    # here cross at most one slot boundary.
    assert 1 <= len(run_keys) <= 1 + (15 * 60) // int(URGENT_EVERY_S), run_keys


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(0, 1e9),
    ticks=st.lists(
        st.tuples(
            st.floats(1, 120),  # seconds since the previous tick
            st.sets(
                st.sampled_from(
                    ["games/selfplay.db", "games/selfplay_hex8_2p.db", "elo/unified_elo.db"]
                )
            ),
            st.booleans(),  # True: every collection so far failed (never snapshotted)
        ),
        min_size=1,
        max_size=60,
    ),
    every_s=st.sampled_from([30.0, 900.0]),
)
def test_one_run_key_per_job_slot_and_set_of_never_collected_dbs(
    start: float, ticks: list[tuple[float, set[str], bool]], every_s: float
) -> None:
    """Whatever the node writes (a new state at every tick, all of it fresh) and whether
    its collections fail, the distinct run keys of a (job, node) are exactly the distinct
    (job, every_s-long slot, DBs never collected) seen: one request per slot, and one more
    at once when a DB is seen that was never collected."""
    now = start
    keys: set[str] = set()
    oracle: set[tuple[str, int, tuple[str, ...]]] = set()
    per_slot: dict[tuple[str, int], set[str]] = {}
    for gap, paths, failing in ticks:
        now += gap
        collected = (None, None) if failing else ("0:0:-", now - every_s)
        seen = [SeenDb(NODE, p, True, f"{now}:1:-", now - 0.5, *collected) for p in sorted(paths)]
        slot = int(now // every_s)
        for job, of_job in (
            ("collect_games", sorted(p for p in paths if p.startswith("games/"))),
            ("collect_matches", sorted(p for p in paths if p.startswith("elo/"))),
        ):
            if of_job:
                oracle.add((job, slot, tuple(of_job) if failing else ()))
        for urgent in urgent_collections(seen, {NODE}, set(), now, every_s):
            key = urgent_run(urgent).run_key
            assert key is not None
            keys.add(key)
            per_slot.setdefault((urgent.job, slot), set()).add(key)
    assert len(keys) == len(oracle)
    # Hence: within a slot, a (job, node) gets no more keys than never-collected DB sets.
    for (job, slot), slot_keys in per_slot.items():
        assert len(slot_keys) == len({new for j, s, new in oracle if (j, s) == (job, slot)})
