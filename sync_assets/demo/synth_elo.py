"""Synthetic Elo DBs from known true strengths, for tests, the demo and benchmarks.

Matches are drawn vectorised: each match seats k distinct participants, is a draw
with probability up to `draw_rate` (most likely between equals), and otherwise is
won by seat i with probability
γ_i / Σ γ (γ = 10^(rating/400), the Plackett–Luce first choice: for two players
exactly the logistic Elo the fit assumes). `write_elo_db` writes rows in the real
fleet's shape (`DATA.md`, "Elo database"): `participants`, a stale `elo_ratings`
table (which fleetsync never reads), and `match_history` in one of the column
variants seen in the wild.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sync_assets.fleet.configs import split_config

VARIANTS = ("participant_ids", "participant_ab", "model_ab")


@dataclass(frozen=True)
class Simulated:
    """Matches as arrays: seats (M, max k) of participant codes (-1 = empty seat),
    winner code per match (-1 = draw)."""

    names: np.ndarray
    seats: np.ndarray
    winner: np.ndarray

    def __len__(self) -> int:
        return len(self.winner)

    def frame(self) -> pd.DataFrame:
        """participants (list of ids), winner (id or None): `ratings.decompose`'s input."""
        names = self.names
        participants = [list(names[row[row >= 0]]) for row in self.seats]
        winner = [names[w] if w >= 0 else None for w in self.winner]
        return pd.DataFrame({"participants": participants, "winner": winner})


def simulate(
    strengths: Mapping[str, float],
    n_matches: int,
    sizes: Sequence[int] = (2,),
    draw_rate: float = 0.05,
    seed: int = 0,
) -> Simulated:
    """`n_matches` matches among `strengths` (id → true Elo), sizes drawn uniformly."""
    rng = np.random.default_rng(seed)
    names = np.array(list(strengths), dtype=object)
    gamma = 10.0 ** (np.array(list(strengths.values()), dtype=np.float64) / 400.0)
    k_max = max(sizes)
    if len(names) < k_max:
        raise ValueError(f"{len(names)} participants cannot fill a {k_max}-player match")
    k = rng.choice(np.asarray(sizes), size=n_matches)
    seats = rng.integers(0, len(names), size=(n_matches, k_max))
    used = np.arange(k_max) < k[:, None]
    # Redraw matches that seat someone twice until every seat is distinct (empty seats
    # get distinct negative fillers, so they never clash).
    while True:
        ordered = np.sort(np.where(used, seats, -1 - np.arange(k_max)), axis=1)
        clash = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not clash.any():
            break
        seats[clash] = rng.integers(0, len(names), size=(int(clash.sum()), k_max))
    seats = np.where(used, seats, -1)
    weights = np.where(seats >= 0, gamma[np.maximum(seats, 0)], 0.0)
    cumulative = np.cumsum(weights, axis=1)
    pick = rng.random(n_matches) * cumulative[:, -1]
    winner_seat = (cumulative < pick[:, None]).sum(axis=1)
    winner = seats[np.arange(n_matches), winner_seat]
    # Draws are likelier between equals (Davidson-like): `draw_rate` for equal strengths,
    # fewer as the strongest and weakest seat drift apart; a 2200 drawing a 500 would
    # be evidence no rating model explains.
    g = np.where(seats >= 0, gamma[np.maximum(seats, 0)], np.nan)
    strong, weak = np.nanmax(g, axis=1), np.nanmin(g, axis=1)
    closeness = 2.0 * np.sqrt(strong * weak) / (strong + weak)
    winner[rng.random(n_matches) < draw_rate * closeness] = -1
    return Simulated(names=names, seats=seats, winner=winner)


def match_rows(
    sim: Simulated,
    config: str,
    *,
    id_prefix: str,
    start: float = 1.7e9,
    tournament_id: str | None = None,
) -> list[dict[str, Any]]:
    """The simulated matches as standard `match_history` rows of `config` (draws: no
    winner_id, a positive game_length — a finished game)."""
    board, players = split_config(config)
    rows = []
    for i, (seat_row, w) in enumerate(zip(sim.seats, sim.winner, strict=True)):
        ids = [str(sim.names[s]) for s in seat_row if s >= 0]
        rows.append(
            {
                "id": f"{id_prefix}-{i:07d}",
                "participant_ids": ids,
                "winner_id": str(sim.names[w]) if w >= 0 else None,
                "board_type": board,
                "num_players": players,
                "game_length": 40 + i % 60,
                "duration_sec": 12.5,
                "timestamp": start + 7.0 * i,
                "tournament_id": tournament_id,
                "metadata": "{}",
            }
        )
    return rows


