"""Raw Elo match rows: read any Elo DB variant, normalise, union into `elo/fleet_matches.db`.

This file is shipped to nodes and run there (LESSONS 10: the raw rows are what
travels and what is kept; ratings are recomputed centrally from all of them):

    python3 -c BOOT COMMAND ARGS...   (this file, then an optional JSON payload, on stdin)

    check SNAPSHOT             does it read as an Elo DB? → {"seen", "valid", "rejected"}
    union FLEET_DB             payload [{"path", "sha256", "label"}...] → per-snapshot stats
    dump FLEET_DB CONFIG       → {"config", "matches": [[match_id, participants, winner,
                                  model_refs], ...]} ordered by match_id

JSON on stdout; on error `{"error": ...}` and exit 2. Standard library only,
Python ≥ 3.8 (the fleet's images), so nothing here imports a neighbour.

Reading (`DATA.md`, "Elo database"): `match_history` with `participant_ids` (JSON
list) or the pair variants `participant_a/participant_b`, `model_a/model_b`;
`winner_id` or `winner` (an id, or `a`/`b` in the pair variants); timestamps as
REAL epoch seconds (milliseconds are recognised), integers, or ISO text (naive =
UTC). Every row becomes one shape: match_id, config (normalised), participants,
winner (None = draw), timestamp (float or None), tournament_id, model_refs.

Decisions, so that nothing is silently lost or invented:

- **Winners.** A recorded winner is taken as recorded; one that is not a
  participant (or a seat label of the pair variants) rejects the row as
  `unknown_winner` (player indices are ambiguous: 0- or 1-based).
- **Draws.** A row without a winner is a draw only when it shows the game was
  finished: a result/status/termination value meaning draw or finished (in a
  column or in the `metadata` JSON), or, with no such value at all, a positive
  `game_length`. A status meaning aborted/abandoned/running, or no evidence at
  all, rejects the row as `unfinished`. (The legacy system dropped every row with
  an empty `winner_id`; real draws were lost.)
- **Config** from `board_type` (+ `num_players`, else the participant count), or a
  `config` column; aliases normalised (`sq8`, `hex`, a trailing `P`). A row whose
  config does not parse is rejected as `unparseable_config`: it cannot be rated.
- **Ids.** A text id is the match id. An integer (autoincrement) id or no id is
  node-local, so the id becomes a hash of the whole row: two nodes' row 17 stay
  two matches, one row copied to two nodes stays one.
- **Same id, different match** (non-unique ids): both kept. The row with the
  smallest content fingerprint keeps the bare id, the others get
  `{id}~{fingerprint[:12]}`; of rows with one fingerprint (the same match seen
  on several nodes) the smallest (raw JSON, model refs) is stored. So the table
  is the same whatever order the snapshots arrive in, and however often.
- **Model identity refs.** A participant's weights are named by a SHA-256 when the
  row's `metadata` (`model_sha256`: {participant: sha}) or the DB's `participants`
  table (`model_sha256`, `sha256`, `model_hash`, or a 64-hex `model_version`) has
  one, else by its `model_path`; the orchestrator maps names to hashes later.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
_CONFIG_RE = re.compile(r"^([a-z0-9]+)_([234])p?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_ID_COLUMNS = ("id", "match_id")
_WINNER_COLUMNS = ("winner_id", "winner")
_LIST_COLUMNS = ("participant_ids", "participants")
_PAIR_PREFIXES = ("participant_", "model_")
_SEATS = ("a", "b", "c", "d")
_TIMESTAMP_COLUMNS = ("timestamp", "played_at", "created_at")
_STATUS_KEYS = ("result", "outcome", "status", "game_status", "termination_reason")
_SHA_COLUMNS = ("model_sha256", "sha256", "model_hash")

_DRAW_WORDS = frozenset({"draw", "tie", "drawn", "stalemate"})
_UNFINISHED_WORDS = frozenset(
    {
        "aborted", "abandoned", "active", "waiting", "paused", "running", "in_progress",
        "pending", "error", "crashed", "cancelled", "canceled", "incomplete", "unfinished",
    }
)  # fmt: skip

REJECT_REASONS = ("unparseable_config", "malformed_participants", "unknown_winner", "unfinished")

FLEET_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS matches (
        match_id TEXT PRIMARY KEY,
        source_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        config TEXT NOT NULL,
        participants TEXT NOT NULL,
        winner TEXT,
        timestamp REAL,
        tournament_id TEXT,
        model_refs TEXT NOT NULL,
        raw TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS matches_by_config ON matches(config, match_id)",
    """CREATE TABLE IF NOT EXISTS fleetsync_sources (
        sha256 TEXT PRIMARY KEY, label TEXT NOT NULL, stats TEXT NOT NULL
    )""",
)
_MATCH_COLUMNS = (
    "match_id", "source_id", "fingerprint", "config", "participants", "winner", "timestamp",
    "tournament_id", "model_refs", "raw",
)  # fmt: skip


class EloDbError(Exception):
    """A file that cannot be read as an Elo DB; the message names it and says why."""


class Rejected(Exception):
    """A row that cannot be rated; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Match:
    """One normalised match row, as stored in `fleet_matches.db`."""

    source_id: str
    fingerprint: str
    config: str
    participants: tuple[str, ...]
    winner: str | None
    timestamp: float | None
    tournament_id: str | None
    model_refs: dict[str, str]
    raw: str


