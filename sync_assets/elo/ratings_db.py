"""`elo/fleet_ratings.db` (CONTRACT.md): write one config's rows, read them, verify a copy.

Shipped to the node that holds the file and run there, like `matches.py` (a bundle with
`fleet/node_program.py`):

    ratings_db.py write RATINGS_DB CONFIG   payload {"rows": [...], "now": epoch s}
    ratings_db.py read RATINGS_DB [CONFIG]  → {"rows": [...]}
    ratings_db.py verify RATINGS_DB SHA256  → {"sha256", "mode", "rows"}; chmod 0444

JSON on stdout; on error `{"error": ...}` and exit 2. Standard library only, Python ≥ 3.8.

Table `ratings(participant_id, board_type, num_players, rating, uncertainty, games,
wins, losses, draws, anchored, updated_at)`, one row per participant per config, keyed
by the first three; `anchored` is 1 when the participant has a chain of games to an
anchor, 0 when its rating comes from the prior alone (docs/RATINGS.md); `updated_at` is
epoch seconds (REAL) of the last change of that row. A file written before `anchored`
existed is read with anchored = 0 (not shown to be anchored) and gains the column,
0 in every other config's rows until that config is refitted, on its next write.

A write replaces only CONFIG's rows: the current file is copied with the backup API
to a staging name beside it, CONFIG's rows are deleted and re-inserted there, the
copy is integrity-checked, made read-only (0444) and renamed over the file — readers
see the old table or the new one, never a half-written one, and other configs' rows
(and any columns another tool added) are carried over untouched. When CONFIG's rows
are unchanged the file is not rewritten at all, so its SHA-256 — and every copy of
it on the fleet — stays as it is. Rows whose values did not change keep their
`updated_at`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import stat
import sys
from collections.abc import Sequence
from typing import Any

from sync_assets.fleet.node_program import reply, ro_uri, sha256_file, stdin_payload

READ_ONLY = 0o444
SCHEMA = """CREATE TABLE IF NOT EXISTS ratings (
    participant_id TEXT NOT NULL,
    board_type TEXT NOT NULL,
    num_players INTEGER NOT NULL,
    rating REAL NOT NULL,
    uncertainty REAL NOT NULL,
    games INTEGER NOT NULL,
    wins INTEGER NOT NULL,
    losses INTEGER NOT NULL,
    draws INTEGER NOT NULL,
    anchored INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (participant_id, board_type, num_players)
)"""
VALUE_COLUMNS = ("rating", "uncertainty", "games", "wins", "losses", "draws", "anchored")
ADD_ANCHORED = "ALTER TABLE ratings ADD COLUMN anchored INTEGER NOT NULL DEFAULT 0"
COLUMNS = ("participant_id", "board_type", "num_players", *VALUE_COLUMNS, "updated_at")
INSERT = f"INSERT INTO ratings ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_CONFIG_RE = re.compile(r"^([a-z0-9]+)_([234])p$")
STAGING_PREFIX = ".fleetsync-tmp-"  # resources/transport/paths.py: never listed, swept


class RatingsDbError(Exception):
    """The ratings file cannot be read, written or verified; the message names it."""


def split_config(config: str) -> tuple[str, int]:
    """`hex8_2p` → (`hex8`, 2); the key must already be normalised."""
    m = _CONFIG_RE.match(config)
    if m is None:
        raise RatingsDbError(f"not a normalised config key: {config!r}")
    return m.group(1), int(m.group(2))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _table_columns(conn: sqlite3.Connection) -> set:
    return {r[1] for r in conn.execute("PRAGMA table_info(ratings)")}


def _ensure_schema(conn: sqlite3.Connection) -> bool:
    """Create the table, or add the columns a file of an older version lacks; True
    when the file was upgraded (it must then be rewritten even if no value changed)."""
    conn.execute(SCHEMA)
    if "anchored" in _table_columns(conn):
        return False
    conn.execute(ADD_ANCHORED)
    return True


def _config_rows(conn: sqlite3.Connection, board: str, players: int) -> dict[str, tuple]:
    """{participant_id: (values..., updated_at)} of one config."""
    rows = conn.execute(
        f"SELECT participant_id, {', '.join(VALUE_COLUMNS)}, updated_at FROM ratings"
        " WHERE board_type = ? AND num_players = ?",
        (board, players),
    )
    return {r[0]: tuple(r[1:]) for r in rows}


# A refit of the same matches may differ from the last one in the last bits (BLAS
# summation order): that is no change, and must not rewrite and redistribute the file.
SAME_RATING_ELO = 1e-6


def _unchanged(before: tuple, values: tuple) -> bool:
    """`before` (stored values) and `values` (a new row's) say the same thing."""
    (r0, u0, *counts0), (r1, u1, *counts1) = before, values
    close = abs(r0 - r1) <= SAME_RATING_ELO and abs(u0 - u1) <= SAME_RATING_ELO
    return close and counts0 == counts1


def _same_values(old: dict[str, tuple], new: list[dict[str, Any]]) -> bool:
    if set(old) != {r["participant_id"] for r in new}:
        return False
    return all(_unchanged(old[r["participant_id"]][:-1], _values(r)) for r in new)


def _values(row: dict[str, Any]) -> tuple:
    anchored = row["anchored"]
    if anchored not in (True, False):  # also 0 / 1; never a truthy string
        raise ValueError(f"{row['participant_id']}: anchored must be 0/1, got {anchored!r}")
    return (
        float(row["rating"]),
        float(row["uncertainty"]),
        *(int(row[c]) for c in ("games", "wins", "losses", "draws")),
        int(anchored),
    )


def _stamped(row: dict[str, Any], old: dict[str, tuple], now: float) -> tuple:
    """The row's values and updated_at: kept from `old` when the values did not change."""
    values = _values(row)
    before = old.get(row["participant_id"])
    return (*values, before[-1] if before is not None and _unchanged(before[:-1], values) else now)


def write_config(path: str, config: str, rows: list[dict[str, Any]], now: float) -> dict:
    """Replace `config`'s rows of the ratings file at `path` atomically; see the docstring."""
    board, players = split_config(config)
    directory = os.path.dirname(os.path.abspath(path))
    staging = os.path.join(directory, f"{STAGING_PREFIX}{os.path.basename(path)}.{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        dst = sqlite3.connect(staging, isolation_level=None)
        try:
            if os.path.exists(path):
                src = sqlite3.connect(ro_uri(path), uri=True)
                try:
                    src.backup(dst)
                finally:
                    src.close()
            dst.execute("PRAGMA journal_mode=DELETE")
            upgraded = _ensure_schema(dst)
            old = _config_rows(dst, board, players)
            if not upgraded and _same_values(old, rows):
                return {"changed": False, "rows": len(rows)}
            dst.execute("BEGIN IMMEDIATE")
            dst.execute(
                "DELETE FROM ratings WHERE board_type = ? AND num_players = ?", (board, players)
            )
            dst.executemany(
                INSERT,
                [(r["participant_id"], board, players, *_stamped(r, old, now)) for r in rows],
            )
            dst.execute("COMMIT")
            problems = [r[0] for r in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise RatingsDbError(f"{path}: integrity_check after write: {problems[:5]}")
        finally:
            dst.close()
        os.chmod(staging, READ_ONLY)
        with open(staging, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staging, path)
        _fsync_dir(directory)
    except sqlite3.Error as exc:
        raise RatingsDbError(f"{path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
    return {"changed": True, "rows": len(rows)}


def read_rows(path: str, config: str | None = None) -> list[dict[str, Any]]:
    """Every row (or one config's) as dicts; a missing file has no rows."""
    if not os.path.exists(path):
        return []
    try:
        conn = sqlite3.connect(ro_uri(path), uri=True)
        try:
            # A file of an older version: its rows were never shown to be anchored.
            older = "anchored" not in _table_columns(conn)
            wanted = ("0" if older and c == "anchored" else c for c in COLUMNS)
            query = f"SELECT {', '.join(wanted)} FROM ratings"
            args: tuple = ()
            if config is not None:
                query += " WHERE board_type = ? AND num_players = ?"
                args = split_config(config)
            rows = conn.execute(query + " ORDER BY board_type, num_players, participant_id", args)
            return [dict(zip(COLUMNS, r)) for r in rows]  # noqa: B905 (Python 3.8 on nodes)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RatingsDbError(f"{path}: unreadable ratings DB ({exc})") from exc


def verify(path: str, sha256: str) -> dict[str, Any]:
    """Make the published copy read-only and prove it: SHA-256, SQLite integrity, mode."""
    try:
        got = sha256_file(path)
    except OSError as exc:
        raise RatingsDbError(f"{path}: {exc}") from exc
    if got != sha256:
        raise RatingsDbError(f"{path}: sha256 {got} is not the published {sha256}")
    os.chmod(path, READ_ONLY)
    rows = len(read_rows(path))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return {"sha256": sha256, "mode": f"{mode:04o}", "rows": rows}


def main(argv: Sequence[str] | None = None, payload: bytes = b"") -> int:
    """CLI (see the module docstring); `payload` is the JSON after this file on stdin."""
    parser = argparse.ArgumentParser(prog="ratings_db.py", description="fleet_ratings.db")
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write")
    write.add_argument("path")
    write.add_argument("config")
    read = sub.add_parser("read")
    read.add_argument("path")
    read.add_argument("config", nargs="?")
    check = sub.add_parser("verify")
    check.add_argument("path")
    check.add_argument("sha256")
    args = parser.parse_args(argv)
    commands = {
        "write": lambda: _write(args.path, args.config, json.loads(payload)),
        "read": lambda: {"rows": read_rows(args.path, args.config)},
        "verify": lambda: verify(args.path, args.sha256),
    }
    return reply(commands[args.command], (RatingsDbError, OSError, ValueError, KeyError))


def _write(path: str, config: str, body: dict[str, Any]) -> dict:
    return write_config(path, config, body["rows"], float(body["now"]))


if __name__ == "__main__":
    sys.exit(main(payload=stdin_payload()))
