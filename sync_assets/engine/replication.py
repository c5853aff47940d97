"""Execute a replication plan: verified copies, each recorded in the catalog.

Shared by every domain that keeps N copies of an artifact (game snapshots, canonical
DBs; later shards and models). No Dagster here: assets call it and report the result.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog, NodeState, Replica
from resources.transport import Transports
from resources.transport.base import (
    ChecksumMismatch,
    CopyItem,
    CopyResult,
    NodeUnreachable,
    TransferError,
)
from sync_assets.engine import breaker
from sync_assets.engine.audit import AUDITED_STATES, AuditedReplica, confirm_replicas
from sync_assets.engine.placement import DiskFloor, Plan, fanout_wave, plan_replication
from sync_assets.engine.probe import probe_and_record
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.kinds import min_replicas_by_kind


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
    # Nodes whose recorded copies were looked at on disk, and those that could not be.
    confirmed_nodes: set[str] = field(default_factory=set)
    unconfirmed_nodes: set[str] = field(default_factory=set)
    blocked: pd.DataFrame = field(default_factory=pd.DataFrame)

    def add(self, other: ReplicationResult) -> None:
        self.copies += other.copies
        self.bytes_moved += other.bytes_moved
        self.seconds += other.seconds
        self.failures += other.failures
        self.findings += other.findings
        self.confirmed_nodes |= other.confirmed_nodes
        self.unconfirmed_nodes |= other.unconfirmed_nodes
        self.blocked = pd.concat([self.blocked, other.blocked], ignore_index=True)

    def note(self, outcome: CopyResult | TransferError) -> None:
        """Count a copy, or file its error as a finding (source gone) or a failure."""
        if isinstance(outcome, CopyResult):
            self.copies += 1
            self.bytes_moved += outcome.bytes_moved
            self.seconds += outcome.seconds
        elif isinstance(outcome, SourceGone):
            self.findings.append(str(outcome))
        else:
            self.failures.append(str(outcome))


def unavailable_nodes(catalog: Catalog) -> frozenset[str]:
    """Nodes not to use as source or target: found unreachable, or breaker open."""
    return catalog.unreachable_nodes() | breaker.open_nodes(catalog)


def node_names(nodes: Iterable[Node]) -> set[str]:
    return {n.name for n in nodes}


def counted_durable_nodes(fleet: Fleet, catalog: Catalog) -> set[str]:
    """The durable nodes whose verified copies count toward policy: the inventory's,
    less those the node lifecycle declared lost. Every count of durable copies uses it."""
    return node_names(fleet.durable_nodes) - catalog.uncounted_nodes()


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
        breaker.record(catalog, exc.node, str(exc))
        results = [exc] * len(items)
    if any(isinstance(r, CopyResult) for r in results):
        for node in (src.name, dst.name):
            breaker.record(catalog, node, None)
    results = _confirm_sources(src, items, results, catalog, transports)
    for item, outcome in zip(items, results, strict=True):
        if isinstance(outcome, CopyResult):
            catalog.record_replica(item.sha256, dst.name, item.dst_path, outcome.size)
            moved, seconds, error = outcome.bytes_moved, outcome.seconds, None
        else:
            moved, seconds, error = 0, time.monotonic() - started, str(outcome)
        catalog.record_transfer(
            item.sha256, src.name, dst.name, item.dst_path,
            bytes_moved=moved, seconds=seconds, error=error,
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
    names = node_names(fleet.durable_nodes) if nodes is None else set(nodes)
    held = catalog.replicas_of(shas, nodes=names - unavailable_nodes(catalog))
    _confirm_on_disk(held, fleet, catalog, transports, result)
    return result


def _confirm_on_disk(
    rows: Iterable[Replica],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    result: ReplicationResult,
) -> set[tuple[str, str, str]]:
    """Look at these catalog replicas (node, sha256, path, size) on disk, one command per
    node; drop the wrong ones and note each as a finding. Returns (node, sha256, path) of
    those dropped. A node that cannot be looked at is a failure; its rows stay."""
    dropped: set[tuple[str, str, str]] = set()
    by_node: dict[str, list[AuditedReplica]] = {}
    for c in rows:
        by_node.setdefault(c.node, []).append(AuditedReplica(c.sha256, c.path, c.size, None))
    for holder, recorded in sorted(by_node.items()):
        node = fleet.node(holder)
        try:
            lost = confirm_replicas(node, catalog, transports.for_node(node), recorded)
        except TransferError as exc:
            result.failures.append(str(exc))
            result.unconfirmed_nodes.add(holder)
            continue
        result.confirmed_nodes.add(holder)
        for r in lost:
            result.findings.append(
                f"node {holder}: {r.path}: recorded copy of {r.sha256[:16]} not on disk; "
                "dropped from the catalog"
            )
            dropped.add((holder, r.sha256, r.path))
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
        wanted = pending & catalog.below_policy(min_replicas, counted_durable_nodes(fleet, catalog))
        if not wanted:
            break
        pending = _replicate_once(
            wanted, min_replicas, fleet, catalog, transports, target_path, result
        )
        if not pending:
            break
    return result


def _planning_nodes(fleet: Fleet, catalog: Catalog, transports: Transports) -> pd.DataFrame:
    """The planner's node table: the inventory's nodes (lifecycle state) with the disk
    space their last probe saw. Durable nodes whose free space was never seen are probed first:
    unknown space is not room, so the planner would give them nothing."""
    durable = node_names(fleet.durable_nodes)
    space = catalog.disk_space(durable)
    unknown = {n for n in durable if space.get(n, (None, None))[1] is None}
    for name in sorted(unknown - unavailable_nodes(catalog)):
        probe_and_record(fleet.node(name), fleet, catalog, transports)
    if unknown:
        space = catalog.disk_space(durable)
    columns = ["name", "durable", "ephemeral", "state", "disk_total_bytes", "disk_free_bytes"]
    states = {name: state for name, (state, _) in catalog.node_lifecycle().items()}
    rows = [
        (n.name, n.durable, n.ephemeral, states.get(n.name, NodeState.ACTIVE),
         *space.get(n.name, (None, None)))
        for n in fleet.nodes
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).astype(
        {"disk_total_bytes": float, "disk_free_bytes": float}
    )


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
    artifacts = catalog.artifacts_frame(shas=wanted)
    if artifacts.empty:
        return set()
    replicas = catalog.replicas_frame(shas=wanted)
    nodes = _planning_nodes(fleet, catalog, transports)
    policy = fleet.policy
    plan: Plan = plan_replication(
        artifacts,
        replicas,
        nodes,
        min_replicas=min_replicas,
        floor=DiskFloor(policy.disk.max_target_use, policy.disk.min_free_gb),
        unavailable=unavailable_nodes(catalog),
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


# Copies of one `distribute` running at once: each thread only waits on its nodes, and the
# bound keeps a push to a thousand nodes from opening a thousand sessions at once.
MAX_PARALLEL_COPIES = 32


def distribute(
    sha256: str,
    path: str,
    targets: list[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> ReplicationResult:
    """Put one artifact at `path` on every target node, fanned out as a tree; nodes that
    received it serve the next ones. Copies are verified and recorded like any other.

    A target the catalog says already holds it is looked at first (a "nothing to do" is
    confirmed on disk, not taken on the catalog's word). Copies run concurrently, each
    source serving at most `policy.transfers_per_node` at once, and pipelined: as soon as
    one copy ends, the next ones are planned from the copies that exist then (on capped
    links a fan-out costs about log2(nodes) copy times, not one per node). A target whose
    copy failed never serves, and a source found gone is dropped and its target served
    by another holder."""
    result = ReplicationResult()
    # Departed nodes serve nothing.
    mine = catalog.replicas_of([sha256], AUDITED_STATES, node_names(fleet.nodes))
    claimed = [r for r in mine if r.path == path and r.node in targets]
    gone = {node for node, _, _ in _confirm_on_disk(claimed, fleet, catalog, transports, result)}
    mine = [r for r in mine if not (r.path == path and r.node in gone)]
    # Every path each holder has it at, `path` itself first (the copy just confirmed).
    source_paths: dict[str, list[str]] = {}
    for r in sorted(mine, key=lambda r: (r.path != path, r.node)):
        source_paths.setdefault(r.node, []).append(r.path)
    done = {r.node for r in mine if r.path == path}
    missing = [t for t in targets if t not in done]
    unavailable = unavailable_nodes(catalog)
    # future -> (source, the source's path it reads, target)
    running: dict[Future[list[CopyResult | TransferError]], tuple[str, str, str]] = {}
    with ThreadPoolExecutor(max(1, min(MAX_PARALLEL_COPIES, len(missing)))) as pool:
        while True:
            in_flight = {target for _, _, target in running.values()}
            wave = fanout_wave(
                set(source_paths),
                [t for t in missing if t not in in_flight],
                fleet.policy.transfers_per_node,
                unavailable,
                busy=Counter(source for source, _, _ in running.values()),
            )
            for source, target in wave:
                item = CopyItem(source_paths[source][0], path, sha256)
                future = pool.submit(
                    copy_recorded,
                    fleet.node(source), fleet.node(target), [item], catalog, transports,
                )  # fmt: skip
                running[future] = (source, item.src_path, target)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f][2]):  # noted in order
                source, source_path, target = running.pop(future)
                [outcome] = future.result()
                if _dropped_meanwhile(outcome, sha256, source, source_path, catalog):
                    outcome = SourceGone(f"{outcome}; a copy beside it found the source gone")
                result.note(outcome)
                if isinstance(outcome, SourceGone):
                    # The target stays missing: another path or holder serves it next.
                    paths = source_paths.get(source, [])
                    if source_path in paths:  # copies running from it may find it gone too
                        paths.remove(source_path)
                    if not paths:
                        source_paths.pop(source, None)
                    continue
                missing.remove(target)
                if isinstance(outcome, CopyResult):
                    source_paths.setdefault(target, [path])
    if missing and not set(source_paths) - unavailable:
        result.findings.append(
            f"{sha256[:16]}: no copy left to copy from; not placed on {', '.join(sorted(missing))}"
        )
    return result


def _dropped_meanwhile(
    outcome: CopyResult | TransferError, sha256: str, source: str, path: str, catalog: Catalog
) -> bool:
    """A failed copy whose source replica is no longer recorded: a copy running beside it
    from the same file found it gone and dropped it first, so this one's look at the
    source found no row to judge. Its target is served from another copy, like theirs."""
    if not isinstance(outcome, TransferError) or isinstance(outcome, SourceGone | NodeUnreachable):
        return False
    held = catalog.replicas_of([sha256], AUDITED_STATES, [source])
    return not any(r.path == path for r in held)
