"""`replication_deficit`: artifacts below policy → `repair_replicas` runs, riskiest first.

Bounded per tick: two catalog queries (`below_policy`, then `copies_at_risk` for those
artifacts only) and the small alias tables; no transports. The decision is the pure
`plan_repairs` below, in this module because nothing else decides repairs: the planner
(`engine.placement`) still chooses sources and targets when the repair run executes.

At most `RUNS_PER_TICK` runs a tick, each repairing up to `ARTIFACTS_PER_RUN` artifacts
in risk order (a lost node's 10,000 copies take 20 ticks, not 10,000 runs). A run's key is
its first artifact and the hour bucket, so a repair that failed or was blocked is
requested again in the next bucket; the cursor remembers what this bucket already
requested, so the next tick moves on to the next riskiest instead of re-requesting run
keys Dagster would skip. An artifact whose repair run is still queued or running is never
requested again, whatever the bucket: a slow repair is not raced by its own retry.
"""

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self

import dagster as dg

from resources.catalog import Catalog, NodeState
from sensors._common import IN_FLIGHT, Tick, fleet_sensor
from sync_assets.engine.placement import (
    PRIORITY_BELOW_POLICY,
    PRIORITY_ONLY_EPHEMERAL,
    PRIORITY_SINGLE_COPY,
)
from sync_assets.engine.replication import counted_durable_nodes, node_names, unavailable_nodes
from sync_assets.fleet.inventory import Fleet
from sync_assets.fleet.repair import REPAIR_PATHS, repair_run_config
from sync_assets.jobs import REPAIR_REPLICAS
from sync_assets.kinds import min_replicas_by_kind

RUNS_PER_TICK = 10  # K
ARTIFACTS_PER_RUN = 50
RETRY_AFTER_S = 3600  # a repair not done is requested again in the next bucket
RISK_NAMES = {
    PRIORITY_ONLY_EPHEMERAL: "last copy on an ephemeral or suspect node",
    PRIORITY_SINGLE_COPY: "single copy",
    PRIORITY_BELOW_POLICY: "below policy",
}


@dataclass(frozen=True)
class Deficit:
    """An artifact below policy, as the catalog counts its copies."""

    sha256: str
    kind: str
    size: int
    durable_copies: int
    required: int
    copies: int  # nodes that can serve a copy (verified or staged): active, reachable
    safe_copies: int  # of those, the nodes not ephemeral
    repairable: bool = True  # False: a file rewritten in place, repaired by its own asset


@dataclass(frozen=True)
class RepairCursor:
    bucket: int  # int(now // RETRY_AFTER_S) of the tick that wrote it
    requested: frozenset[str]  # artifacts whose repair this bucket already requested

    def to_json(self) -> str:
        return json.dumps({"bucket": self.bucket, "requested": sorted(self.requested)})

    @classmethod
    def from_json(cls, text: str | None) -> Self:
        if not text:
            return cls(-1, frozenset())
        data = json.loads(text)
        return cls(int(data["bucket"]), frozenset(data["requested"]))


def risk(deficit: Deficit) -> int:
    """The planner's priority: no safe copy, then a single copy, then below policy."""
    if deficit.safe_copies == 0:
        return PRIORITY_ONLY_EPHEMERAL
    if deficit.copies == 1:
        return PRIORITY_SINGLE_COPY
    return PRIORITY_BELOW_POLICY


