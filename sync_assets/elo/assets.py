"""`elo/matches` [node], `elo/ratings` [config], `elo/on_node` [node]: thin wrappers over
collect / publish, reporting what an operator reads in the UI.

Snapshots the union could not take in (staging errors) fail `elo/ratings` (nothing is
published) but only the `union_complete` check of `elo/matches`: the node's own
collection succeeded, and another node's copy problem must not fail every node's step.
Conflicting matches and quarantined snapshots fail checks of both, on every pass
while they exist.
"""

from typing import Any

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets import metadata as meta
from sync_assets.elo.collect import (
    ELO_DB,
    EloDbUnreadable,
    UnionIncomplete,
    UnionResult,
    collect_node_matches,
)
from sync_assets.elo.identity import CROSS_CONFIG_REASONS
from sync_assets.elo.publish import (
    RATINGS_DB,
    is_read_only,
    publish_on_node,
    recompute_ratings,
)
from sync_assets.elo.ratings import DEFAULT_ANCHORS
from sync_assets.fleet.inventory import load_fleet

MATCHES = dg.AssetKey(["elo", "matches"])
RATINGS = dg.AssetKey(["elo", "ratings"])
ON_NODE = dg.AssetKey(["elo", "on_node"])


@meta.fleet_asset(
    key=MATCHES,
    per="node",
    group="elo",
    kind="sqlite",
    pool="transfers",
    description=f"Raw match rows of the node's {ELO_DB}: snapshotted consistently, checked "
    "on the node, collected to ≥ policy.min_replicas.elo durable nodes and unioned by "
    "match identity (game_id, else a text id) into elo/fleet_matches.db on the primary "
    "durable node; conflicting versions of one match are set aside, not rated.",
    checks=[
        "durable_copies",
        "union_complete",
        "no_conflicting_matches",
        "no_unreadable_snapshots",
    ],
)
def elo_matches(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    try:
        collected = collect_node_matches(node, fleet, catalog, transports)
    except EloDbUnreadable as exc:
        # A corrupt or foreign file stays so on retry: fail once, clearly.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    meta.raise_on_failures(collected.replication, f"node {node.name}: collecting Elo matches")
    union = collected.union
    moved = collected.replication
    moved.add(union.moved)
    totals = union.totals
    return dg.MaterializeResult(
        metadata={
            "elo_db": ELO_DB if collected.elo_db else "none on this node",
            "snapshot_taken": collected.snapshot_taken,
            "unchanged": collected.unchanged,
            "snapshot_sha256": collected.snapshot_sha256 or "none",
            "matches_in_snapshot": collected.check.get("seen", 0),
            "primary_node": collected.union.primary or "none",
            "snapshots_unioned": collected.union.snapshots_unioned,
            "matches_seen": totals.get("seen", 0),
            "matches_added": totals.get("added", 0),
            "duplicates": totals.get("duplicates", 0),
            "collisions_kept": totals.get("collisions_kept", 0),
            "merged_by_game_id": totals.get("merged_by_game_id", 0),
            "conflicting_rows": totals.get("conflicting_rows", 0),
            "rejected": dg.MetadataValue.json(totals.get("rejected", {})),
            "fleet_matches": union.rows,
            "staging_errors": dg.MetadataValue.json(union.staging_errors),
            **_union_metadata(union),
            **meta.transfer_metadata(moved),
        },
        check_results=[
            meta.durable_copies_check(
                not collected.under_replicated,
                fleet.policy.min_replicas.elo,
                copies=dg.MetadataValue.json(collected.durable_copies),
            ),
            dg.AssetCheckResult(
                check_name="union_complete",
                passed=union.complete,
                metadata={"staging_errors": dg.MetadataValue.json(union.staging_errors)},
            ),
            _conflicts_check(union.conflicts, "every config"),
            _unreadable_check(union),
        ],
    )


def _union_metadata(union: UnionResult) -> dict[str, Any]:
    """What the union DB holds, whichever pass put it there."""
    return {
        "conflicting_matches_in_union": union.conflicts,
        "matches_merged_by_game_id": union.merged_by_game_id,
        "unreadable_snapshots": dg.MetadataValue.json(union.unreadable),
    }


def _conflicts_check(conflicts: int, scope: str) -> dg.AssetCheckResult:
    """Matches recorded with different results: none of their versions is rated."""
    return dg.AssetCheckResult(
        check_name="no_conflicting_matches",
        passed=conflicts == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"conflicting_matches": conflicts, "configs": scope},
    )


def _unreadable_check(union: UnionResult) -> dg.AssetCheckResult:
    """Collected snapshots quarantined as unreadable: their matches are not rated."""
    return dg.AssetCheckResult(
        check_name="no_unreadable_snapshots",
        passed=not union.unreadable,
        metadata={"quarantined": dg.MetadataValue.json(union.unreadable)},
    )


def _anchors_check(published: pd.DataFrame) -> dg.AssetCheckResult:
    """Every anchor that played sits exactly at its pinned rating with zero uncertainty,
    and at least one anchor played (else the config's ratings float off the scale)."""
    present = published[published["participant_id"].isin(list(DEFAULT_ANCHORS))]
    off = [
        f"{r.participant_id}: {r.rating} ± {r.uncertainty}, pinned at {pinned}"
        for r in present.itertuples(index=False)
        if r.rating != (pinned := DEFAULT_ANCHORS[str(r.participant_id)]) or r.uncertainty != 0
    ]
    unanchored = not published.empty and present.empty
    return dg.AssetCheckResult(
        check_name="anchors_pinned",
        passed=not off and not unanchored,
        metadata={
            "anchors_present": dg.MetadataValue.json(sorted(present["participant_id"])),
            "not_pinned": dg.MetadataValue.json(off),
            "no_anchor_played": unanchored,
        },
    )


