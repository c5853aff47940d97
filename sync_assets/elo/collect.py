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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from resources.catalog import Catalog
from resources.inventory import Fleet, Node
from resources.transport import Transports
from resources.transport.base import (
    CopyItem,
    CopyResult,
    NodeUnreachable,
    RemoteFile,
    TransferError,
)
from sync_assets.elo.remote import MATCHES_SCRIPT, NodeScriptFailed, run_script, waiting_lease
from sync_assets.live_db import Snapshot, release_staging, snapshot_if_changed
from sync_assets.replication import (
    ReplicationResult,
    copy_recorded,
    replicate,
    unavailable_nodes,
)

ELO_DB = "elo/unified_elo.db"
MATCHES_DB = "elo/fleet_matches.db"
SNAPSHOT_KIND = "elo_snapshot"
UNION_LEASE = "elo/fleet_matches"


class EloDbUnreadable(TransferError):
    """The node's Elo DB cannot be snapshotted or read as an Elo DB: retrying will not help."""


@dataclass
class UnionResult:
    """What one union pass did on the primary."""

    primary: str | None = None
    snapshots_unioned: int = 0
    totals: dict[str, Any] = field(default_factory=dict)  # matches.py totals
    rows: int = 0  # matches in the union DB afterwards
    moved: ReplicationResult = field(default_factory=ReplicationResult)


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
    db = transport.stat(node, ELO_DB)
    if db is not None:
        result.elo_db = True
        snapshot = _checked_snapshot(node, db, transports, catalog, result)
        result.snapshot_taken, result.unchanged = snapshot.taken, not snapshot.taken
        result.snapshot_sha256 = snapshot.sha256

    artifacts = catalog.artifacts_frame([SNAPSHOT_KIND])
    mine = artifacts[artifacts["origin_node"] == node.name]
    result.replication = replicate(mine["sha256"], fleet, catalog, transports, collected_path)
    settled = release_staging(
        node, mine, SNAPSHOT_KIND, fleet.policy.min_replicas.elo, catalog, transports
    )
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
    """Put every durably collected Elo snapshot into the primary's union DB."""
    result = UnionResult()
    primary = choose_primary(fleet, catalog)
    result.primary = primary.name
    durable = {n.name for n in fleet.durable_nodes}
    with waiting_lease(catalog, UNION_LEASE):
        _stage_on(primary, durable, fleet, catalog, transports, result.moved)
        replicas = catalog.replicas_frame([SNAPSHOT_KIND])
        here = replicas[(replicas["node"] == primary.name) & (replicas["state"] == "verified")]
        here = here.drop_duplicates("sha256").sort_values("sha256")
        payload = [
            {"path": r.path, "sha256": r.sha256, "label": f"{r.origin_node}:{r.name}"}
            for r in here.itertuples(index=False)
        ]
        stats = run_script(
            primary, transports, MATCHES_SCRIPT, ["union", MATCHES_DB], payload=payload
        )
    result.snapshots_unioned = int(stats["unioned"])
    result.totals = stats["totals"]
    result.rows = int(stats["rows"])
    return result


def _stage_on(
    primary: Node,
    durable: set[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    moved: ReplicationResult,
) -> None:
    """Copy the Elo snapshots held on other durable nodes but not on the primary to it."""
    replicas = catalog.replicas_frame([SNAPSHOT_KIND])
    verified = replicas[(replicas["state"] == "verified") & replicas["node"].isin(durable)]
    have = set(verified.loc[verified["node"] == primary.name, "sha256"])
    missing = verified[~verified["sha256"].isin(have)].drop_duplicates("sha256")
    artifacts = catalog.artifacts_frame([SNAPSHOT_KIND]).set_index("sha256")
    by_source: dict[str, list[CopyItem]] = {}
    for row in missing.itertuples(index=False):
        target = collected_path(artifacts.loc[row.sha256].rename(row.sha256))
        by_source.setdefault(row.node, []).append(CopyItem(row.path, target, row.sha256))
    for source, items in sorted(by_source.items()):
        for outcome in copy_recorded(fleet.node(source), primary, items, catalog, transports):
            if isinstance(outcome, CopyResult):
                moved.count(outcome)
            else:
                moved.failures.append(str(outcome))
