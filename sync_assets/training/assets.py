"""`training/npz` [config] and `training/npz_on_node` [node]: thin wrappers over shards.py."""

import dagster as dg

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets import metadata as meta
from sync_assets.fleet.inventory import load_fleet
from sync_assets.training.shards import export_npz, place_on_node

NPZ = dg.AssetKey(["training", "npz"])
NPZ_ON_NODE = dg.AssetKey(["training", "npz_on_node"])
CANONICAL = dg.AssetKey(["games", "canonical"])


@meta.fleet_asset(
    key=NPZ,
    per="config",
    deps=[CANONICAL],  # same config partition (identity mapping)
    group="training",
    kind="numpy",
    pool="npz_export",
    description="The config's training shard exported from its canonical DB on the node "
    "that holds it (exporter resource), validated there, content-addressed, published by "
    "atomic rename, replicated to policy.min_replicas.npz durable nodes. Skipped while the "
    "canonical DB is unchanged; a shard failing validation is quarantined, never published.",
    checks=["npz_structure", "durable_copies"],
    blocking="npz_structure",
)
def training_npz(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
    exporter: Exporter,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    config = context.partition_key
    try:
        done = export_npz(config, fleet, catalog, transports, exporter)
    except TransferError as exc:  # the exporter failed or a node could not be reached
        raise dg.Failure(description=f"config {config}: {exc}") from exc
    meta.raise_on_failures(done.moved, f"config {config}: replicating the shard")
    exported = done.exported
    check = exported.check if exported is not None else {}
    wanted = fleet.policy.min_replicas.npz
    metadata: dict[str, dg.RawMetadataValue] = {
        "exported": exported is not None,
        "skipped": done.skipped or "no",
        "sha256": done.current or "none",
        "durable_copies": done.durable_copies,
        **meta.transfer_metadata(done.moved),
    }
    if exported is not None:
        seconds = exported.seconds
        metadata |= {
            "export_node": exported.node,
            "exporter": exported.exporter,
            "canonical_sha256": exported.canonical_sha256,
            "samples": exported.samples,
            "games": exported.games if exported.games is not None else "unknown",
            "bytes": exported.size,
            "exported_sha256": exported.sha256,
            "export_seconds": round(seconds, 3),
            "samples_per_s": round(exported.samples / seconds, 1) if seconds > 0 else 0.0,
            "quarantined": done.quarantined or "no",
        }
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="npz_structure",
                passed=done.valid,
                metadata={
                    "problems": dg.MetadataValue.json(check.get("problems", [])),
                    "validated": exported is not None,
                    "quarantined": done.quarantined or "no",
                },
            ),
            meta.durable_copies_check(
                done.current is None or done.durable_copies >= wanted,
                wanted,
                have=done.durable_copies,
            ),
        ],
    )


@meta.fleet_asset(
    key=NPZ_ON_NODE,
    per="node",
    deps=[meta.every_partition(NPZ)],
    group="training",
    kind="numpy",
    pool="transfers",
    description="On a training node: every config's current shard at training/{config}.npz, "
    "SHA-256 verified on arrival, replacing the previous one by atomic rename, fanned out "
    "from nodes that have it. Other nodes: nothing to do.",
    checks=["verified_on_node"],
)
def training_npz_on_node(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    placed = place_on_node(node, fleet, catalog, transports)
    meta.raise_on_failures(placed.moved, f"node {node.name}: placing shards")
    return dg.MaterializeResult(
        metadata={
            "training_node": placed.training_node,
            "note": "shards placed" if placed.training_node else "not a training node: no-op",
            "shards": meta.table(placed.shards),
            **meta.transfer_metadata(placed.moved),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="verified_on_node",
                passed=placed.all_verified,
                metadata={"configs": len(placed.shards)},
            )
        ],
    )
