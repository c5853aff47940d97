"""The replication_deficit decision, against an independently written oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.replication_deficit import (
    Deficit,
    RepairCursor,
    plan_repairs,
    run_key,
)

SHAS = [f"{i:064x}" for i in range(40)]


@st.composite
def deficit_tables(draw: st.DrawFn) -> list[Deficit]:
    shas = draw(st.lists(st.sampled_from(SHAS), unique=True, max_size=30))
    table = []
    for sha in shas:
        copies = draw(st.integers(0, 4))
        required = draw(st.integers(1, 4))
        table.append(
            Deficit(
                sha256=sha,
                kind=draw(st.sampled_from(["games_snapshot", "npz", "games_canonical"])),
                size=draw(st.sampled_from([0, 10, 10, 500, 2**40])),
                durable_copies=draw(st.integers(0, required - 1)),
                required=required,
                copies=copies,
                safe_copies=draw(st.integers(0, copies)),
                repairable=draw(st.booleans()),
            )
        )
    return table


def oracle(table: list[Deficit], already: set[str], limit: int) -> list[str]:
    """Written from the issue's words, one risk class after the other."""
    candidates = [d for d in table if d.copies >= 1 and d.repairable and d.sha256 not in already]
    last_copy_at_risk = [d for d in candidates if d.safe_copies == 0]
    single = [d for d in candidates if d.safe_copies > 0 and d.copies == 1]
    below = [d for d in candidates if d.safe_copies > 0 and d.copies > 1]
    ordered: list[str] = []
    for group in (last_copy_at_risk, single, below):
        biggest_first = sorted(group, key=lambda d: d.sha256)
        biggest_first.sort(key=lambda d: d.size, reverse=True)  # stable: sha breaks ties
        ordered += [d.sha256 for d in biggest_first]
    return ordered[:limit]


@settings(max_examples=3000, deadline=None)
@given(
    table=deficit_tables(),
    requested=st.sets(st.sampled_from(SHAS), max_size=10),
    same_bucket=st.booleans(),
    runs=st.integers(0, 4),
    per_run=st.integers(1, 5),
    now=st.floats(0, 1e9),
    running=st.sets(st.sampled_from(SHAS), max_size=10),
)
def test_repairs_riskiest_first_at_most_k_runs(
    table, requested, same_bucket, runs, per_run, now, running
):
    bucket = int(now // 3600)
    cursor = RepairCursor(bucket if same_bucket else bucket - 1, frozenset(requested))
    batches, after = plan_repairs(
        table,
        cursor,
        now,
        runs=runs,
        per_run=per_run,
        retry_after_s=3600,
        in_flight=frozenset(running),
    )

    # Requested in this bucket, or in a repair run still going: not requested again.
    already = (requested if same_bucket else set()) | running
    flat = [d.sha256 for batch in batches for d in batch]
    assert flat == oracle(table, already, runs * per_run)
    assert len(batches) <= runs
    assert all(1 <= len(batch) <= per_run for batch in batches)
    assert all(len(batch) == per_run for batch in batches[:-1])  # only the last is short
    # Run keys unique within the bucket.
    assert len({run_key(batch, bucket) for batch in batches}) == len(batches)
    # The cursor: this bucket, what was requested before and is still short, plus now.
    short = {d.sha256 for d in table}
    assert after.bucket == bucket
    assert after.requested == ((requested if same_bucket else set()) & short) | set(flat)
    assert RepairCursor.from_json(after.to_json()) == after


@settings(max_examples=500, deadline=None)
@given(table=deficit_tables(), runs=st.integers(1, 3), per_run=st.integers(1, 3))
def test_successive_ticks_request_each_repairable_deficit_once_per_bucket(table, runs, per_run):
    """Ticks in one bucket walk the whole queue without repeating; the next bucket
    (a later retry) starts over, under new run keys."""
    cursor, seen, keys, now = RepairCursor.from_json(None), [], set(), 7200.0
    for tick in range(len(table) + 1):
        batches, cursor = plan_repairs(table, cursor, now + tick, runs=runs, per_run=per_run)
        seen += [d.sha256 for batch in batches for d in batch]
        keys |= {run_key(batch, cursor.bucket) for batch in batches}
    assert seen == oracle(table, set(), len(table))
    retried, after = plan_repairs(table, cursor, now + 3600, runs=runs, per_run=per_run)
    assert [d.sha256 for b in retried for d in b] == oracle(table, set(), runs * per_run)
    assert not keys & {run_key(batch, after.bucket) for batch in retried}
