"""Execute a replication plan: verified copies, each recorded in the catalog.

Shared by every domain that keeps N copies of an artifact (game snapshots, canonical
DBs; later shards and models). No Dagster here: assets call it and report the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import (
    ChecksumMismatch,
    CopyItem,
    CopyResult,
    NodeUnreachable,
    TransferError,
)
from sync_assets.engine.audit import AUDITED_STATES, AuditedReplica, confirm_replicas
from sync_assets.engine.placement import DiskFloor, Plan, fanout_wave, plan_replication
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.fleet.probe import probe_and_record


class SourceGone(TransferError):
    """A copy failed and its source, looked at again, is not what the catalog recorded
    (gone, resized, or other bytes): that replica was dropped from the catalog. A finding
    the planner repairs from another copy, not a failed transfer."""


@dataclass
class ReplicationResult:
    copies: int = 0
    bytes_moved: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    # Catalog replicas found wrong on disk and dropped (the disk's word beats the catalog's).
    findings: list[str] = field(default_factory=list)
    # Nodes whose recorded copies could not be looked at (their word is unconfirmed).
    unconfirmed_nodes: set[str] = field(default_factory=set)
    blocked: pd.DataFrame = field(default_factory=pd.DataFrame)

    def count(self, copied: CopyResult) -> None:
        self.copies += 1
        self.bytes_moved += copied.bytes_moved
        self.seconds += copied.seconds

    def add(self, other: ReplicationResult) -> None:
        self.copies += other.copies
        self.bytes_moved += other.bytes_moved
        self.seconds += other.seconds
        self.failures += other.failures
        self.findings += other.findings
        self.unconfirmed_nodes |= other.unconfirmed_nodes
        self.blocked = pd.concat([self.blocked, other.blocked], ignore_index=True)

    def note(self, outcome: CopyResult | TransferError) -> None:
        """Count a copy, or file its error as a finding (source gone) or a failure."""
        if isinstance(outcome, CopyResult):
            self.count(outcome)
        elif isinstance(outcome, SourceGone):
            self.findings.append(str(outcome))
        else:
            self.failures.append(str(outcome))


def unavailable_nodes(nodes: pd.DataFrame, open_breakers: frozenset[str]) -> frozenset[str]:
    """Nodes not to use as source or target: found unreachable, or breaker open."""
    down = nodes[nodes["reachable"].eq(False)]
    return frozenset(down["name"]) | open_breakers


def copy_recorded(
    src: Node,
    dst: Node,
    items: list[CopyItem],
    catalog: Catalog,
    transports: Transports,
) -> list[CopyResult | TransferError]:
    """Copy a batch; each replica is recorded only after the target verified it, and
    every attempt, failed or not, lands in the transfer log. An unreachable node fails
    the whole batch and feeds its circuit breaker. The source of every other failed
    copy is looked at once more: if it is not what the catalog recorded, its replica is
    dropped and the outcome is `SourceGone`, so callers copy from elsewhere."""
    started = time.monotonic()
    try:
        results = transports.copy_many(src, dst, items)
    except NodeUnreachable as exc:
        catalog.record_node_result(exc.node, str(exc))
        results = [exc] * len(items)
    if any(isinstance(r, CopyResult) for r in results):
        for node in (src.name, dst.name):
            catalog.record_node_result(node, None)
    results = _confirm_sources(src, items, results, catalog, transports)
    for item, outcome in zip(items, results, strict=True):
        if isinstance(outcome, CopyResult):
            catalog.record_replica(item.sha256, dst.name, item.dst_path, outcome.size)
            catalog.record_transfer(
                item.sha256, src.name, dst.name, item.dst_path,
                bytes_moved=outcome.bytes_moved, seconds=outcome.seconds,
            )  # fmt: skip
        else:
            catalog.record_transfer(
                item.sha256, src.name, dst.name, item.dst_path,
                bytes_moved=0, seconds=time.monotonic() - started, error=str(outcome),
            )  # fmt: skip
    return results


def _confirm_sources(
    src: Node,
    items: list[CopyItem],
    results: list[CopyResult | TransferError],
    catalog: Catalog,
    transports: Transports,
) -> list[CopyResult | TransferError]:
    """Turn failures whose source is not there (or not those bytes) into `SourceGone`,
    dropping the wrong replica. Sizes are checked for all of them in one command; a
    checksum mismatch with the right size re-hashes the source on its node."""
    failed = [
        (i, item)
        for i, (item, outcome) in enumerate(zip(items, results, strict=True))
        if isinstance(outcome, TransferError) and not isinstance(outcome, NodeUnreachable)
    ]
    if not failed:
        return results
    transport = transports.for_node(src)
    wanted = {(item.sha256, item.src_path) for _, item in failed}
    paths = sorted({path for _, path in wanted})
    recorded = [
        AuditedReplica(sha, path, size, None)
        for sha, path, size, _ in catalog.replicas_on_node(src.name, AUDITED_STATES, paths)
        if (sha, path) in wanted
    ]
    try:
        gone = {(r.sha256, r.path) for r in confirm_replicas(src, catalog, transport, recorded)}
        for i, item in failed:
            if (item.sha256, item.src_path) in gone or not isinstance(results[i], ChecksumMismatch):
                continue
            if transport.sha256(src, item.src_path) != item.sha256:  # same size, other bytes
                catalog.drop_replicas(src.name, [(item.sha256, item.src_path)])
                gone.add((item.sha256, item.src_path))
    except TransferError:
        return results  # could not look: keep the original errors, drop nothing
    out = list(results)
    for i, item in failed:
        if (item.sha256, item.src_path) in gone:
            out[i] = SourceGone(
                f"node {src.name}: {item.src_path}: source of {item.sha256[:16]} is not on "
                f"disk as recorded ({results[i]}); replica dropped from the catalog"
            )
    return out


def confirm_holders(
    shas: Iterable[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    nodes: Iterable[str] | None = None,
) -> ReplicationResult:
    """Look at the verified copies of these artifacts (on `nodes`, default: the durable
    ones) on disk, one command per node, no hashing; drop the ones that are gone or
    resized. Called before a decision that takes the catalog's word that copies exist
    (skip an export, release a staging copy, count a version as replicated). An
    unreachable node is a failure, not a loss: its copies stay."""
    result = ReplicationResult()
    wanted = set(shas)
    names = {n.name for n in fleet.durable_nodes} if nodes is None else set(nodes)
    names -= unavailable_nodes(catalog.nodes_frame(), catalog.open_breakers())
    replicas = catalog.replicas_frame()
    held = replicas[
        replicas["sha256"].isin(wanted)
        & replicas["node"].isin(names)
        & (replicas["state"] == "verified")
    ]
    _confirm_on_disk(held, fleet, catalog, transports, result)
    return result


def _confirm_on_disk(
    rows: pd.DataFrame,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    result: ReplicationResult,
) -> set[tuple[str, str, str]]:
    """Look at these catalog replicas (node, sha256, path, size) on disk, one command per
    node; drop the wrong ones and note each as a finding. Returns (node, sha256, path) of
    those dropped. A node that cannot be looked at is a failure; its rows stay."""
    dropped: set[tuple[str, str, str]] = set()
    for holder, group in rows.groupby("node"):
        recorded = [
            AuditedReplica(sha, path, int(size), None)
            for sha, path, size in group[["sha256", "path", "size"]].itertuples(index=False)
        ]
        node = fleet.node(str(holder))
        try:
            lost = confirm_replicas(node, catalog, transports.for_node(node), recorded)
        except TransferError as exc:
            result.failures.append(str(exc))
            result.unconfirmed_nodes.add(str(holder))
            continue
        for r in lost:
            result.findings.append(
                f"node {holder}: {r.path}: recorded copy of {r.sha256[:16]} not on disk; "
                "dropped from the catalog"
            )
            dropped.add((str(holder), r.sha256, r.path))
    return dropped


MAX_REPLAN_ROUNDS = 3


def replicate(
    shas: Iterable[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    target_path: Callable[[pd.Series], str],
) -> ReplicationResult:
    """Bring the given artifacts up to policy; `target_path(artifact_row)` names the copy.

    Transfers go in risk order, batched per (source, target) pair. The database is
    asked first which of them are below policy: a fleet in order costs one query.
    Artifacts whose source turned out to be gone are planned again (from another copy,
    or reported as blocked when none is left), at most `MAX_REPLAN_ROUNDS` times."""
    min_replicas = min_replicas_by_kind(fleet)
    result = ReplicationResult()
    pending = set(shas)
    for _ in range(MAX_REPLAN_ROUNDS):
        wanted = pending & catalog.below_policy(min_replicas)
        if not wanted:
            break
        pending = _replicate_once(
            wanted, min_replicas, fleet, catalog, transports, target_path, result
        )
        if not pending:
            break
    return result


def _probe_unknown_targets(fleet: Fleet, catalog: Catalog, transports: Transports) -> pd.DataFrame:
    """The nodes frame, after probing the durable nodes whose free space was never seen:
    unknown space is not room, so the planner would give them nothing."""
    nodes = catalog.nodes_frame()
    durable = {n.name for n in fleet.durable_nodes}
    unknown = nodes[nodes["name"].isin(durable) & nodes["disk_free_bytes"].isna()]
    down = unavailable_nodes(nodes, catalog.open_breakers())
    for name in sorted(set(unknown["name"]) - down):
        probe_and_record(fleet.node(name), catalog, transports)
    return catalog.nodes_frame() if not unknown.empty else nodes


def _replicate_once(
    wanted: set[str],
    min_replicas: dict[str, int],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    target_path: Callable[[pd.Series], str],
    result: ReplicationResult,
) -> set[str]:
    """One plan, executed; returns the artifacts whose source was gone (to plan again)."""
    artifacts = catalog.artifacts_frame()
    artifacts = artifacts[artifacts["sha256"].isin(wanted)]
    if artifacts.empty:
        return set()
    replicas = catalog.replicas_frame()
    nodes = _probe_unknown_targets(fleet, catalog, transports)
    policy = fleet.policy
    plan: Plan = plan_replication(
        artifacts,
        replicas[replicas["sha256"].isin(wanted)],
        nodes,
        min_replicas=min_replicas,
        floor=DiskFloor(policy.disk.max_target_use, policy.disk.min_free_gb),
        unavailable=unavailable_nodes(nodes, catalog.open_breakers()),
    )
    result.blocked = plan.blocked  # the last plan's view: earlier rounds' are superseded
    by_sha = artifacts.set_index("sha256")
    usable = replicas[replicas["state"].isin(AUDITED_STATES)]
    source_paths = usable.drop_duplicates(["sha256", "node"]).set_index(["sha256", "node"])["path"]
    down: set[str] = set()  # unreachable this pass: not tried again until the next one
    again: set[str] = set()
    for (source, target), moves in plan.transfers.groupby(["source", "target"], sort=False):
        if down & {source, target}:
            unreachable = ", ".join(f"node {n}" for n in sorted(down & {source, target}))
            result.failures.append(
                f"copy {source} -> {target}: {len(moves)} file(s) not tried: "
                f"{unreachable} unreachable in this pass"
            )
            continue
        items = [
            CopyItem(source_paths[(sha, source)], target_path(by_sha.loc[sha].rename(sha)), sha)
            for sha in moves["sha256"]
        ]
        outcomes = copy_recorded(fleet.node(source), fleet.node(target), items, catalog, transports)
        for item, outcome in zip(items, outcomes, strict=True):
            result.note(outcome)
            if isinstance(outcome, SourceGone):
                again.add(item.sha256)
            elif isinstance(outcome, NodeUnreachable):
                down.add(outcome.node)
    return again


def distribute(
    sha256: str,
    path: str,
    targets: list[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> ReplicationResult:
    """Put one artifact at `path` on every target node, fanned out in waves; nodes that
    received it serve the next wave. Copies are verified and recorded like any other.

    A target the catalog says already holds it is looked at first (a "nothing to do" is
    confirmed on disk, not taken on the catalog's word). Each wave is planned from the
    copies that exist now: a target whose copy failed never serves, and a source found
    gone is dropped and its target served by another holder."""
    result = ReplicationResult()
    replicas = catalog.replicas_frame()
    mine = replicas[
        (replicas["sha256"] == sha256)
        & replicas["state"].isin(AUDITED_STATES)
        & replicas["node"].isin([n.name for n in fleet.nodes])  # departed nodes serve nothing
    ]
    claimed = mine[(mine["path"] == path) & mine["node"].isin(targets)]
    gone = {node for node, _, _ in _confirm_on_disk(claimed, fleet, catalog, transports, result)}
    mine = mine[~((mine["path"] == path) & mine["node"].isin(gone))]
    # Every path each holder has it at, `path` itself first (the copy just confirmed).
    ordered = mine.assign(here=mine["path"] != path).sort_values(["here", "node"])
    source_paths: dict[str, list[str]] = {}
    for holder, holder_path in ordered[["node", "path"]].itertuples(index=False):
        source_paths.setdefault(str(holder), []).append(str(holder_path))
    done = set(mine.loc[mine["path"] == path, "node"])
    missing = [t for t in targets if t not in done]
    unavailable = unavailable_nodes(catalog.nodes_frame(), catalog.open_breakers())
    while missing:
        wave = fanout_wave(set(source_paths), missing, fleet.policy.transfers_per_node, unavailable)
        if not wave:
            break
        for source, target in wave:
            if source not in source_paths:  # found gone earlier in this wave
                continue
            [outcome] = copy_recorded(
                fleet.node(source),
                fleet.node(target),
                [CopyItem(source_paths[source][0], path, sha256)],
                catalog,
                transports,
            )
            result.note(outcome)
            if isinstance(outcome, SourceGone):
                # The target stays missing: another path or holder serves it next wave.
                source_paths[source].pop(0)
                if not source_paths[source]:
                    del source_paths[source]
                continue
            missing.remove(target)
            if isinstance(outcome, CopyResult):
                source_paths.setdefault(target, [path])
    if missing and not set(source_paths) - unavailable:
        result.findings.append(
            f"{sha256[:16]}: no copy left to copy from; not placed on {', '.join(sorted(missing))}"
        )
    return result


# Artifact kinds → the policy field that says how many durable copies they need.
_POLICY_FIELD_OF_KIND = {
    "games_snapshot": "games",
    "games_canonical": "games",
    "npz": "npz",
    "model": "models",
    "elo_snapshot": "elo",
    "elo_ratings": "elo",
}


def min_replicas_by_kind(fleet: Fleet) -> dict[str, int]:
    """Durable copies each artifact kind needs, from the fleet's policy."""
    mins = fleet.policy.min_replicas
    return {kind: getattr(mins, name) for kind, name in _POLICY_FIELD_OF_KIND.items()}
