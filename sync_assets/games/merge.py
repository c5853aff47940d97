"""Merge node game-DB snapshots into one `canonical_{config}.db` (DATA.md, "Game databases").

This file is shipped to remote nodes and run there with its source on stdin:

    python3 - CANONICAL CONFIG SNAPSHOT[=LABEL]...    → JSON stats on stdout

so it imports nothing but the standard library (and runs on Python ≥ 3.8). For
the same reason the game-DB schema (v18) is defined *here*, not in
`schema.py`: a file read from stdin cannot import a neighbour, and one DDL in
two places would drift. `schema.py` re-exports it for the rest of fleetsync.

Merge rules, all set-based SQL over an ATTACHed snapshot, one transaction per
snapshot (a crash leaves canonical as it was after the previous snapshot):

- only rows of CONFIG (`board_type`, `num_players`);
- only complete games: status completed/finished and ≥ 5 move rows present;
- insert-if-absent on `game_id`, child rows copied with the game, only the
  columns both sides share (schemas drift between nodes);
- an id already in canonical is compared move row by move row in SQL (the
  fingerprinted fields): same moves → duplicate; different moves → a second
  game, kept under the deterministic id `{game_id}~{fingerprint[:12]}`
  (fingerprint = SHA-256 of the ordered move_number, player, move_type,
  move_json), so meeting it again on another node is a duplicate, not a third
  copy;
- provenance (`fleetsync_provenance`) and the fingerprints of both sides of
  every collision (`fleetsync_fingerprints`) live in side tables of canonical.
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

# Columns without which a snapshot cannot be merged (keys, config filter, fingerprint).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "games": ("game_id", "board_type", "num_players", "game_status"),
    "game_moves": ("game_id", "move_number", "player", "move_type", "move_json"),
}

FINISHED_STATUSES = ("completed", "finished")
MIN_MOVES = 5
_FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED_STATUSES)

_SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS fleetsync_provenance"
    " (game_id TEXT PRIMARY KEY, source_label TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleetsync_fingerprints"
    " (game_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL)",
)

# Duplicated from sync_assets.configs on purpose: this file must stay import-free.
_BOARD_ALIASES = {
    "hex8": "hex8",
    "square8": "square8",
    "sq8": "square8",
    "square19": "square19",
    "sq19": "square19",
    "hexagonal": "hexagonal",
    "hex": "hexagonal",
}


class MergeError(Exception):
    """A snapshot or config that cannot be merged; `completed` = stats already committed."""

    def __init__(self, message: str, completed: Sequence[dict] = ()) -> None:
        super().__init__(message)
        self.completed = list(completed)


def parse_config(config: str) -> tuple[str, int]:
    """`hex8_2p` (or an alias such as `sq8_2P`, `hex8_2`) → (`hex8`, 2)."""
    board, sep, n = config.strip().lower().rpartition("_")
    n = n[:-1] if n.endswith("p") else n
    if not sep or board not in _BOARD_ALIASES or n not in ("2", "3", "4"):
        raise MergeError(f"unknown config key {config!r}: expected {{board}}_{{n}}p")
    return _BOARD_ALIASES[board], int(n)


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
        required = set(REQUIRED_COLUMNS.get(table, ())) | {"game_id", "move_number"}
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


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def _snapshot_uri(path: str) -> str:
    """Read-only URI: a mistyped path must fail, not create an empty DB."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def check_snapshot(path: str) -> None:
    """Fail early with a clear message on a missing, non-SQLite or non-game-DB snapshot."""
    if not Path(path).is_file():
        raise MergeError(f"snapshot {path}: no such file")
    try:
        conn = sqlite3.connect(_snapshot_uri(path), uri=True)
        try:
            for table, required in REQUIRED_COLUMNS.items():
                missing = set(required) - set(_columns(conn, "main", table))
                if missing:
                    raise MergeError(
                        f"snapshot {path}: not a game DB, table {table} lacks {sorted(missing)}"
                    )
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise MergeError(f"snapshot {path}: unreadable SQLite database ({exc})") from exc


