"""Current versions fanned out to the nodes that should hold them: the decision shared by
`model_promotion` (promoted models → GPU nodes), `shard_distribution` (shards → training
nodes) and `ratings_distribution` (the ratings DB → eval nodes).

A tick reads the catalog only: the current versions (aliases), their verified copies, the
nodes not to use. It requests, per version, runs for at most (holders × transfers_per_node)
of the nodes lacking it: nodes that received it serve the next tick, so the push is a tree,
never 100 copies from one source at once (LESSONS 2). One run per node places every version
it lacks (the asset does); its run key names those versions, so a later version is
requested again, and the hour, so a run that failed is requested again in the next hour. A
node whose run is still queued or running gets no second one.
"""

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.catalog import Catalog, ReplicaState
from sensors._common import IN_PROCESS, Tick, partitions_in_flight, retry_hour
from sensors.fleet_audit import checkable
from sync_assets.engine.replication import unavailable_nodes
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.partitions import NODES


@dataclass(frozen=True)
class Current:
    """The current version of one file and where it lies on the nodes that hold it."""

    key: str  # the config, or "fleet" for a fleet-wide file
    sha256: str
    path: str


def nodes_to_serve(
    current: Iterable[Current], replicas: pd.DataFrame, targets: Sequence[str], per_source: int
) -> dict[str, list[Current]]:
    """Node → the versions to place on it now: per version, the `targets` lacking a verified
    copy at its path, in target order, at most max(1, nodes holding it anywhere ×
    per_source) of them."""
    verified = replicas[replicas["state"] == ReplicaState.VERIFIED]
    todo: dict[str, list[Current]] = {}
    for version in sorted(current, key=lambda c: (c.key, c.sha256)):
        mine = verified[verified["sha256"] == version.sha256]
        placed = set(mine.loc[mine["path"] == version.path, "node"])
        capacity = max(1, len(set(mine["node"])) * per_source)
        lacking = [n for n in targets if n not in placed]
        for node in lacking[:capacity]:
            todo.setdefault(node, []).append(version)
    return todo


def run_key(prefix: str, node: str, versions: Iterable[Current], now: float) -> str:
    """Names the node, every version it is asked to hold, and the retry hour."""
    named = ",".join(sorted(f"{v.key}={v.sha256[:12]}" for v in versions))
    return f"{prefix}:{node}:{named}:{retry_hour(now)}"


def fan_out(
    context: dg.SensorEvaluationContext,
    fleet: Fleet,
    catalog: Catalog,
    current: list[Current],
    targets: Iterable[Node],
    job_name: str,
    prefix: str,
) -> Tick:
    """The sensor tick: runs of `job_name` for the targets that lack a current version and
    can take it now: a `nodes` partition, active (not suspect, lost or retired: the planner
    copies to none of them), last probed reachable, breaker closed."""
    if not current:
        return dg.SkipReason("no current version to place yet")
    partitions = set(context.instance.get_dynamic_partitions(NODES))
    states = {name: state for name, (state, _) in catalog.node_lifecycle().items()}
    names = checkable(
        [n.name for n in targets if n.name in partitions], states, unavailable_nodes(catalog)
    )
    todo = nodes_to_serve(
        current,
        catalog.replicas_frame(shas={c.sha256 for c in current}),
        names,
        fleet.policy.transfers_per_node,
    )
    busy = partitions_in_flight(context, job_name)
    now = time.time()
    requests = [
        dg.RunRequest(
            run_key=run_key(prefix, node, versions, now), partition_key=node, run_config=IN_PROCESS
        )
        for node, versions in sorted(todo.items())
        if node not in busy
    ]
    if not requests:
        return dg.SkipReason(
            f"{len(todo)} node(s) waiting on a run in flight"
            if todo
            else f"every usable target of {len(names)} holds every current version"
        )
    return dg.SensorResult(run_requests=requests)
