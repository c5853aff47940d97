"""Merge node game-DB snapshots into one `canonical_{config}.db` (DATA.md, "Game databases").

This file is shipped to remote nodes (a bundle with `fleet/configs.py`, its one
helper: `resources/transport/programs.py`) and run there:

    merge.py CANONICAL CONFIG SNAPSHOT[=LABEL]...  → merge stats, JSON on stdout
    merge.py --census SNAPSHOT                     → the snapshot's games per config, JSON

so it imports nothing but the standard library and that helper (and runs on Python
≥ 3.8). For the same reason the game-DB schema (v18) is defined *here*, not in
`schema.py`: the node gets only the bundle, and one DDL in two places would drift.
`schema.py` re-exports it for the rest of fleetsync.

Routing. A game belongs to the config of its own `board_type` and `num_players`,
normalised like config keys (board aliases such as `sq8` or `hex`, case and blanks
ignored; 2..4 players as a number or text); the snapshot's file name plays no part.
Canonical stores the normalised spelling (`square8`, integer 2): one config, one
spelling, for every reader (the exporter selects exact values). `census` counts a
snapshot's games per config with one GROUP BY over `games`; games whose board or
player count does not parse are `unparsed` and reach no canonical DB.

Merge rules, all set-based SQL over an ATTACHed snapshot, one transaction per
snapshot (a crash leaves canonical as it was after the previous snapshot):

- insert-if-absent on `game_id`, child rows copied with the game, only the
  columns both sides share (schemas drift between nodes); a column the snapshot
  lacks reads as NULL, also where moves are compared (a copy from a node without
  player/move_type differs from a full copy: kept under `~fingerprint`, not lost);
- only complete games: every game of the config is accepted or rejected with the
  first reason that applies (`rejected`, per reason):
    null_game_id           its `games` row has no game_id;
    conflicting_game_rows  two different `games` rows carry its id (an older
                           schema without a primary key; identical copies are one game);
    unfinished             game_status is not completed/finished;
    bad_moves              a move row lacks move_number or move_json, or two
                           different move rows share one move_number;
    too_few_moves          fewer than 5 (distinct) move rows;
  (DATA.md's definition of complete: finished, >= 5 moves present. A game is not
  rejected for what its child tables lack: an old schema without initial states
  would otherwise lose every game);
- rows of the optional tables (game_players, game_initial_state,
  game_state_snapshots) that canonical cannot hold are dropped, not their game
  (`rows_dropped` per table and reason):
  null_required_field (NULL in a key or NOT NULL column), conflicting_rows (two
  different rows under one key), missing_column (the snapshot lacks a column
  canonical requires, so no row of the table is usable); identical_copy counts
  exact duplicate rows collapsed into one, in any child table;
- an id already in canonical is compared move row by move row in SQL (the
  fingerprinted fields): same moves → duplicate; different moves → a second
  game, kept under the deterministic id `{game_id}~{fingerprint[:12]}`
  (fingerprint = SHA-256 of the ordered move_number, player, move_type,
  move_json), so meeting it again on another node is a duplicate, not a third
  copy;
- provenance (`fleetsync_provenance`) and the fingerprints of both sides of
  every collision (`fleetsync_fingerprints`) live in side tables of canonical.

Per snapshot the result says `status`: "merged", or "unreadable" with `error` (the
file is missing, not SQLite, lacks a game DB's tables or columns — games:
game_id, board_type, num_players, game_status; game_moves: game_id, move_number,
move_json — or a read of it fails, e.g. on a corrupt page); then the next
snapshot is merged. seen (games of the config) = added + duplicates +
sum(rejected); collisions_kept counts the `added` games stored under a
`~fingerprint` id; config_respelled the seen games spelled otherwise than
canonical stores them; rows_added and rows_dropped are per table; census is the
snapshot's games per config (as `--census` gives it). `totals` sums the counters
and counts the merged and unreadable snapshots.

Whose fault is a failed statement? SQLite's error codes do not name the file (a
malformed page in either is SQLITE_CORRUPT), so the snapshot is read again, alone:
the same statements against an empty in-memory canonical, rows read and discarded.
If that read fails too, the snapshot is unreadable; if it succeeds, the failure was
canonical's (disk full, read-only, corrupt canonical...) and `merge_snapshots`
raises MergeError carrying the snapshots decided so far. BEGIN and COMMIT touch
only canonical: their failures are canonical's without a second read. The CLI
exits 1 only for such canonical-level failures (and an unknown config).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from sync_assets.fleet.configs import BOARD_ALIASES

SCHEMA_VERSION = 18

_FK = "REFERENCES games(game_id) ON DELETE CASCADE"

# table → ((column, declaration), ...), then table constraints. Order = DATA.md.
_SCHEMA: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "schema_metadata": ((("key", "TEXT PRIMARY KEY"), ("value", "TEXT")), ""),
    "games": (
        (
            ("game_id", "TEXT PRIMARY KEY"),
            ("board_type", "TEXT NOT NULL"),
            ("num_players", "INTEGER NOT NULL"),
            ("rng_seed", "INTEGER"),
            ("created_at", "TEXT"),
            ("completed_at", "TEXT"),
            ("game_status", "TEXT NOT NULL"),
            ("winner", "INTEGER"),
            ("termination_reason", "TEXT"),
            ("total_moves", "INTEGER"),
            ("total_turns", "INTEGER"),
            ("duration_ms", "INTEGER"),
            ("source", "TEXT"),
            ("schema_version", "INTEGER"),
            ("metadata_json", "TEXT"),
            ("quality_score", "REAL"),
            ("engine_mode", "TEXT"),
            ("opponent_type", "TEXT"),
            ("opponent_model_id", "TEXT"),
        ),
        "",
    ),
    "game_players": (
        (
            ("game_id", f"TEXT NOT NULL {_FK}"),
            ("player_number", "INTEGER NOT NULL"),
            ("player_type", "TEXT"),
            ("ai_type", "TEXT"),
            ("ai_difficulty", "INTEGER"),
            ("final_eliminated_rings", "INTEGER"),
            ("final_territory_spaces", "INTEGER"),
            ("final_rings_in_hand", "INTEGER"),
        ),
        "PRIMARY KEY (game_id, player_number)",
    ),
    "game_initial_state": (
        (
            ("game_id", f"TEXT PRIMARY KEY {_FK}"),
            ("initial_state_json", "TEXT NOT NULL"),
            ("compressed", "INTEGER NOT NULL DEFAULT 0"),
        ),
        "",
    ),
    "game_moves": (
        (
            ("game_id", f"TEXT NOT NULL {_FK}"),
            ("move_number", "INTEGER NOT NULL"),
            ("turn_number", "INTEGER"),
            ("player", "INTEGER"),
            ("phase", "TEXT"),
            ("move_type", "TEXT"),
            ("move_json", "TEXT NOT NULL"),
            ("move_probs", "TEXT"),
            ("search_stats_json", "TEXT"),
        ),
        "PRIMARY KEY (game_id, move_number)",
    ),
    "game_state_snapshots": (
        (
            ("game_id", f"TEXT NOT NULL {_FK}"),
            ("move_number", "INTEGER NOT NULL"),
            ("state_json", "TEXT NOT NULL"),
            ("compressed", "INTEGER NOT NULL DEFAULT 0"),
            ("state_hash", "TEXT"),
        ),
        "PRIMARY KEY (game_id, move_number)",
    ),
}

# Tables holding game data: `games` first, then its children (insert order).
GAME_TABLES: tuple[str, ...] = (
    "games",
    "game_players",
    "game_initial_state",
    "game_moves",
    "game_state_snapshots",
)

# One row per key; older schemas without a primary key may repeat one.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "games": ("game_id",),
    "game_players": ("game_id", "player_number"),
    "game_initial_state": ("game_id",),
    "game_moves": ("game_id", "move_number"),
    "game_state_snapshots": ("game_id", "move_number"),
}

# Columns without which a snapshot is not a game DB (routing, status, the moves).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "games": ("game_id", "board_type", "num_players", "game_status"),
    "game_moves": ("game_id", "move_number", "move_json"),
}

FINISHED_STATUSES = ("completed", "finished")
MIN_MOVES = 5
_FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED_STATUSES)
# Why a game is not merged, in the order they are tested (the first that applies).
REJECT_REASONS = (
    "null_game_id",
    "conflicting_game_rows",
    "unfinished",
    "bad_moves",
    "too_few_moves",
)

_SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS fleetsync_provenance"
    " (game_id TEXT PRIMARY KEY, source_label TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleetsync_fingerprints"
    " (game_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL)",
)
# The move fields a game's identity (fingerprint) is made of, in order.
_FINGERPRINT_FIELDS = ("move_number", "player", "move_type", "move_json")

# Child tables a game is complete without: their bad rows are dropped, not the game.
_OPTIONAL_TABLES = ("game_players", "game_initial_state", "game_state_snapshots")


class MergeError(Exception):
    """Canonical cannot be merged into (or an unknown config); `completed` = the per-snapshot
    results decided before it stopped (merged ones are committed)."""

    def __init__(self, message: str, completed: Sequence[dict] = ()) -> None:
        super().__init__(message)
        self.completed = list(completed)


class SnapshotUnreadable(Exception):
    """The snapshot itself cannot be read as a game DB (the message says why)."""


def _board_of(value: object) -> str | None:
    return BOARD_ALIASES.get(value.strip().lower()) if isinstance(value, str) else None


def _players_of(value: object) -> int | None:
    """2..4 from 2, 2.0, '2', ' 2P'; None for anything else."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        text = text[:-1] if text.endswith("p") else text
    else:
        return None
    return int(text) if text in ("2", "3", "4") else None


