"""Raw Elo match rows: read any Elo DB variant, normalise, union into `elo/fleet_matches.db`.

This file is shipped to nodes and run there (LESSONS 10: the raw rows are what
travels and what is kept; ratings are recomputed centrally from all of them):

    matches.py COMMAND ARGS...   (a bundle with `fleet/configs.py` and `fleet/node_program.py`,
                                  then an optional JSON payload, on stdin: `programs.py`)

    check SNAPSHOT             does it read as an Elo DB? → {"seen", "valid", "rejected"}
    union FLEET_DB             payload [{"path", "sha256", "label"}...] → per-snapshot stats
                               and the union's state (`union_snapshots`)
    dump FLEET_DB CONFIG       → {"config", "matches": [[match_id, participants, winner,
                                  model_refs], ...] ordered by match_id, "conflicts": N}

JSON on stdout; on error `{"error": ...}` and exit 2. Standard library only,
Python ≥ 3.8 (the fleet's images): nothing here imports a neighbour but its helper.

Reading (`DATA.md`, "Elo database"): `match_history` with `participant_ids` (JSON
list) or the pair variants `participant_a/participant_b`, `model_a/model_b`;
`winner_id` or `winner` (an id, or `a`/`b` in the pair variants). Every row becomes
one shape: match identity, config (normalised), participants, winner (None = draw),
timestamp (float or None), tournament_id, model_refs.

Decisions, so that nothing is silently lost, invented or counted twice:

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
- **Identity.** A match is identified by its `game_id` where the row holds one (the
  tournament harness's table keeps the match UUID there, beside a node-local
  `id INTEGER AUTOINCREMENT`; the canonical writer fills it too where the column
  exists), else by a text `id` (or `match_id`). An integer id, or digits stored as
  text, is a counter local to one DB and never an identity: two nodes' row 17 are
  unrelated games. A row with neither is identified by a hash of the whole row (one
  row copied to two nodes stays one). UUIDs compare case-insensitively.
- **When.** Timestamps are read as instants, whatever their format: REAL/INTEGER
  epoch seconds (milliseconds recognised), or ISO 8601 text (`T` or space, any
  fraction, `Z`/`UTC`/`±HH[:MM]`; no zone = UTC). They are compared to the whole
  second, so a text written to the second (SQLite's CURRENT_TIMESTAMP) and a REAL
  with a fraction are the same instant. An unreadable timestamp counts as absent.
- **One game, several rows.** Rows with one identity, one config, the same players
  (in any seat order) and the same second record one game (its *event*). If they
  agree on the result they are one match, stored once (`duplicates`; those
  recognised as one only through `game_id` — another writer, another node's local
  id, another timestamp format — are counted as `merged_by_game_id`). The row kept
  is the one recording the most model SHA-256s, then the smallest (raw JSON, model
  refs): the same whatever order the snapshots arrive in.
- **Conflicts.** Rows of one event that disagree on the result (different winners,
  or a win and a draw) make the match a *conflict*: no version of it is rated;
  every version is kept in the `conflicts` table, counted and reported. No version
  is preferred, because nothing says which one is right (writer, node and arrival
  order are no evidence), and leaving one game out distorts ratings less than a win
  credited to the wrong side. A later version joins the conflict, so the outcome is
  the same in any arrival order.
- **One identity, several events** (an id reused for other games: other players,
  another time): every event is a match. The one with the smallest fingerprint
  is dumped under the bare id, the others as `{id}~{fingerprint[:12]}`.
- **Model identity refs.** A participant's weights are named by a SHA-256 when the
  row's `metadata` (`model_sha256`: {participant: sha}) or the DB's `participants`
  table (`model_sha256`, `sha256`, `model_hash`, or a 64-hex `model_version`) has
  one, else by its `model_path`; the orchestrator maps names to hashes later. The
  participants table describes a participant once for the whole DB, so it gives
  nothing for one whose model or `model_path` is a reused file name (`candidate_*`,
  `canonical_*`, `ringrift_best_*`, DATA.md): it cannot say which version of that
  file played a given match. Only the match row's own metadata can.
- **Snapshots the union cannot read.** A snapshot whose file is missing, does not
  hash to its SHA-256, or cannot be opened now (`OSError`, SQLite I/O, lock or open
  errors) is *unavailable*: left out of this pass, reported, tried again next time.
  One whose verified bytes are not a readable Elo DB (not SQLite, malformed, no
  `match_history`) is *quarantined*: every copy holds those bytes, so no retry can
  help. It is recorded as unreadable in `fleetsync_sources`, never read again,
  reported on every pass, and the rest of the union goes on without it.

The union DB is derived from the snapshots only; one written under other rules
(its `PRAGMA user_version` is not FORMAT) is emptied and rebuilt from them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sync_assets.fleet.configs import normalize_config
from sync_assets.fleet.node_program import reply, ro_uri, sha256_file, stdin_payload

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)
_EPOCH = dt.datetime(1970, 1, 1)
# The same rule as sync_assets.elo.identity.is_reused_name (this file cannot import it).
_REUSED_PREFIXES = ("candidate_", "canonical_", "ringrift_best_")

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
# Per-snapshot counts of a union pass (see `add_match` for the outcomes).
UNION_COUNTS = (
    "seen", "added", "duplicates", "merged_by_game_id", "collisions_kept", "conflicting_rows",
)  # fmt: skip

FORMAT = 2  # PRAGMA user_version of a union DB written under the rules above
_ROW_DDL = """(
        match_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        event TEXT NOT NULL,
        key_source TEXT NOT NULL,
        config TEXT NOT NULL,
        participants TEXT NOT NULL,
        winner TEXT,
        timestamp REAL,
        tournament_id TEXT,
        model_refs TEXT NOT NULL,
        raw TEXT NOT NULL,
        PRIMARY KEY (match_key, fingerprint)
    ) WITHOUT ROWID"""
_TABLES = ("matches", "conflicts", "forms", "fleetsync_sources")
FLEET_SCHEMA = (
    "CREATE TABLE matches " + _ROW_DDL,  # the matches rated
    "CREATE INDEX matches_by_config ON matches(config)",
    "CREATE TABLE conflicts " + _ROW_DDL,  # every version of every conflicting match
    "CREATE INDEX conflicts_by_config ON conflicts(config)",
    # Each distinct raw row seen for a match (how many forms one game arrived in).
    """CREATE TABLE forms (
        match_key TEXT NOT NULL, fingerprint TEXT NOT NULL, raw_sha256 TEXT NOT NULL,
        PRIMARY KEY (match_key, fingerprint, raw_sha256)
    ) WITHOUT ROWID""",
    """CREATE TABLE fleetsync_sources (
        sha256 TEXT PRIMARY KEY, label TEXT NOT NULL, stats TEXT NOT NULL, error TEXT
    )""",
)
_MATCH_COLUMNS = (
    "match_key", "fingerprint", "event", "key_source", "config", "participants", "winner",
    "timestamp", "tournament_id", "model_refs", "raw",
)  # fmt: skip


class EloDbError(Exception):
    """A file that cannot be read as an Elo DB; the message names it and says why.

    `corrupt`: the bytes themselves are the problem (reading them again cannot help),
    as opposed to a file that cannot be opened or read right now."""

    def __init__(self, message: str, corrupt: bool = True) -> None:
        super().__init__(message)
        self.corrupt = corrupt


class Rejected(Exception):
    """A row that cannot be rated; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Match:
    """One normalised match row, as stored in `fleet_matches.db`."""

    match_key: str  # the match's identity (see the module docstring)
    key_source: str  # where it came from: "game_id", "id" or "row" (a hash of the row)
    event: str  # identity of the game: config, players, second (not the result)
    fingerprint: str  # the event and its result
    config: str
    participants: tuple[str, ...]
    winner: str | None
    timestamp: float | None
    tournament_id: str | None
    model_refs: dict[str, str]
    raw: str


