"""Collect a node's game DBs: consistent snapshot on the node, then N verified durable copies.

A live DB is never copied as such (LESSONS 5): the node takes a snapshot with the
SQLite backup API, the snapshot is hashed and registered in the catalog as an artifact
(origin = the node), and the planner copies it to durable nodes until policy is met.
An unchanged DB (same size and mtime of the DB and its WAL) is not snapshotted again,
so a second pass over an idle fleet moves zero bytes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd

from resources.catalog import Catalog
from resources.inventory import Fleet, Node
from resources.transport import Transports
from resources.transport.base import RemoteFile, Transport
from sync_assets.configs import ConfigKeyError, normalize_config
from sync_assets.placement import durable_copies
from sync_assets.replication import ReplicationResult, replicate

SNAPSHOT_KIND = "games_snapshot"
# Generator, tournament and gauntlet DBs directly under games/ (never canonical_*, never
# the collected/ tree on durable nodes).
GAME_DB_RE = re.compile(
    r"^games/(?P<stem>selfplay|(?:selfplay|tournament|gauntlet)_(?P<config>[^/]+))\.db$"
)
STAGING_DIR = ".fleetsync/snapshots"


@dataclass
class CollectResult:
    node: str
    databases: int = 0
    snapshots_taken: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: why"
    rejected_names: list[str] = field(default_factory=list)
    replication: ReplicationResult = field(default_factory=ReplicationResult)
    durable_copies: dict[str, int] = field(default_factory=dict)  # snapshot path → copies
    under_replicated: list[str] = field(default_factory=list)


def db_config(path: str) -> str | None:
    """The config a game DB holds by its name; None for the mixed-config selfplay.db."""
    m = GAME_DB_RE.match(path)
    if m is None:
        raise ValueError(f"{path}: not a game DB name")
    return normalize_config(m.group("config")) if m.group("config") else None


def collected_path(artifact: pd.Series) -> str:
    """Where a durable node keeps a collected snapshot: content-addressed, never reused."""
    stem = PurePosixPath(str(artifact["name"])).stem
    return f"games/collected/{artifact['origin_node']}/{stem}.{artifact.name[:16]}.db"


def _fingerprint(db: RemoteFile, wal: RemoteFile | None) -> str:
    # An empty WAL holds nothing (a read-only snapshot creates one beside an idle DB).
    wal_part = f"{wal.size}:{wal.mtime_ns}" if wal and wal.size else "-"
    return f"{db.size}:{db.mtime_ns}:{wal_part}"


def _snapshot(
    node: Node, db: RemoteFile, config: str | None, transport: Transport, catalog: Catalog
) -> str:
    """Snapshot one live DB on its node and register it; returns the snapshot's sha256."""
    staging = f"{STAGING_DIR}/{db.path}.{time.time_ns()}"
    snap = transport.snapshot_sqlite(node, db.path, staging)
    sha = transport.sha256(node, staging)
    known = catalog.artifacts_frame([SNAPSHOT_KIND])
    if (known["sha256"] == sha).any():
        # Same bytes as a snapshot we already hold (the DB was touched, not changed).
        transport.remove(node, staging)
    else:
        catalog.add_artifact(
            sha,
            kind=SNAPSHOT_KIND,
            config=config,
            name=db.path,
            size=snap.size,
            origin_node=node.name,
        )
        catalog.record_replica(sha, node.name, staging, snap.size, state="staging")
    return sha


def collect_node_games(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> CollectResult:
    """Snapshot changed game DBs on `node` and replicate every snapshot it originated."""
    result = CollectResult(node=node.name)
    catalog.sync_nodes(fleet.nodes)
    transport = transports.for_node(node)
    listing = transport.list(node, "games")
    result.rejected_names = list(listing.rejected)
    for db in listing.files:
        if not GAME_DB_RE.match(db.path):
            continue
        try:
            config = db_config(db.path)
        except ConfigKeyError as exc:
            result.skipped.append(f"{db.path}: {exc}")
            continue
        result.databases += 1
        fingerprint = _fingerprint(db, transport.stat(node, f"{db.path}-wal"))
        previous = catalog.source_state(node.name, db.path)
        if previous and previous[0] == fingerprint:
            result.unchanged += 1
            continue
        sha = _snapshot(node, db, config, transport, catalog)
        catalog.set_source_state(node.name, db.path, fingerprint, sha)
        result.snapshots_taken += 1

    # Replicate everything this node originated that is below policy, old deficits too.
    artifacts = catalog.artifacts_frame([SNAPSHOT_KIND])
    mine = artifacts[artifacts["origin_node"] == node.name]
    result.replication = replicate(mine["sha256"], fleet, catalog, transports, collected_path)

    replicas = catalog.replicas_frame([SNAPSHOT_KIND])
    copies = durable_copies(replicas, catalog.nodes_frame())
    wanted = fleet.policy.min_replicas.games
    for art in mine.itertuples(index=False):
        n = int(copies.get(art.sha256, 0))
        result.durable_copies[f"{art.name}@{art.sha256[:12]}"] = n
        if n < wanted:
            result.under_replicated.append(art.name)
            continue
        # Enough verified durable copies: the node's own staging snapshot can go.
        staged = replicas[
            (replicas["sha256"] == art.sha256)
            & (replicas["node"] == node.name)
            & (replicas["state"] == "staging")
        ]
        for path in staged["path"]:
            transport.remove(node, path)
            catalog.drop_replica(art.sha256, node.name, path)
    return result