def plan_repairs(
    deficits: Iterable[Deficit],
    cursor: RepairCursor,
    now: float,
    runs: int = RUNS_PER_TICK,
    per_run: int = ARTIFACTS_PER_RUN,
    retry_after_s: float = RETRY_AFTER_S,
    in_flight: frozenset[str] = frozenset(),
) -> tuple[list[list[Deficit]], RepairCursor]:
    """The next repairs, riskiest first (then largest, then by sha256), in at most `runs`
    batches of at most `per_run`, and the cursor after them. Skipped: artifacts with no
    copy to copy from, superseded versions, those already requested in this bucket, and
    those `in_flight` (in a repair run not finished yet)."""
    bucket = int(now // retry_after_s)
    deficits = list(deficits)
    still_short = {d.sha256 for d in deficits}
    # Same bucket: keep what is still short (a repaired artifact leaves the cursor).
    done = cursor.requested & still_short if cursor.bucket == bucket else frozenset()
    todo = sorted(
        (d for d in deficits if d.copies > 0 and d.repairable and d.sha256 not in done | in_flight),
        key=lambda d: (risk(d), -d.size, d.sha256),
    )[: max(runs, 0) * per_run]
    batches = [todo[start : start + per_run] for start in range(0, len(todo), per_run)]
    return batches, RepairCursor(bucket, done | {d.sha256 for d in todo})


def run_key(batch: list[Deficit], bucket: int) -> str:
    """Unique within a bucket: the cursor never requests an artifact twice in one."""
    return f"repair:{batch[0].sha256}:{bucket}"


# ---- Dagster --------------------------------------------------------------------------


def _in_flight(instance: dg.DagsterInstance) -> frozenset[str]:
    """Artifacts named by repair runs not finished yet (at most RUNS_PER_TICK × a few)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=REPAIR_REPLICAS.name, statuses=IN_FLIGHT),
        limit=RUNS_PER_TICK * 10,
    )
    shas: set[str] = set()
    for run in runs:
        config: Any = run.run_config
        shas.update(config.get("ops", {}).get("repair", {}).get("config", {}).get("shas", []))
    return frozenset(shas)


def _deficits(fleet: Fleet, catalog: Catalog) -> list[Deficit]:
    """Bounded catalog reads: the artifacts below policy, then their copies' risk."""
    min_replicas = min_replicas_by_kind(fleet)
    durable = counted_durable_nodes(fleet, catalog)  # as `replicate` counts: lost ones not
    short = catalog.below_policy(min_replicas, durable)
    if not short:
        return []
    # Copies count as the planner's sources do: on active nodes, reachable, breaker
    # closed. A copy on a suspect node is at risk: it serves nothing until audited.
    lifecycle = catalog.node_lifecycle()
    not_active = {n for n, (state, _) in lifecycle.items() if state != NodeState.ACTIVE}
    holders = node_names(fleet.nodes) - not_active - unavailable_nodes(catalog)
    ephemeral = {n.name for n in fleet.nodes if n.ephemeral}
    return [
        Deficit(
            sha256=row.sha256,
            kind=row.kind,
            size=int(row.size),
            durable_copies=int(row.durable_copies),
            required=min_replicas.get(row.kind, 0),
            copies=int(row.copies),
            safe_copies=int(row.safe_copies),
            repairable=row.kind in REPAIR_PATHS,
        )
        for row in catalog.copies_at_risk(short, durable, holders, ephemeral)
    ]


@fleet_sensor(
    "replication_deficit",
    30,  # a lost node's last copies: the first repair within a minute of the loss
    job_name=REPAIR_REPLICAS.name,
    default_status=dg.DefaultSensorStatus.RUNNING,  # it only copies and verifies
)
def replication_deficit(
    context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog
) -> Tick:
    deficits = _deficits(fleet, catalog)
    batches, cursor = plan_repairs(
        deficits,
        RepairCursor.from_json(context.cursor),
        time.time(),
        in_flight=_in_flight(context.instance),
    )
    if not batches:
        return dg.SkipReason(
            f"{len(deficits)} artifact(s) below policy, none to request now"
            if deficits
            else "every artifact meets policy"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key(batch, cursor.bucket),
                run_config=repair_run_config([d.sha256 for d in batch]),
                tags={
                    "fleetsync/artifacts": str(len(batch)),
                    "fleetsync/risk": RISK_NAMES[risk(batch[0])],  # its riskiest
                },
            )
            for batch in batches
        ],
        cursor=cursor.to_json(),
    )
