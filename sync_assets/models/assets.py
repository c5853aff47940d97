"""`models/candidate` (reported), `models/promoted` [config], `models/on_node` [node]."""

import logging

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets import metadata as meta
from sync_assets.fleet.inventory import Fleet, load_fleet
from sync_assets.models.publish import PROMOTED_ALIAS, place_promoted, promote
from sync_assets.partitions import configs_partitions
from sync_assets.reports import Candidate, Rejected, candidate_from_event

CANDIDATE = dg.AssetKey(["models", "candidate"])
PROMOTED = dg.AssetKey(["models", "promoted"])
ON_NODE = dg.AssetKey(["models", "on_node"])

# Produced outside fleetsync: reported (CLI, Python, webserver) or materialised by a
# training repo's own code location. fleetsync only declares it, for lineage.
candidate_spec = dg.AssetSpec(
    CANDIDATE,
    partitions_def=configs_partitions,
    deps=[dg.AssetKey(["training", "npz"])],
    group_name="models",
    kinds={"pytorch"},
    description="Candidate models reported by training repos (config, node, path, sha256).",
)


RECENT_REPORTS = 20


def _latest_candidate(
    instance: dg.DagsterInstance,
    config: str,
    fleet: Fleet,
    log: logging.Logger,
    decided_at: float | None,
) -> Candidate | Rejected | None:
    """The newest *valid* report among the recent ones made after the last promotion
    (`decided_at`): a garbage event posted straight to the webserver must not hide a
    good candidate reported just before it, and a report decided before must never be
    decided again (an older explicit promotion would roll the model back)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CANDIDATE, asset_partitions=[config]),
        limit=RECENT_REPORTS,
    ).records
    newest_rejection: Rejected | None = None
    for record in records:
        if decided_at is not None and record.timestamp <= decided_at:
            break  # newest first: everything from here on was there at the last promotion
        found = candidate_from_event(record.event_log_entry, fleet, log)
        if isinstance(found, Candidate):
            return found
        newest_rejection = newest_rejection or found
    return newest_rejection


@meta.fleet_asset(
    key=PROMOTED,
    per="config",
    deps=[CANDIDATE, dg.AssetKey(["elo", "ratings"])],
    group="models",
    kind="pytorch",
    description="Promotion gate (ratings margin or a reported decision): an alias flip in "
    "the catalog, then canonical_{config}.pth + ringrift_best symlink on durable nodes.",
    # A refused report (forged, stale, a file changed since) loses nothing but shows.
    checks=["promoted_on_durable_nodes", "candidate_report_accepted"],
)
def models_promoted(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    config = context.partition_key
    decided_at = catalog.alias_updated_at(PROMOTED_ALIAS, config)
    candidate = _latest_candidate(context.instance, config, fleet, context.log, decided_at)
    result = promote(config, candidate, fleet, catalog, transports)
    decision, holders = result.decision, result.holders
    step = "placing" if decision.promote else "keeping"
    meta.raise_on_failures(result.moved, f"config {config}: {step} the promoted model")
    if decision.promote and not holders:
        raise dg.Failure(f"config {config}: the promoted model reached no durable node")
    metadata: dict[str, dg.RawMetadataValue] = {
        "promoted": decision.promote,
        "reason": decision.reason,
        "promoted_sha256": result.promoted_sha256 or "none",
        "report_rejected": result.report_rejected,
    }
    if result.candidate is not None:
        rating = result.candidate.rating
        metadata["candidate_sha256"] = result.candidate_sha256
        metadata["candidate_rating"] = rating if rating is not None else "unrated"
        metadata["candidate_games"] = result.candidate.games
    if result.changed_sources:
        metadata["changed_sources"] = dg.MetadataValue.json(result.changed_sources)
    if holders is not None:
        metadata |= meta.transfer_metadata(result.moved)
    wanted = fleet.policy.min_replicas.models
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="promoted_on_durable_nodes",
                passed=holders is None or len(holders) >= wanted,
                # None (no promoted model) shows as null, as it always has.
                metadata={"required": wanted, "holders": dg.MetadataValue.json(holders)},  # type: ignore[arg-type]
            ),
            dg.AssetCheckResult(
                check_name="candidate_report_accepted",
                passed=not result.report_rejected,
                metadata={"reason": decision.reason if result.report_rejected else "no"},
            ),
        ],
    )


@meta.fleet_asset(
    key=ON_NODE,
    per="node",
    deps=[meta.every_partition(PROMOTED)],
    group="models",
    kind="pytorch",
    pool="transfers",
    description="Every promoted model on this GPU node, verified, ringrift_best symlink "
    "switched only after; the previous model stays until then.",
    checks=["verified_on_node"],
)
def models_on_node(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    rows = []
    changed: list[str] = []  # candidate copies found overwritten, dropped as sources
    gpu_node = node.name in {n.name for n in fleet.gpu_nodes}
    if gpu_node:
        for config in fleet.configs:
            sha = catalog.alias(PROMOTED_ALIAS, config)
            if sha is None:
                continue
            placement = place_promoted(config, sha, [node], fleet, catalog, transports)
            changed += placement.changed_sources
            meta.raise_on_failures(placement.moved, f"node {node.name}: promoted model {config}")
            rows.append(
                {"config": config, "sha256": sha[:16], "verified": node.name in placement.holders}
            )
    frame = pd.DataFrame(rows, columns=["config", "sha256", "verified"])
    return dg.MaterializeResult(
        metadata={
            "gpu_node": gpu_node,
            "models": meta.table(frame),
            "changed_sources": dg.MetadataValue.json(changed),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="verified_on_node",
                passed=bool(frame["verified"].all()) if not frame.empty else True,
            )
        ],
    )
