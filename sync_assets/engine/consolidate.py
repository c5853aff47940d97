"""Consolidation on a primary durable node: the part games and Elo share.

Both keep raw snapshots on durable nodes and derive one file from them with a program
run where that file is (games: `merge.py` into a canonical DB; Elo: the `matches.py`
union into `fleet_matches.db`), so the bytes never pass through the orchestrator. Both
choose the *primary* by one rule (`choose_primary`: a reachable durable node, the one
the domain prefers, else the first of the inventory), gather there what it lacks
(`stage`) and run their program over the copies handed back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import CopyItem, CopyResult, TransferError
from sync_assets.engine.replication import (
    ReplicationResult,
    confirm_holders,
    copy_recorded,
    node_names,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node


def choose_primary(
    fleet: Fleet, catalog: Catalog, prefer: Callable[[list[Node]], Node | None] | None = None
) -> Node:
    """The reachable durable node to consolidate on: the one `prefer` picks among them
    (a domain's rule, e.g. the holder of the current version), else the first of the
    inventory. An unreachable primary must not stall every consolidation."""
    down = unavailable_nodes(catalog)
    reachable = [n for n in fleet.durable_nodes if n.name not in down]
    if not reachable:
        raise TransferError(
            "no reachable durable node (storage/coordinator, not ephemeral) in the fleet"
        )
    return (prefer(reachable) if prefer is not None else None) or reachable[0]


@dataclass(frozen=True)
class StagedCopy:
    """A verified copy on the primary, for the domain's program to read."""

    sha256: str
    path: str
    origin_node: str
    name: str


@dataclass
class Staged:
    held: list[StagedCopy] = field(default_factory=list)  # on the primary, by sha256
    missing: dict[str, str] = field(default_factory=dict)  # sha256 → why it is not there
    moved: ReplicationResult = field(default_factory=ReplicationResult)


def stage(
    primary: Node,
    shas: Iterable[str],
    target_path: Callable[[pd.Series], str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> Staged:
    """Make sure `primary` holds a verified copy of each artifact, on disk: the copies
    the catalog says it has are looked at first (one command), the others are copied
    from a reachable verified holder (durable nodes first; the next holder when a copy
    fails), batched per source. Hands back the copies the primary holds and, for every
    artifact it still lacks, why."""
    staged = Staged()
    wanted = set(shas)
    if not wanted:
        return staged
    staged.moved = confirm_holders(wanted, fleet, catalog, transports, nodes=[primary.name])
    artifacts = catalog.artifacts_frame(shas=wanted).set_index("sha256")
    labels = {
        sha: f"{artifacts.at[sha, 'origin_node']}:{artifacts.at[sha, 'name']} ({sha[:16]})"
        for sha in wanted
    }
    verified = catalog.replicas_of(wanted, nodes=node_names(fleet.nodes))
    have = {r.sha256 for r in verified if r.node == primary.name}
    durable = node_names(fleet.durable_nodes)
    others = sorted(
        (r for r in verified if r.node != primary.name),
        key=lambda r: (r.node not in durable, r.node, r.path),
    )
    down = unavailable_nodes(catalog)
    holders: dict[str, list[tuple[str, str]]] = {}  # sha256 → reachable (node, path), in turn
    for sha in sorted(wanted - have):
        held_by = [(r.node, r.path) for r in others if r.sha256 == sha]
        up = [(node, path) for node, path in held_by if node not in down]
        if staged.moved.failures:  # the primary could not be looked at: nothing to build on
            staged.missing[sha] = f"{labels[sha]}: {primary.name} could not be looked at"
        elif not held_by:
            staged.missing[sha] = f"{labels[sha]}: no copy left anywhere to bring to {primary.name}"
            staged.moved.findings.append(staged.missing[sha])
        elif not up:
            nodes = ", ".join(sorted(node for node, _ in held_by))
            staged.missing[sha] = f"{labels[sha]}: held only by unreachable node(s) {nodes}"
        else:
            holders[sha] = up
    while holders:
        by_source: dict[str, list[CopyItem]] = {}
        for sha, turns in holders.items():
            source, path = turns.pop(0)
            target = target_path(artifacts.loc[sha].rename(sha))
            by_source.setdefault(source, []).append(CopyItem(path, target, sha))
        for source, items in sorted(by_source.items()):
            outcomes = copy_recorded(fleet.node(source), primary, items, catalog, transports)
            for item, outcome in zip(items, outcomes, strict=True):
                staged.moved.note(outcome)
                if isinstance(outcome, CopyResult):
                    staged.missing.pop(item.sha256, None)
                    del holders[item.sha256]
                    continue
                staged.missing[item.sha256] = (
                    f"{labels[item.sha256]}: copy to {primary.name} failed: {outcome}"
                )
                if not holders[item.sha256]:
                    del holders[item.sha256]
    here: dict[str, str] = {}  # sha256 → its first path on the primary
    for r in catalog.replicas_of(wanted, nodes=[primary.name]):
        here.setdefault(r.sha256, r.path)
    staged.held = [
        StagedCopy(sha, path, artifacts.at[sha, "origin_node"], artifacts.at[sha, "name"])
        for sha, path in sorted(here.items())
    ]
    return staged
