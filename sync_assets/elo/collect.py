"""Collect a node's Elo DB and union its raw match rows into `elo/fleet_matches.db`.

Like game DBs (`sync_assets/games/collect.py`): the live `elo/unified_elo.db` is
snapshotted on its node with the SQLite backup API, the snapshot is read through
once *on the node* (`matches.py check`) before anything is recorded — a corrupt
or foreign file is a clear error and leaves no trace in the catalog — then it is
registered by SHA-256 (kind `elo_snapshot`) and copied to
`policy.min_replicas.elo` durable nodes. The snapshots are the raw record; the union
DB is derived from them and can always be rebuilt.

The union lives on one durable node, the *primary*: the first durable node of the
inventory that is reachable. Every collected snapshot it lacks is copied to it, and
every snapshot not yet in its union DB is unioned (the union DB itself remembers
which, by SHA-256). The union is idempotent and order-independent, so a primary
that changes simply catches up.

A union pass is *complete* when it took in every collected snapshot (every
`elo_snapshot` with a verified copy on a durable node of the inventory). What keeps
one out is reported as a staging error and makes the pass incomplete: a copy to the
primary that failed, a snapshot held only by unreachable nodes, or a copy on the
primary that is missing or damaged (its catalog record is then dropped, so the next
pass copies it again). Ratings are never published from an incomplete union
(`publish.py`). A snapshot whose verified bytes are not a readable Elo DB is the
exception: it is quarantined by `matches.py` (reported on every pass, never retried)
instead of blocking ratings forever, since every copy of it holds the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import (
    CopyItem,
    CopyResult,
    NodeUnreachable,
    RemoteFile,
    TransferError,
)
from sync_assets.elo.remote import MATCHES_SCRIPT, NodeScriptFailed, run_script, waiting_lease
from sync_assets.engine.live_db import (
    Snapshot,
    collect_originated,
    confirm_originated,
    snapshot_if_changed,
)
from sync_assets.engine.replication import (
    ReplicationResult,
    copy_recorded,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node

ELO_DB = "elo/unified_elo.db"
MATCHES_DB = "elo/fleet_matches.db"
SNAPSHOT_KIND = "elo_snapshot"
UNION_LEASE = "elo/fleet_matches"


class EloDbUnreadable(TransferError):
    """The node's Elo DB cannot be snapshotted or read as an Elo DB: retrying will not help."""


class UnionIncomplete(TransferError):
    """The union could not take in every collected snapshot; `errors` says why, per one."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass
class UnionResult:
    """What one union pass did on the primary, and what its union DB holds afterwards."""

    primary: str | None = None
    snapshots_unioned: int = 0
    totals: dict[str, Any] = field(default_factory=dict)  # matches.py totals of this pass
    rows: int = 0  # matches in the union DB afterwards
    conflicts: int = 0  # conflicting matches in it (none of their versions rated)
    merged_by_game_id: int = 0  # matches in it that arrived in several forms, one game_id
    unreadable: list[dict[str, str]] = field(default_factory=list)  # quarantined snapshots
    staging_errors: list[str] = field(default_factory=list)  # collected snapshots left out
    moved: ReplicationResult = field(default_factory=ReplicationResult)

    @property
    def complete(self) -> bool:
        """Every collected snapshot is in the union (unioned or quarantined)."""
        return not self.staging_errors

    def raise_if_incomplete(self, what: str) -> None:
        if self.staging_errors:
            raise UnionIncomplete(
                f"{what}: the union on {self.primary} lacks {len(self.staging_errors)} "
                f"collected Elo snapshot(s): " + "; ".join(self.staging_errors[:5]),
                self.staging_errors,
            )


@dataclass
class MatchesResult:
    node: str
    elo_db: bool = False
    snapshot_taken: bool = False
    unchanged: bool = False
    snapshot_sha256: str | None = None
    check: dict[str, Any] = field(default_factory=dict)  # matches.py check of the snapshot
    replication: ReplicationResult = field(default_factory=ReplicationResult)
    durable_copies: dict[str, int] = field(default_factory=dict)
    under_replicated: list[str] = field(default_factory=list)
    union: UnionResult = field(default_factory=UnionResult)


def collected_path(artifact: pd.Series) -> str:
    """Where a durable node keeps a collected Elo snapshot: content-addressed."""
    return f"elo/collected/{artifact['origin_node']}/unified_elo.{artifact.name[:16]}.db"


def _checked_snapshot(
    node: Node, db: RemoteFile, transports: Transports, catalog: Catalog, result: MatchesResult
) -> Snapshot:
    """Snapshot if changed, read through once on the node before anything is recorded."""

    def check(staging: str) -> None:
        try:
            result.check = run_script(node, transports, MATCHES_SCRIPT, ["check", staging])
        except NodeScriptFailed as exc:
            raise EloDbUnreadable(
                f"node {node.name}: {ELO_DB} cannot be read as an Elo DB: {exc}"
            ) from exc

    try:
        return snapshot_if_changed(
            node, db, kind=SNAPSHOT_KIND, config=None, catalog=catalog, transports=transports,
            check=check,
        )  # fmt: skip
    except (NodeUnreachable, EloDbUnreadable):
        raise
    except TransferError as exc:
        raise EloDbUnreadable(
            f"node {node.name}: {ELO_DB} is not a readable SQLite DB: {exc}"
        ) from exc


def collect_node_matches(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> MatchesResult:
    """Snapshot the node's Elo DB if it changed, bring every Elo snapshot the node
    originated up to policy, then union whatever is new into the fleet's match DB."""
    result = MatchesResult(node=node.name)
    catalog.sync_nodes(fleet.nodes)
    transport = transports.for_node(node)
    result.replication.add(confirm_originated(node, SNAPSHOT_KIND, fleet, catalog, transports))
    db = transport.stat(node, ELO_DB)
    if db is not None:
        result.elo_db = True
        snapshot = _checked_snapshot(node, db, transports, catalog, result)
        result.snapshot_taken, result.unchanged = snapshot.taken, not snapshot.taken
        result.snapshot_sha256 = snapshot.sha256

    settled = collect_originated(
        node, SNAPSHOT_KIND, fleet.policy.min_replicas.elo, collected_path, fleet, catalog,
        transports,
    )  # fmt: skip
    result.replication.add(settled.replication)
    result.durable_copies = {sha[:16]: n for sha, n in settled.durable_copies.items()}
    result.under_replicated = settled.under_replicated
    result.union = union_all(fleet, catalog, transports)
    return result


