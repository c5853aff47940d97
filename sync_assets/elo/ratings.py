"""Ratings recomputed from raw match results: a batch maximum-a-posteriori Bradley–Terry fit.

Pure functions over pandas/numpy, no Dagster, no I/O. Ratings are never merged
or updated incrementally (LESSONS 10): every recompute starts from the union of
match rows. Scale: logistic Elo, 400 points = 10× odds, unrated start 1500,
anchors pinned (random 400, heuristic 1200). Multiplayer games decompose into
pairwise results (the winner beat each other player; a game without a winner is a
draw between every pair). A BayesElo-style prior — `prior_draws` virtual draws
against a 1500 opponent — keeps undefeated or winless participants finite. The
model, the fit and what `uncertainty` and `anchored` mean: docs/RATINGS.md.
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
# Relative round-off of a log-posterior summed over up to millions of pairs: a Newton
# step whose predicted gain is below it is not line-searched (the gain is noise).
ROUND_OFF = 1e-10
# Dense triangular solves and inverses recurse by halves down to blocks this small.
DENSE_BLOCK = 256
RATING_COLUMNS = [
    "participant_id",
    "rating",
    "uncertainty",
    "anchored",
    "games",
    "wins",
    "losses",
    "draws",
]


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


def _pair_totals(pairs: Pairwise) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, games, points of i) per unordered pair i < j that met at least once."""
    n = len(pairs.names)
    lo, hi = np.minimum(pairs.a, pairs.b), np.maximum(pairs.a, pairs.b)
    points_lo = np.where(pairs.a == lo, pairs.score, 1.0 - pairs.score)
    key = lo * n + hi
    if n * n <= DENSE_PAIR_LIMIT:  # one counter per possible pair: O(pairs), no sort
        games = np.bincount(key, minlength=n * n).astype(np.float64)
        points = np.bincount(key, weights=points_lo, minlength=n * n)
        met = np.nonzero(games)[0]
        games, points = games[met], points[met]
    else:
        met, inverse = np.unique(key, return_inverse=True)
        games = np.bincount(inverse).astype(np.float64)
        points = np.bincount(inverse, weights=points_lo)
    return met // n, met % n, games, points.astype(np.float64)  # no pairs: int bincount


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label (its smallest member) of each of `n` participants in the graph
    whose edges are the games `i`–`j`. Vectorised union–find: every split edge hooks
    the larger root under the smaller, then pointers jump until each points at its root."""
    root = np.arange(n)
    while True:
        ri, rj = root[i], root[j]
        split = ri != rj
        if not split.any():
            return root
        np.minimum.at(root, np.maximum(ri, rj)[split], np.minimum(ri, rj)[split])
        while not np.array_equal(up := root[root], root):
            root = up


def _win_probability(d: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * d))  # the logistic function, without overflow


def _lower_solve(lower: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with lower · x = b, `lower` lower-triangular, by halves: the work is
    matrix–vector products (O(n²)) and small dense solves at the leaves."""
    n = len(b)
    if n <= DENSE_BLOCK:
        return np.linalg.solve(lower, b)
    h = n // 2
    head = _lower_solve(lower[:h, :h], b[:h])
    tail = _lower_solve(lower[h:, h:], b[h:] - lower[h:, :h] @ head)
    return np.concatenate([head, tail])


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix, by halves (matrix products)."""
    n = len(lower)
    if n <= DENSE_BLOCK:
        return np.linalg.inv(lower)
    h = n // 2
    inverse = np.zeros_like(lower)
    inverse[:h, :h] = _lower_inverse(lower[:h, :h])
    inverse[h:, h:] = _lower_inverse(lower[h:, h:])
    inverse[h:, :h] = -inverse[h:, h:] @ (lower[h:, :h] @ inverse[:h, :h])
    return inverse


@dataclass(frozen=True)
class _Cholesky:
    """A = L·Lᵀ of a symmetric positive-definite matrix: Newton steps and the diagonal
    of A⁻¹ at a third of the cost of LU (numpy factorises, but has no triangular
    solve: `_lower_solve`, `_lower_inverse`)."""

    lower: np.ndarray

    @classmethod
    def of_upper(cls, upper: np.ndarray) -> _Cholesky:
        """From A's upper triangle and diagonal (the rest is not read)."""
        return cls(np.linalg.cholesky(upper.T))  # reads the lower triangle only

    def solve(self, b: np.ndarray) -> np.ndarray:
        y = _lower_solve(self.lower, b)
        # Lᵀ·x = y, and Lᵀ reversed along both axes is lower-triangular.
        return _lower_solve(self.lower.T[::-1, ::-1], y[::-1])[::-1]

    def inverse_diagonal(self) -> np.ndarray:
        inverse = _lower_inverse(self.lower)  # A⁻¹ = L⁻ᵀ·L⁻¹: column norms² of L⁻¹
        return np.einsum("ij,ij->j", inverse, inverse)


