"""`node_discovery`: keep the `nodes` partitions in step with the inventory, in batches.

One inventory read and bounded catalog queries per tick; no SSH. The one place that
records the inventory's nodes in the catalog and applies the node lifecycle to them
(`sync_inventory`: gone from the inventory -> lost, retired once it holds no last copy;
a listed node is lost only through a probe, never here). A manual run does it with
`fleet/node_status`. A node removed from the inventory keeps its partition until it holds
no last copy of anything (retired only after evacuation): a copy on another departed or
uncounted node does not count.
"""

from collections.abc import Iterable

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor
from sync_assets.engine.probe import sync_inventory
from sync_assets.fleet.inventory import Fleet
from sync_assets.partitions import NODES, nodes_partitions

BATCH = 50  # partitions added or removed per tick: steady, never churned


def partition_changes(
    inventory_nodes: Iterable[str],
    partitions: Iterable[str],
    last_copy_holders: set[str],
    batch: int = BATCH,
) -> tuple[list[str], list[str]]:
    """(to add, to remove): new inventory nodes; departed nodes holding no last copy."""
    wanted, current = set(inventory_nodes), set(partitions)
    to_add = sorted(wanted - current)[:batch]
    to_remove = sorted(current - wanted - last_copy_holders)[:batch]
    return to_add, to_remove


# On by default: it adds and removes partitions and records the inventory, never a file;
# without it a fresh deployment has no node partitions and every node sensor waits.
@fleet_sensor("node_discovery", 60, default_status=dg.DefaultSensorStatus.RUNNING)
def node_discovery(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    current = context.instance.get_dynamic_partitions(NODES)
    listed = {n.name for n in fleet.nodes}
    to_add, to_remove = partition_changes(
        listed, current, catalog.last_copy_holders(set(current) - listed, listed)
    )
    sync_inventory(fleet, catalog)
    if not to_add and not to_remove:
        return dg.SkipReason(f"{len(current)} node partitions match the inventory")
    return dg.SensorResult(
        dynamic_partitions_requests=[
            nodes_partitions.build_add_request(to_add),
            nodes_partitions.build_delete_request(to_remove),
        ]
    )