def choose_primary(fleet: Fleet, catalog: Catalog) -> Node:
    """The durable node that holds the union DB: the first reachable one in the inventory."""
    down = unavailable_nodes(catalog.nodes_frame(), catalog.open_breakers())
    for node in fleet.durable_nodes:
        if node.name not in down:
            return node
    raise TransferError("no reachable durable node (storage/coordinator, not ephemeral)")


def union_all(fleet: Fleet, catalog: Catalog, transports: Transports) -> UnionResult:
    """Put every durably collected Elo snapshot into the primary's union DB; what could
    not be put there is in `staging_errors` (module docstring)."""
    result = UnionResult()
    primary = choose_primary(fleet, catalog)
    result.primary = primary.name
    with waiting_lease(catalog, UNION_LEASE):
        left_out = _stage_on(primary, fleet, catalog, transports, result.moved)
        replicas = catalog.replicas_frame([SNAPSHOT_KIND])
        here = replicas[(replicas["node"] == primary.name) & (replicas["state"] == "verified")]
        here = here.drop_duplicates("sha256").sort_values("sha256")
        payload = [
            {"path": r.path, "sha256": r.sha256, "label": _label(r.origin_node, r.name)}
            for r in here.itertuples(index=False)
        ]
        stats = run_script(
            primary, transports, MATCHES_SCRIPT, ["union", MATCHES_DB], payload=payload
        )
        bad_copies = [(u["sha256"], u["path"]) for u in stats["unavailable"]]
        catalog.drop_replicas(primary.name, bad_copies)
    for u in stats["unavailable"]:
        left_out[u["sha256"]] = (
            f"{u['label']} ({u['sha256'][:16]}): its copy on {primary.name} cannot be read: "
            f"{u['error']} "
            "(catalog record dropped; the next pass copies it again)"
        )
    result.staging_errors = [left_out[sha] for sha in sorted(left_out)]
    result.snapshots_unioned = int(stats["unioned"])
    result.totals = stats["totals"]
    result.rows = int(stats["rows"])
    result.conflicts = int(stats["conflicts"])
    result.merged_by_game_id = int(stats["matches_merged_by_game_id"])
    result.unreadable = stats["unreadable"]
    return result


def _label(origin_node: str, name: str) -> str:
    return f"{origin_node}:{name}"


def _stage_on(
    primary: Node,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    moved: ReplicationResult,
) -> dict[str, str]:
    """Copy the Elo snapshots held on other durable nodes but not on the primary to it,
    from a reachable holder (the next one when a copy fails); {sha256: why} for those
    that could not be copied."""
    durable = {n.name for n in fleet.durable_nodes}
    down = unavailable_nodes(catalog.nodes_frame(), catalog.open_breakers())
    replicas = catalog.replicas_frame([SNAPSHOT_KIND])
    verified = replicas[(replicas["state"] == "verified") & replicas["node"].isin(durable)]
    have = set(verified.loc[verified["node"] == primary.name, "sha256"])
    missing = verified[~verified["sha256"].isin(have)].sort_values(["sha256", "node"])
    artifacts = catalog.artifacts_frame([SNAPSHOT_KIND]).set_index("sha256")
    labels: dict[str, str] = {}
    holders: dict[str, list[tuple[str, str]]] = {}  # sha256 → reachable (node, path), in turn
    left_out: dict[str, str] = {}
    for sha, rows in missing.groupby("sha256"):
        sha = str(sha)
        art = artifacts.loc[sha]
        labels[sha] = f"{_label(art['origin_node'], art['name'])} ({sha[:16]})"
        up = rows[~rows["node"].isin(down)]
        if up.empty:
            left_out[sha] = (
                f"{labels[sha]}: held only by unreachable node(s) {', '.join(sorted(rows['node']))}"
            )
        else:
            holders[sha] = list(zip(up["node"], up["path"], strict=True))
    while holders:
        by_source: dict[str, list[CopyItem]] = {}
        for sha, turns in holders.items():
            source, path = turns.pop(0)
            target = collected_path(artifacts.loc[sha].rename(sha))
            by_source.setdefault(source, []).append(CopyItem(path, target, sha))
        for source, items in sorted(by_source.items()):
            outcomes = copy_recorded(fleet.node(source), primary, items, catalog, transports)
            for item, outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, CopyResult):
                    moved.count(outcome)
                    left_out.pop(item.sha256, None)
                    del holders[item.sha256]
                    continue
                moved.failures.append(str(outcome))
                left_out[item.sha256] = (
                    f"{labels[item.sha256]}: copy to {primary.name} failed: {outcome}"
                )
                if not holders[item.sha256]:
                    del holders[item.sha256]
    return left_out
