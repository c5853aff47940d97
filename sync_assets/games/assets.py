"""`games/selfplay` [node] and `games/canonical` [config]: thin wrappers over collect/merge."""

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets import metadata as meta
from sync_assets.fleet.inventory import load_fleet
from sync_assets.games.canonical import merge_canonical
from sync_assets.games.collect import collect_node_games

SELFPLAY = dg.AssetKey(["games", "selfplay"])
CANONICAL = dg.AssetKey(["games", "canonical"])


@meta.fleet_asset(
    key=SELFPLAY,
    per="node",
    group="games",
    kind="sqlite",
    pool="transfers",
    description="Games produced on the node, snapshotted consistently and collected to "
    "≥ policy.min_replicas.games verified copies on distinct durable nodes.",
    checks=["durable_copies", "every_db_collected"],
)
def games_selfplay(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    collected = collect_node_games(node, fleet, catalog, transports)
    meta.raise_on_failures(collected.replication, f"node {node.name}: collecting games")
    copies = pd.DataFrame(
        sorted(collected.durable_copies.items()), columns=["snapshot", "durable_copies"]
    )
    return dg.MaterializeResult(
        metadata={
            "game_dbs": collected.databases,
            "snapshots_taken": collected.snapshots_taken,
            "unchanged_dbs": collected.unchanged,
            "skipped": dg.MetadataValue.json(collected.skipped),
            "unsafe_names_rejected": dg.MetadataValue.json(collected.rejected_names),
            # Games whose own config differs from their file's name (routed by their own).
            "misrouted_games": dg.MetadataValue.json(collected.misrouted),
            "replicas": meta.table(copies),
            **meta.transfer_metadata(collected.replication),
        },
        check_results=[
            meta.durable_copies_check(
                not collected.under_replicated,
                fleet.policy.min_replicas.games,
                under_replicated=dg.MetadataValue.json(collected.under_replicated),
            ),
            dg.AssetCheckResult(
                check_name="every_db_collected",
                passed=not collected.skipped,
                metadata={"skipped": dg.MetadataValue.json(collected.skipped)},
            ),
        ],
    )


@meta.fleet_asset(
    key=CANONICAL,
    per="config",
    deps=[meta.every_partition(SELFPLAY)],
    group="games",
    kind="sqlite",
    pool="canonical_merge",
    description="Merged corpus per config on a durable node, dedup by game_id plus a move "
    "fingerprint for non-unique ids, complete games only; replicated to durable nodes.",
    checks=["durable_copies", "sqlite_integrity", "every_snapshot_merged"],
    blocking="sqlite_integrity",
)
def games_canonical(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    config = context.partition_key
    merged = merge_canonical(config, fleet, catalog, transports)
    moved = merged.moved
    meta.raise_on_failures(moved, f"config {config}: replicating canonical DB")
    totals = merged.totals
    wanted = fleet.policy.min_replicas.games
    return dg.MaterializeResult(
        metadata={
            "primary_node": merged.primary or "none",
            "merged_into_sha256": merged.base_sha256 or "new file",
            "snapshots_merged": merged.snapshots_merged,
            "snapshots_quarantined": dg.MetadataValue.json(merged.quarantined),
            "games_added": totals.get("added", 0),
            "duplicates": totals.get("duplicates", 0),
            "collisions_kept": totals.get("collisions_kept", 0),
            "rejected": dg.MetadataValue.json(totals.get("rejected", {})),
            "canonical_sha256": merged.sha256 or "none",
            "canonical_bytes": merged.size,
            "durable_copies": merged.durable_copies,
            **meta.transfer_metadata(moved),
        },
        check_results=[
            meta.durable_copies_check(
                merged.sha256 is None or merged.durable_copies >= wanted,
                wanted,
                have=merged.durable_copies,
            ),
            dg.AssetCheckResult(
                check_name="sqlite_integrity",
                passed=not merged.integrity_problems,
                metadata={"problems": dg.MetadataValue.json(merged.integrity_problems[:20])},
            ),
            dg.AssetCheckResult(
                check_name="every_snapshot_merged",
                passed=not merged.quarantined,
                metadata={"quarantined": dg.MetadataValue.json(merged.quarantined)},
            ),
        ],
    )
