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
from resources.inventory import Fleet, Node
from resources.transport import Transports
from resources.transport.base import CopyResult, NodeUnreachable, TransferError
from sync_assets.placement import DiskFloor, Plan, plan_replication


@dataclass
class ReplicationResult:
    copies: int = 0
    bytes_moved: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
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
        self.blocked = pd.concat([self.blocked, other.blocked], ignore_index=True)


def unavailable_nodes(nodes: pd.DataFrame, open_breakers: frozenset[str]) -> frozenset[str]:
    """Nodes not to use as source or target: found unreachable, or breaker open."""
    down = nodes[nodes["reachable"].eq(False)]
    return frozenset(down["name"]) | open_breakers


def copy_recorded(
    sha256: str,
    src: Node,
    src_path: str,
    dst: Node,
    dst_path: str,
    catalog: Catalog,
    transports: Transports,
) -> CopyResult:
    """One verified copy; the replica is recorded only after the target verified it,
    and every attempt, failed or not, lands in the transfer log."""
    started = time.monotonic()
    try:
        copied = transports.copy(src, src_path, dst, dst_path, sha256)
    except NodeUnreachable as exc:
        catalog.record_node_result(exc.node, str(exc))
        catalog.record_transfer(
            sha256, src.name, dst.name, dst_path,
            bytes_moved=0, seconds=time.monotonic() - started, error=str(exc),
        )  # fmt: skip
        raise
    except TransferError as exc:
        catalog.record_transfer(
            sha256,
            src.name,
            dst.name,
            dst_path,
            bytes_moved=0,
            seconds=time.monotonic() - started,
            error=str(exc),
        )
        raise
    for node in (src.name, dst.name):
        catalog.record_node_result(node, None)
    catalog.record_replica(sha256, dst.name, dst_path, copied.size)
    catalog.record_transfer(
        sha256,
        src.name,
        dst.name,
        dst_path,
        bytes_moved=copied.bytes_moved,
        seconds=copied.seconds,
    )
    return copied


def replicate(
    shas: Iterable[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    target_path: Callable[[pd.Series], str],
) -> ReplicationResult:
    """Bring the given artifacts up to policy; `target_path(artifact_row)` names the copy."""
    wanted = set(shas)
    artifacts = catalog.artifacts_frame()
    artifacts = artifacts[artifacts["sha256"].isin(wanted)]
    if artifacts.empty:
        return ReplicationResult()
    replicas = catalog.replicas_frame()
    nodes = catalog.nodes_frame()
    policy = fleet.policy
    plan: Plan = plan_replication(
        artifacts,
        replicas[replicas["sha256"].isin(wanted)],
        nodes,
        min_replicas=_min_replicas_by_kind(fleet),
        floor=DiskFloor(policy.disk.max_target_use, policy.disk.min_free_gb),
        unavailable=unavailable_nodes(nodes, catalog.open_breakers()),
    )
    result = ReplicationResult(blocked=plan.blocked)
    by_sha = artifacts.set_index("sha256")
    for move in plan.transfers.itertuples(index=False):
        art = by_sha.loc[move.sha256]
        source_path = replicas[
            (replicas["sha256"] == move.sha256)
            & (replicas["node"] == move.source)
            & replicas["state"].isin(["verified", "staging"])
        ]["path"].iloc[0]
        dst_path = target_path(art.rename(move.sha256))
        try:
            copied = copy_recorded(
                move.sha256,
                fleet.node(move.source),
                source_path,
                fleet.node(move.target),
                dst_path,
                catalog,
                transports,
            )
        except TransferError as exc:
            result.failures.append(str(exc))
            continue
        result.count(copied)
    return result


# Artifact kinds → the policy field that says how many durable copies they need.
_POLICY_FIELD_OF_KIND = {
    "games_snapshot": "games",
    "games_canonical": "games",
}


def _min_replicas_by_kind(fleet: Fleet) -> dict[str, int]:
    mins = fleet.policy.min_replicas
    return {kind: getattr(mins, name) for kind, name in _POLICY_FIELD_OF_KIND.items()}
