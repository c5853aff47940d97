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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, pairwise

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

START = 1500.0
SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log unit of strength
DEFAULT_ANCHORS = {"none:random:d1": 400.0, "none:heuristic:d2": 1200.0}
# Pair outcomes are counted in a dense n × n array while it stays this small (n ≤ 2048,
# 32 MB), by sorting beyond: the dense count is ~20× faster at 1 M matches.
DENSE_PAIR_LIMIT = 1 << 22
# Relative round-off of a log-posterior summed over up to millions of pairs: a Newton
# step whose predicted gain is below it is not line-searched (the gain is noise).
ROUND_OFF = 1e-10
# The dense factorisation recurses by halves down to blocks this small, and groups of
# participants smaller than this are factorised together.
DENSE_BLOCK = 256
# A Newton step is solved by conjugate gradients to this relative residual (far below
# what the step's tolerance needs), or exactly by a factorisation if this many
# iterations do not get there.
CG_TOLERANCE = 1e-10
CG_LIMIT = 100
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
    key = np.minimum(pairs.a, pairs.b) * n + np.maximum(pairs.a, pairs.b)
    # The points of the lower index: the score, or 1 − score where a is the higher.
    points_lo = 0.5 + np.copysign(pairs.score - 0.5, pairs.b - pairs.a)
    if n * n <= DENSE_PAIR_LIMIT:  # one counter per possible pair: O(pairs), no sort
        counts = np.bincount(key, minlength=n * n)
        met = np.flatnonzero(counts)
        games = counts[met]
        points = np.bincount(key, weights=points_lo, minlength=n * n)[met]
    else:
        met, inverse = np.unique(key, return_inverse=True)
        games = np.bincount(inverse)
        points = np.bincount(inverse, weights=points_lo)
    i, j = np.divmod(met, n)
    return i, j, games.astype(np.float64), points.astype(np.float64)  # no pairs: int bincount


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