def _fingerprints(conn: sqlite3.Connection, schema: str, id_table: str) -> dict[str, str]:
    """SHA-256 of (move_number, player, move_type, move_json) in move order, per game id
    listed in `id_table`: what names the second game kept under a non-unique id."""
    rows = conn.execute(
        f"SELECT m.game_id, m.move_number, m.player, m.move_type, m.move_json"
        f" FROM {id_table} c CROSS JOIN {schema}.game_moves m ON m.game_id = c.game_id"
        f" ORDER BY m.game_id, m.move_number"
    )
    result = {}
    for game_id, moves in itertools.groupby(rows, key=lambda row: row[0]):
        digest = hashlib.sha256()
        for _, number, player, move_type, move_json in moves:
            digest.update(f"{number}\x1f{player}\x1f{move_type}\x1f{move_json}\x1e".encode())
        result[game_id] = digest.hexdigest()
    return result


def _prepare(conn: sqlite3.Connection) -> None:
    for ddl in _SIDE_TABLES:
        conn.execute(ddl)
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS cand"
        " (game_id TEXT PRIMARY KEY, finished INTEGER, enough_moves INTEGER) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS incoming"
        " (src_id TEXT PRIMARY KEY, dst_id TEXT NOT NULL UNIQUE) WITHOUT ROWID"
    )
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS coll (game_id TEXT PRIMARY KEY) WITHOUT ROWID")


# True when snapshot game `c.game_id` has exactly the fingerprinted move fields of
# canonical game `c.game_id`, row for row: the common "same game on two nodes"
# case is settled in SQL without hashing either side.
_SAME_MOVES = (
    "(SELECT count(*) FROM src.game_moves s WHERE s.game_id = c.game_id)"
    " = (SELECT count(*) FROM main.game_moves m WHERE m.game_id = c.game_id)"
    " AND (SELECT count(*) FROM src.game_moves s WHERE s.game_id = c.game_id)"
    " = (SELECT count(*) FROM src.game_moves s JOIN main.game_moves m"
    "    ON m.game_id = s.game_id AND m.move_number = s.move_number"
    "    WHERE s.game_id = c.game_id AND m.player IS s.player"
    "    AND m.move_type IS s.move_type AND m.move_json IS s.move_json)"
)


