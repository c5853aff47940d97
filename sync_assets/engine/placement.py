"""The placement planner: desired copies minus verified copies = transfers, riskiest first.

Pure functions over pandas frames; no Dagster, no I/O. Everything the planner decides
not to do is returned with a reason, so the UI can show *why* (LESSONS 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from resources.catalog import COUNTED_NODE_STATES, NodeState, ReplicaState

GIB = 1024**3

PLAN_COLUMNS = ["sha256", "kind", "size", "source", "target", "priority", "reason"]
BLOCKED_COLUMNS = ["sha256", "kind", "size", "reason"]

# Lower number = more urgent. Mirrors HDFS's under-replication priority queues.
PRIORITY_ONLY_EPHEMERAL = 0  # every copy can vanish with its cloud box
PRIORITY_SINGLE_COPY = 1
PRIORITY_BELOW_POLICY = 2


@dataclass(frozen=True)
class DiskFloor:
    """A target may take bytes only while it stays under both limits."""

    max_target_use: float
    min_free_gb: float


@dataclass(frozen=True)
class Plan:
    transfers: pd.DataFrame  # PLAN_COLUMNS, in execution order
    blocked: pd.DataFrame  # BLOCKED_COLUMNS: deficits that could not be planned, and why


def plan_replication(
    artifacts: pd.DataFrame,
    replicas: pd.DataFrame,
    nodes: pd.DataFrame,
    min_replicas: dict[str, int],
    floor: DiskFloor,
    unavailable: frozenset[str] = frozenset(),
) -> Plan:
    """Transfers that bring every artifact up to `min_replicas[kind]` durable copies.

    artifacts: sha256, kind, size. replicas: sha256, node, state. nodes: name, durable,
    ephemeral, state, disk_total_bytes, disk_free_bytes (NaN = never probed).
    `unavailable`: nodes not to use (open circuit breaker, unreachable).
    """
    # Staging copies (a snapshot still on its origin node) may serve as a source but
    # never count toward policy: they are removed once the durable copies exist. `have`
    # below is the catalog's durable copy (`Catalog.durable_copy_counts`), on this table.
    counted = replicas[replicas["state"] == ReplicaState.VERIFIED]
    usable = replicas[replicas["state"].isin(list(ReplicaState))]
    holders = _nodes_by_sha(counted)
    anywhere = _nodes_by_sha(usable)
    node_rows = nodes.set_index("name")
    active = node_rows[node_rows["state"].isin(COUNTED_NODE_STATES)]  # lost ones never count
    durable_active = {n for n in active.index if bool(active.at[n, "durable"])}
    # A suspect node's copies still count, but it serves and receives nothing until a
    # probe answers and its audit passes: a copy sent to it now may be a copy lost.
    serving = set(node_rows.index[node_rows["state"] == NodeState.ACTIVE]) - unavailable
    durable_targets = sorted(durable_active & serving)
    ephemeral = set(active.index[active["ephemeral"].astype(bool)])
    free = {n: _free_bytes_within_floor(active.loc[n], floor) for n in durable_targets}
    planned_out: dict[str, int] = {}

    deficits = []
    for art in artifacts.itertuples(index=False):
        want = min_replicas.get(art.kind, 0)
        have_nodes = holders.get(art.sha256, set())
        have = len(have_nodes & durable_active)
        if have >= want:
            continue
        copies = have_nodes | anywhere.get(art.sha256, set())
        if copies and copies <= ephemeral:
            priority = PRIORITY_ONLY_EPHEMERAL
        elif len(copies) <= 1:
            priority = PRIORITY_SINGLE_COPY
        else:
            priority = PRIORITY_BELOW_POLICY
        deficits.append((priority, -int(art.size), art, copies, have_nodes, have, want))
    deficits.sort(key=lambda d: (d[0], d[1], d[2].sha256))

    plan_rows: list[tuple[object, ...]] = []
    blocked_rows: list[tuple[object, ...]] = []
    for priority, _, art, copies, have_nodes, have, want in deficits:
        missing = want - have
        sources = sorted(copies & serving)
        if not sources:
            reason = "no reachable copy to copy from" if copies else "no copy anywhere"
            blocked_rows.append((*_about(art), reason))
            continue
        candidates = [n for n in durable_targets if n not in have_nodes]
        # Unknown free space is not room: a node never probed takes nothing until it is.
        fitting = [n for n in candidates if free[n] is not None and free[n] >= art.size]
        if len(fitting) < missing:
            unprobed = sorted(n for n in candidates if free[n] is None)
            full = sorted(set(candidates) - set(fitting) - set(unprobed))
            why = f"needs {missing} more durable copies, {len(fitting)} durable node(s) have room"
            if full:
                why += (
                    f"; over disk floor (max use {floor.max_target_use:.0%}, "
                    f"min free {floor.min_free_gb:g} GB): {', '.join(full)}"
                )
            if unprobed:
                why += f"; disk never probed: {', '.join(unprobed)}"
            blocked_rows.append((*_about(art), why))
        fitting.sort(key=lambda n: (-(free[n] or 0), n))  # most free space first
        for target in fitting[:missing]:
            # Fan out: the source with the fewest transfers planned so far; durable first.
            source = min(sources, key=lambda n: (planned_out.get(n, 0), n in ephemeral, n))
            planned_out[source] = planned_out.get(source, 0) + 1
            room = free[target]
            if room is not None:
                free[target] = room - int(art.size)
            reason = f"{have} of {want} durable copies"
            plan_rows.append((*_about(art), source, target, priority, reason))
    return Plan(
        transfers=pd.DataFrame(plan_rows, columns=PLAN_COLUMNS),
        blocked=pd.DataFrame(blocked_rows, columns=BLOCKED_COLUMNS),
    )


def _nodes_by_sha(replicas: pd.DataFrame) -> dict[str, set[str]]:
    """sha256 → nodes holding it. One pass: `groupby(...).agg(set)` makes a Python call
    per artifact (~0.2 s for 10,000)."""
    out: dict[str, set[str]] = {}
    for sha, node in zip(replicas["sha256"].to_numpy(), replicas["node"].to_numpy(), strict=True):
        out.setdefault(sha, set()).add(node)
    return out


def _about(art: Any) -> tuple[str, str, int]:
    """The sha256, kind, size columns every plan and blocked row starts with."""
    return art.sha256, art.kind, int(art.size)


def _free_bytes_within_floor(node: pd.Series, floor: DiskFloor) -> int | None:
    """Bytes a target can still take under both the use ratio and the absolute floor."""
    total, free = node.get("disk_total_bytes"), node.get("disk_free_bytes")
    if pd.isna(total) or pd.isna(free) or not total:
        return None
    by_ratio = free - (1 - floor.max_target_use) * total
    by_floor = free - floor.min_free_gb * GIB
    return max(0, int(min(by_ratio, by_floor)))


def fanout_wave(
    holders: set[str],
    missing: list[str],
    per_source: int,
    unavailable: frozenset[str] = frozenset(),
    busy: Mapping[str, int] | None = None,
) -> list[tuple[str, str]]:
    """The next wave of (source, target) copies that put one artifact on `missing` nodes.

    `holders` are the nodes whose copy is *confirmed now* (a copy that failed in the
    previous wave must not serve this one), `missing` the nodes still lacking it and not
    being copied to (a holder may be one of them: it holds the bytes elsewhere). Each
    source serves at most `per_source` targets at once, counting the `busy` copies it is
    still serving; the caller adds the targets that succeeded to `holders` and asks
    again (a pipelined caller as soon as any copy ends), so a 100-node push is a tree,
    not a star from the coordinator (LESSONS 2). Unavailable nodes are neither sources
    nor targets.

    Copies from one source share its link, so both finish late: a source takes more
    than one at once only while the targets waiting outnumber the nodes that hold the
    bytes or are receiving them (early in a push). Later, each target waits for a
    source of its own, which comes free sooner than a shared one would finish."""
    running = busy or {}
    load = {n: running.get(n, 0) for n in sorted(holders) if n not in unavailable}
    waiting = [t for t in missing if t not in unavailable]
    limit = per_source if len(waiting) > len(load) + sum(running.values()) else 1
    wave: list[tuple[str, str]] = []
    for target in waiting:
        if not load:
            break
        if target in load:  # it holds the bytes elsewhere: it serves itself
            source = target
            if load[source] >= limit:
                continue
        else:
            source = min(load, key=lambda n: (load[n], n))
            if load[source] >= limit:
                break  # the least-loaded source is full: so are all the others
        load[source] += 1
        wave.append((source, target))
    return wave