# ---- pure normalisation -----------------------------------------------------------------


def _iso_seconds(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 date-time (no zone = UTC), None if it is not one.
    By hand: Python 3.8's `fromisoformat` refuses `Z`, `+0000` and most fractions."""
    m = _ISO.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        when = dt.datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0),
            int(second or 0), int((fraction or "0")[:6].ljust(6, "0")),
        )  # fmt: skip
    except ValueError:
        return None
    offset = 0
    if zone and zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        offset = -offset if zone[0] == "-" else offset
    return (when - _EPOCH).total_seconds() - offset


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
            return _iso_seconds(text)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return seconds / 1000.0 if abs(seconds) > 1e11 else seconds


def _text(value: Any) -> str | None:
    """A non-empty string, or None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _identity(value: Any) -> str | None:
    """A match identity from an id-like column, or None: integers and digits stored as
    text are node-local counters, not identities; UUIDs compare case-insensitively."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text.isdigit():
        return None
    return text.lower() if _UUID.match(text) else text


def _reused_name(name: str) -> bool:
    """A file name that holds different weights over time (`candidate_*`, ...)."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower().startswith(_REUSED_PREFIXES)


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


def event_key(config: str, participants: Sequence[str], timestamp: float | None) -> str:
    """What makes two rows of one match identity the same game: config, who played (in
    any seat order), when (None: a UUID identity names one game whatever each writer's
    clock said). Time is truncated to the whole second, as SQLite's CURRENT_TIMESTAMP
    writes it; a microsecond of slack keeps float noise from moving it a second down.
    Not the result: see `fingerprint`."""
    when = "-" if timestamp is None else str(math.floor(timestamp + 1e-6))
    body = "\x1f".join([config, "\x1e".join(sorted(participants)), when])
    return hashlib.sha256(body.encode()).hexdigest()


def fingerprint(event: str, winner: str | None) -> str:
    """One game (`event_key`) with one result: rows of one event and one fingerprint agree."""
    return hashlib.sha256(f"{event}\x1f{winner or ''}".encode()).hexdigest()


def match_key(row: dict[str, Any], raw: str) -> tuple[str, str]:
    """(identity, where it came from): `game_id`, else a text id, else a hash of the row."""
    game = _identity(row.get("game_id"))
    if game is not None:
        return game, "game_id"
    for column in _ID_COLUMNS:
        given = _identity(row.get(column))
        if given is not None:
            return given, "id"
    return "row:" + hashlib.sha256(raw.encode()).hexdigest()[:32], "row"


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
    key, key_source = match_key(row, raw)
    refs: dict[str, str] = {}
    row_shas = meta.get("model_sha256") or meta.get("model_shas")
    for pid in ids:
        ref = row_shas.get(pid) if isinstance(row_shas, dict) else None
        ref = _text(ref) or (table_refs or {}).get(pid)
        if ref:
            refs[pid] = ref.lower() if _HEX64.match(ref.lower()) else ref
    # A UUID is one game wherever it was written: two writers' clocks (or one writer's
    # rounding) must not make it two. Other ids may be reused: time tells them apart.
    event = event_key(config, ids, None if _UUID.match(key) else timestamp)
    return Match(
        match_key=key,
        key_source=key_source,
        event=event,
        fingerprint=fingerprint(event, winner),
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
        raise EloDbError(f"{path}: no such file", corrupt=False)
    return sqlite3.connect(ro_uri(path), uri=True)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _participant_refs(conn: sqlite3.Connection) -> dict[str, str]:
    """{participant id: sha256 or model path} from a `participants` table, if there is one;
    nothing for participants of a reused file name (see the module docstring)."""
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
        path = _text(found.get("model_path"))
        if pid is None or _reused_name(str(pid).split(":", 1)[0]) or _reused_name(path or ""):
            continue
        shas = [_text(found.get(c)) for c in (*_SHA_COLUMNS, "model_version")]
        sha = next((s.lower() for s in shas if s and _HEX64.match(s.lower())), None)
        ref = sha or path
        if ref:
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

    Raises EloDbError, naming the file, for anything that is not a readable Elo DB;
    `corrupt=False` when the file could not be opened or read now (I/O, locks)."""
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
    except sqlite3.OperationalError as exc:
        raise EloDbError(f"{path}: cannot be read now ({exc})", corrupt=False) from exc
    except sqlite3.DatabaseError as exc:
        raise EloDbError(f"{path}: unreadable SQLite database ({exc})") from exc
    except OSError as exc:
        raise EloDbError(f"{path}: cannot be read now ({exc})", corrupt=False) from exc


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
    """Open (creating, or rebuilding one of another FORMAT) the union DB; autocommit mode,
    callers issue BEGIN/COMMIT."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != FORMAT:
            # Derived data under other identity rules: emptied, then rebuilt from the
            # snapshots (every one of them is unioned again, nothing is remembered).
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for ddl in FLEET_SCHEMA:
                conn.execute(ddl)
            conn.execute(f"PRAGMA user_version = {FORMAT}")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    conn.execute("COMMIT")
    return conn


def _refs_json(m: Match) -> str:
    return json.dumps(m.model_refs, sort_keys=True)


def _preference(raw: str, refs_json: str) -> tuple[int, int, str, str]:
    """Which row of one fingerprint is kept (smallest first): the one recording the most
    model SHA-256s (a recorded hash is the only sure identity), then by content."""
    refs = json.loads(refs_json)
    shas = sum(1 for ref in refs.values() if _HEX64.match(ref))
    return (-shas, -len(refs), raw, refs_json)


def _keep(conn: sqlite3.Connection, table: str, m: Match) -> None:
    """Store `m` in `table` unless a preferred row of its fingerprint is there already."""
    row = conn.execute(
        f"SELECT raw, model_refs FROM {table} WHERE match_key = ? AND fingerprint = ?",
        (m.match_key, m.fingerprint),
    ).fetchone()
    if row is None or _preference(m.raw, _refs_json(m)) < _preference(row[0], row[1]):
        values = (
            m.match_key, m.fingerprint, m.event, m.key_source, m.config,
            json.dumps(list(m.participants)), m.winner, m.timestamp, m.tournament_id,
            _refs_json(m), m.raw,
        )  # fmt: skip
        conn.execute(
            f"INSERT OR REPLACE INTO {table} ({', '.join(_MATCH_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(_MATCH_COLUMNS))})",
            values,
        )


def add_match(conn: sqlite3.Connection, m: Match) -> str:
    """Union one row: 'added' (a new match), 'collision' (a new match under an identity
    already used for another game), 'duplicate' (a match held already), 'merged_by_game_id'
    (the same, in a form not seen before, recognised through `game_id`) or 'conflict'
    (its game has another result elsewhere: see the module docstring). Order-independent."""
    same_game = (m.match_key, m.event)
    if conn.execute(
        "SELECT 1 FROM conflicts WHERE match_key = ? AND event = ? LIMIT 1", same_game
    ).fetchone():
        _keep(conn, "conflicts", m)
        return "conflict"
    held = conn.execute(
        "SELECT fingerprint FROM matches WHERE match_key = ? AND event = ?", same_game
    ).fetchone()
    if held is not None and held[0] != m.fingerprint:
        conn.execute(
            "INSERT INTO conflicts SELECT * FROM matches WHERE match_key = ? AND event = ?",
            same_game,
        )
        conn.execute("DELETE FROM matches WHERE match_key = ? AND event = ?", same_game)
        _keep(conn, "conflicts", m)
        return "conflict"
    other_game = (
        held is None
        and conn.execute(
            "SELECT 1 FROM matches WHERE match_key = ? UNION ALL"
            " SELECT 1 FROM conflicts WHERE match_key = ? LIMIT 1",
            (m.match_key, m.match_key),
        ).fetchone()
    )
    new_form = conn.execute(
        "INSERT OR IGNORE INTO forms (match_key, fingerprint, raw_sha256) VALUES (?, ?, ?)",
        (m.match_key, m.fingerprint, hashlib.sha256(m.raw.encode()).hexdigest()),
    ).rowcount
    _keep(conn, "matches", m)
    if held is None:
        return "collision" if other_game else "added"
    return "merged_by_game_id" if new_form and m.key_source == "game_id" else "duplicate"


def _union_one(conn: sqlite3.Connection, path: str, sha256: str, label: str) -> dict[str, Any]:
    """One snapshot in one transaction: all its rows, or (EloDbError) none of them."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = dict.fromkeys(UNION_COUNTS, 0)
        rejected = dict.fromkeys(REJECT_REASONS, 0)
        for match, reason in read_elo_db(path):
            counts["seen"] += 1
            if match is None:
                rejected[str(reason)] += 1
                continue
            outcome = add_match(conn, match)
            if outcome == "conflict":
                counts["conflicting_rows"] += 1
            elif outcome in ("duplicate", "merged_by_game_id"):
                counts["duplicates"] += 1
                counts["merged_by_game_id"] += outcome == "merged_by_game_id"
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


