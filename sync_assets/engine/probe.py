"""Probe nodes and record what was seen in the catalog; unknown stays unknown. Then the
node lifecycle decision that follows (`sync_assets.fleet.lifecycle`), made and logged.
A whole fleet is probed at once (one command per node, in parallel), recorded in turn."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from resources.catalog import Catalog, NodeState
from resources.transport import Transports
from resources.transport.base import NodeProbe, TransferError, Transport
from sync_assets.engine import breaker
from sync_assets.engine.audit import audit_node
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.fleet.lifecycle import NodeFacts, next_state

PROBES_IN_FLIGHT = 32  # nodes probed at once; each probe is one command waiting on a node


def probe_and_record(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> NodeProbe:
    """One probe of `node` (reachability, disk, GPU, jobs, sessions, live DBs), fed to its
    breaker and recorded; a node that answers after being suspect or lost is audited (one
    listing, no hashing) before its copies count again."""
    transport = transports.for_node(node)
    return _record(node, transport.probe(node), fleet, catalog, transport)


def probe_fleet(
    nodes: Sequence[Node],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    in_flight: int = PROBES_IN_FLIGHT,
) -> dict[str, NodeProbe]:
    """Probe `nodes` concurrently, then record each probe as `probe_and_record` does, one
    after the other (the catalog's writes and the lifecycle decisions stay serial)."""
    # Transports are chosen here, in one thread: the SSH transport is made on first use.
    chosen = [(node, transports.for_node(node)) for node in nodes]
    with ThreadPoolExecutor(max_workers=max(1, min(in_flight, len(chosen)))) as pool:
        seen = list(pool.map(lambda pair: pair[1].probe(pair[0]), chosen))
    return {
        node.name: _record(node, probe, fleet, catalog, transport)
        for (node, transport), probe in zip(chosen, seen, strict=True)
    }


def _record(
    node: Node, probe: NodeProbe, fleet: Fleet, catalog: Catalog, transport: Transport
) -> NodeProbe:
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
