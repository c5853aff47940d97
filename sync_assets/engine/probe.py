"""Probe nodes and record what was seen in the catalog; unknown stays unknown. Then the
node lifecycle decision that follows (`sync_assets.fleet.lifecycle`), made and logged.
A whole fleet is probed at once (one command per node, in parallel, each bounded in time),
recorded in turn, each node on its own: one node's failure is that node's alone."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence

from resources.catalog import Catalog, NodeState
from resources.transport import Transports
from resources.transport.base import NodeProbe, TransferError, Transport
from sync_assets.engine import breaker
from sync_assets.engine.audit import audit_node
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.fleet.lifecycle import NodeFacts, next_state

PROBES_IN_FLIGHT = 32  # nodes probed at once; each probe is one command waiting on a node
# One node's probe, from its start: above the SSH probe's own 60 s command timeout, so
# only a probe that would never end (a local root on a hung NFS mount blocks in statvfs)
# meets it.
PROBE_TIMEOUT_S = 120.0
log = logging.getLogger("fleetsync.probe")


def probe_and_record(
    node: Node,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> NodeProbe:
    """One probe of `node` (reachability, disk, GPU, jobs, sessions, live DBs), fed to its
    breaker and recorded; a node that answers after being suspect or lost is audited (one
    listing, no hashing) before its copies count again."""
    transport = transports.for_node(node)
    [probe] = probe_bounded([(node, transport)], 1, timeout_s)
    return _record(node, probe, fleet, catalog, transport)


def probe_fleet(
    nodes: Sequence[Node],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    in_flight: int = PROBES_IN_FLIGHT,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> dict[str, NodeProbe]:
    """Probe `nodes` concurrently, then record each probe as `probe_and_record` does, one
    after the other (the catalog's writes and the lifecycle decisions stay serial). A node
    whose recording fails is logged and returned with that error; the others are still
    recorded and decided (one odd node must not blind the probe of the whole fleet)."""
    # Transports are chosen here, in one thread: the SSH transport is made on first use.
    chosen = [(node, transports.for_node(node)) for node in nodes]
    seen = probe_bounded(chosen, in_flight, timeout_s)
    recorded = {}
    for (node, transport), probe in zip(chosen, seen, strict=True):
        if probe.rejected:
            names = ", ".join(ascii(name) for name in probe.rejected)
            log.warning("node %s: DB names refused as unsafe, not recorded: %s", node.name, names)
        try:
            recorded[node.name] = _record(node, probe, fleet, catalog, transport)
        except Exception as exc:  # that node's error, reported for that node alone
            log.exception("node %s: recording its probe failed", node.name)
            error = f"node {node.name}: recording the probe failed: {exc!r}"
            recorded[node.name] = dataclasses.replace(probe, error=error)
    return recorded


def probe_bounded(
    chosen: Sequence[tuple[Node, Transport]], in_flight: int, timeout_s: float
) -> list[NodeProbe]:
    """Each node's probe, at most `in_flight` at once, in the order of `chosen`. A probe
    that has not answered `timeout_s` after it started is a missed probe ("probe timed out
    after N s"): its thread is left behind (a daemon: nothing can interrupt a read blocked
    on a hung mount) and its slot goes to the next node. A probe that raises is a missed
    probe with that error."""
    answers: queue.SimpleQueue[tuple[int, NodeProbe]] = queue.SimpleQueue()

    def run(i: int, node: Node, transport: Transport) -> None:
        try:
            answers.put((i, transport.probe(node)))
        except Exception as exc:  # a missed probe of that node, not of all
            answers.put((i, NodeProbe(reachable=False, error=f"node {node.name}: probe: {exc!r}")))

    probes: dict[int, NodeProbe] = {}
    started: dict[int, float] = {}  # probes running: index -> their start (monotonic)
    waiting = list(range(len(chosen)))[::-1]  # popped from the end: in order
    while waiting or started:
        while waiting and len(started) < max(1, in_flight):
            i = waiting.pop()
            node, transport = chosen[i]
            started[i] = time.monotonic()
            threading.Thread(target=run, args=(i, node, transport), daemon=True).start()
        first_deadline = min(started.values()) + timeout_s
        try:
            i, probe = answers.get(timeout=max(0.0, first_deadline - time.monotonic()))
            if started.pop(i, None) is not None:  # else: it answered after its deadline
                probes[i] = probe
        except queue.Empty:
            pass
        now = time.monotonic()
        for i in [i for i, at in started.items() if now - at >= timeout_s]:
            del started[i]
            error = f"node {chosen[i][0].name}: probe timed out after {timeout_s:g} s"
            probes[i] = NodeProbe(reachable=False, error=error)
    return [probes[i] for i in range(len(chosen))]


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