def _copy_problem(path: str, sha256: str) -> str | None:
    """Why the file at `path` is not a good copy of snapshot `sha256`, or None."""
    try:
        got = sha256_file(path)
    except FileNotFoundError:
        return f"{path}: no such file"
    except OSError as exc:
        return f"{path}: cannot be read now ({exc})"
    return None if got == sha256 else f"{path}: hashes to {got}, not {sha256}: a damaged copy"


def _state(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the union DB holds now, whatever pass put it there."""
    (rows,) = conn.execute("SELECT count(*) FROM matches").fetchone()
    (conflicts,) = conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT match_key, event FROM conflicts)"
    ).fetchone()
    (merged,) = conn.execute(
        "SELECT count(*) FROM matches m WHERE key_source = 'game_id' AND (SELECT count(*)"
        " FROM forms f WHERE f.match_key = m.match_key AND f.fingerprint = m.fingerprint) > 1"
    ).fetchone()
    unreadable = [
        {"sha256": sha, "label": label, "error": error}
        for sha, label, error in conn.execute(
            "SELECT sha256, label, error FROM fleetsync_sources WHERE error IS NOT NULL"
            " ORDER BY sha256"
        )
    ]
    return {
        "rows": rows,
        "conflicts": conflicts,
        "matches_merged_by_game_id": merged,
        "unreadable": unreadable,
    }


def union_snapshots(fleet_db: str, snapshots: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Union the match rows of Elo DB snapshots ({path, sha256, label}) into `fleet_db`.

    Each snapshot is one transaction: all its rows or none. A snapshot unioned (or
    quarantined) before is skipped, by its SHA-256. One that is unavailable now is
    listed in `unavailable` ({label, sha256, path, error}) and left for the next pass;
    one that is corrupt is quarantined (module docstring); neither stops the others.
    Returns the per-snapshot stats, `totals` over the snapshots read in this pass,
    and the union's state: `rows`, `conflicts` (conflicting matches, none rated),
    `matches_merged_by_game_id`, `unreadable` (every quarantined snapshot)."""
    conn = open_fleet_db(fleet_db)
    done: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    try:
        for snap in snapshots:
            path, sha256, label = snap["path"], snap["sha256"], snap["label"]
            known = conn.execute(
                "SELECT stats, error FROM fleetsync_sources WHERE sha256 = ?", (sha256,)
            ).fetchone()
            if known is not None:
                done.append(
                    {"label": label, "sha256": sha256, "skipped": True, "error": known[1],
                     **json.loads(known[0])}
                )  # fmt: skip
                continue
            problem = _copy_problem(path, sha256)
            if problem is None:
                try:
                    done.append(_union_one(conn, path, sha256, label))
                    continue
                except EloDbError as exc:
                    if exc.corrupt:
                        done.append(_quarantine(conn, sha256, label, str(exc)))
                        continue
                    problem = str(exc)
            unavailable.append({"label": label, "sha256": sha256, "path": path, "error": problem})
        state = _state(conn)
    finally:
        conn.close()
    fresh = [s for s in done if not s["skipped"]]
    totals: dict[str, Any] = {k: sum(s[k] for s in fresh) for k in UNION_COUNTS}
    totals["rejected"] = {r: sum(s["rejected"][r] for s in fresh) for r in REJECT_REASONS}
    unioned = sum(1 for s in fresh if not s.get("error"))
    return {
        "snapshots": done, "totals": totals, "unioned": unioned, "unavailable": unavailable,
        **state,
    }  # fmt: skip


def _quarantine(conn: sqlite3.Connection, sha256: str, label: str, error: str) -> dict[str, Any]:
    """Record a corrupt snapshot as unreadable: never read again, reported every pass."""
    stats: dict[str, Any] = {
        **dict.fromkeys(UNION_COUNTS, 0), "rejected": dict.fromkeys(REJECT_REASONS, 0)
    }  # fmt: skip
    conn.execute(
        "INSERT INTO fleetsync_sources (sha256, label, stats, error) VALUES (?, ?, ?, ?)",
        (sha256, label, json.dumps(stats, sort_keys=True), error),
    )
    return {"label": label, "sha256": sha256, "skipped": False, "error": error, **stats}


def dump_config(fleet_db: str, config: str) -> list[list[Any]]:
    """[match_id, participants, winner, model_refs] of every rated match of `config`,
    ordered by match_id (a fixed order: the same table always fits to the same bits).
    The match id is the identity, suffixed for all but the first game of a reused one."""
    if not os.path.exists(fleet_db):
        return []
    conn = _connect_ro(fleet_db)
    try:
        rows = conn.execute(
            "SELECT match_key, fingerprint, participants, winner, model_refs FROM matches"
            " WHERE config = ? ORDER BY match_key, fingerprint",
            (normalize_config(config),),
        ).fetchall()
    finally:
        conn.close()
    dumped = []
    previous = None
    for key, fp, participants, winner, refs in rows:
        match_id = key if key != previous else f"{key}~{fp[:12]}"
        previous = key
        dumped.append([match_id, json.loads(participants), winner, json.loads(refs)])
    return sorted(dumped, key=lambda row: row[0])


def count_conflicts(fleet_db: str, config: str) -> int:
    """Conflicting matches of `config` (none of their versions rated)."""
    if not os.path.exists(fleet_db):
        return 0
    conn = _connect_ro(fleet_db)
    try:
        (count,) = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT match_key, event FROM conflicts"
            " WHERE config = ?)",
            (normalize_config(config),),
        ).fetchone()
    finally:
        conn.close()
    return int(count)


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
    commands = {
        "check": lambda: check_elo_db(args.snapshot),
        "union": lambda: union_snapshots(args.fleet_db, json.loads(payload or b"[]")),
        "dump": lambda: {
            "config": args.config,
            "matches": dump_config(args.fleet_db, args.config),
            "conflicts": count_conflicts(args.fleet_db, args.config),
        },
    }
    return reply(commands[args.command], (EloDbError, ValueError, sqlite3.Error, OSError))


if __name__ == "__main__":
    sys.exit(main(payload=stdin_payload()))