class _Posterior:
    """The log-posterior of natural-log strengths θ (START = 0): for every pair, its
    points w of n games scored as w·(θi − θj) − n·log(1 + e^(θi − θj)) (draws are
    half a win), plus `prior_draws` virtual draws of each participant against a
    fixed opponent at START. Strictly concave, so the maximum is unique. `free`:
    the participants that move (anchors do not). Every evaluation starts from the
    pair differences θi − θj, computed once per point (the O(pairs) part)."""

    def __init__(
        self,
        i: np.ndarray,
        j: np.ndarray,
        games: np.ndarray,
        points: np.ndarray,
        prior_draws: float,
        fixed: np.ndarray,
    ) -> None:
        self.i, self.j, self.games, self.points = i, j, games, points
        self.prior_draws = prior_draws
        self.free = np.nonzero(~fixed)[0]
        self.m = m = len(self.free)
        # Where each pair between two free participants sits in the dense Hessian's
        # upper triangle: i < j and free positions keep their order, so these are
        # ascending (a fast scatter).
        at = np.full(len(fixed), -1)
        at[self.free] = np.arange(m)
        fi, fj = at[i], at[j]
        self._both = (fi >= 0) & (fj >= 0)
        self._upper = fi[self._both] * m + fj[self._both]

    def first_guess(self, theta: np.ndarray) -> np.ndarray:
        """`theta` with each free participant at the log-odds of its score rate (prior
        draws included), as if its opponents sat at START: a start from which Newton
        needs a few iterations fewer than from START itself."""
        n = len(theta)
        points = np.bincount(self.i, self.points, n) + np.bincount(
            self.j, self.games - self.points, n
        )
        games = np.bincount(self.i, self.games, n) + np.bincount(self.j, self.games, n)
        rate = (points + self.prior_draws / 2.0) / (games + self.prior_draws)
        guess = theta.copy()
        guess[self.free] = np.log(rate / (1.0 - rate))[self.free]
        return guess

    def differences(self, theta: np.ndarray) -> np.ndarray:
        return theta[self.i] - theta[self.j]

    def value(self, theta: np.ndarray, d: np.ndarray) -> float:
        data = self.points @ d - self.games @ np.logaddexp(0.0, d)
        prior = self.prior_draws * (0.5 * theta.sum() - np.logaddexp(0.0, theta).sum())
        return float(data + prior)

    def derivatives(self, theta: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, _Cholesky]:
        """The gradient over the free participants, and the Cholesky factor of minus
        the Hessian there (dense, positive definite: a Laplacian plus the prior)."""
        n, m = len(theta), self.m
        p, q = _win_probability(d), _win_probability(theta)
        surplus = self.points - self.games * p
        weight = self.games * p * (1.0 - p)
        grad = self.prior_draws * (0.5 - q)
        grad += np.bincount(self.i, surplus, n) - np.bincount(self.j, surplus, n)
        diagonal = self.prior_draws * q * (1.0 - q)
        diagonal += np.bincount(self.i, weight, n) + np.bincount(self.j, weight, n)
        upper = np.zeros((m, m))
        cells = upper.reshape(-1)  # a view: the flat positions of the matrix
        cells[self._upper] = -weight[self._both]  # pairs are distinct: no position repeats
        cells[:: m + 1] = diagonal[self.free]
        return grad[self.free], _Cholesky.of_upper(upper)


@dataclass(frozen=True)
class _Maximum:
    theta: np.ndarray  # natural-log strengths, every participant
    variance: np.ndarray  # diagonal of the inverse of minus the Hessian, free participants
    iterations: int
    converged: bool


def _newton(
    posterior: _Posterior, theta: np.ndarray, tolerance: float, max_iterations: int
) -> _Maximum:
    """Maximise `posterior` over the free θ from `theta`: Newton steps on the full
    Hessian, halved until they raise the posterior (Armijo), which keeps the first
    steps from far-off starts safe; quadratic convergence near the top."""
    theta = theta.copy()
    free = posterior.free
    d = posterior.differences(theta)
    value = posterior.value(theta, d)
    for iteration in range(1, max_iterations + 1):
        grad, information = posterior.derivatives(theta, d)
        step = information.solve(grad)
        if np.max(np.abs(step), initial=0.0) < tolerance:
            # At the top: the full step is exact to round-off, and the variance at
            # this point is the variance there to the same precision.
            theta[free] += step
            return _Maximum(theta, information.inverse_diagonal(), iteration, True)
        scale, rise = 1.0, float(grad @ step)
        for _ in range(60):
            trial = theta.copy()
            trial[free] += scale * step
            trial_d = posterior.differences(trial)
            trial_value = posterior.value(trial, trial_d)
            # Near the top the gain drowns in the sum's round-off: Newton is safe there.
            if trial_value >= value + 1e-4 * scale * rise or rise < ROUND_OFF * abs(value):
                break
            scale *= 0.5
        theta, d, value = trial, trial_d, trial_value
    _, information = posterior.derivatives(theta, d)
    return _Maximum(theta, information.inverse_diagonal(), max_iterations, False)