# ---- pure normalisation -----------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def normalize_config(key: str) -> str:
    """`sq8_2P`, `hex_2p`, `hex8_2` → `square8_2p`, `hexagonal_2p`, `hex8_2p`; ValueError else."""
    m = _CONFIG_RE.match(str(key).strip().lower())
    board = _BOARD_ALIASES.get(m.group(1)) if m else None
    if m is None or board is None:
        raise ValueError(f"unknown config key {key!r}")
    return f"{board}_{m.group(2)}p"


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from REAL/INTEGER (milliseconds recognised) or ISO text; None if absent
    or unreadable (timestamps order nothing in the fit, so they never reject a row)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)  # noqa: UP017 (Python 3.8 on nodes)
            return parsed.timestamp()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return seconds / 1000.0 if abs(seconds) > 1e11 else seconds


def _text(value: Any) -> str | None:
    """A non-empty string, or None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _json_object(value: Any) -> dict[str, Any]:
    """A JSON object column (metadata) as a dict; anything else as {}."""
    if isinstance(value, (str, bytes)) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _participants(row: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Participant ids in seat order, and {seat label: id} for the pair variants."""
    for column in _LIST_COLUMNS:
        if column in row:
            value = row[column]
            try:
                parsed = json.loads(value) if isinstance(value, (str, bytes)) else value
            except ValueError:
                parsed = str(value).split(",")
            if not isinstance(parsed, list):
                raise Rejected("malformed_participants", f"{column} is not a list")
            ids = [_text(p) for p in parsed]
            if any(p is None for p in ids):
                raise Rejected("malformed_participants", f"empty id in {column}")
            return [p for p in ids if p is not None], {}
    for prefix in _PAIR_PREFIXES:
        seats = [s for s in _SEATS if prefix + s in row]
        if seats:
            labels: dict[str, str] = {}
            for seat in seats:
                pid = _text(row[prefix + seat])
                if pid is None:
                    raise Rejected("malformed_participants", f"empty {prefix}{seat}")
                labels[seat] = labels[prefix + seat] = pid
            return [labels[s] for s in seats], labels
    raise Rejected("malformed_participants", "no participant columns")


def _config(row: dict[str, Any], players: int) -> str:
    given = _text(row.get("config")) or _text(row.get("config_key"))
    board = _text(row.get("board_type")) or _text(row.get("board"))
    try:
        if given:
            return normalize_config(given)
        if board is None:
            raise ValueError("no board_type")
        try:
            return normalize_config(board)  # a board_type that is a whole config key
        except ValueError:
            pass
        n = row.get("num_players")
        count = int(n) if n not in (None, "") else players
        return normalize_config(f"{board}_{count}p")
    except (ValueError, TypeError) as exc:
        raise Rejected("unparseable_config", str(exc)) from None


