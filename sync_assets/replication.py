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
from resources.transport.base import CopyItem, CopyResult, NodeUnreachable, TransferError
from sync_assets.placement import DiskFloor, Plan, plan_fanout, plan_replication


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
    src: Node,
    dst: Node,
    items: list[CopyItem],
    catalog: Catalog,
    transports: Transports,
) -> list[CopyResult | TransferError]:
    """Copy a batch; each replica is recorded only after the target verified it, and
    every attempt, failed or not, lands in the transfer log. An unreachable node fails
    the whole batch and feeds its circuit breaker."""
    started = time.monotonic()
    try:
        results = transports.copy_many(src, dst, items)
    except NodeUnreachable as exc:
        catalog.record_node_result(exc.node, str(exc))
        results = [exc] * len(items)
    if any(isinstance(r, CopyResult) for r in results):
        for node in (src.name, dst.name):
            catalog.record_node_result(node, None)
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


def replicate(
    shas: Iterable[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    target_path: Callable[[pd.Series], str],
) -> ReplicationResult:
    """Bring the given artifacts up to policy; `target_path(artifact_row)` names the copy.

    Transfers go in risk order, batched per (source, target) pair. The database is
    asked first which of them are below policy: a fleet in order costs one query."""
    min_replicas = min_replicas_by_kind(fleet)
    wanted = set(shas) & catalog.below_policy(min_replicas)
    if not wanted:
        return ReplicationResult()
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
        min_replicas=min_replicas,
        floor=DiskFloor(policy.disk.max_target_use, policy.disk.min_free_gb),
        unavailable=unavailable_nodes(nodes, catalog.open_breakers()),
    )
    result = ReplicationResult(blocked=plan.blocked)
    by_sha = artifacts.set_index("sha256")
    usable = replicas[replicas["state"].isin(["verified", "staging"])]
    source_paths = usable.drop_duplicates(["sha256", "node"]).set_index(["sha256", "node"])["path"]
    down: set[str] = set()  # unreachable this pass: not tried again until the next one
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
        for outcome in copy_recorded(
            fleet.node(source), fleet.node(target), items, catalog, transports
        ):
            if isinstance(outcome, CopyResult):
                result.count(outcome)
            else:
                result.failures.append(str(outcome))
                if isinstance(outcome, NodeUnreachable):
                    down.add(outcome.node)
    return result


def distribute(
    sha256: str,
    path: str,
    targets: list[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> ReplicationResult:
    """Put one artifact at `path` on every target node, fanned out in waves; nodes that
    received it serve the next wave. Copies are verified and recorded like any other."""
    replicas = catalog.replicas_frame()
    usable = replicas[
        (replicas["sha256"] == sha256) & replicas["state"].isin(["verified", "staging"])
    ]
    source_path = dict(zip(usable["node"], usable["path"], strict=False))
    done = set(usable.loc[usable["path"] == path, "node"])
    nodes = catalog.nodes_frame()
    waves = plan_fanout(
        set(source_path),
        [t for t in targets if t not in done],
        per_source=fleet.policy.transfers_per_node,
        unavailable=unavailable_nodes(nodes, catalog.open_breakers()),
    )
    result = ReplicationResult()
    for wave in waves:
        for source, target in wave:
            [outcome] = copy_recorded(
                fleet.node(source),
                fleet.node(target),
                [CopyItem(source_path[source], path, sha256)],
                catalog,
                transports,
            )
            if isinstance(outcome, CopyResult):
                result.count(outcome)
                source_path.setdefault(target, path)
            else:
                result.failures.append(str(outcome))
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