def _logistic(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ(d), σ(|d|)) elementwise, σ(d) = 1 / (1 + e⁻ᵈ), from one exponential of −|d|
    (which never overflows): the costliest step of an iteration, over every pair."""
    larger = 1.0 / (1.0 + np.exp(-np.abs(d)))  # the larger side's probability, ≥ ½
    return 0.5 + np.copysign(larger - 0.5, d), larger


def _softplus(d: np.ndarray, larger: np.ndarray) -> np.ndarray:
    """log(1 + eᵈ), given σ(|d|): max(d, 0) − log σ(|d|)."""
    return np.maximum(d, 0.0) - np.log(larger)


def _lower_times(lower: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """lower · matrix, `lower` lower-triangular, by halves: the zero upper triangle
    is never multiplied, half the work of a full product."""
    n = len(lower)
    if n <= DENSE_BLOCK:
        return lower @ matrix
    h = n // 2
    product = np.empty((n, matrix.shape[1]))
    product[:h] = _lower_times(lower[:h, :h], matrix[:h])
    product[h:] = lower[h:, :h] @ matrix[:h] + _lower_times(lower[h:, h:], matrix[h:])
    return product


def _inverse_cholesky(matrix: np.ndarray) -> np.ndarray:
    """L⁻¹, where matrix = L·Lᵀ is symmetric positive definite, by halves in matrix
    products (numpy has no triangular solve or inverse). With A = [[A₁₁, A₁₂], [A₂₁,
    A₂₂]]: L₂₁ᵀ = L₁₁⁻¹·A₁₂, L₂₂ is the factor of A₂₂ − L₂₁·L₂₁ᵀ, and the lower-left
    block of L⁻¹ is −L₂₂⁻¹·L₂₁·L₁₁⁻¹. About m³ / 1.5 operations, like a factorisation
    and a triangular inverse."""
    n = len(matrix)
    if n <= DENSE_BLOCK:
        return np.linalg.inv(np.linalg.cholesky(matrix))
    h = n // 2
    inverse = np.zeros((n, n))
    head = inverse[:h, :h] = _inverse_cholesky(matrix[:h, :h])
    across = _lower_times(head, matrix[:h, h:])  # L₂₁ᵀ
    tail = inverse[h:, h:] = _inverse_cholesky(matrix[h:, h:] - across.T @ across)
    # L₂₁·L₁₁⁻¹ = (L₁₁⁻ᵀ·L₂₁ᵀ)ᵀ, and L₁₁⁻ᵀ reversed along both axes is lower-triangular.
    across_head = _lower_times(head.T[::-1, ::-1], across[::-1])[::-1].T
    inverse[h:, :h] = -_lower_times(tail, across_head)
    return inverse


@dataclass(frozen=True)
class _Factor:
    """A symmetric positive-definite matrix through X = L⁻¹ (A = L·Lᵀ): A⁻¹ = Xᵀ·X."""

    inverse_lower: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray) -> _Factor:
        return cls(_inverse_cholesky(matrix))

    def solve(self, b: np.ndarray) -> np.ndarray:
        return (self.inverse_lower @ b) @ self.inverse_lower  # Xᵀ·(X·b)

    def inverse_diagonal(self) -> np.ndarray:
        return np.einsum("ij,ij->j", self.inverse_lower, self.inverse_lower)


def _conjugate_gradients(
    matrix: np.ndarray, b: np.ndarray, precondition: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray | None:
    """x with matrix · x = b (symmetric positive definite) by preconditioned conjugate
    gradients, to a residual of CG_TOLERANCE · |b|; None when CG_LIMIT iterations do
    not get there. Each iteration is one matrix–vector product, O(m²), where a
    factorisation is O(m³)."""
    x = np.zeros_like(b)
    residual = b.copy()
    goal = CG_TOLERANCE * np.linalg.norm(b)
    if goal == 0.0:  # b = 0 (or no unknowns)
        return x
    z = precondition(residual)
    direction, fit = z.copy(), residual @ z
    for _ in range(CG_LIMIT):
        product = matrix @ direction
        length = fit / (direction @ product)
        x += length * direction
        residual -= length * product
        if np.linalg.norm(residual) <= goal:
            return x
        z = precondition(residual)
        fit, previous = residual @ z, fit
        direction = z + (fit / previous) * direction
    return None


def _inverse_diagonal(matrix: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The diagonal of matrix⁻¹ (symmetric positive definite), where no entry links
    two different `labels`: the matrix is block diagonal, and each block is
    inverted on its own — O(Σ block³), not O(m³). Blocks smaller than DENSE_BLOCK are
    gathered into groups of about that size (still block diagonal), so that a fleet of
    many small groups is not a Python loop over each."""
    if len(np.unique(labels)) <= 1:  # one block: no copy of the matrix
        return _Factor.of(matrix).inverse_diagonal()
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[order], prepend=-1))
    cuts = [0]
    for start in starts[1:]:
        if start - cuts[-1] >= DENSE_BLOCK:
            cuts.append(int(start))
    cuts.append(len(order))
    variance = np.empty(len(matrix))
    for begin, end in pairwise(cuts):
        members = order[begin:end]
        block = matrix[np.ix_(members, members)]
        variance[members] = _Factor.of(block).inverse_diagonal()
    return variance


