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

import numpy as np
import pandas as pd

START = 1500.0
SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log unit of strength
DEFAULT_ANCHORS = {"none:random:d1": 400.0, "none:heuristic:d2": 1200.0}
RATING_COLUMNS = ["participant_id", "rating", "uncertainty", "games", "wins", "losses", "draws"]


@dataclass(frozen=True)
class Pairwise:
    """Pairwise outcomes: participant index a vs b, score of a (1 win, 0.5 draw, 0 loss)."""

    names: np.ndarray  # participant ids, index → name
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray


def decompose(matches: pd.DataFrame) -> Pairwise:
    """Matches (participants: list of ids, winner: id or None) → pairwise outcomes.

    A winner beats each other participant; no winner means every pair drew. A winner
    that is not among the participants is a malformed row and is dropped."""
    names: dict[str, int] = {}
    a: list[int] = []
    b: list[int] = []
    score: list[float] = []
    for players, winner in zip(matches["participants"], matches["winner"], strict=True):
        ids = [names.setdefault(p, len(names)) for p in dict.fromkeys(players)]
        if len(ids) < 2:
            continue
        if winner is None or (isinstance(winner, float) and math.isnan(winner)):
            for i in range(len(ids)):
                for j in range(i + 1, len(ids)):
                    a.append(ids[i])
                    b.append(ids[j])
                    score.append(0.5)
        elif winner in names and names[winner] in ids:
            w = names[winner]
            for other in ids:
                if other != w:
                    a.append(w)
                    b.append(other)
                    score.append(1.0)
    order = sorted(names, key=names.__getitem__)
    return Pairwise(
        names=np.array(order, dtype=object),
        a=np.asarray(a, dtype=np.int64),
        b=np.asarray(b, dtype=np.int64),
        score=np.asarray(score, dtype=np.float64),
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
    participants), not O(matches). Uncertainty: one standard error from the Fisher
    information (diagonal), in Elo points."""
    anchors = DEFAULT_ANCHORS if anchors is None else anchors
    n = len(pairs.names)
    if n == 0:
        return pd.DataFrame(columns=RATING_COLUMNS)
    # Aggregate: games and points per unordered pair, both directions.
    lo, hi = np.minimum(pairs.a, pairs.b), np.maximum(pairs.a, pairs.b)
    points_lo = np.where(pairs.a == lo, pairs.score, 1.0 - pairs.score)
    key = lo * n + hi
    uniq, inverse = np.unique(key, return_inverse=True)
    games = np.bincount(inverse).astype(np.float64)
    won_lo = np.bincount(inverse, weights=points_lo)
    i, j = uniq // n, uniq % n

    # Virtual opponent (index n) at START: prior draws for every real participant.
    prior_i = np.arange(n)
    ii = np.concatenate([i, prior_i])
    jj = np.concatenate([j, np.full(n, n)])
    nij = np.concatenate([games, np.full(n, prior_draws)])
    wins = np.bincount(i, weights=won_lo, minlength=n + 1) + np.bincount(
        j, weights=games - won_lo, minlength=n + 1
    )
    wins[:n] += prior_draws / 2.0

    fixed = np.zeros(n + 1, dtype=bool)
    theta = np.zeros(n + 1)  # natural-log strength, START = 0
    for name, rating in anchors.items():
        hit = np.nonzero(pairs.names == name)[0]
        if hit.size:
            fixed[hit[0]] = True
            theta[hit[0]] = (rating - START) / SCALE
    fixed[n] = True
    free = ~fixed

    gamma = np.exp(theta)
    for _ in range(max_iterations):
        denom_pair = nij / (gamma[ii] + gamma[jj])
        denom = np.bincount(ii, weights=denom_pair, minlength=n + 1) + np.bincount(
            jj, weights=denom_pair, minlength=n + 1
        )
        new = gamma.copy()
        new[free] = np.maximum(wins[free], 1e-12) / denom[free]
        if not anchors or not fixed[:n].any():
            # No anchor present: pin the mean of log-strengths at START instead.
            logs = np.log(new[:n])
            new[:n] = np.exp(logs - logs.mean())
        delta = np.max(np.abs(np.log(new[free]) - np.log(gamma[free]))) if free.any() else 0.0
        gamma = new
        if delta < tolerance:
            break
    theta = np.log(gamma)
    rating = START + SCALE * theta[:n]

    p = gamma[ii] / (gamma[ii] + gamma[jj])
    info_pair = nij * p * (1 - p)
    info = np.bincount(ii, weights=info_pair, minlength=n + 1) + np.bincount(
        jj, weights=info_pair, minlength=n + 1
    )
    uncertainty = np.where(fixed[:n], 0.0, SCALE / np.sqrt(np.maximum(info[:n], 1e-12)))

    played = np.bincount(pairs.a, minlength=n) + np.bincount(pairs.b, minlength=n)
    draws = np.bincount(pairs.a, weights=pairs.score == 0.5, minlength=n) + np.bincount(
        pairs.b, weights=pairs.score == 0.5, minlength=n
    )
    a_won = np.bincount(pairs.a, weights=pairs.score == 1.0, minlength=n) + np.bincount(
        pairs.b, weights=pairs.score == 0.0, minlength=n
    )
    return pd.DataFrame(
        {
            "participant_id": pairs.names,
            "rating": rating,
            "uncertainty": uncertainty,
            "games": played.astype(int),
            "wins": a_won.astype(int),
            "losses": (played - a_won - draws).astype(int),
            "draws": draws.astype(int),
        }
    ).sort_values("rating", ascending=False, ignore_index=True)
