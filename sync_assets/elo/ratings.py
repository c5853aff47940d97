"""Ratings recomputed from raw match results: a batch maximum-likelihood Bradley–Terry fit.

Pure functions over pandas/numpy, no Dagster, no I/O. Ratings are never merged
or updated incrementally (LESSONS 10): every recompute starts from the union of
match rows. Scale: logistic Elo, 400 points = 10× odds, unrated start 1500,
anchors pinned (random 400, heuristic 1200). Multiplayer games decompose into
pairwise results (the winner beat each other player; a game without a winner is a
draw between every pair). A BayesElo-style prior — `prior_draws` virtual draws
against a 1500 opponent — keeps undefeated or winless participants finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd

START = 1500.0
SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log unit of strength
DEFAULT_ANCHORS = {"none:random:d1": 400.0, "none:heuristic:d2": 1200.0}
# Pair outcomes are counted in a dense n × n array while it stays this small (n ≤ 2048,
# 32 MB), by sorting beyond: the dense count is ~20× faster at 1 M matches.
DENSE_PAIR_LIMIT = 1 << 22
RATING_COLUMNS = ["participant_id", "rating", "uncertainty", "games", "wins", "losses", "draws"]


@dataclass(frozen=True)
class Pairwise:
    """Pairwise outcomes: participant index a vs b, score of a (1 win, 0.5 draw, 0 loss),
    and per participant the match-level record (a 4-player game is one game, not three)."""

    names: np.ndarray  # participant ids, index → name
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    games: np.ndarray  # matches rated, per participant
    wins: np.ndarray
    draws: np.ndarray


def _by_size(codes: np.ndarray, sizes: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(k, match rows, seats (rows × k)) for every match size k ≥ 2."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    groups = []
    for k in np.unique(sizes[sizes >= 2]):
        rows = np.nonzero(sizes == k)[0]
        groups.append((int(k), rows, codes[starts[rows][:, None] + np.arange(k)]))
    return groups


def _repeats(seats: np.ndarray) -> bool:
    ordered = np.sort(seats, axis=1)
    return bool((ordered[:, 1:] == ordered[:, :-1]).any())


def _first_seats(codes: np.ndarray, sizes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and sizes with each participant's repeated seats in a match dropped."""
    match_of = np.repeat(np.arange(len(sizes)), sizes)
    keep = np.sort(np.unique(match_of * n + codes, return_index=True)[1])
    return codes[keep], np.bincount(match_of[keep], minlength=len(sizes))


def decompose(matches: pd.DataFrame) -> Pairwise:
    """Matches (participants: list of ids, winner: id or None) → pairwise outcomes.

    A winner beats each other participant; no winner means every pair drew. A winner
    that is not among the participants is a malformed row and is dropped, and so is a
    match with fewer than two distinct participants. A participant listed twice in one
    match counts once. Vectorised (one pass per distinct match size) because at a
    million matches a per-match Python loop costs more than the whole fit."""
    players = matches["participants"].tolist()
    winners = matches["winner"].tolist()
    sizes = np.fromiter(map(len, players), dtype=np.int64, count=len(players))
    seated = int(sizes.sum())
    # One factorize over every seat, then every winner, in first-appearance order (like
    # a dict): participants are codes 0..n-1, a winner who never sat anywhere is ≥ n
    # (so matches no seat and is dropped), no winner (None/NaN) is -1.
    labels = np.array([*chain.from_iterable(players), *winners], dtype=object)
    every, uniques = pd.factorize(labels)
    codes, winner_code = every[:seated], every[seated:]
    if (codes < 0).any():
        raise ValueError("decompose: a participant id is missing (None/NaN)")
    n = int(codes.max()) + 1 if seated else 0
    names = np.asarray(uniques[:n], dtype=object)
    is_draw = winner_code < 0
    groups = _by_size(codes, sizes)
    if any(_repeats(seats) for _, _, seats in groups):  # rare: keep each one's first seat
        codes, sizes = _first_seats(codes, sizes, n)
        groups = _by_size(codes, sizes)

    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    s_parts: list[np.ndarray] = []
    rated: list[np.ndarray] = []  # seats (codes) of every match that counts
    won: list[np.ndarray] = []
    drew: list[np.ndarray] = []
    for k, rows, seats in groups:
        draw = is_draw[rows]
        if draw.any():
            d = seats[draw]
            i, j = np.triu_indices(k, 1)
            a_parts.append(d[:, i].ravel())
            b_parts.append(d[:, j].ravel())
            s_parts.append(np.full(d.shape[0] * len(i), 0.5))
            rated.append(d.ravel())
            drew.append(d.ravel())
        decisive = seats[~draw]
        hit = decisive == winner_code[rows[~draw]][:, None]
        ok = hit.any(axis=1)
        decisive, hit = decisive[ok], hit[ok]
        if decisive.shape[0]:
            w = decisive[hit]  # one hit per row: participants are distinct
            losers = decisive[~hit].reshape(decisive.shape[0], k - 1)
            a_parts.append(np.repeat(w, k - 1))
            b_parts.append(losers.ravel())
            s_parts.append(np.ones(losers.size))
            rated.append(decisive.ravel())
            won.append(w)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype=dtype)
        return np.concatenate(parts).astype(dtype, copy=False)

    def count(parts: list[np.ndarray]) -> np.ndarray:
        return np.bincount(cat(parts, np.int64), minlength=n)

    return Pairwise(
        names=names,
        a=cat(a_parts, np.int64),
        b=cat(b_parts, np.int64),
        score=cat(s_parts, np.float64),
        games=count(rated),
        wins=count(won),
        draws=count(drew),
    )


