"""`fleet/node_status` [node]: probe a node and record what was seen in the catalog."""

import dagster as dg

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets import metadata as meta
from sync_assets.engine.probe import probe_and_record, sync_inventory

GIB = 1024**3
NODE_STATUS = dg.AssetKey(["fleet", "node_status"])


@meta.fleet_asset(
    key=NODE_STATUS,
    per="node",
    group="fleet",
    kind="ssh",
    description="Probe: reachable, disk, GPU utilisation. Unknown is recorded as unknown.",
    checks=["reachable"],
)
def node_status(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    sync_inventory(fleet, catalog)
    probe = probe_and_record(node, fleet, catalog, transports)
    metadata: dict[str, dg.RawMetadataValue] = {
        "reachable": probe.reachable,
        "gpu_util_percent": (
            probe.gpu_util_percent if probe.gpu_util_percent is not None else "unknown"
        ),
    }
    if probe.disk_total_bytes and probe.disk_free_bytes is not None:
        used = probe.disk_total_bytes - probe.disk_free_bytes
        metadata["disk_used_fraction"] = round(used / probe.disk_total_bytes, 4)
        metadata["disk_free_gb"] = round(probe.disk_free_bytes / GIB, 2)
    if probe.error:
        metadata["error"] = probe.error
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="reachable",
                passed=probe.reachable,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"error": probe.error or ""},
            )
        ],
    )
