"""`node_discovery`: keep the `nodes` partitions in step with the inventory, in batches.

One inventory read and one catalog query per tick; no SSH. A node removed from the
inventory keeps its partition until it holds no last verified copy of anything
(retired only after evacuation).
"""

from collections.abc import Iterable

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from sync_assets.fleet.inventory import InventoryError, load_fleet
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


def last_copy_holders(replicas: pd.DataFrame) -> set[str]:
    """Nodes holding the only copy of some artifact."""
    live = replicas[replicas["state"].isin(["verified", "staging"])]
    copies = live.groupby("sha256")["node"].nunique()
    lonely = live[live["sha256"].isin(copies[copies == 1].index)]
    return set(lonely["node"])


@dg.sensor(name="node_discovery", minimum_interval_seconds=60)
def node_discovery(
    context: dg.SensorEvaluationContext, inventory: FleetInventory, catalog: Catalog
) -> dg.SensorResult | dg.SkipReason:
    try:
        fleet = load_fleet(inventory)
    except InventoryError as exc:
        return dg.SkipReason(f"inventory {inventory.path} is invalid:\n{exc}")
    current = context.instance.get_dynamic_partitions(NODES)
    to_add, to_remove = partition_changes(
        (n.name for n in fleet.nodes), current, last_copy_holders(catalog.replicas_frame())
    )
    catalog.sync_nodes(fleet.nodes)
    if not to_add and not to_remove:
        return dg.SkipReason(f"{len(current)} node partitions match the inventory")
    return dg.SensorResult(
        dynamic_partitions_requests=[
            nodes_partitions.build_add_request(to_add),
            nodes_partitions.build_delete_request(to_remove),
        ]
    )