def fit_ratings(
    pairs: Pairwise,
    anchors: dict[str, float] | None = None,
    prior_draws: float = 2.0,
    tolerance: float = 1e-6,
    max_iterations: int = 10_000,
) -> pd.DataFrame:
    """Maximum-likelihood ratings (minorise–maximise iterations, Hunter 2004), anchors fixed.

    Works on aggregated pair counts, so the cost per iteration is O(pairs of
    participants), not O(matches). Stops when no free log-strength moves by more than
    `tolerance` in an iteration, or after `max_iterations`. Uncertainty: one standard
    error from the Fisher information (diagonal), in Elo points; 0 for anchors, whose
    ratings are returned exactly as pinned. games/wins/losses/draws count matches.
    `attrs`: iterations run, and whether the tolerance was reached."""
    anchors = DEFAULT_ANCHORS if anchors is None else anchors
    n = len(pairs.names)
    if n == 0:
        return pd.DataFrame(columns=RATING_COLUMNS)
    # Aggregate: games and points per unordered pair, both directions.
    lo, hi = np.minimum(pairs.a, pairs.b), np.maximum(pairs.a, pairs.b)
    points_lo = np.where(pairs.a == lo, pairs.score, 1.0 - pairs.score)
    key = lo * n + hi
    if n * n <= DENSE_PAIR_LIMIT:  # one counter per possible pair: O(pairs), no sort
        games = np.bincount(key, minlength=n * n).astype(np.float64)
        won_lo = np.bincount(key, weights=points_lo, minlength=n * n)
        uniq = np.nonzero(games)[0]
        games, won_lo = games[uniq], won_lo[uniq]
    else:
        uniq, inverse = np.unique(key, return_inverse=True)
        games = np.bincount(inverse).astype(np.float64)
        won_lo = np.bincount(inverse, weights=points_lo)
    i, j = uniq // n, uniq % n

    # Virtual opponent (index n) at START: prior draws for every real participant.
    prior_i = np.arange(n)
    ii = np.concatenate([i, prior_i])
    jj = np.concatenate([j, np.full(n, n)])
    nij = np.concatenate([games, np.full(n, prior_draws)])
    wins: np.ndarray = np.bincount(i, weights=won_lo, minlength=n + 1) + np.bincount(
        j, weights=games - won_lo, minlength=n + 1
    )
    wins[:n] += prior_draws / 2.0

    fixed = np.zeros(n + 1, dtype=bool)
    theta = np.zeros(n + 1)  # natural-log strength, START = 0
    pinned: dict[int, float] = {}
    for name, pinned_at in anchors.items():
        hit = np.nonzero(pairs.names == name)[0]
        if hit.size:
            fixed[hit[0]] = True
            theta[hit[0]] = (pinned_at - START) / SCALE
            pinned[int(hit[0])] = float(pinned_at)
    fixed[n] = True
    free = ~fixed

    gamma = np.exp(theta)
    iterations, converged = 0, False
    while iterations < max_iterations and not converged:
        iterations += 1
        denom_pair = nij / (gamma[ii] + gamma[jj])
        denom = np.bincount(ii, weights=denom_pair, minlength=n + 1) + np.bincount(
            jj, weights=denom_pair, minlength=n + 1
        )
        new = gamma.copy()
        new[free] = np.maximum(wins[free], 1e-12) / denom[free]
        if not pinned:
            # No anchor present: pin the mean of log-strengths at START instead.
            logs = np.log(new[:n])
            new[:n] = np.exp(logs - logs.mean())
        delta = np.max(np.abs(np.log(new[free]) - np.log(gamma[free]))) if free.any() else 0.0
        gamma = new
        converged = bool(delta < tolerance)
    theta = np.log(gamma)
    rating: np.ndarray = START + SCALE * theta[:n]
    for index, value in pinned.items():
        rating[index] = value  # exactly as pinned, not through exp/log round-off

    p = gamma[ii] / (gamma[ii] + gamma[jj])
    info_pair = nij * p * (1 - p)
    info = np.bincount(ii, weights=info_pair, minlength=n + 1) + np.bincount(
        jj, weights=info_pair, minlength=n + 1
    )
    uncertainty = np.where(fixed[:n], 0.0, SCALE / np.sqrt(np.maximum(info[:n], 1e-12)))

    fitted = pd.DataFrame(
        {
            "participant_id": pairs.names,
            "rating": rating,
            "uncertainty": uncertainty,
            "games": pairs.games.astype(int),
            "wins": pairs.wins.astype(int),
            "losses": (pairs.games - pairs.wins - pairs.draws).astype(int),
            "draws": pairs.draws.astype(int),
        }
    ).sort_values(["rating", "participant_id"], ascending=[False, True], ignore_index=True)
    fitted.attrs.update(iterations=iterations, converged=converged)
    return fitted


def rating_of(ratings: pd.DataFrame, participant: str) -> tuple[float | None, float | None, int]:
    """(rating, uncertainty, games) of a participant, for the promotion gate.

    `participant` is a full participant id, or a model (its SHA-256 or name): then
    the model's best-evidenced row counts — the participant id with that model part
    that played the most games (ties: the smaller uncertainty) — since one model is
    rated once per search setting. Never rated: (None, None, 0)."""
    ids = ratings["participant_id"].astype(str)
    rows = ratings[ids == participant]
    if rows.empty:
        rows = ratings[ids.str.split(":", n=1).str[0] == participant]
    if rows.empty:
        return None, None, 0
    best = rows.sort_values(["games", "uncertainty"], ascending=[False, True]).iloc[0]
    return float(best["rating"]), float(best["uncertainty"]), int(best["games"])
