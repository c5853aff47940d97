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
from resources.transport.base import NodeUnreachable, RemoteFile, TransferError
from resources.transport.programs import RemoteProgramFailed
from sync_assets.elo.remote import MATCHES_PY, waiting_lease
from sync_assets.engine.consolidate import choose_primary, stage
from sync_assets.engine.live_db import (
    Snapshot,
    collect_originated,
    confirm_originated,
    snapshot_if_changed,
)
from sync_assets.engine.replication import ReplicationResult, counted_durable_nodes
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.kinds import ELO_SNAPSHOT

ELO_DB = "elo/unified_elo.db"
MATCHES_DB = "elo/fleet_matches.db"
SNAPSHOT_KIND = ELO_SNAPSHOT.name
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
    node: Node, db: RemoteFile, fleet: Fleet, catalog: Catalog, transports: Transports,
    result: MatchesResult,
) -> Snapshot:  # fmt: skip
    """Snapshot if changed, read through once on the node before anything is recorded."""

    def check(staging: str) -> None:
        try:
            args = ["check", staging]
            result.check = transports.run_program(node, MATCHES_PY, args, timeout=3600)
        except RemoteProgramFailed as exc:
            raise EloDbUnreadable(
                f"node {node.name}: {ELO_DB} cannot be read as an Elo DB: {exc}"
            ) from exc

    try:
        return snapshot_if_changed(
            node, db, kind=SNAPSHOT_KIND, config=None, fleet=fleet, catalog=catalog,
            transports=transports, check=check,
        )  # fmt: skip
    except (NodeUnreachable, EloDbUnreadable):
        raise
    except TransferError as exc:
        why = f"node {node.name}: {ELO_DB} is not a readable SQLite DB: {exc}"
        raise EloDbUnreadable(why) from exc


def collect_node_matches(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> MatchesResult:
    """Snapshot the node's Elo DB if it changed, bring every Elo snapshot the node
    originated up to policy, then union whatever is new into the fleet's match DB."""
    result = MatchesResult()
    transport = transports.for_node(node)
    result.replication.add(confirm_originated(node, SNAPSHOT_KIND, fleet, catalog, transports))
    db = transport.stat(node, ELO_DB)
    if db is not None:
        result.elo_db = True
        snapshot = _checked_snapshot(node, db, fleet, catalog, transports, result)
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


def union_all(fleet: Fleet, catalog: Catalog, transports: Transports) -> UnionResult:
    """Put every durably collected Elo snapshot into the primary's union DB; what could
    not be put there is in `staging_errors` (module docstring)."""
    result = UnionResult()
    primary = choose_primary(fleet, catalog)
    result.primary = primary.name
    with waiting_lease(catalog, UNION_LEASE):
        durable = counted_durable_nodes(fleet, catalog)
        collected = catalog.durable_copy_counts(durable, kind=SNAPSHOT_KIND)
        staged = stage(primary, collected, collected_path, fleet, catalog, transports)
        result.moved, left_out = staged.moved, staged.missing
        payload = [
            {"path": c.path, "sha256": c.sha256, "label": f"{c.origin_node}:{c.name}"}
            for c in staged.held
        ]
        stats = transports.run_program(
            primary, MATCHES_PY, ["union", MATCHES_DB], payload, timeout=3600
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
