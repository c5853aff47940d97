"""Collect a node's game DBs: consistent snapshot on the node, then N verified durable copies.

Every generator, tournament and gauntlet DB under `games/` is snapshotted on its node
when it changed (`sync_assets/live_db.py`), and the planner copies each snapshot to
durable nodes until `policy.min_replicas.games` is met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd

from resources.catalog import Catalog
from resources.inventory import Fleet, Node
from resources.transport import Transports
from sync_assets.configs import ConfigKeyError, normalize_config
from sync_assets.live_db import release_staging, snapshot_if_changed
from sync_assets.replication import ReplicationResult, replicate

SNAPSHOT_KIND = "games_snapshot"
# Generator, tournament and gauntlet DBs directly under games/ (never canonical_*, never
# the collected/ tree on durable nodes).
GAME_DB_RE = re.compile(
    r"^games/(?P<stem>selfplay|(?:selfplay|tournament|gauntlet)_(?P<config>[^/]+))\.db$"
)


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
        if snapshot_if_changed(
            node, db, kind=SNAPSHOT_KIND, config=config, catalog=catalog, transports=transports
        ).taken:
            result.snapshots_taken += 1
        else:
            result.unchanged += 1

    # Replicate everything this node originated that is below policy, old deficits too.
    artifacts = catalog.artifacts_frame([SNAPSHOT_KIND])
    mine = artifacts[artifacts["origin_node"] == node.name]
    result.replication = replicate(mine["sha256"], fleet, catalog, transports, collected_path)
    settled = release_staging(
        node, mine, SNAPSHOT_KIND, fleet.policy.min_replicas.games, catalog, transports
    )
    names = dict(zip(mine["sha256"], mine["name"], strict=True))
    result.durable_copies = {
        f"{names[sha]}@{sha[:12]}": n for sha, n in settled.durable_copies.items()
    }
    result.under_replicated = [names[sha] for sha in settled.under_replicated]
    return result
