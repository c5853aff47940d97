"""The node lifecycle decision over thousands of random histories, held to invariants
written from the contract (and issue 10), not from the decision's code."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from resources.catalog import NodeState
from sync_assets.fleet.lifecycle import NodeFacts, next_state

LOST_AFTER_S = 600.0
CONTRACT_STATES = {"active", "suspect", "lost", "retired"}


@dataclass(frozen=True)
class Step:
    dt: float  # seconds since the previous step
    listed: bool  # in the inventory
    probe: str  # "answer", "miss" or "none"
    audit_ok: bool  # an audit after an answer succeeds
    holds_last_copy: bool


steps = st.builds(
    Step,
    dt=st.sampled_from([0.0, 1.0, 59.0, 60.0, 300.0, 599.0, 600.0, 601.0, 3600.0]),
    listed=st.sampled_from([True, True, True, False]),
    probe=st.sampled_from(["answer", "miss", "none"]),
    audit_ok=st.booleans(),
    holds_last_copy=st.booleans(),
)


def run(history: list[Step]) -> list[tuple[float, NodeState]]:
    """Drive the decision as the catalog does: `silent_since` is the first miss since the
    last answer; an answer clears it."""
    now, state, silent_since = 1_000_000.0, None, None
    out = []
    for s in history:
        now += s.dt
        if s.probe == "answer":
            silent_since = None
        elif s.probe == "miss" and silent_since is None:
            silent_since = now
        answered = {"answer": True, "miss": False, "none": None}[s.probe]
        audited = s.probe == "answer" and s.audit_ok and state not in (None, NodeState.ACTIVE)
        facts = NodeFacts(state, s.listed, answered, audited, silent_since, s.holds_last_copy)
        state = next_state(facts, LOST_AFTER_S, now)
        out.append((now, state))
    return out


@settings(max_examples=3000, deadline=None)
@given(st.lists(steps, min_size=1, max_size=30))
def test_random_histories_keep_the_lifecycle_invariants(history: list[Step]) -> None:
    """The lost clock runs from the first miss after the last answer, and only a probe
    that misses reads it: an inventory sync (probe "none") never makes a listed node lost."""
    states = run(history)
    first_miss: float | None = None  # the first miss since the last answer
    trusted_since = None  # index of the last audited answer, or of a first clean listing
    misses_since_trust = False
    unlisted_since_trust = False
    silent_too_long_since_trust = False
    previous: NodeState | None = None
    for i, (s, (now, state)) in enumerate(zip(history, states, strict=True)):
        if s.probe == "answer":
            first_miss = None
        elif s.probe == "miss" and first_miss is None:
            first_miss = now
        silent_for = None if first_miss is None else now - first_miss

        # Independent bookkeeping of what the node did since it was last trusted.
        audited_answer = s.probe == "answer" and s.audit_ok and previous is not None
        first_clean = previous is None and s.listed and s.probe != "miss"
        if audited_answer or first_clean:
            trusted_since = i
            misses_since_trust = unlisted_since_trust = silent_too_long_since_trust = False
        misses_since_trust |= s.probe == "miss"
        unlisted_since_trust |= not s.listed
        if s.probe == "miss" and silent_for is not None and silent_for >= LOST_AFTER_S:
            silent_too_long_since_trust = True

        assert state in CONTRACT_STATES
        if state == NodeState.RETIRED:  # never while holding a last copy; only if delisted
            assert not s.holds_last_copy and not s.listed
        if not s.listed:  # gone from the inventory: lost at once (retired if no last copy)
            assert state == (NodeState.LOST if s.holds_last_copy else NodeState.RETIRED)
        if state == NodeState.LOST and s.listed:  # only after lost_after_s silent, or delisted
            assert unlisted_since_trust or silent_too_long_since_trust
        if state == NodeState.ACTIVE:  # trusted, and nothing went wrong since
            assert s.listed and trusted_since is not None
            assert not (misses_since_trust or unlisted_since_trust)
        if previous in (NodeState.SUSPECT, NodeState.LOST, NodeState.RETIRED) and (
            state == NodeState.ACTIVE
        ):
            assert audited_answer  # back only through an audit
        if s.listed and s.probe == "miss":
            assert state != NodeState.ACTIVE
        if s.listed and s.probe == "miss" and previous == NodeState.ACTIVE:
            assert state == NodeState.SUSPECT  # a first miss: never lost at once
        if s.listed and s.probe == "none" and previous is not None:  # membership only
            assert state == (NodeState.LOST if previous == NodeState.RETIRED else previous)
        if s.listed and previous is not None and audited_answer:
            assert state == NodeState.ACTIVE
        if (
            s.listed
            and previous == NodeState.SUSPECT
            and s.probe == "miss"
            and silent_for is not None
            and silent_for >= LOST_AFTER_S
        ):
            assert state == NodeState.LOST  # lost in time, not later
        previous = state


def test_a_suspect_node_is_lost_exactly_at_lost_after_s() -> None:
    suspect = NodeFacts(NodeState.SUSPECT, True, False, False, 1000.0, False)
    assert next_state(suspect, 600, 1599.9) == NodeState.SUSPECT
    assert next_state(suspect, 600, 1600.0) == NodeState.LOST


def test_one_missed_probe_after_a_long_silence_of_probes_is_suspect_not_lost() -> None:
    """Probes a day apart: the node answered, then the next probe misses. Its clock starts
    at that miss (the catalog records it so), so it is suspect; the next miss past
    lost_after_s makes it lost."""
    history = [
        Step(0.0, True, "answer", False, False),
        Step(86_400.0, True, "miss", False, False),
        Step(86_400.0, True, "miss", False, False),
    ]
    assert [state for _, state in run(history)] == ["active", "suspect", "lost"]
    first_miss = NodeFacts(NodeState.ACTIVE, True, False, False, 0.0, False)
    assert next_state(first_miss, 600, 86_400.0) == NodeState.SUSPECT  # even with an old clock


def test_a_suspect_node_with_no_further_probe_stays_suspect_through_inventory_syncs() -> None:
    history = [Step(0.0, True, "answer", False, False), Step(1.0, True, "miss", False, False)]
    history += [Step(dt, True, "none", False, False) for dt in (60.0, 600.0, 3600.0) * 50]
    assert {state for _, state in run(history)[1:]} == {NodeState.SUSPECT}
    suspect = NodeFacts(NodeState.SUSPECT, True, None, False, 1.0, False)
    assert next_state(suspect, 600, 1e9) == NodeState.SUSPECT


def test_a_node_that_comes_back_counts_again_only_once_audited() -> None:
    for state in (NodeState.SUSPECT, NodeState.LOST):
        back = NodeFacts(state, True, True, False, 5000.0, False)
        assert next_state(back, 600, 5000.0) == state
        audited = NodeFacts(state, True, True, True, 5000.0, False)
        assert next_state(audited, 600, 5000.0) == NodeState.ACTIVE
    relisted = NodeFacts(NodeState.RETIRED, True, None, False, None, False)
    assert next_state(relisted, 600, 0.0) == NodeState.LOST