_PARTICIPANTS_DDL = """CREATE TABLE IF NOT EXISTS participants (
    participant_id TEXT PRIMARY KEY, participant_type TEXT, ai_type TEXT,
    model_path TEXT, model_version TEXT, created_at REAL)"""
_ELO_RATINGS_DDL = """CREATE TABLE IF NOT EXISTS elo_ratings (
    participant_id TEXT, board_type TEXT, num_players INTEGER, rating REAL,
    games_played INTEGER, wins INTEGER, losses INTEGER, draws INTEGER, peak_rating REAL,
    last_update REAL, PRIMARY KEY (participant_id, board_type, num_players))"""


def _history_ddl(variant: str, integer_ids: bool, iso_timestamps: bool) -> str:
    key = "id INTEGER PRIMARY KEY AUTOINCREMENT" if integer_ids else "id TEXT PRIMARY KEY"
    players = {
        "participant_ids": "participant_ids TEXT NOT NULL",
        "participant_ab": "participant_a TEXT NOT NULL, participant_b TEXT NOT NULL",
        "model_ab": "model_a TEXT NOT NULL, model_b TEXT NOT NULL",
    }[variant]
    when = "timestamp TEXT" if iso_timestamps else "timestamp REAL"
    return (
        f"CREATE TABLE IF NOT EXISTS match_history ({key}, {players}, winner_id TEXT,"
        " board_type TEXT, num_players INTEGER, game_length INTEGER, duration_sec REAL,"
        f" {when}, tournament_id TEXT, metadata TEXT)"
    )


def _history_row(
    row: Mapping[str, Any], variant: str, integer_ids: bool, iso_timestamps: bool
) -> dict[str, Any]:
    ids = list(row["participant_ids"])
    out: dict[str, Any] = {k: v for k, v in row.items() if k != "participant_ids"}
    if integer_ids:
        out.pop("id")
    if variant == "participant_ids":
        out["participant_ids"] = json.dumps(ids)
    else:
        if len(ids) != 2:
            raise ValueError(f"the {variant} variant holds 2-player matches only")
        prefix = "participant_" if variant == "participant_ab" else "model_"
        out[prefix + "a"], out[prefix + "b"] = ids
    if iso_timestamps and out.get("timestamp") is not None:
        out["timestamp"] = dt.datetime.fromtimestamp(float(out["timestamp"]), dt.UTC).isoformat()
    return out


def write_elo_db(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    variant: str = "participant_ids",
    integer_ids: bool = False,
    iso_timestamps: bool = False,
    participants: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write (or append to) a node's `unified_elo.db` in WAL mode, like the fleet's.

    `participants`: id → extra participants-table columns (model_path, model_version)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        for ddl in (
            _PARTICIPANTS_DDL,
            _ELO_RATINGS_DDL,
            _history_ddl(variant, integer_ids, iso_timestamps),
        ):
            conn.execute(ddl)
        seen = {p for r in rows for p in r["participant_ids"]}
        for pid in sorted(seen):
            model, ai_type = (pid.split(":") + ["", ""])[:2]
            extra = dict((participants or {}).get(pid, {}))
            conn.execute(
                "INSERT OR IGNORE INTO participants (participant_id, participant_type,"
                " ai_type, model_path, model_version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    pid,
                    "baseline" if model == "none" else "model",
                    ai_type,
                    extra.get("model_path"),
                    extra.get("model_version"),
                    1.7e9,
                ),
            )
            # Stale, node-local rating numbers: present in the real DBs, never read.
            conn.execute(
                "INSERT OR IGNORE INTO elo_ratings VALUES (?, 'hex8', 2, 1500, 0, 0, 0, 0,"
                " 1500, 1.7e9)",
                (pid,),
            )
        shaped = [_history_row(r, variant, integer_ids, iso_timestamps) for r in rows]
        for row in shaped:
            columns = list(row)
            conn.execute(
                f"INSERT INTO match_history ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def anchored_strengths(
    config: str, count: int, seed: int, low: float = 500.0, high: float = 2200.0
) -> dict[str, float]:
    """`count` models of `config` with true ratings spread over [low, high], plus the two
    anchors at their pinned ratings (random 400, heuristic 1200)."""
    rng = np.random.default_rng(seed)
    ratings = rng.uniform(low, high, size=count)
    models = {f"m{i:03d}_{config}:gumbel_mcts:b800": float(r) for i, r in enumerate(ratings)}
    return {"none:random:d1": 400.0, "none:heuristic:d2": 1200.0, **models}