def _finished_evidence(row: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """'draw' / 'finished' / 'unfinished' from result-like values, or None if none recorded."""
    values = [meta.get(k) for k in _STATUS_KEYS] + [row.get(k) for k in _STATUS_KEYS]
    words = {str(v).strip().lower() for v in values if _text(v) is not None}
    if meta.get("draw") is True or row.get("draw") in (1, True) or words & _DRAW_WORDS:
        return "draw"
    if words & _UNFINISHED_WORDS:
        return "unfinished"
    return "finished" if words else None


def _winner(
    row: dict[str, Any], meta: dict[str, Any], ids: list[str], labels: dict[str, str]
) -> str | None:
    """The winner's id, or None for a draw; Rejected for unfinished or unknown winners."""
    value = next((row[c] for c in _WINNER_COLUMNS if c in row), None)
    text = _text(value)
    if text is not None and text.lower() in _DRAW_WORDS:
        return None
    if text is None:
        evidence = _finished_evidence(row, meta)
        if evidence is None:
            length = row.get("game_length")
            try:
                evidence = "finished" if length is not None and float(length) > 0 else None
            except (TypeError, ValueError):
                evidence = None
        if evidence in ("draw", "finished"):
            return None
        raise Rejected("unfinished", "no winner and nothing shows the game finished")
    if text in ids:
        return text
    seat = labels.get(text.lower())
    if seat is not None:
        return seat
    raise Rejected("unknown_winner", f"winner {text!r} is not a participant")


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value


def raw_json(row: dict[str, Any]) -> str:
    """The row as the node recorded it: canonical JSON (sorted keys, BLOBs as hex)."""
    if any(isinstance(v, (bytes, bytearray, memoryview)) for v in row.values()):
        row = {k: _jsonable(v) for k, v in row.items()}
    return json.dumps(row, sort_keys=True)


def fingerprint(
    config: str, participants: Sequence[str], winner: str | None, timestamp: float | None
) -> str:
    """What makes two rows the same match: config, who played, who won, when (to the ms)."""
    when = "-" if timestamp is None else repr(round(timestamp, 3))
    body = "\x1f".join([config, "\x1e".join(sorted(participants)), winner or "", when])
    return hashlib.sha256(body.encode()).hexdigest()


def normalise(row: dict[str, Any], table_refs: dict[str, str] | None = None) -> Match:
    """One raw `match_history` row (column name → value, lower-case names) → Match.

    `table_refs`: {participant id: sha256 or model path} from the DB's participants
    table. Raises Rejected (with its reason) for a row that cannot be rated."""
    meta = _json_object(row.get("metadata"))
    ids, labels = _participants(row)
    if len(ids) < 2:
        raise Rejected("malformed_participants", f"{len(ids)} participant(s)")
    config = _config(row, len(ids))
    winner = _winner(row, meta, ids, labels)
    raw = raw_json(row)
    timestamp = parse_timestamp(next((row[c] for c in _TIMESTAMP_COLUMNS if c in row), None))
    given = next((row[c] for c in _ID_COLUMNS if c in row), None)
    source_id = given.strip() if isinstance(given, str) and given.strip() else None
    if source_id is None:
        source_id = "row:" + hashlib.sha256(raw.encode()).hexdigest()[:32]
    refs: dict[str, str] = {}
    row_shas = meta.get("model_sha256") or meta.get("model_shas")
    for pid in ids:
        ref = row_shas.get(pid) if isinstance(row_shas, dict) else None
        ref = _text(ref) or (table_refs or {}).get(pid)
        if ref:
            refs[pid] = ref.lower() if _HEX64.match(ref.lower()) else ref
    return Match(
        source_id=source_id,
        fingerprint=fingerprint(config, ids, winner, timestamp),
        config=config,
        participants=tuple(ids),
        winner=winner,
        timestamp=timestamp,
        tournament_id=_text(row.get("tournament_id")),
        model_refs=refs,
        raw=raw,
    )


# ---- reading an Elo DB --------------------------------------------------------------------


def _connect_ro(path: str) -> sqlite3.Connection:
    """Read-only: a mistyped path must fail, not create an empty DB."""
    if not os.path.isfile(path):
        raise EloDbError(f"{path}: no such file")
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    return sqlite3.connect(uri, uri=True)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _participant_refs(conn: sqlite3.Connection) -> dict[str, str]:
    """{participant id: sha256 or model path} from a `participants` table, if there is one."""
    columns = {c.lower(): c for c in _columns(conn, "participants")}
    if "participant_id" not in columns:
        return {}
    wanted = [c for c in (*_SHA_COLUMNS, "model_version", "model_path") if c in columns]
    if not wanted:
        return {}
    select = ", ".join(f'"{columns[c]}"' for c in ("participant_id", *wanted))
    refs: dict[str, str] = {}
    for pid, *values in conn.execute(f"SELECT {select} FROM participants"):
        found = dict(zip(wanted, values))  # noqa: B905 (Python 3.8 on nodes)
        shas = [_text(found.get(c)) for c in (*_SHA_COLUMNS, "model_version")]
        sha = next((s.lower() for s in shas if s and _HEX64.match(s.lower())), None)
        ref = sha or _text(found.get("model_path"))
        if pid is not None and ref:
            refs[str(pid)] = ref
    return refs


def _check_columns(path: str, columns: list[str]) -> None:
    names = set(columns)
    has_players = bool(names & set(_LIST_COLUMNS)) or any(
        {p + "a", p + "b"} <= names for p in _PAIR_PREFIXES
    )
    missing = []
    if not has_players:
        missing.append("participant_ids (or participant_a/_b, model_a/_b)")
    if not names & set(_WINNER_COLUMNS):
        missing.append("winner_id")
    if not names & {"board_type", "board", "config", "config_key"}:
        missing.append("board_type")
    if missing:
        raise EloDbError(f"{path}: not an Elo DB: match_history lacks {', '.join(missing)}")


def read_elo_db(path: str) -> Iterator[tuple[Match | None, str | None]]:
    """(match, None) or (None, reject reason) for every `match_history` row of an Elo DB.

    Raises EloDbError, naming the file, for anything that is not a readable Elo DB."""
    try:
        conn = _connect_ro(path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "match_history" not in tables:
                raise EloDbError(f"{path}: not an Elo DB: no match_history table")
            columns = [c.lower() for c in _columns(conn, "match_history")]
            _check_columns(path, columns)
            refs = _participant_refs(conn) if "participants" in tables else {}
            for values in conn.execute("SELECT * FROM match_history"):
                try:
                    yield normalise(dict(zip(columns, values)), refs), None  # noqa: B905
                except Rejected as rejected:
                    yield None, rejected.reason
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise EloDbError(f"{path}: unreadable SQLite database ({exc})") from exc


def check_elo_db(path: str) -> dict[str, Any]:
    """Read every row (nothing written): the check a node's snapshot passes before it is
    registered anywhere."""
    seen, valid = 0, 0
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    for match, reason in read_elo_db(path):
        seen += 1
        if match is None:
            rejected[str(reason)] += 1
        else:
            valid += 1
    return {"seen": seen, "valid": valid, "rejected": rejected}


# ---- the union DB -------------------------------------------------------------------------


def open_fleet_db(path: str) -> sqlite3.Connection:
    """Open (creating) the union DB; autocommit mode, callers issue BEGIN/COMMIT."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    for ddl in FLEET_SCHEMA:
        conn.execute(ddl)
    conn.execute("COMMIT")
    return conn


def _stored(conn: sqlite3.Connection, match_id: str) -> tuple[str, tuple[str, str]] | None:
    """(fingerprint, (raw, model_refs)) of a stored match."""
    row = conn.execute(
        "SELECT fingerprint, raw, model_refs FROM matches WHERE match_id = ?", (match_id,)
    ).fetchone()
    return (row[0], (row[1], row[2])) if row else None


def _refs_json(m: Match) -> str:
    return json.dumps(m.model_refs, sort_keys=True)


def _values(match_id: str, m: Match) -> tuple[Any, ...]:
    return (
        match_id, m.source_id, m.fingerprint, m.config, json.dumps(list(m.participants)),
        m.winner, m.timestamp, m.tournament_id, _refs_json(m), m.raw,
    )  # fmt: skip


_ROW_SQL = f"INTO matches ({', '.join(_MATCH_COLUMNS)}) VALUES ({', '.join('?' * 10)})"
_INSERT = "INSERT " + _ROW_SQL
_REPLACE = "INSERT OR REPLACE " + _ROW_SQL


def _suffixed(source_id: str, fp: str) -> str:
    return f"{source_id}~{fp[:12]}"


def add_match(conn: sqlite3.Connection, m: Match) -> str:
    """Insert-if-absent of one match: 'added', 'duplicate' or 'collision' (added under a
    suffixed id). Order-independent: see the module docstring."""
    bare = _stored(conn, m.source_id)
    if bare is None:
        conn.execute(_INSERT, _values(m.source_id, m))
        return "added"
    same_id = m.source_id if bare[0] == m.fingerprint else _suffixed(m.source_id, m.fingerprint)
    existing = bare if same_id == m.source_id else _stored(conn, same_id)
    if existing is not None:
        # One representative per fingerprint: the smallest (raw row, model refs).
        if (m.raw, _refs_json(m)) < existing[1]:
            conn.execute(_REPLACE, _values(same_id, m))
        return "duplicate"
    if m.fingerprint < bare[0]:  # the smallest fingerprint holds the bare id
        conn.execute(
            "UPDATE matches SET match_id = ? WHERE match_id = ?",
            (_suffixed(m.source_id, bare[0]), m.source_id),
        )
        conn.execute(_INSERT, _values(m.source_id, m))
    else:
        conn.execute(_INSERT, _values(same_id, m))
    return "collision"


def _union_one(conn: sqlite3.Connection, path: str, sha256: str, label: str) -> dict[str, Any]:
    """One snapshot in one transaction; a snapshot unioned before is skipped."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = conn.execute(
            "SELECT stats FROM fleetsync_sources WHERE sha256 = ?", (sha256,)
        ).fetchone()
        if done is not None:
            conn.execute("COMMIT")
            return {"label": label, "sha256": sha256, "skipped": True, **json.loads(done[0])}
        counts = {"seen": 0, "added": 0, "duplicates": 0, "collisions_kept": 0}
        rejected = dict.fromkeys(REJECT_REASONS, 0)
        for match, reason in read_elo_db(path):
            counts["seen"] += 1
            if match is None:
                rejected[str(reason)] += 1
                continue
            outcome = add_match(conn, match)
            if outcome == "duplicate":
                counts["duplicates"] += 1
            else:
                counts["added"] += 1
                counts["collisions_kept"] += outcome == "collision"
        stats: dict[str, Any] = {**counts, "rejected": rejected}
        conn.execute(
            "INSERT INTO fleetsync_sources (sha256, label, stats) VALUES (?, ?, ?)",
            (sha256, label, json.dumps(stats, sort_keys=True)),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return {"label": label, "sha256": sha256, "skipped": False, **stats}


def union_snapshots(fleet_db: str, snapshots: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Union the match rows of Elo DB snapshots ({path, sha256, label}) into `fleet_db`.

    Each snapshot is one transaction: a file that fails to read leaves the snapshots
    before it unioned and itself not at all (every union is idempotent, so the next
    run simply continues). Totals count only snapshots not unioned before (`skipped`
    ones were, by their SHA-256)."""
    conn = open_fleet_db(fleet_db)
    done = []
    try:
        for snap in snapshots:
            done.append(_union_one(conn, snap["path"], snap["sha256"], snap["label"]))
        total_rows = conn.execute("SELECT count(*) FROM matches").fetchone()[0]
    finally:
        conn.close()
    fresh = [s for s in done if not s["skipped"]]
    totals: dict[str, Any] = {
        k: sum(s[k] for s in fresh) for k in ("seen", "added", "duplicates", "collisions_kept")
    }
    totals["rejected"] = {r: sum(s["rejected"][r] for s in fresh) for r in REJECT_REASONS}
    return {"snapshots": done, "totals": totals, "unioned": len(fresh), "rows": total_rows}


def dump_config(fleet_db: str, config: str) -> list[list[Any]]:
    """[match_id, participants, winner, model_refs] of every stored match of `config`,
    ordered by match_id (a fixed order: the same table always fits to the same bits)."""
    if not os.path.exists(fleet_db):
        return []
    conn = _connect_ro(fleet_db)
    try:
        rows = conn.execute(
            "SELECT match_id, participants, winner, model_refs FROM matches"
            " WHERE config = ? ORDER BY match_id",
            (normalize_config(config),),
        )
        return [[mid, json.loads(p), w, json.loads(r)] for mid, p, w, r in rows]
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None, payload: bytes = b"") -> int:
    """CLI (see the module docstring); `payload` is the JSON after this file on stdin."""
    parser = argparse.ArgumentParser(prog="matches.py", description="Elo match rows.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check").add_argument("snapshot")
    sub.add_parser("union").add_argument("fleet_db")
    dump = sub.add_parser("dump")
    dump.add_argument("fleet_db")
    dump.add_argument("config")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            result: Any = check_elo_db(args.snapshot)
        elif args.command == "union":
            result = union_snapshots(args.fleet_db, json.loads(payload or b"[]"))
        else:
            result = {"config": args.config, "matches": dump_config(args.fleet_db, args.config)}
    except (EloDbError, ValueError, sqlite3.Error, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(payload=sys.stdin.buffer.read() if not sys.stdin.isatty() else b""))
