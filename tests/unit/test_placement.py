"""The placement planner, directly: pure frames in, transfers and reasons out."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_assets.engine.placement import (
    GIB,
    PRIORITY_BELOW_POLICY,
    PRIORITY_ONLY_EPHEMERAL,
    PRIORITY_SINGLE_COPY,
    DiskFloor,
    plan_replication,
)

FLOOR = DiskFloor(max_target_use=0.70, min_free_gb=20)
TB = 1024 * GIB


def node(name, *, durable=False, ephemeral=False, total=None, free=None, state="active"):
    return {
        "name": name,
        "durable": durable,
        "ephemeral": ephemeral,
        "state": state,
        "disk_total_bytes": total,
        "disk_free_bytes": free,
    }


def frames(arts, reps, nodes):
    artifacts = pd.DataFrame(arts, columns=["sha256", "kind", "size"])
    replicas = pd.DataFrame(reps, columns=["sha256", "node", "state"])
    return artifacts, replicas, pd.DataFrame(nodes)


BIG_DISK = {"total": 10 * TB, "free": 9 * TB}
FLEET = [
    node("store-1", durable=True, **BIG_DISK),
    node("store-2", durable=True, **BIG_DISK),
    node("store-3", durable=True, total=10 * TB, free=8 * TB),
    node("gpu-1", ephemeral=True),
    node("gpu-2"),
]


def plan(arts, reps, nodes=FLEET, mins=None, unavailable=frozenset()):
    a, r, n = frames(arts, reps, nodes)
    return plan_replication(a, r, n, mins or {"games": 2}, FLOOR, unavailable)


def test_single_ephemeral_copy_goes_to_two_durable_nodes_with_most_room():
    p = plan([("a", "games", GIB)], [("a", "gpu-1", "verified")])
    assert list(p.transfers["target"]) == ["store-1", "store-2"]
    assert set(p.transfers["source"]) == {"gpu-1"}
    assert set(p.transfers["priority"]) == {PRIORITY_ONLY_EPHEMERAL}
    assert p.blocked.empty


def test_riskiest_first():
    p = plan(
        [("below", "games", GIB), ("ephemeral", "games", GIB), ("single", "games", GIB)],
        [
            ("below", "store-1", "verified"),
            ("below", "gpu-2", "verified"),
            ("ephemeral", "gpu-1", "verified"),
            ("single", "gpu-2", "verified"),
        ],
    )
    order = list(dict.fromkeys(p.transfers["sha256"]))
    assert order == ["ephemeral", "single", "below"]
    prio = p.transfers.drop_duplicates("sha256").set_index("sha256")["priority"]
    assert prio.to_dict() == {
        "ephemeral": PRIORITY_ONLY_EPHEMERAL,
        "single": PRIORITY_SINGLE_COPY,
        "below": PRIORITY_BELOW_POLICY,
    }
    # "below" already has one durable copy: exactly one more, not on store-1 again.
    below = p.transfers[p.transfers["sha256"] == "below"]
    assert len(below) == 1 and below["target"].iloc[0] != "store-1"


def test_satisfied_artifacts_plan_nothing():
    p = plan([("a", "games", GIB)], [("a", "store-1", "verified"), ("a", "store-2", "verified")])
    assert p.transfers.empty and p.blocked.empty


def test_absolute_floor_blocks_a_big_disk_that_the_percentage_would_allow():
    nodes = [
        # 30 % free of 100 TB passes a 70 % max-use rule with 0 bytes of room...
        node("store-1", durable=True, total=100 * TB, free=31 * TB),
        node("store-2", durable=True, total=100 * GIB, free=25 * GIB),
        node("gpu-1", ephemeral=True),
    ]
    p = plan([("a", "games", 10 * GIB)], [("a", "gpu-1", "verified")], nodes)
    # store-1: 31 TB free - 30 TB reserve = 1 TB room → fits. store-2: 25 GB free but
    # 20 GB absolute floor → 5 GB room → does not fit; the reason names it.
    assert list(p.transfers["target"]) == ["store-1"]
    assert len(p.blocked) == 1
    reason = p.blocked["reason"].iloc[0]
    assert "store-2" in reason and "min free 20 GB" in reason and "max use 70%" in reason


def test_planned_bytes_use_up_room():
    nodes = [
        node("store-1", durable=True, total=1000 * GIB, free=400 * GIB),  # room 100 GB
        node("store-2", durable=True, total=1000 * GIB, free=365 * GIB),  # room 65 GB
        node("gpu-1", ephemeral=True),
    ]
    arts = [("a", "games", 60 * GIB), ("b", "games", 60 * GIB)]
    reps = [("a", "gpu-1", "verified"), ("b", "gpu-1", "verified")]
    p = plan(arts, reps, nodes, mins={"games": 1})
    assert sorted(p.transfers["target"]) == ["store-1", "store-2"]
    p2 = plan(
        arts + [("c", "games", 60 * GIB)],
        reps + [("c", "gpu-1", "verified")],
        nodes,
        mins={"games": 1},
    )
    assert len(p2.transfers) == 2 and len(p2.blocked) == 1


def test_unavailable_nodes_are_neither_source_nor_target():
    p = plan(
        [("a", "games", GIB)],
        [("a", "gpu-1", "verified")],
        unavailable=frozenset({"store-1"}),
    )
    assert "store-1" not in set(p.transfers["target"])
    p2 = plan([("a", "games", GIB)], [("a", "gpu-1", "verified")], unavailable=frozenset({"gpu-1"}))
    assert p2.transfers.empty
    assert p2.blocked["reason"].iloc[0] == "no reachable copy to copy from"


def test_staging_copy_is_a_source_but_never_counts():
    # The origin is itself durable: its staging snapshot must not satisfy policy.
    p = plan([("a", "games", GIB)], [("a", "store-1", "staging")], mins={"games": 2})
    assert len(p.transfers) == 2
    assert set(p.transfers["source"]) == {"store-1"}


def test_retired_nodes_do_not_count():
    nodes = [*FLEET[:2], node("old", durable=True, state="retired", **BIG_DISK), FLEET[3]]
    p = plan([("a", "games", GIB)], [("a", "old", "verified"), ("a", "store-1", "verified")], nodes)
    assert list(p.transfers["target"]) == ["store-2"]


def test_fan_out_spreads_sources():
    reps = [(s, n, "verified") for s in "abcd" for n in ("store-1", "store-2")]
    p = plan([(s, "games", GIB) for s in "abcd"], reps, mins={"games": 3})
    assert p.transfers["source"].value_counts().to_dict() == {"store-1": 2, "store-2": 2}


@pytest.mark.parametrize("mins", [{"games": 1}, {"games": 3}])
def test_count_of_transfers_matches_deficit(mins):
    p = plan([("a", "games", GIB)], [("a", "gpu-1", "verified")], mins=mins)
    assert len(p.transfers) == mins["games"]
    assert p.transfers["target"].is_unique


def _all_waves(holders, targets, per_source, unavailable=frozenset(), fails=frozenset()):
    """Drive fanout_wave as distribute() does: targets in `fails` fail their copy."""
    from sync_assets.engine.placement import fanout_wave

    have, missing, waves = set(holders), list(targets), []
    while wave := fanout_wave(have, missing, per_source, unavailable):
        waves.append(wave)
        for _, target in wave:
            missing.remove(target)
            if target not in fails:
                have.add(target)
    return waves


def test_fanout_is_a_tree_not_a_star():
    targets = [f"gpu-{i:02d}" for i in range(14)]
    waves = _all_waves({"store-1"}, targets, per_source=2)
    assert [len(w) for w in waves] == [2, 6, 6]  # 1 source → 3 → 9 sources
    served = [t for w in waves for _, t in w]
    assert sorted(served) == targets
    for i, wave in enumerate(waves):
        holders = {"store-1"} | {t for w in waves[:i] for _, t in w}
        assert {s for s, _ in wave} <= holders
        assert max(list(map(lambda st: st[0], wave)).count(s) for s, _ in wave) <= 2


def test_fanout_skips_unavailable_and_self_serves():
    waves = _all_waves({"a", "b"}, ["c", "d"], per_source=1, unavailable=frozenset({"d"}))
    assert waves == [[("a", "c")]]
    assert _all_waves({"a"}, ["b"], per_source=1, unavailable=frozenset({"a"})) == []
    # "a" holds the bytes at another path: it copies to itself, not from "b".
    assert _all_waves({"a", "b"}, ["a"], per_source=1) == [[("a", "a")]]


@settings(max_examples=300, deadline=None)
@given(
    holders=st.sets(st.sampled_from("abcdefgh"), max_size=3),
    targets=st.lists(st.sampled_from("abcdefghijklmnop"), unique=True, max_size=12),
    per_source=st.integers(1, 3),
    unavailable=st.frozensets(st.sampled_from("abcdefghijklmnop"), max_size=3),
    fails=st.frozensets(st.sampled_from("abcdefghijklmnop"), max_size=4),
)
def test_failed_copy_in_a_fanout_wave_never_serves_a_later_wave(
    holders, targets, per_source, unavailable, fails
):
    """Every source of every wave holds the bytes at that moment (a holder from the start
    or a target whose copy succeeded earlier), no source serves more than per_source
    targets per wave, and every reachable target is served when any holder is reachable."""
    waves = _all_waves(holders, targets, per_source, unavailable, fails)
    have = set(holders)
    served = []
    for wave in waves:
        sources = [s for s, _ in wave]
        assert set(sources) <= have - unavailable
        assert all(sources.count(s) <= per_source for s in sources)
        for _, target in wave:
            assert target not in unavailable
            served.append(target)
            if target not in fails:
                have.add(target)
    assert len(served) == len(set(served))
    reachable = [t for t in targets if t not in unavailable]
    if set(holders) - unavailable:
        assert sorted(served) == sorted(reachable)


def test_a_node_never_probed_has_no_room_and_says_so():
    nodes = [
        node("store-1", durable=True, **BIG_DISK),
        node("store-2", durable=True),  # never probed: free space unknown
        node("gpu-1", ephemeral=True),
    ]
    p = plan([("a", "games", GIB)], [("a", "gpu-1", "verified")], nodes=nodes)
    assert list(p.transfers["target"]) == ["store-1"]
    [reason] = p.blocked["reason"]
    assert "disk never probed: store-2" in reason


_NAMES = [f"n{i}" for i in range(6)]


@st.composite
def fleet_states(draw):
    """Random nodes (some never probed, some full, some retired), artifacts, replicas."""
    nodes = []
    for name in _NAMES:
        total = draw(st.one_of(st.none(), st.integers(1, 400).map(lambda g: g * GIB)))
        free = None if total is None else draw(st.integers(0, total // GIB)) * GIB
        nodes.append(
            node(
                name,
                durable=draw(st.booleans()),
                ephemeral=draw(st.booleans()),
                total=total,
                free=free,
                state=draw(st.sampled_from(["active", "active", "suspect", "lost", "retired"])),
            )
        )
    arts = [
        (f"a{i}", draw(st.sampled_from(["games", "npz"])), draw(st.integers(1, 60)) * GIB)
        for i in range(draw(st.integers(0, 8)))
    ]
    reps = [
        (sha, draw(st.sampled_from(_NAMES)), draw(st.sampled_from(["verified", "staging"])))
        for sha, _, _ in arts
        for _ in range(draw(st.integers(0, 3)))
    ]
    mins = {"games": draw(st.integers(0, 3)), "npz": draw(st.integers(0, 3))}
    unavailable = draw(st.frozensets(st.sampled_from(_NAMES), max_size=2))
    return arts, reps, nodes, mins, unavailable


@settings(max_examples=400, deadline=None)
@given(fleet_states())
def test_plan_never_passes_a_disk_floor_nor_uses_unknown_space(state):
    """Invariants, checked with arithmetic written here: every target is an active (not
    suspect), available durable node whose disk was probed; the bytes planned onto it
    fit under both the use ratio and the absolute floor; no artifact gets more copies
    than it lacks (copies on suspect nodes still count, lost ones not); every source is
    an active node holding a usable copy."""
    arts, reps, nodes, mins, unavailable = state
    p = plan(arts, reps, nodes=nodes, mins=mins, unavailable=unavailable)
    by_name = {n["name"]: n for n in nodes}
    planned: dict[str, int] = {}
    for row in p.transfers.itertuples(index=False):
        target = by_name[row.target]
        assert target["durable"] and target["state"] == "active"
        assert row.target not in unavailable and target["disk_free_bytes"] is not None
        planned[row.target] = planned.get(row.target, 0) + row.size
        assert row.source not in unavailable and by_name[row.source]["state"] == "active"
        assert (row.sha256, row.source, "verified") in reps or (
            row.sha256, row.source, "staging") in reps  # fmt: skip
    for name, used in planned.items():
        total, free = by_name[name]["disk_total_bytes"], by_name[name]["disk_free_bytes"]
        assert used <= free - (1 - FLOOR.max_target_use) * total
        assert used <= free - FLOOR.min_free_gb * GIB
    counted = ("active", "suspect")
    durable_active = {n["name"] for n in nodes if n["durable"] and n["state"] in counted}
    for sha, kind, _ in arts:
        have = {r[1] for r in reps if r[0] == sha and r[2] == "verified"} & durable_active
        copies = (p.transfers["sha256"] == sha).sum()
        assert copies <= max(0, mins[kind] - len(have))