def _anchored_check(published: pd.DataFrame) -> dg.AssetCheckResult:
    """Participants with no chain of games to an anchor: their rating is the prior's
    guess (docs/RATINGS.md), flagged anchored = 0 and kept out of promotion."""
    unanchored = sorted(published.loc[published["anchored"] == 0, "participant_id"])
    return dg.AssetCheckResult(
        check_name="all_anchored",
        passed=not unanchored,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unanchored_participants": len(unanchored),
            "unanchored": dg.MetadataValue.json(unanchored[:100]),
        },
    )


@meta.fleet_asset(
    key=RATINGS,
    per="config",
    deps=[meta.every_partition(MATCHES)],
    group="elo",
    kind="sqlite",
    description=f"Ratings of the config recomputed from all its raw matches (never merged), "
    f"participants identified by model SHA-256, cross-config matches rejected; the "
    f"config's rows of {RATINGS_DB} rewritten atomically on every durable node; never "
    f"published unless the union took in every collected snapshot.",
    checks=[
        "anchors_pinned",
        "all_anchored",
        "no_cross_config_matches",
        "durable_copies",
        "no_conflicting_matches",
        "no_unreadable_snapshots",
    ],
    blocking="anchors_pinned",
)
def elo_ratings(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    config = context.partition_key
    try:
        result = recompute_ratings(config, fleet, catalog, transports)
    except UnionIncomplete as exc:
        # Not retried seconds later: the gap closes when a holder is back or (a damaged
        # copy, its record dropped) on the next run, which copies it again.
        raise dg.Failure(
            description=str(exc),
            metadata={"staging_errors": dg.MetadataValue.json(exc.errors)},
            allow_retries=False,
        ) from exc
    meta.raise_on_failures(result.moved, f"config {config}: publishing {RATINGS_DB}")
    selection = result.selection
    assert selection is not None
    published = result.published
    view = published[
        ["participant_id", "rating", "uncertainty", "anchored", "games", "wins", "losses", "draws"]
    ].sort_values(["anchored", "rating"], ascending=False)
    foreign = {
        pid: own
        for pid, own in selection.participant_configs.items()
        if own is not None and own != config
    }
    read_only = {n: is_read_only(m) for n, m in result.verified.items()}
    wanted = fleet.policy.min_replicas.elo
    return dg.MaterializeResult(
        metadata={
            "ratings": meta.table(view.round({"rating": 1, "uncertainty": 1})),
            "participants": len(published),
            "unanchored_participants": int((published["anchored"] == 0).sum()),
            "matches_used": len(selection.matches),
            "rejected_cross_config": selection.cross_config,
            "rejected": dg.MetadataValue.json(selection.rejected),
            "fit_iterations": result.fit_iterations,
            "fit_converged": result.fit_converged,
            "changed": result.changed,
            "ratings_sha256": result.sha256 or "none",
            "primary_node": result.union.primary or "none",
            "durable_copies": dg.MetadataValue.json(result.verified),
            "conflicting_matches": result.conflicts,
            **_union_metadata(result.union),
            **meta.transfer_metadata(result.moved),
        },
        check_results=[
            _anchors_check(published),
            _anchored_check(published),
            dg.AssetCheckResult(
                check_name="no_cross_config_matches",
                passed=not foreign,
                metadata={
                    "rejected_matches": dg.MetadataValue.json(
                        {r: selection.rejected[r] for r in CROSS_CONFIG_REASONS}
                    ),
                    "rated_participants_of_other_configs": dg.MetadataValue.json(foreign),
                },
            ),
            meta.durable_copies_check(
                result.sha256 is None
                or (sum(read_only.values()) >= wanted and all(read_only.values())),
                wanted,
                read_only=dg.MetadataValue.json(read_only),
            ),
            _conflicts_check(result.conflicts, config),
            _unreadable_check(result.union),
        ],
    )


@meta.fleet_asset(
    key=ON_NODE,
    per="node",
    deps=[meta.every_partition(RATINGS)],
    group="elo",
    kind="sqlite",
    pool="transfers",
    description=f"The current {RATINGS_DB} on this eval node, verified there (SHA-256, "
    "SQLite readable) and read-only (0444); nothing on other nodes.",
    checks=["verified_read_only"],
)
def elo_on_node(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet, node = meta.partition_node(context, inventory)
    result = publish_on_node(node, fleet, catalog, transports)
    meta.raise_on_failures(result.moved, f"node {node.name}: publishing {RATINGS_DB}")
    verified = result.verified
    expected = result.eval_node and result.sha256 is not None
    ok = not expected or (
        verified.get("sha256") == result.sha256 and is_read_only(verified.get("mode", "0"))
    )
    return dg.MaterializeResult(
        metadata={
            "eval_node": result.eval_node,
            "ratings_sha256": result.sha256 or "none",
            "mode": verified.get("mode", "n/a"),
            "rows": verified.get("rows", 0),
            **meta.transfer_metadata(result.moved),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="verified_read_only",
                passed=ok,
                metadata={"expected": expected, "verified": dg.MetadataValue.json(verified)},
            )
        ],
    )
