"""Merge collected snapshots into `games/canonical_{config}.db` on a durable node.

The merge itself (`merge.py`, standard library only) runs *on* the durable node that
holds the canonical DB — shipped over the transport as `python3 - ARGS` — so bytes
never travel through the orchestrator. Only snapshots not merged before are merged
(catalog `merges`); the result is hashed, registered as the config's canonical alias
and replicated to the other durable nodes. One writer per config: a catalog lease.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from resources.catalog import Catalog
from resources.inventory import Fleet, Node
from resources.transport import Transports, python_for, sqlite_snapshot
from resources.transport.base import CopyItem, CopyResult, TransferError
from sync_assets.games import merge as merge_module
from sync_assets.games.collect import SNAPSHOT_KIND, collected_path
from sync_assets.replication import ReplicationResult, copy_recorded, replicate

CANONICAL_KIND = "games_canonical"
MERGE_SOURCE = Path(merge_module.__file__).read_bytes()
SNAPSHOT_SOURCE = Path(sqlite_snapshot.__file__).read_bytes()


def canonical_path(config: str) -> str:
    return f"games/canonical_{config}.db"


@dataclass
class CanonicalResult:
    config: str
    primary: str | None = None
    snapshots_merged: int = 0
    totals: dict[str, Any] = field(default_factory=dict)  # merge.py's totals
    sha256: str | None = None
    size: int = 0
    moved: ReplicationResult = field(default_factory=ReplicationResult)
    integrity_problems: list[str] = field(default_factory=list)
    durable_copies: int = 0


def _choose_primary(fleet: Fleet, replicas: pd.DataFrame, current: str | None) -> Node:
    """The durable node holding the current canonical DB; else the one with most snapshots."""
    durable = {n.name: n for n in fleet.durable_nodes}
    if not durable:
        raise TransferError("no durable node (storage/coordinator, not ephemeral) in the fleet")
    verified = replicas[replicas["state"] == "verified"]
    if current is not None:
        holders = verified[(verified["sha256"] == current) & verified["node"].isin(durable)]
        if not holders.empty:
            return durable[sorted(holders["node"])[0]]
    counts = verified[verified["node"].isin(durable)].groupby("node").size()
    if counts.empty:
        return next(iter(durable.values()))
    best = counts.sort_values(ascending=False, kind="stable")
    return durable[best.index[0]]


def merge_canonical(
    config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> CanonicalResult:
    """Merge the not-yet-merged snapshots holding `config` and replicate the result."""
    result = CanonicalResult(config=config)
    catalog.sync_nodes(fleet.nodes)
    with catalog.lease(f"games/canonical/{config}"):
        replicas = catalog.replicas_frame()
        current = catalog.alias(CANONICAL_KIND, config)
        primary = _choose_primary(fleet, replicas, current)
        result.primary = primary.name
        on_primary = replicas[
            (replicas["node"] == primary.name) & (replicas["state"] == "verified")
        ]
        # A canonical DB we cannot find verified anywhere: merge everything again into
        # what the primary has (the merge is idempotent, so nothing doubles).
        merged = catalog.merged_snapshots(config) if current in set(on_primary["sha256"]) else set()

        snaps = catalog.artifacts_frame([SNAPSHOT_KIND])
        durable_names = {n.name for n in fleet.durable_nodes}
        collected = replicas[
            (replicas["state"] == "verified") & replicas["node"].isin(durable_names)
        ]
        todo = snaps[
            (snaps["config"].isna() | (snaps["config"] == config))
            & ~snaps["sha256"].isin(merged)
            & snaps["sha256"].isin(collected["sha256"])
        ].sort_values(["created_at", "sha256"])

        if not todo.empty:
            _stage_on_primary(todo, primary, fleet, catalog, transports, result.moved)
            replicas = catalog.replicas_frame()
            here = replicas[(replicas["node"] == primary.name) & (replicas["state"] == "verified")]
            paths = here.drop_duplicates("sha256").set_index("sha256")["path"]
            todo = todo[todo["sha256"].isin(paths.index)]
            labels = {
                f"{a.origin_node}:{a.name}@{a.sha256[:12]}": a.sha256
                for a in todo.itertuples(index=False)
            }
            args = [f"{paths[sha]}={label}" for label, sha in labels.items()]
            try:
                stats = _run_merge(primary, config, args, transports)
            except MergeFailed as failed:
                # Each snapshot merges in its own transaction: keep what was committed.
                for per in failed.completed:
                    catalog.record_merge(config, labels[per["label"]], per)
                raise
            for per in stats["snapshots"]:
                catalog.record_merge(config, labels[per["label"]], per)
            result.snapshots_merged = len(labels)
            result.totals = stats["totals"]

        transport = transports.for_node(primary)
        target = canonical_path(config)
        if transport.stat(primary, target) is not None:
            result.integrity_problems = _check_integrity(primary, target, transports)
            if result.integrity_problems:
                # A damaged corpus must not replace good copies elsewhere.
                return result
            sha = transport.sha256(primary, target)
            size = transport.stat(primary, target).size  # type: ignore[union-attr]
            catalog.add_artifact(
                sha,
                kind=CANONICAL_KIND,
                config=config,
                name=target,
                size=size,
                origin_node=primary.name,
            )
            catalog.record_replica(sha, primary.name, target, size)
            catalog.set_alias(CANONICAL_KIND, config, sha)
            result.sha256, result.size = sha, size
            result.moved.add(replicate([sha], fleet, catalog, transports, lambda _art: target))
            copies = catalog.replicas_frame([CANONICAL_KIND])
            result.durable_copies = int(
                copies[(copies["sha256"] == sha) & copies["node"].isin(durable_names)][
                    "node"
                ].nunique()
            )
    return result


def _stage_on_primary(
    todo: pd.DataFrame,
    primary: Node,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    moved: ReplicationResult,
) -> None:
    """Copy snapshots the primary lacks onto it (durable node to durable node)."""
    replicas = catalog.replicas_frame([SNAPSHOT_KIND])
    verified = replicas[replicas["state"] == "verified"]
    by_source: dict[str, list[CopyItem]] = {}
    for sha, row in todo.set_index("sha256").iterrows():
        holders = verified[verified["sha256"] == sha]
        if holders.empty or (holders["node"] == primary.name).any():
            continue
        source = holders.iloc[0]
        by_source.setdefault(source["node"], []).append(
            CopyItem(source["path"], collected_path(row.rename(sha)), str(sha))
        )
    for source_name, items in by_source.items():
        for outcome in copy_recorded(fleet.node(source_name), primary, items, catalog, transports):
            if isinstance(outcome, CopyResult):
                moved.count(outcome)
            else:
                moved.failures.append(str(outcome))


def _check_integrity(node: Node, path: str, transports: Transports) -> list[str]:
    """SQLite integrity of a DB on its node, checked there (the file never travels)."""
    argv = [python_for(node), "-", "check", path]
    done = transports.for_node(node).exec(node, argv, stdin=SNAPSHOT_SOURCE, timeout=6 * 3600)
    try:
        problems: list[str] = json.loads(done.stdout)["problems"]
    except (ValueError, KeyError, TypeError):
        problems = [f"check failed: {done.stderr.decode(errors='replace').strip()[-500:]}"]
    return problems


def _run_merge(
    primary: Node, config: str, args: list[str], transports: Transports
) -> dict[str, Any]:
    """Run merge.py on the primary; its JSON names the snapshots merged even on failure."""
    argv = [python_for(primary), "-", canonical_path(config), config, *args]
    done = transports.for_node(primary).exec(primary, argv, stdin=MERGE_SOURCE, timeout=6 * 3600)
    try:
        stats: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        stats = {}
    if done.returncode != 0:
        raise MergeFailed(
            f"node {primary.name}: merge into {canonical_path(config)} failed "
            f"(exit {done.returncode}): "
            f"{stats.get('error') or done.stderr.decode(errors='replace').strip()[-2000:]}",
            completed=stats.get("snapshots", []),
        )
    return stats


class MergeFailed(TransferError):
    """The merge stopped; `completed` lists the snapshots committed before it did."""

    def __init__(self, message: str, completed: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.completed = completed
