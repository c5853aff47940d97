"""`models/candidate` (reported), `models/promoted` [config], `models/on_node` [node]."""

import logging

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import NodeUnreachable
from sync_assets.elo.standings import standings_for
from sync_assets.fleet.inventory import Fleet, load_fleet
from sync_assets.metadata import raise_on_failures, table, transfer_metadata
from sync_assets.models.promotion import Decision, decide_promotion
from sync_assets.models.publish import (
    PROMOTED_ALIAS,
    CandidateRejected,
    place_promoted,
    register_candidate,
)
from sync_assets.partitions import configs_partitions, nodes_partitions
from sync_assets.reports import Candidate, Rejected, candidate_from_event
from sync_assets.retries import NETWORK_RETRY

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


@dg.asset(
    key=PROMOTED,
    partitions_def=configs_partitions,
    deps=[CANDIDATE, dg.AssetKey(["elo", "ratings"])],
    group_name="models",
    kinds={"pytorch"},
    retry_policy=NETWORK_RETRY,
    description="Promotion gate (ratings margin or a reported decision): an alias flip in "
    "the catalog, then canonical_{config}.pth + ringrift_best symlink on durable nodes.",
    check_specs=[
        dg.AssetCheckSpec("promoted_on_durable_nodes", asset=PROMOTED),
        # A refused report (forged, stale, a file changed since) loses nothing but shows.
        dg.AssetCheckSpec("candidate_report_accepted", asset=PROMOTED),
    ],
)
def models_promoted(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    config = context.partition_key
    promoted_sha = catalog.alias(PROMOTED_ALIAS, config)
    wanted = fleet.policy.min_replicas.models

    def result(
        decision: Decision, *, rejected: bool = False, **extra: "dg.RawMetadataValue"
    ) -> dg.MaterializeResult:
        holders = extra.pop("holders", None)
        return dg.MaterializeResult(
            metadata={
                "promoted": decision.promote,
                "reason": decision.reason,
                "promoted_sha256": catalog.alias(PROMOTED_ALIAS, config) or "none",
                "report_rejected": rejected,
                **extra,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="promoted_on_durable_nodes",
                    passed=holders is None or len(holders) >= wanted,  # type: ignore[arg-type]
                    metadata={"required": wanted, "holders": dg.MetadataValue.json(holders)},
                ),
                dg.AssetCheckResult(
                    check_name="candidate_report_accepted",
                    passed=not rejected,
                    metadata={"reason": decision.reason if rejected else "no"},
                ),
            ],
        )

    def unchanged(
        decision: Decision, *, rejected: bool = False, **extra: "dg.RawMetadataValue"
    ) -> dg.MaterializeResult:
        """No promotion: the promoted model stays on the durable nodes, and is copied
        again where a node lost it (the catalog's word is checked on disk)."""
        if promoted_sha is None:
            return result(decision, rejected=rejected, **extra)
        kept = place_promoted(config, promoted_sha, fleet.durable_nodes, fleet, catalog, transports)
        raise_on_failures(kept.moved, f"config {config}: keeping the promoted model")
        return result(
            decision, rejected=rejected, holders=kept.holders, **extra,
            **transfer_metadata(kept.moved),
        )  # fmt: skip

    decided_at = catalog.alias_updated_at(PROMOTED_ALIAS, config)
    candidate = _latest_candidate(context.instance, config, fleet, context.log, decided_at)
    if candidate is None:
        return unchanged(Decision(False, "no candidate reported for this config"))
    if isinstance(candidate, Rejected):
        reason = f"candidate report rejected: {candidate.reason}"
        return unchanged(Decision(False, reason), rejected=True)
    node = fleet.node(candidate.node)
    try:
        register_candidate(node, candidate.path, candidate.sha256, config, catalog, transports)
    except CandidateRejected as exc:
        return unchanged(Decision(False, str(exc)), rejected=True)
    except NodeUnreachable as exc:  # decided when the node answers; the promoted one stays
        return unchanged(Decision(False, f"candidate not checked, its node is unreachable: {exc}"))
    mine, theirs = standings_for(config, candidate.sha256, promoted_sha, fleet, catalog, transports)
    decision = decide_promotion(
        candidate.sha256, promoted_sha, mine, theirs, explicit=candidate.promote
    )
    extra: dict[str, dg.RawMetadataValue] = {
        "candidate_sha256": candidate.sha256,
        "candidate_rating": mine.rating if mine.rating is not None else "unrated",
        "candidate_games": mine.games,
    }
    if not decision.promote:
        return unchanged(decision, **extra)
    placement = place_promoted(
        config, candidate.sha256, fleet.durable_nodes, fleet, catalog, transports
    )
    if placement.changed_sources:
        extra["changed_sources"] = dg.MetadataValue.json(placement.changed_sources)
    if not placement.holders and placement.changed_sources:
        changed = "; ".join(placement.changed_sources)
        reason = f"the candidate changed on its node since it was checked: {changed}"
        return unchanged(Decision(False, reason), rejected=True, **extra)
    raise_on_failures(placement.moved, f"config {config}: placing the promoted model")
    if not placement.holders:
        raise dg.Failure(f"config {config}: the promoted model reached no durable node")
    catalog.set_alias(PROMOTED_ALIAS, config, candidate.sha256)
    return result(
        decision, holders=placement.holders, **extra, **transfer_metadata(placement.moved)
    )


@dg.asset(
    key=ON_NODE,
    partitions_def=nodes_partitions,
    deps=[dg.AssetDep(PROMOTED, partition_mapping=dg.AllPartitionMapping())],
    group_name="models",
    kinds={"pytorch"},
    retry_policy=NETWORK_RETRY,
    pool="transfers",
    description="Every promoted model on this GPU node, verified, ringrift_best symlink "
    "switched only after; the previous model stays until then.",
    check_specs=[dg.AssetCheckSpec("verified_on_node", asset=ON_NODE)],
)
def models_on_node(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    node = fleet.node(context.partition_key)
    rows = []
    changed: list[str] = []  # candidate copies found overwritten, dropped as sources
    if node.name in {n.name for n in fleet.gpu_nodes}:
        for config in fleet.configs:
            sha = catalog.alias(PROMOTED_ALIAS, config)
            if sha is None:
                continue
            placement = place_promoted(config, sha, [node], fleet, catalog, transports)
            changed += placement.changed_sources
            raise_on_failures(placement.moved, f"node {node.name}: promoted model {config}")
            rows.append(
                {"config": config, "sha256": sha[:16], "verified": node.name in placement.holders}
            )
    frame = pd.DataFrame(rows, columns=["config", "sha256", "verified"])
    return dg.MaterializeResult(
        metadata={
            "gpu_node": node.name in {n.name for n in fleet.gpu_nodes},
            "models": table(frame),
            "changed_sources": dg.MetadataValue.json(changed),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="verified_on_node",
                passed=bool(frame["verified"].all()) if not frame.empty else True,
            )
        ],
    )
