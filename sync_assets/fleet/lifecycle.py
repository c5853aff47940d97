"""Node lifecycle: the next state of a node from what was just seen of it. Pure, no I/O.

    active --missed probe--> suspect --a probe missed lost_after_s after the first miss--> lost
    (any) --gone from the inventory--> lost, or retired once it holds no last copy
    suspect / lost --answers, and an audit of it succeeded--> active

* `suspect` copies still count toward `min_replicas` but show as at risk; `lost` and
  `retired` copies never count (`resources.catalog.COUNTED_NODE_STATES`).
* A node that comes back is re-audited before its replicas count again, with no extra
  state: it keeps its state (suspect or lost) until an audit after an answer succeeds.
  An answer alone stops the lost clock of a suspect node, nothing more.
* `retired` is for nodes gone from the inventory only (the contract's "removed from the
  partitions": node discovery removes only those). A lost node still in the inventory
  stays lost, and probed, until it comes back; a retired node listed again is lost until
  audited.
* The lost clock starts at the first probe that missed after the last successful one
  (`silent_since`), so a node is never lost by one miss however rare its probes are; and
  a node still in the inventory is lost only through a probe that misses it, never by the
  clock alone: a node nobody probes keeps its state (inventory syncs decide membership
  only).
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.catalog import NodeState


@dataclass(frozen=True)
class NodeFacts:
    """What is known of one node at a decision."""

    state: NodeState | None  # None: not recorded yet
    in_inventory: bool
    answered: bool | None  # this probe's outcome; None: no probe at this decision
    audited: bool  # an audit of the node succeeded after this answer
    silent_since: float | None  # first missed probe since the last success (None: none)
    holds_last_copy: bool


def next_state(facts: NodeFacts, lost_after_s: float, now: float) -> NodeState:
    """The node's state after this decision (module docstring)."""
    if not facts.in_inventory:
        return NodeState.LOST if facts.holds_last_copy else NodeState.RETIRED
    if facts.state is None:
        return NodeState.SUSPECT if facts.answered is False else NodeState.ACTIVE
    state = NodeState.LOST if facts.state == NodeState.RETIRED else NodeState(facts.state)
    if facts.answered:
        return NodeState.ACTIVE if state == NodeState.ACTIVE or facts.audited else state
    if facts.answered is None:
        return state  # no probe: the lost clock is read only by a probe that missed
    if state == NodeState.ACTIVE:
        return NodeState.SUSPECT  # a first miss: never lost at once
    silent_for = None if facts.silent_since is None else now - facts.silent_since
    if state == NodeState.SUSPECT and silent_for is not None and silent_for >= lost_after_s:
        return NodeState.LOST
    return state
