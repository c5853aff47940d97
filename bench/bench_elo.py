"""Elo recompute benchmark: fleetsync's fit vs a plain-Python replay of the same estimator.

    python bench/bench_elo.py [--matches 1000000 --participants 200 --iterations 100]

Simulates `--matches` matches of 2–4 players (uniform) among `--participants`
participants of known strength (two of them the pinned anchors), with draws, then
recomputes ratings from them in the same run, twice each, alternating:

- fleetsync: `decompose` (vectorised) + `fit_ratings` (MM on aggregated pair counts);
- plain: a per-match Python replay of the *same* estimator — the same pairwise
  decomposition, the same prior (2 virtual draws at 1500), the same pinned anchors,
  the same minorise–maximise update and stopping rule — looping over the raw matches
  in every iteration.

The MM iteration converges linearly: fleetsync needs thousands of iterations to reach
its 1e-6 tolerance on this data, which would keep the plain replay busy for hours. So
both run the same fixed `--iterations` (tolerance 0) for the ratio, and the two
results are checked to agree; fleetsync's time to full convergence is reported beside
it, with the plain replay's extrapolated from its measured per-iteration cost.
Exits 1 if the ratio is below `--min-ratio`; records the numbers in the
"## Elo ratings" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sync_assets.elo.ratings import (  # noqa: E402
    DEFAULT_ANCHORS,
    SCALE,
    START,
    decompose,
    fit_ratings,
)
from sync_assets.elo.synth import anchored_strengths, simulate  # noqa: E402

BENCH_DOC = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Elo ratings"
PRIOR_DRAWS = 2.0
T = TypeVar("T")


def plain_replay(
    participants: Sequence[list[str]],
    winners: Sequence[str | None],
    iterations: int,
    tolerance: float,
) -> tuple[dict[str, float], float, float]:
    """The estimator of `fit_ratings`, replayed match by match in plain Python.

    Returns ({participant: rating}, seconds parsing, seconds per MM iteration)."""
    parse_started = time.perf_counter()
    index: dict[str, int] = {}
    played: list[tuple[list[int], int]] = []  # (distinct seats, winner seat or -1 = draw)
    for players, winner in zip(participants, winners, strict=True):
        ids = [index.setdefault(p, len(index)) for p in dict.fromkeys(players)]
        if len(ids) < 2:
            continue
        if winner is None or (isinstance(winner, float) and math.isnan(winner)):
            played.append((ids, -1))
        elif winner in index and index[winner] in ids:
            played.append((ids, index[winner]))
    n = len(index)
    wins = [PRIOR_DRAWS / 2.0] * n
    for ids, w in played:
        if w < 0:
            for i in ids:
                wins[i] += 0.5 * (len(ids) - 1)
        else:
            wins[w] += len(ids) - 1
    gamma = [1.0] * n
    fixed = [False] * n
    for name, rating in DEFAULT_ANCHORS.items():
        if name in index:
            fixed[index[name]] = True
            gamma[index[name]] = math.exp((rating - START) / SCALE)
    anchored = any(fixed)

    started = time.perf_counter()
    parse_s = started - parse_started
    done = 0
    for _ in range(iterations):
        done += 1
        denom = [PRIOR_DRAWS / (g + 1.0) for g in gamma]  # the virtual 1500 opponent
        for ids, w in played:
            if w < 0:
                for x in range(len(ids)):
                    for y in range(x + 1, len(ids)):
                        i, j = ids[x], ids[y]
                        d = 1.0 / (gamma[i] + gamma[j])
                        denom[i] += d
                        denom[j] += d
            else:
                gw = gamma[w]
                for o in ids:
                    if o != w:
                        d = 1.0 / (gw + gamma[o])
                        denom[w] += d
                        denom[o] += d
        new = [g if fixed[i] else max(wins[i], 1e-12) / denom[i] for i, g in enumerate(gamma)]
        if not anchored:
            mean = sum(math.log(g) for g in new) / n
            new = [math.exp(math.log(g) - mean) for g in new]
        delta = max(
            (abs(math.log(new[i]) - math.log(gamma[i])) for i in range(n) if not fixed[i]),
            default=0.0,
        )
        gamma = new
        if delta < tolerance:
            break
    per_iteration = (time.perf_counter() - started) / max(done, 1)
    names = sorted(index, key=index.__getitem__)
    ratings = {p: START + SCALE * math.log(gamma[index[p]]) for p in names}
    ratings.update({a: r for a, r in DEFAULT_ANCHORS.items() if a in index})
    return ratings, parse_s, per_iteration


def fleetsync_fit(frame: pd.DataFrame, iterations: int, tolerance: float) -> pd.DataFrame:
    return fit_ratings(decompose(frame), tolerance=tolerance, max_iterations=iterations)


def timed(fn: Callable[..., T], *args: object) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def write_section(text: str) -> None:
    """Replace only our section of docs/BENCHMARKS.md (others own the rest)."""
    doc = BENCH_DOC.read_text() if BENCH_DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    BENCH_DOC.parent.mkdir(parents=True, exist_ok=True)
    BENCH_DOC.write_text(doc)


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--matches", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=100, help="fixed MM iterations, both")
    parser.add_argument("--draw-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; best counts")
    parser.add_argument("--min-ratio", type=float, default=20.0)
    parser.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    truth = anchored_strengths("bench", args.participants - 2, seed=args.seed)
    gen_s, sim = timed(simulate, truth, args.matches, (2, 3, 4), args.draw_rate, args.seed)
    frame = sim.frame()
    players, winners = frame["participants"].tolist(), frame["winner"].tolist()
    draws = int((sim.winner < 0).sum())
    print(f"simulated {len(sim)} matches ({draws} draws) in {gen_s:.1f}s")

    fleet: list[float] = []
    plain: list[float] = []
    fleet_fit = pd.DataFrame()
    plain_fit: dict[str, float] = {}
    costs: list[tuple[float, float, float]] = []  # plain: (total, parse, per iteration)
    for r in range(args.repeat):
        for which in ("plain", "fleetsync") if r % 2 == 0 else ("fleetsync", "plain"):
            if which == "fleetsync":
                secs, fleet_fit = timed(fleetsync_fit, frame, args.iterations, 0.0)
                fleet.append(secs)
            else:
                secs, (plain_fit, parse_s, per_iteration) = timed(
                    plain_replay, players, winners, args.iterations, 0.0
                )
                plain.append(secs)
                costs.append((secs, parse_s, per_iteration))
            print(f"  {which:9} {secs:7.2f}s  ({args.iterations} iterations)")
    fitted = fleet_fit.set_index("participant_id")["rating"]
    gap = max(abs(fitted[p] - plain_fit[p]) for p in plain_fit)
    print(f"largest rating difference between the two: {gap:.2e} Elo")
    if gap > 1e-6 or set(plain_fit) != set(fitted.index):
        print("FAIL: the plain replay and fleetsync disagree")
        return 1

    full_s, full = timed(fleetsync_fit, frame, 10_000, 1e-6)
    decompose_s, _ = timed(decompose, frame)
    rated = full.set_index("participant_id")["rating"]
    corr = float(np.corrcoef(pd.Series(truth)[rated.index], rated)[0, 1])
    used = int(full.attrs["iterations"])
    _, parse_s, per_iteration = min(costs)  # the best plain run's own split
    plain_full = parse_s + used * per_iteration
    fleet_s, plain_s = min(fleet), min(plain)
    ratio = plain_s / fleet_s
    verdict = "ok" if ratio >= args.min_ratio else "FAIL"
    print(f"best: plain {plain_s:.2f}s, fleetsync {fleet_s:.2f}s; ratio {ratio:.1f} "
          f"(floor {args.min_ratio:g}): {verdict}")  # fmt: skip
    print(f"to convergence (1e-6): fleetsync {full_s:.2f}s in {used} iterations "
          f"(decompose {decompose_s:.2f}s); plain extrapolated {plain_full / 3600:.1f} h; "
          f"correlation with the truth {corr:.4f}")  # fmt: skip

    if not args.no_doc:
        write_section(
            f"{SECTION}\n\n"
            f"`python bench/bench_elo.py --matches {args.matches} --participants "
            f"{args.participants} --iterations {args.iterations}` — "
            f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs (nproc), "
            f"{platform.machine()}, Python {platform.python_version()}, numpy "
            f"{np.__version__}, pandas {pd.__version__}, load average {load:.1f} at start "
            "(shared machine).\n\n"
            f"{len(sim)} simulated matches of 2–4 players (uniform) among "
            f"{args.participants} participants of known strength (2 pinned anchors), "
            f"{draws} draws; recomputed from scratch both ways in the same run, best of "
            f"{args.repeat} alternating runs each. The MM iteration converges linearly: "
            f"to fleetsync's 1e-6 tolerance it takes {used} iterations here, which would "
            f"keep the plain replay busy for ~{plain_full / 3600:.1f} h, so **both run the "
            "same fixed "
            f"{args.iterations} iterations** (tolerance 0) for the ratio; their ratings "
            f"agree to {gap:.1e} Elo.\n\n"
            f"| recompute, {args.iterations} MM iterations | best s | runs s |\n"
            "|---|---|---|\n"
            f"| plain Python per-match replay of the same estimator | {plain_s:.2f} "
            f"| {_runs(plain)} |\n"
            f"| fleetsync `decompose` + `fit_ratings` | {fleet_s:.2f} | {_runs(fleet)} |\n"
            f"| **ratio** (floor {args.min_ratio:g}) | **{ratio:.1f}×** | |\n\n"
            f"To convergence: fleetsync {full_s:.2f} s ({used} iterations; `decompose` "
            f"alone {decompose_s:.2f} s, vectorised — the per-match loop it replaced "
            f"dominated at this size); the plain replay, at its measured "
            f"{per_iteration:.2f} s per iteration plus {parse_s:.1f} s of parsing, would "
            f"take ~{plain_full / 3600:.1f} h (extrapolated, not run): "
            f"~{plain_full / full_s:.0f}× at convergence. The fixed-iteration ratio "
            "depends on the iteration count chosen — fleetsync's time is almost all fixed "
            "cost (decompose, pair counting), the replay's grows with every iteration — "
            "and is the conservative figure. Recovered ratings correlate "
            f"{corr:.4f} with the true strengths.\n"
        )
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
