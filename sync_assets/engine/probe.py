"""Probe a node and record what was seen in the catalog; unknown stays unknown. Then the
node lifecycle decision that follows (`sync_assets.fleet.lifecycle`), made and logged."""

from __future__ import annotations

import time

from resources.catalog import Catalog, NodeState
from resources.transport import Transports
from resources.transport.base import NodeProbe, TransferError
from sync_assets.engine import breaker
from sync_assets.engine.audit import audit_node
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.fleet.lifecycle import NodeFacts, next_state


def probe_and_record(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> NodeProbe:
    """One probe of `node` (reachability, disk, GPU), fed to its breaker and recorded; a
    node that answers after being suspect or lost is audited (one listing, no hashing)
    before its copies count again."""
    transport = transports.for_node(node)
    probe = transport.probe(node)
    breaker.record(catalog, node.name, None if probe.reachable else probe.error or "unreachable")
    catalog.record_probe(node.name, probe)
    state, silent_since = catalog.node_lifecycle().get(node.name, (None, None))
    if state is None:
        return probe  # not registered by node discovery yet: its first decision is there
    audited = False
    if probe.reachable and state != NodeState.ACTIVE:
        try:
            audit_node(node, catalog, transport)
            audited = True
        except TransferError:
            pass  # audited at its next answer; its state stays until then
    facts = NodeFacts(state, True, probe.reachable, audited, silent_since, False)
    seen = "answered, audited" if audited else "answered" if probe.reachable else "missed"
    _decide(catalog, {node.name: facts}, fleet, f"probe {seen}: {probe.error or 'ok'}")
    return probe


def sync_inventory(fleet: Fleet, catalog: Catalog) -> None:
    """Record the inventory's nodes, then decide each recorded node's state from its
    inventory membership alone (no probe here, so no lost clock): a node gone from the
    inventory is lost, or retired once it holds no last copy; a retired one listed again,
    lost until audited."""
    catalog.sync_nodes(fleet.nodes)
    listed = {n.name for n in fleet.nodes}
    known = catalog.node_lifecycle()
    holders = catalog.last_copy_holders(known.keys() - listed, listed)
    facts = {
        name: NodeFacts(state, name in listed, None, False, silent_since, name in holders)
        for name, (state, silent_since) in known.items()
    }
    _decide(catalog, facts, fleet, "inventory sync")


def _decide(catalog: Catalog, facts: dict[str, NodeFacts], fleet: Fleet, seen: str) -> None:
    now = time.time()
    changes = {}
    for name, fact in facts.items():
        state = next_state(fact, fleet.policy.lost_after_s, now)
        if state != fact.state:
            changes[name] = (state, _reason(fact, state, seen, now))
    catalog.set_node_states(changes)


def _reason(fact: NodeFacts, state: NodeState, seen: str, now: float) -> str:
    if not fact.in_inventory:
        copies = "holds a last copy" if fact.holds_last_copy else "holds no last copy"
        return f"gone from the inventory; {copies}"
    if state == NodeState.LOST and fact.silent_since is not None:
        return f"{seen}; missing since its first miss {now - fact.silent_since:.0f} s ago"
    return seen
