"""`merge_trigger`: collected game snapshots that a config's canonical DB lacks → merge them.

The first link of the training chain (snapshots → canonical DB → export → training
nodes): per config of the inventory, the snapshots whose census counted games of the
config, with a verified copy on a counted durable node and not quarantined
(`Catalog.snapshots_to_merge`, what `games/canonical` merges), less those the current
canonical version is known to hold. One `merge_games` run per config with any; its run
key names the canonical version, the set of pending snapshots and the hour, so new
snapshots (or a new version) ask at once and a merge that failed is asked again an hour
later. A config whose merge is queued or running gets no second run. On by default: a
merge only adds games to the canonical DB, insert-if-absent, and replicates it.
"""

import time
from collections.abc import Mapping

import dagster as dg

from resources.catalog import Catalog
from sensors._common import (
    IN_PROCESS,
    Tick,
    fleet_sensor,
    partitions_in_flight,
    retry_hour,
    set_digest,
)
from sync_assets.engine.replication import counted_durable_nodes
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import MERGE_GAMES
from sync_assets.kinds import GAMES_CANONICAL

JOB = MERGE_GAMES.name


def merge_run_keys(
    pending: Mapping[str, set[str]], canonical: Mapping[str, str], now: float
) -> dict[str, str]:
    """Config → run key, for the configs with snapshots their canonical DB lacks."""
    return {
        config: f"merge:{config}:{canonical.get(config, 'none')[:12]}:"
        f"{set_digest(snapshots)}:{retry_hour(now)}"
        for config, snapshots in sorted(pending.items())
        if snapshots
    }


@fleet_sensor("merge_trigger", 60, job_name=JOB, default_status=dg.DefaultSensorStatus.RUNNING)
def merge_trigger(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    durable = counted_durable_nodes(fleet, catalog)
    canonical = catalog.aliases(GAMES_CANONICAL.alias)
    pending = {
        config: catalog.snapshots_to_merge(config, durable)
        - (catalog.canonical_contents(canonical[config]) if config in canonical else set())
        for config in fleet.configs
    }
    keys = merge_run_keys(pending, canonical, time.time())
    busy = partitions_in_flight(context, JOB)
    requests = [
        dg.RunRequest(
            run_key=key,
            partition_key=config,
            run_config=IN_PROCESS,
            tags={"fleetsync/snapshots_to_merge": str(len(pending[config]))},
        )
        for config, key in keys.items()
        if config not in busy
    ]
    if not requests:
        return dg.SkipReason(
            f"{len(keys)} config(s) waiting on a merge in flight"
            if keys
            else "every canonical DB holds every collected snapshot of its config"
        )
    return dg.SensorResult(run_requests=requests)