class _Posterior:
    """The log-posterior of natural-log strengths θ (START = 0): for every pair, its
    points w of n games scored as w·(θi − θj) − n·log(1 + e^(θi − θj)) (draws are
    half a win), plus `prior_draws` virtual draws of each participant against a
    fixed opponent at START. Strictly concave, so the maximum is unique. `free`:
    the participants that move (anchors do not). Pairs come ordered by i (then j).
    `_Point` evaluates it at one θ."""

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
        self.n = len(fixed)
        self.free = np.nonzero(~fixed)[0]
        # Each i's pairs are one run: sums over i add up runs (reduceat), ~5× faster
        # than bincount, whose increments of one bin in a row wait on each other.
        self._runs = np.flatnonzero(np.diff(i, prepend=-1))
        m = len(self.free)
        # Where each pair sits in the dense information matrix, above and below the
        # diagonal; a pair with an anchor writes into a spare last row and column,
        # outside the m × m view (no mask to apply at every point). Every point writes
        # the same cells, so one matrix serves them all.
        at = np.full(self.n, m)
        at[self.free] = np.arange(m)
        self._above = at[i] * (m + 1) + at[j]
        self._below = at[j] * (m + 1) + at[i]
        self._matrix = np.zeros((m + 1, m + 1))

    def per_participant(self, of_i: np.ndarray, of_j: np.ndarray) -> np.ndarray:
        """Σ over each participant's pairs of `of_i` where it is i and `of_j` where j."""
        totals = np.bincount(self.j, of_j, self.n).astype(np.float64, copy=False)  # no pairs: int
        totals[self.i[self._runs]] += np.add.reduceat(of_i, self._runs)
        return totals

    def _field_mean(self, values: np.ndarray, games: np.ndarray) -> np.ndarray:
        """Per participant, the mean of `values` over its opponents, one per game, and
        the prior's virtual opponent at 0 (`games` counts its draws)."""
        return (
            self.per_participant(self.games * values[self.j], self.games * values[self.i]) / games
        )

    def first_guess(self, theta: np.ndarray) -> np.ndarray:
        """`theta` with each free participant where its score rate (prior draws
        included) puts it against its field, by the probit approximation of a logistic
        score against opponents spread around μ with variance s²: μ + log-odds of the
        rate · √(1 + π·s²/8). μ: the opponents where they are known (anchors; the rest
        and the prior's opponent at START); s²: the spread of the opponents' own
        log-odds. Plain log-odds (s = 0) understate the gap to a spread field: from
        here Newton needs two iterations fewer in a well-mixed fleet."""
        prior = self.prior_draws
        points = self.per_participant(self.points, self.games - self.points)
        games = self.per_participant(self.games, self.games) + prior
        log_odds = np.log((points + prior / 2.0) / (games - points - prior / 2.0))
        guess = theta.copy()
        guess[self.free] = log_odds[self.free]
        mean = self._field_mean(guess, games)
        spread = np.maximum(self._field_mean(guess**2, games) - mean**2, 0.0)  # round-off
        placed = self._field_mean(theta, games) + log_odds * np.sqrt(1.0 + math.pi / 8 * spread)
        guess[self.free] = placed[self.free]
        return guess

    def information(self, point: _Point) -> np.ndarray:
        """Minus the Hessian at `point` over the free participants: dense, symmetric
        positive definite (a weighted Laplacian plus the prior). The matrix is
        overwritten by the next call."""
        p, q = point.p, point.q
        weight = self.games * p * (1.0 - p)
        diagonal = self.prior_draws * q * (1.0 - q) + self.per_participant(weight, weight)
        cells = self._matrix.reshape(-1)  # a view: the flat positions of the matrix
        cells[self._above] = cells[self._below] = -weight
        m = len(self.free)
        information = self._matrix[:m, :m]
        np.fill_diagonal(information, diagonal[self.free])
        return information


class _Point:
    """The log-posterior at one θ. What its terms need from every pair is computed on
    arrival, once (the O(pairs) part of an iteration); the gradient and the value when
    first asked for — the value, a sum of logarithms over every pair, only when the
    gradient cannot vouch for a step (`_raises`)."""

    def __init__(self, posterior: _Posterior, theta: np.ndarray) -> None:
        self.posterior, self.theta = posterior, theta
        self.d = theta[posterior.i] - theta[posterior.j]
        self.p, self._larger = _logistic(self.d)  # per pair: that i beats j
        self.q, self._q_larger = _logistic(theta)  # per participant: beats the prior's START

    @functools.cached_property
    def gradient(self) -> np.ndarray:
        """Over the free participants."""
        posterior = self.posterior
        surplus = posterior.points - posterior.games * self.p
        grad = posterior.prior_draws * (0.5 - self.q)
        grad += posterior.per_participant(surplus, -surplus)
        return grad[posterior.free]

    @functools.cached_property
    def value(self) -> float:
        posterior, theta = self.posterior, self.theta
        data = posterior.points @ self.d - posterior.games @ _softplus(self.d, self._larger)
        prior = 0.5 * theta.sum() - _softplus(theta, self._q_larger).sum()
        return float(data + posterior.prior_draws * prior)


