"""Collecting a live SQLite DB from a node: the part game DBs and Elo DBs share.

A live DB is never copied as such (LESSONS 5): the node takes a consistent snapshot
(SQLite backup API) under a staging name, the snapshot is hashed there and registered
in the catalog (origin = the node, state `staging`), and once enough durable copies
exist, confirmed on disk, the node's staging copy is removed. An unchanged DB (same
size and mtime of the DB and its WAL) is not snapshotted again while its last snapshot
has a copy somewhere, so an idle fleet costs no snapshots and no bytes; once every copy
of that snapshot is lost, the next collection takes it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog, ReplicaState
from resources.transport import Transports
from resources.transport.base import RemoteFile
from sync_assets.engine.replication import (
    ReplicationResult,
    confirm_holders,
    counted_durable_nodes,
    node_names,
    replicate,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node

STAGING_DIR = ".fleetsync/snapshots"


@dataclass(frozen=True)
class Snapshot:
    sha256: str
    taken: bool  # False: the DB had not changed since the snapshot named here
    path: str = ""  # the staging copy on the node, for a snapshot taken now


def fingerprint(db: RemoteFile, wal: RemoteFile | None) -> str:
    # An empty WAL holds nothing (a read-only snapshot creates one beside an idle DB).
    wal_part = f"{wal.size}:{wal.mtime_ns}" if wal and wal.size else "-"
    return f"{db.size}:{db.mtime_ns}:{wal_part}"


def snapshot_if_changed(
    node: Node,
    db: RemoteFile,
    *,
    kind: str,
    config: str | None,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    check: Callable[[str], None] | None = None,
) -> Snapshot:
    """Snapshot `db` on its node unless unchanged *and* its last snapshot still has a
    copy somewhere; register it. `check(staging_path)` may refuse the snapshot by
    raising (the staging file is removed, nothing recorded).

    The staging copy is always recorded, even when the bytes equal an artifact already
    known: those copies may be gone, and this one is real. It is removed only once
    durable copies are confirmed (`collect_originated`)."""
    transport = transports.for_node(node)
    seen = fingerprint(db, transport.stat(node, f"{db.path}-wal"))
    previous = catalog.source_state(node.name, db.path)
    holders = node_names(fleet.nodes) - catalog.uncounted_nodes()  # a lost node's copy is none
    if previous and previous[0] == seen and catalog.has_copy(previous[1], holders):
        return Snapshot(previous[1], taken=False)
    staging = f"{STAGING_DIR}/{db.path}.{time.time_ns()}"
    snap = transport.snapshot_sqlite(node, db.path, staging)
    if check is not None:
        try:
            check(staging)
        except Exception:
            transport.remove(node, staging)
            raise
    sha = transport.sha256(node, staging)
    catalog.add_artifact(
        sha, kind=kind, config=config, name=db.path, size=snap.size, origin_node=node.name
    )
    catalog.record_replica(sha, node.name, staging, snap.size, state=ReplicaState.STAGING)
    catalog.set_source_state(node.name, db.path, seen, sha)
    return Snapshot(sha, taken=True, path=staging)


@dataclass
class Settled:
    durable_copies: dict[str, int] = field(default_factory=dict)  # sha256 → copies
    under_replicated: list[str] = field(default_factory=list)  # sha256
    replication: ReplicationResult = field(default_factory=ReplicationResult)


def confirm_originated(
    node: Node, kind: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> ReplicationResult:
    """Look at the durable copies of every snapshot `node` originated, on disk (one
    command per holder node, no hashing), before anything is decided from the catalog:
    an unchanged DB is snapshotted again once no copy of its snapshot is left."""
    return confirm_holders(catalog.originated(kind, node.name), fleet, catalog, transports)


def collect_originated(
    node: Node,
    kind: str,
    wanted: int,
    target_path: Callable[[pd.Series], str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> Settled:
    """Bring every snapshot `node` originated up to `wanted` durable copies, then remove
    the node's staging copies of those that have them, confirmed on disk right before
    (nothing is deleted on the catalog's word)."""
    mine = catalog.originated(kind, node.name)
    settled = Settled()
    if not mine:
        return settled
    settled.replication.add(replicate(mine, fleet, catalog, transports, target_path))
    _release_staging(node, mine, wanted, fleet, catalog, transports, settled)
    return settled


def _release_staging(
    node: Node, mine: list[str], wanted: int, fleet: Fleet, catalog: Catalog,
    transports: Transports, settled: Settled,
) -> None:  # fmt: skip
    """Count durable copies of the snapshots `node` originated; where policy is met by
    copies looked at on disk just now, on reachable nodes, the node's own staging copy
    goes (it was only ever a source), dropped from the catalog in the same step."""
    staged = catalog.replicas_of(mine, [ReplicaState.STAGING], [node.name])
    looked = confirm_holders(sorted({r.sha256 for r in staged}), fleet, catalog, transports)
    settled.replication.add(looked)
    trusted = counted_durable_nodes(fleet, catalog) - unavailable_nodes(catalog)
    copies = catalog.durable_copy_counts(trusted - looked.unconfirmed_nodes, shas=mine)
    # A staging copy goes only on copies looked at just now: a node skipped while looking
    # (breaker open) may count as available a moment later, on the catalog's word alone.
    seen = catalog.durable_copy_counts(trusted & looked.confirmed_nodes, shas=mine)
    transport = transports.for_node(node)
    for sha in mine:
        pending = [r for r in staged if r.sha256 == sha]
        settled.durable_copies[sha] = n = (seen if pending else copies).get(sha, 0)
        if n < wanted:
            settled.under_replicated.append(sha)
            continue
        for r in pending:
            transport.remove(node, r.path)
            catalog.drop_replicas(node.name, [(sha, r.path)])
