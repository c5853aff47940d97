"""`training_trigger`: enough new canonical games since the last export → export that config.

On by default: an export only writes a new content-addressed shard and verifies it. One
export per canonical DB version; after a failed one, asked again each hour
(`version_run_key`)."""

import time

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from sensors._common import IN_PROCESS, VERSION_TAG, Tick, fleet_sensor, version_run_key
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import EXPORT_NPZ
from sync_assets.kinds import GAMES_CANONICAL, NPZ

NPZ_ALIAS = NPZ.alias


def configs_due(
    merges: pd.DataFrame, aliases: pd.DataFrame, configs: list[str], min_new_games: int
) -> dict[str, int]:
    """Config → games merged since its shard was last published, where that is enough."""
    exported = aliases[aliases["kind"] == NPZ_ALIAS].set_index("config")["updated_at"]
    due = {}
    for config in configs:
        rows = merges[merges["config"] == config]
        since = exported.get(config)
        new = int(
            rows["added"].sum()
            if since is None
            else rows.loc[rows["merged_at"] > since, "added"].sum()
        )
        if new >= min_new_games:
            due[config] = new
    return due


@fleet_sensor(
    "training_trigger",
    120,
    job_name=EXPORT_NPZ.name,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def training_trigger(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    aliases = catalog.aliases_frame([NPZ_ALIAS, GAMES_CANONICAL.alias])
    exported = aliases[aliases["kind"] == NPZ_ALIAS].set_index("config")["updated_at"]
    merges = catalog.merges_since({config: exported.get(config) for config in fleet.configs})
    due = configs_due(merges, aliases, list(fleet.configs), fleet.policy.export.min_new_games)
    if not due:
        return dg.SkipReason("no config has enough new games to export")
    canonical = aliases[aliases["kind"] == GAMES_CANONICAL.alias].set_index("config")["sha256"]
    now = time.time()
    requests = []
    for config, new in sorted(due.items()):
        # One export per canonical DB version: a later merge allows a new run.
        version = f"npz:{config}:{canonical.get(config, 'none')}"
        requests.append(
            dg.RunRequest(
                run_key=version_run_key(context, version, now),
                partition_key=config,
                run_config=IN_PROCESS,
                tags={"fleetsync/new_games": str(new), VERSION_TAG: version},
            )
        )
    return dg.SensorResult(run_requests=requests)
