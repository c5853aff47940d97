"""Collecting a live SQLite DB from a node: the part game DBs and Elo DBs share.

A live DB is never copied as such (LESSONS 5): the node takes a consistent snapshot
(SQLite backup API) under a staging name, the snapshot is hashed there and registered
in the catalog (origin = the node, state `staging`), and once enough durable copies
exist the node's staging copy is removed. An unchanged DB (same size and mtime of the
DB and its WAL) is not snapshotted again, so an idle fleet costs no snapshots and no
bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog
from resources.inventory import Node
from resources.transport import Transports
from resources.transport.base import RemoteFile
from sync_assets.placement import durable_copies

STAGING_DIR = ".fleetsync/snapshots"


@dataclass(frozen=True)
class Snapshot:
    sha256: str
    taken: bool  # False: the DB had not changed since the snapshot named here


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
    catalog: Catalog,
    transports: Transports,
    check: Callable[[str], None] | None = None,
) -> Snapshot:
    """Snapshot `db` on its node unless unchanged; register it. `check(staging_path)` may
    refuse the snapshot by raising: the staging file is removed and nothing recorded."""
    transport = transports.for_node(node)
    seen = fingerprint(db, transport.stat(node, f"{db.path}-wal"))
    previous = catalog.source_state(node.name, db.path)
    if previous and previous[0] == seen:
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
    if (catalog.artifacts_frame([kind])["sha256"] == sha).any():
        transport.remove(node, staging)  # same bytes as a snapshot already held
    else:
        catalog.add_artifact(
            sha, kind=kind, config=config, name=db.path, size=snap.size, origin_node=node.name
        )
        catalog.record_replica(sha, node.name, staging, snap.size, state="staging")
    catalog.set_source_state(node.name, db.path, seen, sha)
    return Snapshot(sha, taken=True)


@dataclass
class Settled:
    durable_copies: dict[str, int] = field(default_factory=dict)  # sha256 → copies
    under_replicated: list[str] = field(default_factory=list)  # sha256


def release_staging(
    node: Node, mine: pd.DataFrame, kind: str, wanted: int, catalog: Catalog,
    transports: Transports,
) -> Settled:  # fmt: skip
    """Count durable copies of the snapshots `node` originated; where policy is met, the
    node's own staging copy goes (it was only ever a source)."""
    settled = Settled()
    replicas = catalog.replicas_frame([kind])
    copies = durable_copies(replicas, catalog.nodes_frame())
    transport = transports.for_node(node)
    for sha in mine["sha256"]:
        settled.durable_copies[sha] = n = int(copies.get(sha, 0))
        if n < wanted:
            settled.under_replicated.append(sha)
            continue
        staged = replicas[
            (replicas["sha256"] == sha)
            & (replicas["node"] == node.name)
            & (replicas["state"] == "staging")
        ]
        for path in staged["path"]:
            transport.remove(node, path)
            catalog.drop_replicas(node.name, [(sha, path)])
    return settled