def fit_ratings(
    pairs: Pairwise,
    anchors: dict[str, float] | None = None,
    prior_draws: float = 2.0,
    tolerance: float = 1e-6,
    max_iterations: int = 100,
) -> pd.DataFrame:
    """Maximum-a-posteriori ratings (Newton's method on the full Hessian), anchors fixed.

    The objective is the log-posterior of `_Posterior`: the Bradley–Terry likelihood
    of the pairwise results plus `prior_draws` (> 0) virtual draws against START,
    which keeps undefeated, winless and anchorless participants finite and the
    maximum unique — no re-centring, with or without anchors. Works on aggregated
    pair counts: O(pairs of participants) per iteration plus one dense solve over
    the free participants (fine to a few thousand). Stops when the Newton step
    moves no free log-strength by more than `tolerance`, or after `max_iterations`.

    `uncertainty`: one standard error in Elo points, the square root of the diagonal
    of the inverse Hessian over the free participants (anchors: exactly 0, their
    ratings exactly as pinned). `anchored`: the participant has a chain of games to
    an anchor; the virtual START opponent is no such chain, so in a group that never
    met an anchor (or in a fleet with no anchor at all) every rating is anchored=False
    — positioned by the prior, not comparable with anchored ratings. games/wins/
    losses/draws count matches. `attrs`: iterations run, whether the tolerance was
    reached."""
    if not prior_draws > 0:
        raise ValueError(f"fit_ratings: prior_draws must be > 0 (got {prior_draws})")
    anchors = DEFAULT_ANCHORS if anchors is None else anchors
    n = len(pairs.names)
    if n == 0:
        return pd.DataFrame(columns=RATING_COLUMNS)
    i, j, games, points = _pair_totals(pairs)
    index = {name: k for k, name in enumerate(pairs.names)}
    pinned = {index[name]: float(at) for name, at in anchors.items() if name in index}
    fixed = np.zeros(n, dtype=bool)
    fixed[list(pinned)] = True
    theta = np.zeros(n)
    for k, at in pinned.items():
        theta[k] = (at - START) / SCALE
    posterior = _Posterior(i, j, games, points, prior_draws, fixed)
    top = _newton(posterior, posterior.first_guess(theta), tolerance, max_iterations)

    rating: np.ndarray = START + SCALE * top.theta
    rating[list(pinned)] = list(pinned.values())  # exactly as pinned
    uncertainty = np.zeros(n)
    uncertainty[posterior.free] = SCALE * np.sqrt(top.variance)
    root = _components(n, i, j)
    anchored = np.isin(root, root[list(pinned)])

    fitted = pd.DataFrame(
        {
            "participant_id": pairs.names,
            "rating": rating,
            "uncertainty": uncertainty,
            "anchored": anchored,
            "games": pairs.games.astype(int),
            "wins": pairs.wins.astype(int),
            "losses": (pairs.games - pairs.wins - pairs.draws).astype(int),
            "draws": pairs.draws.astype(int),
        }
    ).sort_values(
        ["anchored", "rating", "participant_id"], ascending=[False, False, True], ignore_index=True
    )
    fitted.attrs.update(iterations=top.iterations, converged=top.converged)
    return fitted


def rating_of(
    ratings: pd.DataFrame, participant: str
) -> tuple[float | None, float | None, int, bool]:
    """(rating, uncertainty, games, anchored) of a participant, for the promotion gate.

    `participant` is a full participant id, or a model (its SHA-256 or name): then
    the model's best-evidenced row counts — an anchored row before an unanchored one
    (only an anchored rating is on the common scale), then the most games, then the
    smaller uncertainty — since one model is rated once per search setting. Never
    rated: (None, None, 0, False)."""
    ids = ratings["participant_id"].astype(str)
    rows = ratings[ids == participant]
    if rows.empty:
        rows = ratings[ids.str.split(":", n=1).str[0] == participant]
    if rows.empty:
        return None, None, 0, False
    rows = rows.assign(anchored=rows["anchored"].astype(bool))
    best = rows.sort_values(
        ["anchored", "games", "uncertainty"], ascending=[False, False, True]
    ).iloc[0]
    return (
        float(best["rating"]),
        float(best["uncertainty"]),
        int(best["games"]),
        bool(best["anchored"]),
    )
