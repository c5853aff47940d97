"""`training/npz` [config] and `training/npz_on_node` [node]: thin wrappers over shards.py."""

import dagster as dg

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets.fleet.inventory import load_fleet
from sync_assets.metadata import raise_on_failures, table, transfer_metadata
from sync_assets.partitions import configs_partitions, nodes_partitions
from sync_assets.retries import NETWORK_RETRY
from sync_assets.training.shards import export_npz, place_on_node

NPZ = dg.AssetKey(["training", "npz"])
NPZ_ON_NODE = dg.AssetKey(["training", "npz_on_node"])
CANONICAL = dg.AssetKey(["games", "canonical"])


@dg.asset(
    key=NPZ,
    partitions_def=configs_partitions,
    deps=[CANONICAL],  # same config partition (identity mapping)
    group_name="training",
    kinds={"numpy"},
    retry_policy=NETWORK_RETRY,
    pool="npz_export",
    description="The config's training shard exported from its canonical DB on the node "
    "that holds it (exporter resource), validated there, content-addressed, published by "
    "atomic rename, replicated to policy.min_replicas.npz durable nodes. Skipped while the "
    "canonical DB is unchanged; a shard failing validation is quarantined, never published.",
    check_specs=[
        dg.AssetCheckSpec("npz_structure", asset=NPZ, blocking=True),
        dg.AssetCheckSpec("durable_copies", asset=NPZ),
    ],
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
    raise_on_failures(done.moved, f"config {config}: replicating the shard")
    exported = done.exported
    check = exported.check if exported is not None else {}
    wanted = fleet.policy.min_replicas.npz
    metadata: dict[str, dg.RawMetadataValue] = {
        "exported": exported is not None,
        "skipped": done.skipped or "no",
        "sha256": done.current or "none",
        "durable_copies": done.durable_copies,
        **transfer_metadata(done.moved),
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
            dg.AssetCheckResult(
                check_name="durable_copies",
                passed=done.current is None or done.durable_copies >= wanted,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"required": wanted, "have": done.durable_copies},
            ),
        ],
    )


@dg.asset(
    key=NPZ_ON_NODE,
    partitions_def=nodes_partitions,
    deps=[dg.AssetDep(NPZ, partition_mapping=dg.AllPartitionMapping())],
    group_name="training",
    kinds={"numpy"},
    retry_policy=NETWORK_RETRY,
    pool="transfers",
    description="On a training node: every config's current shard at training/{config}.npz, "
    "SHA-256 verified on arrival, replacing the previous one by atomic rename, fanned out "
    "from nodes that have it. Other nodes: nothing to do.",
    check_specs=[dg.AssetCheckSpec("verified_on_node", asset=NPZ_ON_NODE)],
)
def training_npz_on_node(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    node = fleet.node(context.partition_key)
    placed = place_on_node(node, fleet, catalog, transports)
    raise_on_failures(placed.moved, f"node {node.name}: placing shards")
    return dg.MaterializeResult(
        metadata={
            "training_node": placed.training_node,
            "note": "shards placed" if placed.training_node else "not a training node: no-op",
            "shards": table(placed.shards),
            **transfer_metadata(placed.moved),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="verified_on_node",
                passed=placed.all_verified,
                metadata={"configs": len(placed.shards)},
            )
        ],
    )