def config_key(board_type: object, num_players: object) -> str | None:
    """The normalised config key of a game row's raw values; None if they do not parse."""
    board, players = _board_of(board_type), _players_of(num_players)
    return None if board is None or players is None else f"{board}_{players}p"


def parse_config(config: str) -> tuple[str, int]:
    """`hex8_2p` (or an alias such as `sq8_2P`, `hex8_2`) → (`hex8`, 2)."""
    name, sep, count = config.strip().rpartition("_")
    board, players = _board_of(name), _players_of(count)
    if not sep or board is None or players is None:
        raise MergeError(f"unknown config key {config!r}: expected {{board}}_{{n}}p")
    return board, players


def create_game_db(
    conn: sqlite3.Connection, *, omit_columns: dict[str, set[str]] | None = None
) -> None:
    """Create the v18 tables (idempotent); `omit_columns` mimics older node schemas.

    Deliberately no trigger rejecting "completed with < 5 moves": fixtures need
    such invalid games, and the merge enforces the rule itself, set-based.
    """
    omit = omit_columns or {}
    for table, cols in omit.items():
        known = {name for name, _ in _SCHEMA.get(table, ((), ""))[0]}
        required = set(REQUIRED_COLUMNS.get(table, ())) | set(KEY_COLUMNS.get(table, ()))
        if not cols <= known or cols & required:
            raise ValueError(f"cannot omit {sorted(cols)} from {table!r}")
    for table, (columns, constraint) in _SCHEMA.items():
        parts = [f"{name} {decl}" for name, decl in columns if name not in omit.get(table, ())]
        if constraint:
            parts.append(constraint)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_games_config ON games(board_type, num_players)")
    conn.execute(
        "INSERT OR IGNORE INTO schema_metadata(key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )


def open_game_db(path: str | Path) -> sqlite3.Connection:
    """Open (creating with the full schema if needed) a game DB for bulk writes.

    Autocommit mode: callers issue BEGIN/COMMIT. WAL as every game DB, so
    readers keep reading during a merge; synchronous NORMAL (safe in WAL: a
    power cut may lose the last commit, never consistency); temp tables in
    memory. Measured with bench/bench_merge.py at 200 k games: a 2 MB, 128 MB
    or 512 MB page cache made no difference beyond noise; 128 MB bounds memory
    on remote nodes (larger canonicals were not measured).
    """
    conn = sqlite3.connect(str(path), isolation_level=None, uri=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-131072")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("BEGIN IMMEDIATE")
    create_game_db(conn)
    conn.execute("COMMIT")
    return conn


# ---- what a table looks like on each side ----------------------------------------------


class _Shape(NamedTuple):
    """What the PRAGMAs say about one table of one attached DB."""

    columns: tuple[str, ...]  # in table order; () when the table is absent
    not_null: frozenset[str]  # declared NOT NULL
    defaulted: frozenset[str]  # declared with a DEFAULT
    keyed: bool  # a primary key or unique index within KEY_COLUMNS: no key repeats


def _shape(conn: sqlite3.Connection, schema: str, table: str) -> _Shape:
    info = conn.execute(f"PRAGMA {schema}.table_info({table})").fetchall()
    key = set(KEY_COLUMNS[table])
    primary = {row[1] for row in info if row[5]}
    keyed = bool(primary) and primary <= key
    for row in conn.execute(f"PRAGMA {schema}.index_list({table})").fetchall():
        name, unique, partial = row[1], row[2], row[4] if len(row) > 4 else 0
        if keyed or not unique or partial:
            continue
        quoted = "'" + name.replace("'", "''") + "'"
        cols = [r[2] for r in conn.execute(f"PRAGMA {schema}.index_info({quoted})")]
        keyed = bool(cols) and None not in cols and set(cols) <= key
    return _Shape(
        tuple(row[1] for row in info),
        frozenset(row[1] for row in info if row[3]),
        frozenset(row[1] for row in info if row[4] is not None),
        keyed,
    )


class _Plan(NamedTuple):
    """How one table's rows go from the snapshot into canonical."""

    table: str
    shared: tuple[str, ...]  # copied: canonical's columns the snapshot has, canonical order
    nullable: tuple[str, ...]  # must hold a value, but the snapshot allows NULL there
    missing: tuple[str, ...]  # canonical requires them, the snapshot lacks them: no row fits
    keyed: bool  # the snapshot cannot repeat a key

    @property
    def plain(self) -> bool:
        """Every row of an accepted game fits canonical as it is: a plain INSERT … SELECT."""
        return self.keyed and not self.nullable and not self.missing


def _plan(table: str, main: _Shape, src: _Shape) -> _Plan:
    # game_id aside: rows are reached through it, so a row without one belongs to no game.
    required = [
        c
        for c in main.columns
        if c != "game_id" and (c in KEY_COLUMNS[table] or c in main.not_null)
    ]
    return _Plan(
        table,
        tuple(c for c in main.columns if c in src.columns),
        tuple(c for c in required if c in src.columns and c not in src.not_null),
        tuple(c for c in required if c not in src.columns and c not in main.defaulted),
        src.keyed,
    )


def _any_null(alias: str, columns: Sequence[str]) -> str:
    return " OR ".join(f"{alias}.{c} IS NULL" for c in columns)


def _sub_key(table: str) -> str | None:
    """The key column after game_id (move_number, player_number), if the table has one."""
    rest = KEY_COLUMNS[table][1:]
    return rest[0] if rest else None


def _find_twins(conn: sqlite3.Connection, plan: _Plan) -> None:
    """Record in temp.twin the keys under which the snapshot holds different rows.

    Only for tables without a unique key. Set-based (a correlated subquery gets no
    automatic index, and such old tables may have none): a key-only GROUP BY finds the
    repeated keys, then only their rows are compared, column by column, so no sort
    carries whole rows. Rows lacking a required value are left out (they are bad anyway).
    """
    if plan.keyed or "game_id" not in plan.shared:
        return
    table, sub = plan.table, _sub_key(plan.table)
    sub_expr = f"s.{sub}" if sub else "NULL"
    needed = {"game_id"} if table == "games" else {"game_id", *plan.nullable}
    usable = " AND ".join(f"s.{c} IS NOT NULL" for c in sorted(needed))
    compared = [c for c in plan.shared if c not in KEY_COLUMNS[table]]
    if not compared:
        return
    conn.execute("DELETE FROM temp.dupkey")
    conn.execute(
        f"INSERT INTO temp.dupkey SELECT s.game_id, {sub_expr} FROM src.{table} s"
        f" WHERE {usable} GROUP BY 1, 2 HAVING count(*) > 1"
    )
    same = " AND ".join(
        f"min(s.{c}) IS max(s.{c}) AND count(s.{c}) IN (0, count(*))" for c in compared
    )
    conn.execute(
        f"INSERT INTO temp.twin SELECT '{table}', d.game_id, d.sub"
        f" FROM temp.dupkey d CROSS JOIN src.{table} s ON s.game_id = d.game_id"
        + (f" AND s.{sub} = d.sub" if sub else "")
        + f" WHERE {usable} GROUP BY d.game_id, d.sub HAVING NOT ({same})"
    )


def _twin_sql(table: str) -> str:
    return f"g.game_id IN (SELECT w.game_id FROM temp.twin w WHERE w.tbl = '{table}')"


def _defect_sql(plan: _Plan) -> str | None:
    """SQL, true when snapshot game `g` has a row in this table that canonical cannot hold
    (NULL where a value is required) or two different rows under one key; None when the
    snapshot's own constraints rule both out."""
    conds = []
    if plan.nullable:
        conds.append(
            f"g.game_id IN (SELECT s.game_id FROM src.{plan.table} s"
            f" WHERE {_any_null('s', plan.nullable)})"
        )
    if not plan.keyed:
        conds.append(_twin_sql(plan.table))
    return " OR ".join(conds) or None


def _reason_sql(plans: dict[str, _Plan]) -> str:
    """SQL CASE: the rejection reason of snapshot game `g`, NULL when it is accepted.

    Only the checks the snapshot's schema leaves open are emitted: for a v18 snapshot
    this is the status and a probe of the moves index for a 5th row. Without that
    index, uncorrelated IN sets (built once).
    """
    games, moves = plans["games"], plans["game_moves"]
    branches = []
    if not games.keyed:
        branches.append((_twin_sql("games"), "conflicting_game_rows"))
    branches.append((f"NOT coalesce(g.game_status IN ({_FINISHED_SQL}), 0)", "unfinished"))
    bad_moves = _defect_sql(moves)
    if bad_moves:
        branches.append((bad_moves, "bad_moves"))
    if moves.keyed:
        # `OFFSET` probes the moves index for a 5th row instead of counting them all.
        too_few = (
            "(SELECT 1 FROM src.game_moves s WHERE s.game_id = g.game_id"
            f" LIMIT 1 OFFSET {MIN_MOVES - 1}) IS NULL"
        )
    else:
        too_few = (
            "g.game_id NOT IN (SELECT s.game_id FROM src.game_moves s"
            " WHERE s.game_id IS NOT NULL GROUP BY s.game_id"
            f" HAVING count(DISTINCT s.move_number) >= {MIN_MOVES})"
        )
    branches.append((too_few, "too_few_moves"))
    return "CASE " + " ".join(f"WHEN {cond} THEN '{why}'" for cond, why in branches) + " END"


# ---- census: games per config ----------------------------------------------------------


def _config_groups(conn: sqlite3.Connection, schema: str) -> list[tuple[object, object, int]]:
    """(raw board_type, raw num_players, games) — one GROUP BY, along idx_games_config."""
    return conn.execute(
        f"SELECT board_type, num_players, count(*) FROM {schema}.games"
        " GROUP BY board_type, num_players"
    ).fetchall()


def _census_of(groups: Sequence[tuple[object, object, int]]) -> dict:
    configs: dict[str, int] = {}
    unparsed = 0
    for board, players, n in groups:
        key = config_key(board, players)
        if key is None:
            unparsed += n
        else:
            configs[key] = configs.get(key, 0) + n
    return {"configs": dict(sorted(configs.items())), "unparsed": unparsed}


def _snapshot_uri(path: str) -> str:
    """Read-only URI: a mistyped path must fail, not create an empty DB."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def census(path: str | Path) -> dict:
    """Games per normalised config key in the snapshot at `path`; never raises for a bad file.

    {"path", "status": "ok", "games", "configs": {key: n}, "unparsed": n}, or "status":
    "unreadable" with "error". One GROUP BY over `games` (an index scan on a v18 DB).
    """
    result: dict = {"path": str(path), "games": 0, "configs": {}, "unparsed": 0}
    if not Path(path).is_file():
        return {**result, "status": "unreadable", "error": "no such file"}
    try:
        conn = sqlite3.connect(_snapshot_uri(str(path)), uri=True)
        try:
            columns = _shape(conn, "main", "games").columns
            lacking = [c for c in ("board_type", "num_players") if c not in columns]
            if lacking:
                return {**result, "status": "unreadable", "error": _not_a_game_db("games", lacking)}
            groups = _config_groups(conn, "main")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {**result, "status": "unreadable", "error": f"unreadable SQLite database ({exc})"}
    return {**result, "status": "ok", "games": sum(g[2] for g in groups), **_census_of(groups)}


def _not_a_game_db(table: str, lacking: Sequence[str]) -> str:
    return f"not a game DB: table {table} lacks {list(lacking)}"


# ---- one snapshot ----------------------------------------------------------------------


def _prepare(conn: sqlite3.Connection) -> None:
    for ddl in _SIDE_TABLES:
        conn.execute(ddl)
    conn.execute(
        "CREATE TEMP TABLE cand (game_id TEXT PRIMARY KEY, copies INTEGER, reason TEXT)"
        " WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TEMP TABLE incoming"
        " (src_id TEXT PRIMARY KEY, dst_id TEXT NOT NULL UNIQUE) WITHOUT ROWID"
    )
    conn.execute("CREATE TEMP TABLE coll (game_id TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("CREATE TEMP TABLE dupkey (game_id TEXT, sub)")
    conn.execute("CREATE TEMP TABLE twin (tbl TEXT, game_id TEXT, sub)")
    conn.execute("CREATE INDEX temp.twin_key ON twin (tbl, game_id, sub)")


def _move_field(alias: str, columns: Sequence[str], field: str) -> str:
    """A fingerprinted field of a moves table, NULL where that table lacks the column."""
    return f"{alias}.{field}" if field in columns else "NULL"


def _drop_same_games(conn: sqlite3.Connection, src_moves: _Plan, main_moves: Sequence[str]) -> None:
    """Delete from temp.coll the ids whose snapshot game has exactly the fingerprinted move
    fields of the canonical game, row for row (identical repeated rows count once): the
    common "same game on two nodes" case is settled in SQL without hashing either side.

    Joins, not correlated subqueries: on a snapshot whose moves have no index, SQLite
    builds an automatic one for a join, never for a correlated subquery.
    """
    equal = " AND ".join(
        f"{_move_field('m', main_moves, f)} IS {_move_field('s', src_moves.shared, f)}"
        for f in _FINGERPRINT_FIELDS[1:]
    )
    per_game = "FROM temp.coll c CROSS JOIN {} ON {}.game_id = c.game_id"
    src, main = per_game.format("src.game_moves s", "s"), per_game.format("main.game_moves m", "m")
    conn.execute(
        f"WITH s AS (SELECT c.game_id, count(DISTINCT s.move_number) AS n {src}"
        "   GROUP BY c.game_id),"
        f" m AS (SELECT c.game_id, count(*) AS n {main} GROUP BY c.game_id),"
        f" same AS (SELECT c.game_id, count(DISTINCT m.move_number) AS n {src}"
        "   CROSS JOIN main.game_moves m ON m.game_id = s.game_id"
        f"   AND m.move_number = s.move_number WHERE {equal} GROUP BY c.game_id)"
        " DELETE FROM temp.coll WHERE game_id IN (SELECT s.game_id FROM s"
        "   JOIN m ON m.game_id = s.game_id AND m.n = s.n"
        "   JOIN same ON same.game_id = s.game_id AND same.n = s.n)"
    )


def _fingerprints(
    conn: sqlite3.Connection, schema: str, columns: Sequence[str], id_table: str
) -> dict[str, str]:
    """SHA-256 of (move_number, player, move_type, move_json) in move order, per game id
    listed in `id_table`: what names the second game kept under a non-unique id."""
    fields = ", ".join(_move_field("m", columns, f) for f in _FINGERPRINT_FIELDS)
    rows = conn.execute(
        f"SELECT DISTINCT m.game_id, {fields}"
        f" FROM {id_table} c CROSS JOIN {schema}.game_moves m ON m.game_id = c.game_id"
        " ORDER BY m.game_id, m.move_number"
    )
    result = {}
    for game_id, moves in itertools.groupby(rows, key=lambda row: row[0]):
        digest = hashlib.sha256()
        for _, number, player, move_type, move_json in moves:
            digest.update(f"{number}\x1f{player}\x1f{move_type}\x1f{move_json}\x1e".encode())
        result[game_id] = digest.hexdigest()
    return result


def _resolve_collisions(
    conn: sqlite3.Connection, plans: dict[str, _Plan], main_moves: Sequence[str]
) -> list[tuple[str, str]]:
    """(src_id, new_id) for accepted snapshot games whose id canonical holds with other moves.

    Both sides of such a collision are fingerprinted and recorded in
    `fleetsync_fingerprints` (why an id carries a suffix). A new id already
    taken means that copy arrived before: it carries 48 bits of this fingerprint.
    """
    conn.execute(
        "INSERT INTO temp.coll SELECT c.game_id FROM temp.cand c WHERE c.reason IS NULL"
        " AND EXISTS (SELECT 1 FROM main.games g WHERE g.game_id = c.game_id)"
    )
    _drop_same_games(conn, plans["game_moves"], main_moves)
    differing = _fingerprints(conn, "src", plans["game_moves"].shared, "temp.coll")
    if not differing:
        return []
    record = _fingerprints(conn, "main", main_moves, "temp.coll")
    renamed = []
    for game_id, fp in sorted(differing.items()):
        new_id = f"{game_id}~{fp[:12]}"
        taken = conn.execute(
            "SELECT 1 FROM main.games WHERE game_id = ?1 UNION ALL"
            " SELECT 1 FROM temp.cand WHERE game_id = ?1 AND reason IS NULL",
            (new_id,),
        ).fetchone()
        if taken is None:
            renamed.append((game_id, new_id))
            record[new_id] = fp
    conn.executemany(
        "INSERT OR IGNORE INTO main.fleetsync_fingerprints(game_id, fingerprint) VALUES (?, ?)",
        record.items(),
    )
    return renamed


def _count(conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> int:
    return conn.execute(sql, params).fetchone()[0]


def _copy_table(
    conn: sqlite3.Connection, plan: _Plan, config: tuple[str, int], write: bool
) -> tuple[int, dict[str, int]]:
    """Copy the rows of the incoming games; (rows added, rows dropped per reason).

    `write=False` reads the same rows and discards them (the snapshot read check).
    Games with bad rows in `games` or an essential table were rejected before; in the
    optional tables bad rows are left out here. What repeats a key after that is an
    identical copy: OR IGNORE keeps the first (tables without a key only).
    """
    if "game_id" not in plan.shared:  # absent table: nothing to copy, nothing to count
        return 0, {}
    source = f"FROM temp.incoming i CROSS JOIN src.{plan.table} s ON s.game_id = i.src_id"
    if plan.missing:
        rows = _count(conn, f"SELECT count(*) {source}")
        return 0, {"missing_column": rows} if rows else {}
    optional = plan.table in _OPTIONAL_TABLES
    null_row = _any_null("s", plan.nullable) if optional and plan.nullable else ""
    twin_row = ""
    if optional and not plan.keyed:
        sub = _sub_key(plan.table)
        twin_row = (
            f"EXISTS (SELECT 1 FROM temp.twin w WHERE w.tbl = '{plan.table}'"
            f" AND w.game_id = s.game_id AND w.sub IS {f's.{sub}' if sub else 'NULL'})"
        )
    params: list[object] = []
    exprs = []
    for column in plan.shared:
        if column == "game_id":
            exprs.append("i.dst_id")
        elif plan.table == "games" and column in ("board_type", "num_players"):
            exprs.append("?")  # the normalised spelling
            params.append(config[0] if column == "board_type" else config[1])
        else:
            exprs.append(f"s.{column}")
    where = " AND ".join(f"NOT ({cond})" for cond in (null_row, twin_row) if cond)
    select = f"SELECT {', '.join(exprs)} {source}" + (f" WHERE {where}" if where else "")
    if write:
        # CROSS JOIN keeps `incoming` (sorted by id) outermost: ordered index inserts.
        verb = "INSERT" if plan.keyed else "INSERT OR IGNORE"
        added = conn.execute(
            f"{verb} INTO main.{plan.table} ({', '.join(plan.shared)}) {select}", params
        ).rowcount
    else:
        added = sum(1 for _ in conn.execute(select, params))
    if plan.plain or plan.table == "games":
        return added, {}
    dropped = {
        "null_required_field": _count(conn, f"SELECT count(*) {source} WHERE {null_row}")
        if null_row
        else 0,
        "conflicting_rows": _count(
            conn, f"SELECT count(*) {source} WHERE {twin_row} AND NOT ({null_row or 0})"
        )
        if twin_row
        else 0,
    }
    total = _count(conn, f"SELECT count(*) {source}")
    dropped["identical_copy"] = total - added - sum(dropped.values())
    return added, {reason: n for reason, n in dropped.items() if n}


def _merge_attached(conn: sqlite3.Connection, config: str, label: str, write: bool) -> dict:
    """Merge the snapshot attached as `src` inside the caller's transaction."""
    board, players = parse_config(config)
    for scratch in ("cand", "incoming", "coll", "twin"):
        conn.execute(f"DELETE FROM temp.{scratch}")
    main = {t: _shape(conn, "main", t) for t in GAME_TABLES}
    src = {t: _shape(conn, "src", t) for t in GAME_TABLES}
    for table, needed in REQUIRED_COLUMNS.items():
        lacking = [c for c in needed if c not in src[table].columns]
        if lacking:
            raise SnapshotUnreadable(_not_a_game_db(table, lacking))
    plans = {t: _plan(t, main[t], src[t]) for t in GAME_TABLES}
    for plan in plans.values():
        _find_twins(conn, plan)

    groups = _config_groups(conn, "src")
    mine = [(b, n, count) for b, n, count in groups if config_key(b, n) == config]
    where = " OR ".join("(g.board_type = ? AND g.num_players = ?)" for _ in mine) or "0"
    params = [value for b, n, _ in mine for value in (b, n)]
    keyed = plans["games"].keyed
    conn.execute(
        "INSERT INTO temp.cand (game_id, copies, reason)"
        f" SELECT g.game_id, {'1' if keyed else 'count(*)'}, {_reason_sql(plans)}"
        f" FROM src.games g WHERE g.game_id IS NOT NULL AND ({where})"
        + ("" if keyed else " GROUP BY g.game_id"),
        params,
    )
    by_reason = dict(conn.execute("SELECT reason, sum(copies) FROM temp.cand GROUP BY reason"))
    seen = sum(count for _, _, count in mine)
    by_reason["null_game_id"] = seen - sum(by_reason.values())
    accepted = by_reason.pop(None, 0)

    renamed = _resolve_collisions(conn, plans, main["game_moves"].columns)
    conn.execute(
        "INSERT INTO temp.incoming SELECT c.game_id, c.game_id FROM temp.cand c"
        " WHERE c.reason IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM main.games g WHERE g.game_id = c.game_id)"
    )
    conn.executemany("INSERT INTO temp.incoming(src_id, dst_id) VALUES (?, ?)", renamed)
    rows_added, rows_dropped = {}, {}
    for table in GAME_TABLES:
        rows_added[table], dropped = _copy_table(conn, plans[table], (board, players), write)
        if dropped:
            rows_dropped[table] = dropped
    conn.execute(
        "INSERT OR REPLACE INTO main.fleetsync_provenance(game_id, source_label)"
        " SELECT dst_id, ? FROM temp.incoming",
        (label,),
    )
    added = rows_added["games"]
    return {
        "seen": seen,
        "added": added,
        "duplicates": accepted - added,
        "collisions_kept": len(renamed),
        "rejected": {reason: by_reason.get(reason, 0) for reason in REJECT_REASONS},
        # Games stored under the normalised board_type/num_players, not their own spelling.
        "config_respelled": sum(c for b, n, c in mine if (b, n) != (board, players)),
        "rows_added": rows_added,
        "rows_dropped": rows_dropped,
        "columns_missing": {
            t: [c for c in main[t].columns if c not in src[t].columns]
            for t in GAME_TABLES
            if set(main[t].columns) - set(src[t].columns)
        },
        "columns_ignored": {
            t: [c for c in src[t].columns if c not in main[t].columns]
            for t in GAME_TABLES
            if set(src[t].columns) - set(main[t].columns)
        },
        "census": _census_of(groups),
    }


def _attach(conn: sqlite3.Connection, path: str) -> None:
    if not Path(path).is_file():
        raise SnapshotUnreadable("no such file")
    try:
        conn.execute("ATTACH DATABASE ? AS src", (_snapshot_uri(path),))
    except sqlite3.Error as exc:
        raise SnapshotUnreadable(f"unreadable SQLite database ({exc})") from exc


def _read_problem(path: str, config: str) -> str | None:
    """Why the snapshot alone fails the merge's reads, or None if it reads through.

    The same statements against an empty in-memory canonical, rows read and discarded:
    nothing of the real canonical is involved, so a failure here is the snapshot's.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA temp_store=MEMORY")
        create_game_db(conn)
        _prepare(conn)
        _attach(conn, path)
        _merge_attached(conn, config, "", write=False)
    except SnapshotUnreadable as exc:
        return str(exc)
    except sqlite3.Error as exc:
        return f"unreadable SQLite database ({exc})"
    finally:
        conn.close()
    return None


def _open_canonical(canonical_path: str | Path) -> sqlite3.Connection:
    conn = open_game_db(canonical_path)
    try:
        _prepare(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _merge_one(conn: sqlite3.Connection, path: str, label: str, config: str) -> dict:
    """Merge one snapshot in its own transaction; detach it again.

    Raises SnapshotUnreadable for the snapshot's faults, sqlite3.Error for canonical's.
    After any failure the caller closes `conn`: nothing of a failed merge (an attached
    file, a statement still open) is carried into the next one.
    """
    _attach(conn, path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        stats = _merge_attached(conn, config, label, write=True)
    except sqlite3.Error as exc:
        if conn.in_transaction:  # SQLite rolls some errors (disk full, I/O) back itself
            conn.execute("ROLLBACK")
        problem = _read_problem(path, config)
        if problem is not None:
            raise SnapshotUnreadable(problem) from exc
        raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE src")
    return stats


_COUNTERS = ("seen", "added", "duplicates", "collisions_kept")


def merge_snapshots(
    canonical_path: str | Path, config: str, snapshots: Sequence[tuple[str, str]]
) -> dict:
    """Merge `(path, label)` snapshots into the canonical DB of `config`; return stats.

    Never raises for a bad snapshot: each is merged in its own transaction, or reported
    "unreadable" (see the module docstring), and the rest carry on. Raises MergeError
    for an unknown config or a canonical that cannot be opened or written, with the
    results of the snapshots decided before.
    """
    board, players = parse_config(config)
    key = f"{board}_{players}p"
    created = not Path(canonical_path).exists()
    started = time.monotonic()
    conn: sqlite3.Connection | None
    try:
        conn = _open_canonical(canonical_path)
    except sqlite3.Error as exc:
        raise MergeError(f"canonical {canonical_path}: {exc}") from exc
    done: list[dict] = []
    try:
        for path, label in snapshots:
            head = {"path": str(path), "label": label}
            try:
                conn = conn or _open_canonical(canonical_path)
                stats = {**head, "status": "merged", **_merge_one(conn, str(path), label, key)}
            except SnapshotUnreadable as exc:
                stats = {**head, "status": "unreadable", "error": f"snapshot {path}: {exc}"}
                stats.update(_nothing())
                if conn is not None:
                    conn.close()
                conn = None
            except (sqlite3.Error, MemoryError) as exc:
                raise MergeError(
                    f"canonical {canonical_path}, while merging {path} ({label}): {exc}", done
                ) from exc
            done.append(stats)
    finally:
        if conn is not None:
            conn.close()
    totals: dict = {key: sum(s[key] for s in done) for key in _COUNTERS}
    totals["rejected"] = {r: sum(s["rejected"][r] for s in done) for r in REJECT_REASONS}
    totals["merged"] = sum(s["status"] == "merged" for s in done)
    totals["unreadable"] = sum(s["status"] == "unreadable" for s in done)
    return {
        "canonical": str(canonical_path),
        "config": key,
        "created": created,
        "seconds": round(time.monotonic() - started, 3),
        "snapshots": done,
        "totals": totals,
    }


def _nothing() -> dict:
    """The counters of a snapshot that was not read."""
    return {**dict.fromkeys(_COUNTERS, 0), "rejected": dict.fromkeys(REJECT_REASONS, 0)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print JSON. Exit 1 ({"error", "snapshots"}) only when canonical cannot be merged
    into or the config is unknown; bad snapshots are reported per snapshot, exit 0."""
    parser = argparse.ArgumentParser(
        prog="merge.py",
        description="Merge game DB snapshots into a canonical game DB, or (--census) count a"
        " snapshot's games per config.",
    )
    parser.add_argument("--census", metavar="SNAPSHOT", help="print games per config, no merge")
    parser.add_argument("canonical", nargs="?", help="canonical DB path (created if absent)")
    parser.add_argument("config", nargs="?", help="config key, e.g. hex8_2p")
    parser.add_argument("snapshots", nargs="*", metavar="SNAPSHOT[=LABEL]")
    args = parser.parse_args(argv)
    if args.census is not None:
        if args.canonical is not None:
            parser.error("--census takes one snapshot and nothing else")
        print(json.dumps(census(args.census)))
        return 0
    if args.config is None or not args.snapshots:
        parser.error("expected CANONICAL CONFIG SNAPSHOT[=LABEL]...")
    snapshots = []
    for spec in args.snapshots:
        path, _, label = spec.partition("=")
        snapshots.append((path, label or path))
    try:
        stats = merge_snapshots(args.canonical, args.config, snapshots)
    except MergeError as exc:
        print(json.dumps({"error": str(exc), "snapshots": exc.completed}))
        return 1
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
