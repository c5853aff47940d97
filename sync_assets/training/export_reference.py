"""The built-in reference exporter: canonical game DB + config → one NPZ shard (DATA.md).

Shipped to the node that holds the canonical DB and run there (bundled with
`npz_check.py`, see `resources/transport/programs.py`), so game bytes never cross the
network:

    export_reference.py CANONICAL.db OUT.npz CONFIG      → JSON on stdout; exit 0 when published

numpy + standard library only (Python ≥ 3.8, SQLite with JSON1). It exists so the demo,
the tests and fleets without an exporter of their own get real shards in the shapes of
DATA.md; a training repo's own exporter replaces it through the `Exporter` resource.

- Samples: one per move of every complete game of CONFIG (finished, ≥ 5 moves present),
  games in `game_id` order, moves in `move_number` order, all read in one read
  transaction (a merge committing meanwhile is not half seen).
- Features (float32 [N, 40, H, W]): a cheap but real encoding of the position before
  each move: plane `(player - 1) * 10 + age` marks the destination of the move made
  `age + 1` moves earlier by that player (10 moves of history, 4 seats). Globals: seat to
  move, player count, game progress, phase, game quality. Values: +1 for the eventual
  winner, −1/(n−1) for the others, 0 without a winner. Policy: the move's recorded
  `move_probs` (sparse), else the played move.
- Written in bounded chunks: the feature tensor (tens of GB at 2 M samples) is never
  whole in memory; it is deflated at level 1 (several times faster than `savez`'s
  default, still ~100 bytes a sample).
- Deterministic: the same DB gives a byte-identical shard — fixed zip timestamps, the
  export time taken from the newest game rather than the clock, strings interned so
  pickles repeat — so re-exporting an unchanged corpus yields the same SHA-256.
- Published like everything else: written under a staging name beside OUT, validated
  with `npz_check`, renamed onto OUT; an invalid shard is removed, never published.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from sync_assets.training.npz_check import StreamedHash, array_sha256, check_npz

BOARD_SIDE = {"hex8": 9, "square8": 8, "square19": 19, "hexagonal": 25}
PHASES = ("ring_placement", "movement", "capture", "line_processing", "territory_processing")
HISTORY = 10
MAX_PLAYERS = 4
CHANNELS = HISTORY * MAX_PLAYERS
GLOBALS = 20
MIN_MOVES = 5
FEATURE_VERSION = 1
EXPORT_VERSION = 1
EXPORTER = "fleetsync-reference"
COMPRESS_LEVEL = 1
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK_BYTES = 32 << 20
_CONFIG = re.compile(r"^(hex8|square8|square19|hexagonal)_([234])p$")
_STAGING_PREFIX = ".fleetsync-tmp-"
_EMPTY = "''"  # SQL empty string


class ExportError(Exception):
    """The DB cannot be exported, or what was written did not validate."""


@dataclass
class Samples:
    """Everything of the complete games of one config, one row per move (sample)."""

    board: str
    players: int
    game: np.ndarray  # game ordinal of each sample (games sorted by id)
    position: np.ndarray  # index of the move within its game
    move_number: np.ndarray
    player: np.ndarray  # seat to move, 1-based (0 = unknown)
    to_x: np.ndarray  # destination of the move (−1 = none)
    to_y: np.ndarray
    phase: np.ndarray  # object array of str
    move_type: np.ndarray
    policy_at: np.ndarray  # sample of each sparse-policy entry, ascending
    policy_key: np.ndarray
    policy_prob: np.ndarray
    winner: np.ndarray  # per game, 1-based (0 = none)
    quality: np.ndarray  # per game (NaN = unknown)
    victory: np.ndarray  # per game, object arrays of str
    engine: np.ndarray
    opponent: np.ndarray
    newest_game_time: str | None

    @property
    def side(self) -> int:
        return BOARD_SIDE[self.board]

    def __len__(self) -> int:
        return int(self.game.size)


def parse_config(config: str) -> tuple[str, int]:
    """`hex8_2p` → ("hex8", 2); only the normalised keys the inventory hands out."""
    match = _CONFIG.match(config)
    if match is None:
        raise ExportError(f"unknown config key {config!r}: expected {{board}}_{{n}}p")
    return match.group(1), int(match.group(2))


# ---- reading the game DB ------------------------------------------------------------


class _Interned:
    """Strings of one column as codes into a table of first appearances: the shard's
    object arrays then share one str per distinct value (smaller, repeatable pickles)."""

    def __init__(self) -> None:
        self.table: dict[str, int] = {}

    def codes(self, values: list[str]) -> list[int]:
        table = self.table
        return [table.setdefault(v, len(table)) for v in values]

    def strings(self, codes: np.ndarray) -> np.ndarray:
        return np.array(list(self.table), dtype=object)[codes]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")}


def _optional(present: set[str], column: str, fallback: str) -> str:
    """`g.column`, or the fallback on DBs whose schema lacks it (older nodes)."""
    return f"coalesce(g.{column}, {fallback})" if column in present else fallback


def read_samples(db: str | Path, config: str) -> Samples:
    """Read every move sample of the complete games of `config`, vectorised."""
    board, players = parse_config(config)
    if not Path(db).is_file():
        raise ExportError(f"canonical DB {db}: no such file")
    conn = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        games_cols, moves_cols = _columns(conn, "games"), _columns(conn, "game_moves")
        needed = {"game_id", "board_type", "num_players", "game_status"} - games_cols
        needed |= {"game_id", "move_number"} - moves_cols
        if needed:
            raise ExportError(f"canonical DB {db}: not a game DB (lacks {sorted(needed)})")
        conn.execute("BEGIN")  # one snapshot for every query below
        samples = _read(conn, board, players, games_cols, moves_cols)
        conn.execute("COMMIT")
        return samples
    except sqlite3.Error as exc:
        raise ExportError(f"canonical DB {db}: {exc}") from exc
    finally:
        conn.close()


def _read(
    conn: sqlite3.Connection, board: str, players: int, games_cols: set[str], moves_cols: set[str]
) -> Samples:
    conn.execute(
        "CREATE TEMP TABLE sel AS SELECT g.game_id AS game_id,"
        f" {_optional(games_cols, 'winner', '0')} AS winner,"
        f" {_optional(games_cols, 'quality_score', 'NULL')} AS quality,"
        f" {_optional(games_cols, 'termination_reason', _EMPTY)} AS victory,"
        f" {_optional(games_cols, 'engine_mode', _EMPTY)} AS engine,"
        f" {_optional(games_cols, 'opponent_type', _EMPTY)} AS opponent,"
        f" coalesce({'g.completed_at' if 'completed_at' in games_cols else 'NULL'},"
        f" {'g.created_at' if 'created_at' in games_cols else 'NULL'}) AS finished_at"
        " FROM main.games g WHERE g.board_type = ? AND g.num_players = ?"
        " AND g.game_status IN ('completed', 'finished')"
        " AND (SELECT 1 FROM main.game_moves m WHERE m.game_id = g.game_id"
        f"      LIMIT 1 OFFSET {MIN_MOVES - 1}) IS NOT NULL"
        " ORDER BY g.game_id",
        (board, players),
    )
    victory, engine, opponent = _Interned(), _Interned(), _Interned()
    rows = conn.execute(
        "SELECT winner, quality, victory, engine, opponent FROM temp.sel ORDER BY rowid"
    ).fetchall()
    winner = np.array([r[0] for r in rows], dtype=np.int64).reshape(-1)
    quality = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
    victory_codes = np.array(victory.codes([r[2] for r in rows]), dtype=np.int64)
    engine_codes = np.array(engine.codes([r[3] for r in rows]), dtype=np.int64)
    opponent_codes = np.array(opponent.codes([r[4] for r in rows]), dtype=np.int64)
    newest = conn.execute("SELECT max(finished_at) FROM temp.sel").fetchone()[0]

    def move_col(column: str, fallback: str) -> str:
        return f"coalesce(m.{column}, {fallback})" if column in moves_cols else fallback

    def coord(axis: str) -> str:
        if "move_json" not in moves_cols:
            return "-1"
        return (
            f"coalesce(CASE WHEN json_valid(m.move_json) THEN"
            f" CAST(json_extract(m.move_json, '$.to.{axis}') AS INTEGER) END, -1)"
        )

    phase, move_type = _Interned(), _Interned()
    cursor = conn.execute(
        f"SELECT s.rowid - 1, m.move_number, {move_col('player', '0')},"
        f" {move_col('phase', _EMPTY)}, {move_col('move_type', _EMPTY)}, {coord('x')}, {coord('y')}"
        " FROM temp.sel s CROSS JOIN main.game_moves m ON m.game_id = s.game_id"
        " ORDER BY s.rowid, m.move_number"
    )
    ints: list[np.ndarray] = []
    phases: list[np.ndarray] = []
    types: list[np.ndarray] = []
    while batch := cursor.fetchmany(100_000):
        ints.append(np.array([(r[0], r[1], r[2], r[5], r[6]) for r in batch], dtype=np.int64))
        phases.append(np.array(phase.codes([str(r[3]) for r in batch]), dtype=np.int64))
        types.append(np.array(move_type.codes([str(r[4]) for r in batch]), dtype=np.int64))
    table = np.concatenate(ints) if ints else np.zeros((0, 5), dtype=np.int64)
    game = table[:, 0]
    starts = np.searchsorted(game, np.arange(winner.size))
    position = np.arange(game.size) - starts[game]
    policy_at, policy_key, policy_prob = _read_policy(conn, moves_cols)
    return Samples(
        board=board,
        players=players,
        game=game,
        position=position,
        move_number=table[:, 1],
        player=table[:, 2],
        to_x=table[:, 3],
        to_y=table[:, 4],
        phase=phase.strings(_concat(phases)),
        move_type=move_type.strings(_concat(types)),
        policy_at=policy_at,
        policy_key=policy_key,
        policy_prob=policy_prob,
        winner=winner,
        quality=quality,
        victory=victory.strings(victory_codes),
        engine=engine.strings(engine_codes),
        opponent=opponent.strings(opponent_codes),
        newest_game_time=newest,
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _read_policy(
    conn: sqlite3.Connection, moves_cols: set[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample, index, probability) of every `move_probs` entry, in sample order; the
    JSON is exploded by SQLite (json_each), not parsed row by row in Python."""
    if "move_probs" not in moves_cols:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cursor = conn.execute(
        "WITH s AS (SELECT row_number() OVER (ORDER BY s.rowid, m.move_number) - 1 AS i,"
        " CASE WHEN json_valid(m.move_probs) AND json_type(m.move_probs) = 'object'"
        " THEN m.move_probs ELSE '{}' END AS p"
        " FROM temp.sel s CROSS JOIN main.game_moves m ON m.game_id = s.game_id)"
        " SELECT s.i, CAST(j.key AS INTEGER), j.value FROM s, json_each(s.p) j"
        " WHERE j.type IN ('integer', 'real') AND j.key != '' AND j.key NOT GLOB '*[^0-9]*'"
        " ORDER BY s.i, j.id"
    )
    parts = []
    while batch := cursor.fetchmany(200_000):
        parts.append(np.array(batch, dtype=np.float64))
    flat = np.concatenate(parts) if parts else np.zeros((0, 3))
    return flat[:, 0].astype(np.int64), flat[:, 1].astype(np.int64), flat[:, 2]