def _raises(point: _Point, candidate: _Point, step: np.ndarray, scale: float) -> bool:
    """Whether `candidate` (point + scale · step) raises the posterior by 1e-4 of what
    the slope at `point` promises (Armijo). The posterior is concave, so it rises by
    at least scale · (the slope along `step` at `candidate`): while that slope is
    still that steep, no sum of the posterior itself is needed."""
    rise = float(point.gradient @ step)
    if candidate.gradient @ step >= 1e-4 * rise:
        return True
    # Near the top the gain drowns in the sum's round-off: Newton is safe there.
    if rise < ROUND_OFF * abs(point.value):
        return True
    return candidate.value >= point.value + 1e-4 * scale * rise


@dataclass(frozen=True)
class _Maximum:
    theta: np.ndarray  # natural-log strengths, every participant
    information: np.ndarray  # minus the Hessian over the free participants, at the top
    iterations: int
    converged: bool


def _newton(
    posterior: _Posterior, theta: np.ndarray, tolerance: float, max_iterations: int
) -> _Maximum:
    """Maximise `posterior` over the free θ from `theta`: Newton steps, halved until
    they raise the posterior (Armijo), which keeps the first steps from far-off
    starts safe; quadratic convergence near the top.

    A step solves information · step = gradient by conjugate gradients preconditioned
    by the diagonal: a few O(m²) products where a factorisation costs O(m³) (the
    information matrix of a well-mixed fleet is dominated by its diagonal). Should
    they stall (long chains of participants who only met their neighbours), the step
    is solved exactly through a Cholesky factor, which then preconditions the next
    steps (the Hessian changes little from one step to the next)."""
    free = posterior.free
    point = _Point(posterior, theta)
    factor: _Factor | None = None
    for iteration in range(1, max_iterations + 1):
        grad, information = point.gradient, posterior.information(point)
        jacobi = functools.partial(np.multiply, 1.0 / information.diagonal())
        step = _conjugate_gradients(information, grad, factor.solve if factor else jacobi)
        if step is None:
            factor = _Factor.of(information)
            step = factor.solve(grad)
        if np.max(np.abs(step), initial=0.0) < tolerance:
            # At the top: the full step is exact to round-off, and the information at
            # this point is the information there to the same precision.
            top = point.theta.copy()
            top[free] += step
            return _Maximum(top, information, iteration, True)
        scale = 1.0
        for _ in range(60):
            trial = point.theta.copy()
            trial[free] += scale * step
            candidate = _Point(posterior, trial)
            if _raises(point, candidate, step, scale):
                break
            scale *= 0.5
        point = candidate
    return _Maximum(point.theta, posterior.information(point), max_iterations, False)


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
    pair counts: each iteration is O(pairs of participants) plus conjugate gradients
    on the dense information matrix, O(m²) a product over the m free participants;
    the uncertainties take one factorisation, O(m³), of each group of free
    participants linked by games (fine to a few thousand). Stops when the Newton
    step moves no free log-strength by more than `tolerance`, or after
    `max_iterations`.

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
    # Games between free participants only: anchors are fixed, so a game with one
    # links nobody in the information matrix, which is block diagonal over these groups.
    between_free = ~fixed[i] & ~fixed[j]
    group = _components(n, i[between_free], j[between_free])
    posterior = _Posterior(i, j, games, points, prior_draws, fixed)
    # One BLAS thread: with another job on the host, OpenBLAS's threads wait on each
    # other at every call (2,000 participants: 0.75 s on one thread, 3.4 s on two
    # with one core busy), and the fit's many matrix–vector products gain nothing.
    with threadpool_limits(limits=1, user_api="blas"):
        top = _newton(posterior, posterior.first_guess(theta), tolerance, max_iterations)
        variance = _inverse_diagonal(top.information, group[posterior.free])

    rating: np.ndarray = START + SCALE * top.theta
    rating[list(pinned)] = list(pinned.values())  # exactly as pinned
    uncertainty = np.zeros(n)
    uncertainty[posterior.free] = SCALE * np.sqrt(variance)
    # A chain of games to an anchor: an anchor, or in a group that played one.
    played_an_anchor = np.concatenate([group[i[fixed[j]]], group[j[fixed[i]]]])
    anchored = fixed | np.isin(group, played_an_anchor)

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
