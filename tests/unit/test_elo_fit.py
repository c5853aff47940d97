"""The Elo fit's maths (issue 8, items 10 and 14): maximum-a-posteriori ratings, their
uncertainty, the `anchored` flag in the published file, and the promotion gate on it.

Every expectation comes from an oracle written here from the model's definition
(docs/RATINGS.md) over the raw matches — a match-by-match log-posterior, its numeric
derivatives, a breadth-first search over who played whom, closed forms — never from
fleetsync's own fit. Ratings reach the published `fleet_ratings.db` through the
shipped `ratings_db.py` program and are read back with plain SQL.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets.demo.synth_elo import anchored_strengths, match_rows, simulate, write_elo_db
from sync_assets.elo import ratings as ratings_module
from sync_assets.elo import ratings_db
from sync_assets.elo.assets import elo_matches, elo_ratings
from sync_assets.elo.collect import ELO_DB
from sync_assets.elo.publish import RATINGS_DB
from sync_assets.elo.ratings import decompose, fit_ratings, rating_of
from sync_assets.models.promotion import Standing, decide_promotion

RANDOM, HEURISTIC = "none:random:d1", "none:heuristic:d2"
ANCHORS = {RANDOM: 400.0, HEURISTIC: 1200.0}  # DATA.md: the fleet's pinned anchors
NATS = 400.0 / math.log(10.0)  # Elo points per natural-log unit of strength
PRIOR_DRAWS = 2.0  # virtual draws of each participant against a 1500 opponent
CONFIG = "hex8_2p"

Match = tuple[Sequence[str], str | None]  # (seats, winner or None for a draw)


# ---- the oracle: the model written out match by match ---------------------------------------


def rated_results(matches: Sequence[Match]) -> list[tuple[str, str, float]]:
    """(a, b, score of a) per pairwise result: the winner beat every other distinct
    participant, no winner is a draw between every pair; a winner who did not sit
    in the match, or fewer than two distinct participants, rates nothing."""
    results = []
    for seats, winner in matches:
        distinct = list(dict.fromkeys(seats))
        if len(distinct) < 2:
            continue
        if winner is None:
            for x in range(len(distinct)):
                for y in range(x + 1, len(distinct)):
                    results.append((distinct[x], distinct[y], 0.5))
        elif winner in distinct:
            results.extend((winner, other, 1.0) for other in distinct if other != winner)
    return results


def log_posterior(results: Sequence[tuple[str, str, float]], theta: dict[str, float]) -> float:
    """Σ over results of s·log σ(Δ) + (1 − s)·log σ(−Δ), plus each participant's prior
    draws against a strength-0 (1500) opponent; θ in natural-log units."""

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))

    total = 0.0
    for a, b, s in results:
        d = theta[a] - theta[b]
        total += s * log_sigmoid(d) + (1.0 - s) * log_sigmoid(-d)
    for t in theta.values():
        total += PRIOR_DRAWS * (0.5 * log_sigmoid(t) + 0.5 * log_sigmoid(-t))
    return total


def numeric_gradient(results, theta: dict[str, float], free: list[str], h: float = 1e-6):
    grad = []
    for p in free:
        up, down = dict(theta), dict(theta)
        up[p] += h
        down[p] -= h
        grad.append((log_posterior(results, up) - log_posterior(results, down)) / (2 * h))
    return np.array(grad)


def numeric_hessian(results, theta: dict[str, float], free: list[str], h: float = 1e-4):
    hess = np.zeros((len(free), len(free)))
    for x, p in enumerate(free):
        for y, q in enumerate(free):
            value = 0.0
            for sp, sq, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                moved = dict(theta)
                moved[p] += sp * h
                moved[q] += sq * h
                value += sign * log_posterior(results, moved)
            hess[x, y] = value / (4 * h * h)
    return hess


def numeric_map(results, participants: list[str], anchors: dict[str, float]) -> dict[str, float]:
    """The maximum-a-posteriori ratings (Elo) by an independent Newton iteration on
    numeric derivatives of the written-out log-posterior."""
    theta = {p: (anchors[p] - 1500.0) / NATS if p in anchors else 0.0 for p in participants}
    free = [p for p in participants if p not in anchors]
    for _ in range(50):
        step = np.linalg.solve(
            -numeric_hessian(results, theta, free), numeric_gradient(results, theta, free)
        )
        for p, s in zip(free, step, strict=True):
            theta[p] += s
        if np.max(np.abs(step), initial=0.0) < 1e-10:
            break
    return {p: 1500.0 + NATS * t for p, t in theta.items()}


def reachable_from_anchors(matches: Sequence[Match], anchors: dict[str, float]) -> set[str]:
    """Breadth-first search over who played whom in a rated match."""
    neighbours: dict[str, set[str]] = {}
    for a, b, _ in rated_results(matches):
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    seated = {p for seats, _ in matches for p in seats}
    queue = [p for p in anchors if p in seated]
    reached = set(queue)
    while queue:
        for q in neighbours.get(queue.pop(), ()):
            if q not in reached:
                reached.add(q)
                queue.append(q)
    return reached


# ---- fleetsync's path: decompose, fit, publish with the shipped program, read with SQL ------


def frame(matches: Sequence[Match]) -> pd.DataFrame:
    return pd.DataFrame(
        {"participants": [list(s) for s, _ in matches], "winner": [w for _, w in matches]}
    )


def fit(matches: Sequence[Match], anchors: dict[str, float] | None = None) -> pd.DataFrame:
    return fit_ratings(decompose(frame(matches)), anchors=ANCHORS if anchors is None else anchors)


def publish(path: Path, fitted: pd.DataFrame, config: str = CONFIG) -> None:
    """The fitted rows through `ratings_db.py write`, as JSON like on a node."""
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in fitted.to_dict("records")
    ]
    payload = json.dumps({"rows": rows, "now": 1.7e9}).encode()
    assert ratings_db.main(["write", str(path), config], payload=payload) == 0


def published(path: Path, config: str = CONFIG) -> dict[str, dict]:
    """{participant: row} of one config, straight from the file with SQL."""
    board, players = config.rsplit("_", 1)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT * FROM ratings WHERE board_type = ? AND num_players = ?",
            (board, int(players[0])),
        ).fetchall()
    return {r["participant_id"]: dict(r) for r in rows}


def repeated(seats: Sequence[str], winner: str | None, times: int) -> list[Match]:
    return [(seats, winner)] * times


# ---- item 10: uncertainty from the inverse Hessian ---------------------------------------------


def test_uncertainty_is_not_understated_two_players_1000_games_is_175(tmp_path: Path) -> None:
    """Two participants who only played each other, 500–500: the Fisher diagonal said
    ±11; the standard error of each rating is ±174, because the pair can only be
    placed on the scale by the prior."""
    matches = repeated(["a", "b"], "a", 500) + repeated(["a", "b"], "b", 500)
    path = tmp_path / "fleet_ratings.db"
    publish(path, fit(matches))
    rows = published(path)
    # Closed form: by symmetry both sit at 1500 (θ = 0, p = ½); minus the Hessian is
    # [[c + d, −c], [−c, c + d]] with c = 1000·¼ from the games and d = 2·¼ from the
    # prior draws; its inverse has (c + d) / ((c + d)² − c²) on the diagonal.
    c, d = 1000 * 0.25, PRIOR_DRAWS * 0.25
    standard_error = NATS * math.sqrt((c + d) / ((c + d) ** 2 - c**2))
    assert 173 < standard_error < 175
    for p in ("a", "b"):
        assert abs(rows[p]["rating"] - 1500.0) < 1e-9
        assert abs(rows[p]["uncertainty"] - standard_error) < 1e-6
        assert rows[p]["anchored"] == 0


@pytest.mark.parametrize("block", [256, 3])
def test_uncertainty_is_the_inverse_hessian_of_the_log_posterior(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """A small anchored fleet of 2–4-player games with draws: every published
    uncertainty is the square root of the inverse (numeric) Hessian's diagonal, and
    every rating is the independent Newton's maximum. `block` small: the dense
    linear algebra recurses by halves as it does for thousands of participants."""
    monkeypatch.setattr(ratings_module, "DENSE_BLOCK", block)
    rng = np.random.default_rng(11)
    names = [RANDOM, HEURISTIC, *[f"m{i}:mcts:b800" for i in range(6)]]
    true = dict(zip(names, [400, 1200, 900, 1300, 1500, 1650, 1800, 2000], strict=True))
    matches: list[Match] = []
    for _ in range(300):
        seats = list(rng.choice(names, size=int(rng.integers(2, 5)), replace=False))
        weights = np.array([10 ** (true[p] / 400) for p in seats])
        winner = (
            None if rng.random() < 0.1 else seats[rng.choice(len(seats), p=weights / weights.sum())]
        )
        matches.append((seats, winner))
    path = tmp_path / "fleet_ratings.db"
    publish(path, fit(matches))
    rows = published(path)

    results = rated_results(matches)
    want = numeric_map(results, names, ANCHORS)
    free = names[2:]
    theta = {p: (want[p] - 1500.0) / NATS for p in names}
    covariance = np.linalg.inv(-numeric_hessian(results, theta, free))
    for k, p in enumerate(free):
        assert abs(rows[p]["rating"] - want[p]) < 1e-3, p
        se = NATS * math.sqrt(covariance[k, k])
        assert abs(rows[p]["uncertainty"] - se) < 1e-3 * se, (p, rows[p]["uncertainty"], se)
        assert rows[p]["anchored"] == 1
    for p, pinned in ANCHORS.items():
        assert (rows[p]["rating"], rows[p]["uncertainty"], rows[p]["anchored"]) == (pinned, 0, 1)


# ---- item 10: groups with no path to an anchor --------------------------------------------------


def test_groups_with_no_path_to_an_anchor_are_flagged_in_the_published_file(
    tmp_path: Path,
) -> None:
    matches: list[Match] = [
        *repeated([RANDOM, "m1"], "m1", 40),
        *repeated(["m1", "m2", "m3"], "m3", 30),  # m2, m3: anchored through m1
        *repeated([HEURISTIC, "m4"], None, 5),
        *repeated(["x1", "x2"], "x1", 900),  # an island: a strong-looking pair
        *repeated(["x2", "x3"], None, 100),
        (["y1"], "y1"),  # a one-seat match rates nothing
        (["y2", RANDOM], "ghost"),  # a winner who did not sit: rates nothing
    ]
    path = tmp_path / "fleet_ratings.db"
    publish(path, fit(matches))
    rows = published(path)
    reached = reachable_from_anchors(matches, ANCHORS)
    assert reached == {RANDOM, HEURISTIC, "m1", "m2", "m3", "m4"}
    assert set(rows) == reached | {"x1", "x2", "x3", "y1", "y2"}
    assert {p: r["anchored"] for p, r in rows.items()} == {p: int(p in reached) for p in rows}
    # A fleet with no anchor at all: nothing is anchored.
    bare = [m for m in matches if not set(m[0]) & set(ANCHORS)]
    publish(path, fit(bare), config="hex8_3p")
    assert {r["anchored"] for r in published(path, "hex8_3p").values()} == {0}


def test_unanchored_participants_are_shown_and_warned_by_the_ratings_asset(
    tmp_path: Path,
) -> None:
    """A local fleet whose Elo DB holds an anchored config plus a pair of models that
    only ever played each other: `elo/ratings` counts and names them in its metadata,
    its `all_anchored` check warns, and the published file marks them."""
    root = tmp_path / "fleet"
    nodes = {"coord-1": ["coordinator", "storage"], "store-1": ["storage"], "gpu-1": ["eval"]}
    doc = {
        "fleet": "anchored-test",
        "configs": [CONFIG],
        "policy": {
            "min_replicas": {"elo": 2},
            "disk": {"max_target_use": 0.99, "min_free_gb": 0.1},
        },
        "nodes": [
            {
                "name": name,
                "transport": "local",
                "data_root": str(root / name),
                "roles": roles,
                "provider": {"kind": "none"},
            }
            for name, roles in nodes.items()
        ],
    }
    for name in nodes:
        (root / name).mkdir(parents=True)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(doc))
    main = simulate(anchored_strengths(CONFIG, 6, seed=1), 300, seed=2)
    island = {f"island{k}_{CONFIG}:gumbel_mcts:b800": 1500.0 + 100 * k for k in range(2)}
    rows = match_rows(main, CONFIG, id_prefix="main") + match_rows(
        simulate(island, 60, seed=3), CONFIG, id_prefix="island", start=1.8e9
    )
    write_elo_db(root / "gpu-1" / ELO_DB, rows)
    matches = [(r["participant_ids"], r["winner_id"]) for r in rows]
    want_unanchored = sorted(
        {p for s, _ in matches for p in s} - reachable_from_anchors(matches, ANCHORS)
    )
    assert want_unanchored == sorted(island)

    resources = {
        "inventory": FleetInventory(path=str(tmp_path / "fleet.yaml")),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("nodes", list(nodes))
        for asset, key in ((elo_matches, "gpu-1"), (elo_ratings, CONFIG)):
            run = dg.materialize([asset], partition_key=key, instance=instance, resources=resources)
            assert run.success
        checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
        metadata = run.asset_materializations_for_node("elo__ratings")[0].metadata
    assert not checks["all_anchored"].passed
    assert checks["all_anchored"].severity == dg.AssetCheckSeverity.WARN
    assert checks["all_anchored"].metadata["unanchored"].value == want_unanchored
    assert metadata["unanchored_participants"].value == len(want_unanchored)
    rows_published = published(root / "store-1" / RATINGS_DB)
    assert sorted(p for p, r in rows_published.items() if r["anchored"] == 0) == want_unanchored


def test_a_ratings_file_from_before_anchored_is_read_and_upgraded(tmp_path: Path) -> None:
    """An existing file without the column (and with a column another tool added):
    read as anchored = 0, and on the next write it gains the column, keeping every
    row and column of the other configs."""
    path = tmp_path / "fleet_ratings.db"
    with closing(sqlite3.connect(path)) as con:
        con.execute(
            "CREATE TABLE ratings (participant_id TEXT NOT NULL, board_type TEXT NOT NULL,"
            " num_players INTEGER NOT NULL, rating REAL NOT NULL, uncertainty REAL NOT NULL,"
            " games INTEGER NOT NULL, wins INTEGER NOT NULL, losses INTEGER NOT NULL,"
            " draws INTEGER NOT NULL, updated_at REAL NOT NULL, note TEXT,"
            " PRIMARY KEY (participant_id, board_type, num_players))"
        )
        con.executemany(
            "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("old:a:1", "square8", 3, 1600.0, 40.0, 30, 20, 10, 0, 5.0, "kept"),
                ("old:b:1", "hex8", 2, 1450.0, 50.0, 20, 8, 12, 0, 5.0, None),
            ],
        )
        con.commit()
    assert [r["anchored"] for r in ratings_db.read_rows(str(path))] == [0, 0]

    matches = repeated([RANDOM, "m1"], "m1", 20) + repeated(["x1", "x2"], "x2", 20)
    publish(path, fit(matches))
    with closing(sqlite3.connect(path)) as con:
        columns = [r[1] for r in con.execute("PRAGMA table_info(ratings)")]
        other = con.execute(
            "SELECT participant_id, rating, games, note, anchored, updated_at FROM ratings"
            " WHERE board_type = 'square8'"
        ).fetchall()
    assert {"note", "anchored"} <= set(columns) and len(columns) == 12
    assert other == [("old:a:1", 1600.0, 30, "kept", 0, 5.0)]
    rows = published(path)
    assert {p: r["anchored"] for p, r in rows.items()} == {RANDOM: 1, "m1": 1, "x1": 0, "x2": 0}


# ---- item 10: promotion ------------------------------------------------------------------------


def test_an_unanchored_candidate_is_not_promoted_on_its_rating(tmp_path: Path) -> None:
    """The candidate only ever beat its own sparring partner: a high rating, but on
    no common scale. It is not promoted on it (an explicit report still promotes),
    while an anchored candidate does beat an unanchored promoted model."""
    candidate, promoted, partner = "c" * 64, "p" * 64, "s" * 64
    matches = [
        *repeated(
            [f"{candidate}:mcts:b800", f"{partner}:mcts:b800"], f"{candidate}:mcts:b800", 400
        ),
        *repeated([RANDOM, f"{promoted}:mcts:b800"], f"{promoted}:mcts:b800", 150),
        *repeated([HEURISTIC, f"{promoted}:mcts:b800"], HEURISTIC, 150),
    ]
    path = tmp_path / "fleet_ratings.db"
    publish(path, fit(matches))
    rows = pd.DataFrame(ratings_db.read_rows(str(path), CONFIG))
    mine = Standing(*rating_of(rows, candidate))
    theirs = Standing(*rating_of(rows, promoted))
    assert mine.games == 400 and not mine.anchored
    assert theirs.anchored and mine.rating is not None and theirs.rating is not None
    assert mine.rating > theirs.rating + 100  # the prior put it there, not evidence

    decision = decide_promotion(candidate, promoted, mine, theirs)
    assert not decision.promote and "unanchored" in decision.reason
    assert decide_promotion(candidate, promoted, mine, theirs, explicit=True).promote
    swapped = decide_promotion(promoted, candidate, theirs, mine, min_games=200)
    assert swapped.promote and "unanchored" in swapped.reason


# ---- item 14: the maximum-a-posteriori fit without anchors --------------------------------------


def test_a_fit_with_no_anchor_is_the_maximum_posterior_not_recentred(tmp_path: Path) -> None:
    """No anchor played: the ratings are the posterior's maximum (the independent
    Newton's answer), not the likelihood's maximum re-centred to a mean of 1500."""
    matches = [
        *repeated(["a", "b"], "a", 30),
        *repeated(["a", "b"], "b", 10),
        *repeated(["b", "c", "d"], "b", 25),
        *repeated(["c", "d"], None, 8),
        *repeated(["d", "e"], "d", 3),
    ]
    path = tmp_path / "fleet_ratings.db"
    publish(path, fit(matches))
    rows = published(path)
    names = sorted(rows)
    want = numeric_map(rated_results(matches), names, {})
    assert abs(np.mean(list(want.values())) - 1500.0) > 10  # the maximum is not centred
    for p in names:
        assert abs(rows[p]["rating"] - want[p]) < 1e-3, (p, rows[p]["rating"], want[p])
        assert rows[p]["anchored"] == 0


# ---- property: any small match set ----------------------------------------------------------


POOL = [RANDOM, HEURISTIC, "p0", "p1", "p2", "p3", "p4"]


@st.composite
def match_sets(draw: st.DrawFn) -> list[Match]:
    matches: list[Match] = []
    for _ in range(draw(st.integers(1, 25))):
        seats = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=4))
        winner = draw(st.one_of(st.none(), st.sampled_from(seats), st.just("ghost")))
        matches.append((seats, winner))
    return matches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(match_sets(), st.sampled_from([ANCHORS, {RANDOM: 400.0}, {}]), st.sampled_from([1, 2, 256]))
def test_fit_is_the_posterior_maximum_with_anchors_pinned_and_groups_flagged(
    matches: list[Match], anchors: dict[str, float], block: int
) -> None:
    """`block`: the size below which dense linear algebra stops recursing by halves
    (small here, so that the recursion itself is checked)."""
    with mock.patch.object(ratings_module, "DENSE_BLOCK", block):
        fitted = fit(matches, anchors).set_index("participant_id")
    seated = sorted({p for seats, _ in matches for p in seats})
    assert sorted(fitted.index) == seated
    assert fitted.attrs["converged"]
    results = rated_results(matches)
    theta = {p: (fitted.at[p, "rating"] - 1500.0) / NATS for p in seated}
    free = [p for p in seated if p not in anchors]
    assert np.max(np.abs(numeric_gradient(results, theta, free)), initial=0.0) < 1e-5
    for p in seated:
        if p in anchors:
            assert fitted.at[p, "rating"] == anchors[p]  # exactly, not through exp/log
            assert fitted.at[p, "uncertainty"] == 0.0
    if free:
        covariance = np.linalg.inv(-numeric_hessian(results, theta, free))
        want = NATS * np.sqrt(np.diag(covariance))
        np.testing.assert_allclose(fitted.loc[free, "uncertainty"], want, rtol=1e-3)
    reached = reachable_from_anchors(matches, anchors)
    assert fitted["anchored"].to_dict() == {p: p in reached for p in seated}


# ---- item 10: the fit at scale — the same answer, without a factorisation per iteration ----


def dense_oracle(
    matches: Sequence[Match], anchors: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """(rating, uncertainty) per participant, in Elo, by a separately written dense
    Newton iteration: the log-posterior, its gradient and Hessian as n × n matrices
    of games and points over the written-out results, np.linalg.solve for the steps
    (halved until the posterior rises), to a step of 1e-12; the uncertainty from
    np.linalg.inv of minus the Hessian over the free participants."""
    seated = sorted({p for seats, _ in matches for p in seats})
    at = {p: k for k, p in enumerate(seated)}
    n = len(seated)
    games, points = np.zeros((n, n)), np.zeros((n, n))  # points: of the row's participant
    for a, b, s in rated_results(matches):
        games[at[a], at[b]] += 1
        games[at[b], at[a]] += 1
        points[at[a], at[b]] += s
        points[at[b], at[a]] += 1 - s
    free = np.array([p not in anchors for p in seated])
    theta = np.array([(anchors[p] - 1500.0) / NATS if p in anchors else 0.0 for p in seated])

    def value(t: np.ndarray) -> float:
        d = t[:, None] - t[None, :]  # each pair twice, once from each side
        data = 0.5 * np.sum(points * d - games * np.logaddexp(0.0, d))
        return float(data + PRIOR_DRAWS * np.sum(0.5 * t - np.logaddexp(0.0, t)))

    def derivatives(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))
        q = 1.0 / (1.0 + np.exp(-t))
        grad = np.sum(points - games * p, axis=1) + PRIOR_DRAWS * (0.5 - q)
        hess = games * p * (1.0 - p)
        np.fill_diagonal(hess, -hess.sum(axis=1) - PRIOR_DRAWS * q * (1.0 - q))
        return grad[free], hess[np.ix_(free, free)]

    for _ in range(200):
        grad, hess = derivatives(theta)
        step = np.zeros(n)
        step[free] = np.linalg.solve(-hess, grad)
        scale, before = 1.0, value(theta)
        # Halved while it lowers the posterior, until it is small enough to be safe.
        while (
            scale * np.max(np.abs(step), initial=0.0) > 1e-6
            and value(theta + scale * step) < before
        ):
            scale /= 2
        theta = theta + scale * step
        if np.max(np.abs(step), initial=0.0) < 1e-12:
            break
    _, hess = derivatives(theta)
    variance = np.zeros(n)
    variance[free] = np.diag(np.linalg.inv(-hess))
    rating = {p: anchors.get(p, 1500.0 + NATS * theta[k]) for k, p in enumerate(seated)}
    return rating, {p: NATS * math.sqrt(variance[k]) for k, p in enumerate(seated)}


def assert_same_fit(fitted: pd.DataFrame, matches: Sequence[Match], anchors: dict[str, float]):
    """fleetsync's fit against the dense oracle: ratings to 1e-6 Elo, uncertainties to
    a relative 1e-6, anchored flags as the breadth-first search finds them."""
    rows = fitted.set_index("participant_id")
    rating, uncertainty = dense_oracle(matches, anchors)
    assert rows.attrs["converged"]
    assert sorted(rows.index) == sorted(rating)
    for p in rating:
        assert abs(rows.at[p, "rating"] - rating[p]) < 1e-6, (p, rows.at[p, "rating"], rating[p])
        assert abs(rows.at[p, "uncertainty"] - uncertainty[p]) <= 1e-6 * uncertainty[p], p
    reached = reachable_from_anchors(matches, anchors)
    assert rows["anchored"].to_dict() == {p: p in reached for p in rating}


@st.composite
def fleets_of_groups(draw: st.DrawFn) -> list[Match]:
    """1–4 groups whose members play only each other (2–4 seats, draws, malformed
    rows), some joined by an anchor (which links nobody: anchors do not move), and
    participants whose only matches rate nothing."""
    matches: list[Match] = []
    for g in range(draw(st.integers(1, 4))):
        members = [f"g{g}m{k}:mcts:b800" for k in range(draw(st.integers(1, 6)))]
        members += draw(st.lists(st.sampled_from([RANDOM, HEURISTIC]), max_size=2, unique=True))
        for _ in range(draw(st.integers(0, 14))):
            seats = draw(st.lists(st.sampled_from(members), min_size=1, max_size=4))
            winner = draw(st.one_of(st.none(), st.sampled_from(seats), st.just("ghost")))
            matches.append((seats, winner))
    return matches


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleets_of_groups(),
    st.sampled_from([ANCHORS, {RANDOM: 400.0}, {}]),
    st.sampled_from([1, 3, 256]),
    st.sampled_from([0, 2, 100]),
)
def test_fast_fit_equals_a_dense_newton_oracle_on_fleets_of_several_groups(
    matches: list[Match], anchors: dict[str, float], block: int, cg_limit: int
) -> None:
    """Every path of the fit: `block` small, so that groups are factorised one by one
    and the factorisation recurses by halves; `cg_limit` 0, so that every Newton step
    is solved through a factorisation, and 2, so that conjugate gradients stall and a
    stale factor preconditions the later steps."""
    with mock.patch.multiple(ratings_module, DENSE_BLOCK=block, CG_LIMIT=cg_limit):
        fitted = fit(matches, anchors)
    if not matches:
        assert fitted.empty
        return
    assert_same_fit(fitted, matches, anchors)


def three_kinds_of_group(seed: int) -> list[Match]:
    """A well-mixed anchored group (2–4 seats, draws), a long chain hanging off the
    random anchor (each member plays only its neighbours, 200 games each: conjugate
    gradients stall on it), and pairs that only ever played each other (placed by the
    prior alone)."""
    rng = np.random.default_rng(seed)
    matches: list[Match] = []
    mixed = [RANDOM, HEURISTIC, *[f"mix{k}:mcts:b800" for k in range(60)]]
    strength = dict(zip(mixed, [400, 1200, *rng.uniform(600, 2200, 60)], strict=True))
    for _ in range(3000):
        seats = list(rng.choice(mixed, size=int(rng.integers(2, 5)), replace=False))
        gamma = np.array([10 ** (strength[p] / 400) for p in seats])
        winner = (
            None if rng.random() < 0.1 else seats[rng.choice(len(seats), p=gamma / gamma.sum())]
        )
        matches.append((seats, winner))
    chain = [RANDOM, *[f"chain{k}:mcts:b200" for k in range(200)]]
    for a, b in itertools.pairwise(chain):
        matches += [([a, b], a if rng.random() < 0.4 else b) for _ in range(200)]
    for k in range(20):
        pair = [f"pair{k}a:mcts:b50", f"pair{k}b:mcts:b50"]
        matches += [(pair, pair[int(rng.random() < 0.3)]) for _ in range(int(rng.integers(1, 80)))]
    return matches


def test_a_well_mixed_group_a_long_chain_and_islands_fit_as_the_oracle() -> None:
    """302 participants: what the fit's conjugate gradients find easy, hard (the chain:
    they stall, and the step is solved through a factorisation) and degenerate (the
    islands), in one fit, against the dense oracle."""
    matches = three_kinds_of_group(seed=5)
    solve = ratings_module._conjugate_gradients
    steps: list[np.ndarray | None] = []

    def recorded(*args: object) -> np.ndarray | None:
        steps.append(solve(*args))  # type: ignore[arg-type]
        return steps[-1]

    with mock.patch.object(ratings_module, "_conjugate_gradients", side_effect=recorded):
        fitted = fit(matches)
    assert any(step is None for step in steps)  # the chain made conjugate gradients stall
    assert_same_fit(fitted, matches, ANCHORS)


def test_newton_iterations_do_not_factorise_the_information_matrix() -> None:
    """The fit missed its goal (2,000 participants: 3.1× `decompose`) because every
    Newton iteration factorised the dense m × m information matrix, O(m³). Its steps
    now take O(m²) products; only the uncertainties need the one factorisation."""
    rng = np.random.default_rng(3)
    names = [RANDOM, HEURISTIC, *[f"m{k}:mcts:b800" for k in range(120)]]
    strength = dict(zip(names, [400, 1200, *rng.uniform(500, 2400, 120)], strict=True))
    matches: list[Match] = []
    for _ in range(6000):
        seats = list(rng.choice(names, size=2, replace=False))
        odds = 10 ** ((strength[seats[0]] - strength[seats[1]]) / 400)
        matches.append((seats, seats[0] if rng.random() < odds / (1 + odds) else seats[1]))
    factorise = np.linalg.cholesky
    with mock.patch.object(np.linalg, "cholesky", side_effect=factorise) as factorised:
        fitted = fit(matches)
    assert fitted.attrs["converged"] and fitted.attrs["iterations"] >= 3
    assert factorised.call_count == 1  # 120 free participants: one block, one factorisation
    assert_same_fit(fitted, matches, ANCHORS)


def test_fit_runs_blas_on_one_thread_so_a_busy_host_does_not_stall_it() -> None:
    """With another job on the host, OpenBLAS's threads wait on each other at every
    call: 2,000 participants took 13 s instead of 1.4 s with one core busy. The fit
    runs its linear algebra on one thread, whatever the process was set to."""
    matches = three_kinds_of_group(seed=8)
    threads: list[int] = []
    factorise = np.linalg.cholesky

    def counting(matrix: np.ndarray) -> np.ndarray:
        threads.extend(
            pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
        )
        return factorise(matrix)

    with threadpool_limits(limits=2, user_api="blas"):
        with mock.patch.object(np.linalg, "cholesky", side_effect=counting):
            fit(matches)
        assert {
            pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
        } == {2}
    assert threads and set(threads) == {1}


def test_a_refit_that_differs_only_in_the_last_bits_does_not_rewrite_the_ratings_file(
    tmp_path: Path,
) -> None:
    """Idempotence: the same matches refit on another BLAS summation order give ratings
    equal to ~1e-10 Elo; the published file (its bytes, hence its SHA-256 and every
    copy) stays as it was. A real change of a micro-Elo and more is written."""
    import hashlib

    from sync_assets.elo import ratings_db

    path = str(tmp_path / "fleet_ratings.db")
    rows = [
        {"participant_id": f"p{i}", "rating": 1500.0 + 37.3 * i, "uncertainty": 20.0 + i,
         "games": 10, "wins": 5, "losses": 4, "draws": 1, "anchored": True}
        for i in range(5)
    ]  # fmt: skip
    assert ratings_db.write_config(path, "hex8_2p", rows, now=1.0)["changed"]
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    jittered = [{**r, "rating": r["rating"] * (1 + 3e-16), "uncertainty": r["uncertainty"] + 1e-10}
                for r in rows]  # fmt: skip
    assert not ratings_db.write_config(path, "hex8_2p", jittered, now=2.0)["changed"]
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    moved = [{**rows[0], "rating": rows[0]["rating"] + 1e-5}, *rows[1:]]
    assert ratings_db.write_config(path, "hex8_2p", moved, now=3.0)["changed"]