# ---- samples → arrays ----------------------------------------------------------------


def feature_chunk(samples: Samples, lo: int, hi: int) -> np.ndarray:
    """Features of samples [lo, hi): history planes of the previous moves' destinations."""
    side = samples.side
    out = np.zeros((hi - lo, CHANNELS, side, side), dtype=np.float32)
    rows = np.arange(lo, hi)
    for age in range(HISTORY):
        back = age + 1
        here = rows[samples.position[lo:hi] >= back]
        src = here - back
        x, y, seat = samples.to_x[src], samples.to_y[src], samples.player[src]
        ok = (x >= 0) & (x < side) & (y >= 0) & (y < side) & (seat >= 1) & (seat <= MAX_PLAYERS)
        out[here[ok] - lo, (seat[ok] - 1) * HISTORY + age, x[ok], y[ok]] = 1.0
    return out


def _outcomes(samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    """values [N] for the seat to move and values_mp [N, 4] per seat, in −1..1."""
    n = samples.players
    winner = samples.winner[samples.game]
    seats = np.arange(1, MAX_PLAYERS + 1)
    per_seat = np.where(seats[None, :] == winner[:, None], 1.0, -1.0 / (n - 1))
    per_seat[winner == 0, :] = 0.0
    per_seat[:, n:] = 0.0
    mover = np.clip(samples.player, 1, MAX_PLAYERS) - 1
    values = np.where(samples.player >= 1, per_seat[np.arange(len(samples)), mover], 0.0)
    return values.astype(np.float32), per_seat.astype(np.float32)


def _globals(samples: Samples) -> np.ndarray:
    count = len(samples)
    g = np.zeros((count, GLOBALS), dtype=np.float32)
    rows = np.arange(count)
    seat_ok = (samples.player >= 1) & (samples.player <= MAX_PLAYERS)
    g[rows[seat_ok], samples.player[seat_ok] - 1] = 1.0
    g[:, 4 + samples.players - 2] = 1.0
    moves_in_game = np.bincount(samples.game, minlength=samples.winner.size)[samples.game]
    g[:, 7] = samples.position / np.maximum(moves_in_game, 1)
    g[:, 8] = np.minimum(samples.position, 200) / 200.0
    for k, name in enumerate(PHASES):
        g[:, 9 + k] = samples.phase == name
    g[:, 14] = np.nan_to_num(samples.quality[samples.game], nan=0.0)
    return g


def _policy(samples: Samples) -> tuple[np.ndarray, np.ndarray, int]:
    """Sparse policy per sample: recorded move_probs, else the played move (prob 1)."""
    count, side = len(samples), samples.side
    have = np.bincount(samples.policy_at, minlength=count) > 0
    played = ~have & (samples.to_x >= 0) & (samples.to_x < side)
    played &= (samples.to_y >= 0) & (samples.to_y < side)
    at = np.concatenate([samples.policy_at, np.flatnonzero(played)])
    key = np.concatenate([samples.policy_key, (samples.to_x * side + samples.to_y)[played]])
    prob = np.concatenate([samples.policy_prob, np.ones(int(played.sum()))])
    order = np.argsort(at, kind="stable")
    at, key, prob = at[order], key[order].astype(np.int32), prob[order].astype(np.float32)
    bounds = np.cumsum(np.bincount(at, minlength=count))[:-1]
    keys, probs = np.split(key, bounds), np.split(prob, bounds)
    indices, values = np.empty(count, dtype=object), np.empty(count, dtype=object)
    # Element by element: assigning a list of equal-length arrays would broadcast to 2-d.
    for i in range(count):
        indices[i], values[i] = keys[i], probs[i]
    size = max(side * side, int(key.max()) + 1 if key.size else 0)
    return indices, values, size


def shard_arrays(samples: Samples) -> dict[str, np.ndarray]:
    """Every array of the shard except `features` (streamed) and `data_checksums`."""
    count = len(samples)
    values, values_mp = _outcomes(samples)
    indices, probs, policy_size = _policy(samples)
    moves_in_game = np.bincount(samples.game, minlength=samples.winner.size)
    per_game = samples.game
    unknown_elo = np.full(count, np.nan, dtype=np.float32)  # game DBs carry no ratings
    metadata = {
        "export_time": samples.newest_game_time,
        "newest_game_time": samples.newest_game_time,
        "game_count": int(samples.winner.size),
        "sample_count": count,
        "config": f"{samples.board}_{samples.players}p",
        "exporter": EXPORTER,
    }
    return {
        "globals": _globals(samples),
        "values": values,
        "values_mp": values_mp,
        "num_players": np.full(count, samples.players, dtype=np.int32),
        "move_numbers": samples.move_number.astype(np.int32),
        "total_game_moves": moves_in_game[per_game].astype(np.int32),
        "policy_indices": indices,
        "policy_values": probs,
        "phases": samples.phase,
        "victory_types": samples.victory[per_game],
        "engine_modes": samples.engine[per_game],
        "move_types": samples.move_type,
        "opponent_types": samples.opponent[per_game],
        "opponent_elo": unknown_elo,
        "generator_elo": unknown_elo.copy(),
        "quality_score": samples.quality[per_game].astype(np.float32),
        "board_type": np.array(samples.board),
        "board_size": np.array(samples.side, dtype=np.int32),
        "history_length": np.array(HISTORY, dtype=np.int32),
        "feature_version": np.array(FEATURE_VERSION, dtype=np.int32),
        "policy_encoding": np.array("sparse"),
        "policy_size": np.array(policy_size, dtype=np.int32),
        "export_version": np.array(EXPORT_VERSION, dtype=np.int32),
        "metadata": np.array(metadata, dtype=object),
    }


# ---- writing ------------------------------------------------------------------------


def _member(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed timestamp (the clock would change the shard's SHA-256)."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    # The only per-entry level knob on Python 3.8-3.12; a property alias from 3.13 on.
    info._compresslevel = COMPRESS_LEVEL  # type: ignore[attr-defined]
    info.external_attr = 0o644 << 16
    return info


def write_shard(path: str | Path, samples: Samples) -> dict[str, str]:
    """Write the shard to `path` (features streamed in chunks); returns data_checksums."""
    side = samples.side
    shape = (len(samples), CHANNELS, side, side)
    checksums: dict[str, str] = {}
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        with archive.open(_member("features"), "w", force_zip64=True) as fp:
            header = npy_format.header_data_from_array_1_0(np.zeros((0, *shape[1:]), np.float32))
            header["shape"] = shape
            npy_format.write_array_header_1_0(fp, header)
            digest = StreamedHash(np.dtype(np.float32), shape)
            step = max(1, CHUNK_BYTES // (CHANNELS * side * side * 4))
            for lo in range(0, len(samples), step):
                chunk = feature_chunk(samples, lo, min(lo + step, len(samples)))
                # Flat bytes: zipfile before 3.11 counts len(data), not a view's nbytes.
                flat = chunk.reshape(-1).view(np.uint8).data
                digest.update(flat)
                fp.write(flat)
            checksums["features"] = digest.hexdigest()
        for name, array in shard_arrays(samples).items():
            with archive.open(_member(name), "w", force_zip64=True) as fp:
                npy_format.write_array(fp, array, allow_pickle=True)
            checksums[name] = array_sha256(array)
        with archive.open(_member("data_checksums"), "w", force_zip64=True) as fp:
            npy_format.write_array(fp, np.array(json.dumps(checksums, sort_keys=True)))
    return checksums


def export(db: str | Path, out: str | Path, config: str) -> dict[str, Any]:
    """Export `config` from `db` to `out`: staging name, validation, atomic rename.

    Returns {"out", "samples", "games", "seconds", "samples_per_s", "check"}; raises
    ExportError (with the validator's problems) when the shard does not validate."""
    started = time.monotonic()
    out = Path(out)
    samples = read_samples(db, config)
    if len(samples) == 0:
        raise ExportError(f"canonical DB {db}: no complete {config} game to export")
    staging = out.with_name(f"{_STAGING_PREFIX}{out.name}.{os.getpid()}.npz")
    try:
        write_shard(staging, samples)
        check = check_npz(staging)
        if not check["ok"]:
            raise ExportError(f"exported shard does not validate: {'; '.join(check['problems'])}")
        os.replace(staging, out)
    finally:
        if staging.exists():
            staging.unlink()
    check["path"] = str(out)
    seconds = time.monotonic() - started
    return {
        "out": str(out),
        "samples": len(samples),
        "games": int(samples.winner.size),
        "seconds": round(seconds, 3),
        "samples_per_s": round(len(samples) / seconds, 1) if seconds > 0 else None,
        "check": check,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print export()'s result as JSON; on failure {"error": ...} and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(json.dumps({"error": "usage: export_reference.py CANONICAL.db OUT.npz CONFIG"}))
        return 2
    try:
        result = export(args[0], args[1], args[2])
    except (ExportError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
