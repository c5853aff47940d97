"""Collect a node's game DBs: consistent snapshot on the node, then N verified durable copies.

Every generator, tournament and gauntlet DB under `games/` is snapshotted on its node
when it changed (`sync_assets/live_db.py`); the snapshot's games are counted per config
there (each game by its own board and player count: a file's name is only a hint, and a
game of another config is counted as misrouted, then merged where it belongs); and the
planner copies each snapshot to durable nodes until `policy.min_replicas.games` is met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import NodeUnreachable, TransferError
from resources.transport.programs import Program
from sync_assets.engine.live_db import collect_originated, confirm_originated, snapshot_if_changed
from sync_assets.engine.replication import ReplicationResult
from sync_assets.fleet import configs
from sync_assets.fleet.configs import ConfigKeyError, normalize_config
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games import merge as merge_module
from sync_assets.kinds import GAMES_SNAPSHOT

SNAPSHOT_KIND = GAMES_SNAPSHOT.name
MERGE_PY = Program("merge.py", merge_module, (configs,))
# Generator, tournament and gauntlet DBs directly under games/ (never canonical_*, never
# the collected/ tree on durable nodes).
GAME_DB_RE = re.compile(
    r"^games/(?P<stem>selfplay|(?:selfplay|tournament|gauntlet)_(?P<config>[^/]+))\.db$"
)


@dataclass
class CollectResult:
    databases: int = 0
    snapshots_taken: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: why"
    rejected_names: list[str] = field(default_factory=list)
    # Games whose own config is not the one their file's name says: path → {config: games}.
    misrouted: dict[str, dict[str, int]] = field(default_factory=dict)
    replication: ReplicationResult = field(default_factory=ReplicationResult)
    durable_copies: dict[str, int] = field(default_factory=dict)  # snapshot path → copies
    under_replicated: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Census:
    """Games per config in a snapshot, counted from each game's own board and players."""

    configs: dict[str, int]
    unparsed: int  # games whose board_type/num_players name no config


def db_config(path: str) -> str | None:
    """The config a game DB holds by its name (a hint only: every game is routed by its
    own board_type/num_players); None for the mixed-config selfplay.db."""
    m = GAME_DB_RE.match(path)
    if m is None:
        raise ValueError(f"{path}: not a game DB name")
    return normalize_config(m.group("config")) if m.group("config") else None


def collected_path(artifact: pd.Series) -> str:
    """Where a durable node keeps a collected snapshot: content-addressed, never reused."""
    stem = PurePosixPath(str(artifact["name"])).stem
    return f"games/collected/{artifact['origin_node']}/{stem}.{artifact.name[:16]}.db"


class NotAGameDb(TransferError):
    """The snapshot's verified bytes cannot be read as a game DB (a property of its
    content, so it is quarantined: never merged, its copies kept)."""


def count_configs(node: Node, path: str, transports: Transports) -> Census:
    """Census of a game DB snapshot, counted on its node (`merge.py --census`). Raises
    NotAGameDb when the file is not a readable game DB, TransferError when the count
    could not be made (the node, the command)."""
    out = transports.run_program(node, MERGE_PY, ["--census", path], timeout=3600)
    if out.get("status") not in ("ok", None):
        raise NotAGameDb(f"node {node.name}: {path}: {out.get('error', out['status'])}")
    try:
        return Census({str(c): int(n) for c, n in out["configs"].items()}, int(out["unparsed"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TransferError(f"node {node.name}: {path}: census not understood: {out}") from None


def record_census(node: Node, path: str, sha256: str, catalog: Catalog,
                  transports: Transports) -> Census:  # fmt: skip
    """Count a snapshot's games and record them. A snapshot whose *verified bytes* are
    not a game DB is quarantined (kept, never merged) and NotAGameDb raised; a copy that
    is gone or not those bytes is dropped from the catalog (TransferError: count it from
    another copy). Any other TransferError leaves it uncounted: counted again later."""
    try:
        census = count_configs(node, path, transports)
    except NotAGameDb as exc:
        transport = transports.for_node(node)
        if transport.stat(node, path) is None or transport.sha256(node, path) != sha256:
            catalog.drop_replicas(node.name, [(sha256, path)])
            raise TransferError(
                f"node {node.name}: {path}: copy of {sha256[:16]} is not those bytes; "
                "dropped from the catalog"
            ) from exc
        catalog.record_census(sha256, {}, 0)
        catalog.quarantine(sha256, str(exc))
        raise
    catalog.record_census(sha256, census.configs, census.unparsed)
    return census


def misrouted_games(hint: str | None, census: Census) -> dict[str, int]:
    """Games of other configs than the file's name says (none for mixed selfplay.db),
    and games that name no config at all."""
    out = {} if hint is None else {c: n for c, n in census.configs.items() if c != hint and n}
    if census.unparsed:
        out["unparsed"] = census.unparsed
    return out


def collect_node_games(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> CollectResult:
    """Snapshot changed game DBs on `node`, count each snapshot's games per config, and
    replicate every snapshot it originated. A DB that cannot be snapshotted or read is
    skipped with its reason; the others are still collected."""
    result = CollectResult()
    transport = transports.for_node(node)
    listing = transport.list(node, "games")
    result.rejected_names = list(listing.rejected)
    result.replication.add(confirm_originated(node, SNAPSHOT_KIND, fleet, catalog, transports))
    for db in listing.files:
        if not GAME_DB_RE.match(db.path):
            continue
        try:
            hint = db_config(db.path)
        except ConfigKeyError as exc:
            result.skipped.append(f"{db.path}: {exc}")
            continue
        result.databases += 1
        try:
            snapshot = snapshot_if_changed(
                node, db, kind=SNAPSHOT_KIND, config=hint, fleet=fleet, catalog=catalog,
                transports=transports,
            )  # fmt: skip
        except NodeUnreachable:
            raise
        except TransferError as exc:
            result.skipped.append(f"{db.path}: {exc}")
            continue
        if not snapshot.taken:
            result.unchanged += 1
            continue
        result.snapshots_taken += 1
        # Counted after the snapshot is registered: a DB whose games cannot be counted
        # is still collected durably (its bytes are safe), only never merged.
        try:
            census = record_census(node, snapshot.path, snapshot.sha256, catalog, transports)
        except NodeUnreachable:
            raise
        except TransferError as exc:
            result.skipped.append(f"{db.path}: collected, but its games not counted: {exc}")
            continue
        if misrouted := misrouted_games(hint, census):
            result.misrouted[db.path] = misrouted

    settled = collect_originated(
        node, SNAPSHOT_KIND, fleet.policy.min_replicas.games, collected_path, fleet, catalog,
        transports,
    )  # fmt: skip
    result.replication.add(settled.replication)
    names = catalog.artifacts_of(shas=[*settled.durable_copies, *settled.under_replicated])
    result.durable_copies = {
        f"{names[sha].name}@{sha[:12]}": n for sha, n in settled.durable_copies.items()
    }
    result.under_replicated = [names[sha].name for sha in settled.under_replicated]
    return result
