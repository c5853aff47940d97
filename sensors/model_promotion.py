"""`model_promotion`: a promoted model reaches every GPU node, fanned out across runs
(`sensors.fan_out`: nodes that received it become sources for the next tick).

On by default: it only copies and verifies.
"""

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor
from sensors.fan_out import Current, fan_out
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import MODELS_TO_NODES
from sync_assets.models.publish import PROMOTED_ALIAS, canonical_model_path

JOB = MODELS_TO_NODES.name


@fleet_sensor("model_promotion", 30, job_name=JOB, default_status=dg.DefaultSensorStatus.RUNNING)
def model_promotion(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    current = [
        Current(config, sha, canonical_model_path(config))
        for config, sha in catalog.aliases(PROMOTED_ALIAS).items()
    ]
    return fan_out(context, fleet, catalog, current, fleet.gpu_nodes, JOB, "models")
