"""The Elo chain, with no person in it: new matches → ratings → eval nodes.

* `ratings_trigger`: the set of collected match snapshots (`elo_snapshot` artifacts with a
  verified copy on a counted durable node: what a complete union takes in) changed →
  `rate_models` for every config of the inventory. The run key names the set (a digest of
  its SHA-256s), so each set is rated once per config (again each hour after a failed
  run, `version_run_key`) and a newer one is rated again. A
  config whose rating is still queued or running is asked again once it is done, for the
  newest set: at most one rating run per config in flight, however fast matches arrive.
* `ratings_distribution`: the current `elo/fleet_ratings.db` (its catalog alias) onto
  every eval node, fanned out like promoted models (`sensors.fan_out`).

Both read the catalog only (and Dagster's run storage for runs in flight); both only copy
and verify (a rating rewrites derived rows from the raw matches), so both are on by default.
"""

import time

import dagster as dg

from resources.catalog import Catalog
from sensors._common import (
    IN_PROCESS,
    VERSION_TAG,
    Tick,
    fleet_sensor,
    partitions_in_flight,
    set_digest,
    version_run_key,
)
from sensors.fan_out import Current, fan_out
from sync_assets.elo.publish import RATINGS_ALIAS, RATINGS_DB
from sync_assets.engine.replication import counted_durable_nodes
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import RATE_MODELS, RATINGS_TO_NODES
from sync_assets.kinds import ELO_SNAPSHOT

RATE_JOB = RATE_MODELS.name
DISTRIBUTE_JOB = RATINGS_TO_NODES.name


def ratings_run_key(config: str, version: str) -> str:
    return f"ratings:{config}:{version}"


@fleet_sensor(
    "ratings_trigger", 60, job_name=RATE_JOB, default_status=dg.DefaultSensorStatus.RUNNING
)
def ratings_trigger(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    durable = counted_durable_nodes(fleet, catalog)
    collected = catalog.durable_copy_counts(durable, kind=ELO_SNAPSHOT.name)
    if not collected:
        return dg.SkipReason("no match snapshot collected yet")
    version = set_digest(collected)
    busy = partitions_in_flight(context, RATE_JOB)
    configs = [c for c in fleet.configs if c not in busy]
    now = time.time()
    if not configs:
        return dg.SkipReason(f"every config's rating is in flight; next: matches {version}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=version_run_key(context, ratings_run_key(config, version), now),
                partition_key=config,
                run_config=IN_PROCESS,
                tags={
                    "fleetsync/match_snapshots": str(len(collected)),
                    VERSION_TAG: ratings_run_key(config, version),
                },
            )
            for config in configs
        ]
    )


@fleet_sensor(
    "ratings_distribution",
    60,
    job_name=DISTRIBUTE_JOB,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def ratings_distribution(
    context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog
) -> Tick:
    sha = catalog.alias(*RATINGS_ALIAS)
    current = [Current(RATINGS_ALIAS[1], sha, RATINGS_DB)] if sha is not None else []
    eval_nodes = fleet.nodes_with_role("eval")
    return fan_out(context, fleet, catalog, current, eval_nodes, DISTRIBUTE_JOB, "ratings")