def _resolve_collisions(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(src_id, new_id) for accepted snapshot games whose id canonical holds with other moves.

    Both sides of such a collision are fingerprinted and recorded in
    `fleetsync_fingerprints` (why an id carries a suffix). A new id already
    taken means that copy arrived before: it carries 48 bits of this fingerprint.
    """
    conn.execute("DELETE FROM temp.coll")
    conn.execute(
        "INSERT INTO temp.coll SELECT c.game_id FROM temp.cand c"
        " JOIN main.games g ON g.game_id = c.game_id"
        f" WHERE c.finished AND c.enough_moves AND NOT ({_SAME_MOVES})"
    )
    differing = _fingerprints(conn, "src", "temp.coll")
    if not differing:
        return []
    record = _fingerprints(conn, "main", "temp.coll")
    renamed = []
    for game_id, fp in sorted(differing.items()):
        new_id = f"{game_id}~{fp[:12]}"
        taken = conn.execute(
            "SELECT 1 FROM main.games WHERE game_id = ?1 UNION ALL"
            " SELECT 1 FROM temp.cand WHERE game_id = ?1 AND finished AND enough_moves",
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


def _merge_attached(conn: sqlite3.Connection, board: str, players: int, label: str) -> dict:
    """Merge the snapshot attached as `src` inside the caller's transaction."""
    main_cols = {t: _columns(conn, "main", t) for t in GAME_TABLES}
    src_cols = {t: _columns(conn, "src", t) for t in GAME_TABLES}
    conn.execute("DELETE FROM temp.cand")
    conn.execute("DELETE FROM temp.incoming")
    # `OFFSET 4` probes the moves index for a 5th row instead of counting them all.
    conn.execute(
        "INSERT INTO temp.cand SELECT g.game_id,"
        f" coalesce(g.game_status IN ({_FINISHED_SQL}), 0),"
        " (SELECT 1 FROM src.game_moves m WHERE m.game_id = g.game_id"
        f"  LIMIT 1 OFFSET {MIN_MOVES - 1}) IS NOT NULL"
        " FROM src.games g WHERE g.board_type = ? AND g.num_players = ?",
        (board, players),
    )
    seen, unfinished, too_few = conn.execute(
        "SELECT count(*), coalesce(sum(NOT finished), 0),"
        " coalesce(sum(finished AND NOT enough_moves), 0) FROM temp.cand"
    ).fetchone()
    renamed = _resolve_collisions(conn)
    conn.execute(
        "INSERT INTO temp.incoming SELECT c.game_id, c.game_id FROM temp.cand c"
        " WHERE c.finished AND c.enough_moves"
        " AND NOT EXISTS (SELECT 1 FROM main.games g WHERE g.game_id = c.game_id)"
    )
    conn.executemany("INSERT INTO temp.incoming(src_id, dst_id) VALUES (?, ?)", renamed)
    rows_added = {}
    for table in GAME_TABLES:
        shared = [c for c in main_cols[table] if c in src_cols[table]]
        if not shared:
            rows_added[table] = 0
            continue
        exprs = ", ".join("i.dst_id" if c == "game_id" else f"s.{c}" for c in shared)
        # CROSS JOIN keeps `incoming` (sorted by id) outermost: ordered index inserts.
        cur = conn.execute(
            f"INSERT INTO main.{table} ({', '.join(shared)}) SELECT {exprs}"
            f" FROM temp.incoming i CROSS JOIN src.{table} s ON s.game_id = i.src_id"
        )
        rows_added[table] = cur.rowcount
    conn.execute(
        "INSERT OR REPLACE INTO main.fleetsync_provenance(game_id, source_label)"
        " SELECT dst_id, ? FROM temp.incoming",
        (label,),
    )
    added = rows_added["games"]
    accepted = seen - unfinished - too_few
    return {
        "seen": seen,
        "added": added,
        "duplicates": accepted - added,
        "collisions_kept": len(renamed),
        "rejected": {"unfinished": unfinished, "too_few_moves": too_few},
        "rows_added": rows_added,
        "columns_missing": {
            t: [c for c in main_cols[t] if c not in src_cols[t]]
            for t in GAME_TABLES
            if set(main_cols[t]) - set(src_cols[t])
        },
        "columns_ignored": {
            t: [c for c in src_cols[t] if c not in main_cols[t]]
            for t in GAME_TABLES
            if set(src_cols[t]) - set(main_cols[t])
        },
    }


def _merge_one(conn: sqlite3.Connection, path: str, label: str, board: str, players: int) -> dict:
    """Attach one snapshot and merge it in its own transaction."""
    conn.execute("ATTACH DATABASE ? AS src", (_snapshot_uri(path),))
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            stats = _merge_attached(conn, board, players, label)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return stats
    finally:
        conn.execute("DETACH DATABASE src")


_COUNTERS = ("seen", "added", "duplicates", "collisions_kept")


def merge_snapshots(
    canonical_path: str | Path, config: str, snapshots: Sequence[tuple[str, str]]
) -> dict:
    """Merge `(path, label)` snapshots into the canonical DB of `config`; return stats.

    Every snapshot is checked before anything is written, so a garbage file
    aborts the whole call with canonical untouched. Per snapshot and in
    `totals`: seen (rows of this config) = added + duplicates + rejected;
    collisions_kept counts the `added` games stored under a `~fingerprint` id.
    """
    board, players = parse_config(config)
    for path, _ in snapshots:
        check_snapshot(str(path))
    created = not Path(canonical_path).exists()
    started = time.monotonic()
    try:
        conn = open_game_db(canonical_path)
    except sqlite3.Error as exc:
        raise MergeError(f"canonical {canonical_path}: {exc}") from exc
    done: list[dict] = []
    try:
        _prepare(conn)
        for path, label in snapshots:
            try:
                stats = _merge_one(conn, str(path), label, board, players)
            except sqlite3.Error as exc:
                raise MergeError(f"snapshot {path} ({label}): {exc}", done) from exc
            done.append({"path": str(path), "label": label, **stats})
    finally:
        conn.close()
    totals: dict = {key: sum(s[key] for s in done) for key in _COUNTERS}
    totals["rejected"] = {
        reason: sum(s["rejected"][reason] for s in done)
        for reason in ("unfinished", "too_few_moves")
    }
    return {
        "canonical": str(canonical_path),
        "config": f"{board}_{players}p",
        "created": created,
        "seconds": round(time.monotonic() - started, 3),
        "snapshots": done,
        "totals": totals,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the merge stats as JSON; on error print {"error": ...} and exit 1."""
    parser = argparse.ArgumentParser(
        prog="merge.py", description="Merge game DB snapshots into a canonical game DB."
    )
    parser.add_argument("canonical", help="canonical DB path (created if absent)")
    parser.add_argument("config", help="config key, e.g. hex8_2p")
    parser.add_argument("snapshots", nargs="+", metavar="SNAPSHOT[=LABEL]")
    args = parser.parse_args(argv)
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
