"""`shard_distribution`: every config's current shard reaches every training node.

The current shard is the catalog's NPZ alias, moved only by `training/npz` once a new
shard validated and has a durable copy; a training node holds it when the catalog records
a verified copy at `training/{config}.npz` there. Fanned out like promoted models
(`sensors.fan_out`). On by default: it only copies and verifies.
"""

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor
from sensors.fan_out import Current, fan_out
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import NPZ_TO_NODES
from sync_assets.kinds import NPZ
from sync_assets.training.shards import node_shard_path

JOB = NPZ_TO_NODES.name


@fleet_sensor("shard_distribution", 60, job_name=JOB, default_status=dg.DefaultSensorStatus.RUNNING)
def shard_distribution(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    current = [
        Current(config, sha, node_shard_path(config))
        for config, sha in catalog.aliases(NPZ.alias).items()
        if config in fleet.configs
    ]
    return fan_out(
        context, fleet, catalog, current, fleet.nodes_with_role("training"), JOB, "shards"
    )
