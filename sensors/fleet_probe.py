"""`fleet_probe`: probe the whole fleet every minute in ONE run, not one run per node.

Each tick asks for one `probe_nodes` run over the whole `nodes` partition range
(`fleet/node_status` has a single-run backfill policy): the run probes every node at
once, one command per node, and each node partition gets its own materialization with
its own metadata, so the UI keeps per-node history. No second run while one is still
going (a slow fleet is never probed twice at once). On by default: it only reads nodes.
"""

from collections.abc import Sequence

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor, run_in_flight
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import PROBE_NODES
from sync_assets.partitions import NODES

JOB = PROBE_NODES.name
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def probe_every_node(partitions: Sequence[str]) -> dg.RunRequest:
    """One run over every partition: the range from the first to the last, in the order the
    instance keeps dynamic partitions (the order a range of them is resolved in)."""
    return dg.RunRequest(
        tags={RANGE_START: partitions[0], RANGE_END: partitions[-1], "fleetsync/probe": "fleet"}
    )


@fleet_sensor("fleet_probe", 60, job_name=JOB, default_status=dg.DefaultSensorStatus.RUNNING)
def fleet_probe(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    partitions = context.instance.get_dynamic_partitions(NODES)
    if not partitions:
        return dg.SkipReason("no node partitions yet (node_discovery adds them)")
    if going := run_in_flight(context, JOB):
        return dg.SkipReason(f"probe run {going} is still going")
    return dg.SensorResult(run_requests=[probe_every_node(partitions)])
