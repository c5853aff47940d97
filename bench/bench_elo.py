"""Elo recompute benchmark: rating 1 M matches to convergence vs `decompose` alone.

    python bench/bench_elo.py [--matches 1000000 --participants 200 1000 2000 [5000]]

For each `--participants` count, simulates `--matches` matches of 2–4 players
(uniform) among participants of known strength (two of them the pinned anchors),
with draws, then, `--repeat` times, times `decompose` (matches → pairwise results,
the floor any fit pays) and `fit_ratings` on its output, to convergence (Newton on
the full Hessian, tolerance 1e-6, exact uncertainty from the inverse Hessian).

Goal: rating the matches to convergence in under `--max-ratio` (2) × `decompose`
alone, i.e. (decompose + fit) / decompose, best runs. Checks that the fit converged
and recovers the true strengths. Exits 1 on a miss; records the numbers in the
"## Elo ratings" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sync_assets.demo.synth_elo import anchored_strengths, simulate  # noqa: E402
from sync_assets.elo.ratings import decompose, fit_ratings  # noqa: E402

BENCH_DOC = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Elo ratings"
MIN_CORRELATION = 0.99
T = TypeVar("T")


def timed(fn: Callable[..., T], *args: object) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def recompute(frame: pd.DataFrame) -> pd.DataFrame:
    return fit_ratings(decompose(frame))


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


def bench_one(participants: int, args: argparse.Namespace) -> dict:
    """Simulate, then time `decompose` and the fit of its output, `--repeat` times."""
    truth = anchored_strengths("bench", participants - 2, seed=args.seed)
    gen_s, sim = timed(simulate, truth, args.matches, (2, 3, 4), args.draw_rate, args.seed)
    frame = sim.frame()
    draws = int((sim.winner < 0).sum())
    print(f"{participants} participants: {len(sim)} matches ({draws} draws) in {gen_s:.1f}s")
    times: dict[str, list[float]] = {"decompose": [], "fit": []}
    fitted = pd.DataFrame()
    for _ in range(args.repeat):
        decompose_s, pairs = timed(decompose, frame)
        fit_s, fitted = timed(fit_ratings, pairs)
        times["decompose"].append(decompose_s)
        times["fit"].append(fit_s)
        print(f"  decompose {decompose_s:6.2f}s  fit to convergence {fit_s:6.2f}s")
    rated = fitted.set_index("participant_id")
    corr = float(np.corrcoef(pd.Series(truth)[rated.index], rated["rating"])[0, 1])
    decompose_s, fit_s = min(times["decompose"]), min(times["fit"])
    ratio = (decompose_s + fit_s) / decompose_s
    converged = bool(fitted.attrs["converged"])
    found = {
        "participants": participants,
        "draws": draws,
        "times": times,
        "decompose_s": decompose_s,
        "fit_s": fit_s,
        "ratio": ratio,
        "goal_met": ratio < args.max_ratio,
        "iterations": int(fitted.attrs["iterations"]),
        "sound": converged and corr >= MIN_CORRELATION,
        "median_uncertainty": float(rated["uncertainty"][rated["uncertainty"] > 0].median()),
        "corr": corr,
    }
    print(
        f"  best: decompose {decompose_s:.2f}s + fit {fit_s:.2f}s ({found['iterations']} "
        f"Newton iterations, converged {converged}); ratio {ratio:.2f} (goal < "
        f"{args.max_ratio:g}: {'met' if found['goal_met'] else 'MISSED'}); correlation "
        f"with the truth {corr:.4f}"
    )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--matches", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, nargs="+", default=[200, 1000, 2000])
    parser.add_argument("--draw-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs; best counts")
    parser.add_argument("--max-ratio", type=float, default=2.0)
    parser.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    results = [bench_one(p, args) for p in args.participants]
    ok = all(r["sound"] and r["goal_met"] for r in results)

    if not args.no_doc:
        table = "".join(
            f"| {r['participants']} | {r['draws']} | {r['decompose_s']:.2f} "
            f"({_runs(r['times']['decompose'])}) | {r['fit_s']:.2f} ({_runs(r['times']['fit'])}) "
            f"| {r['iterations']} | **{r['ratio']:.2f}×** {'met' if r['goal_met'] else 'missed'} "
            f"| {r['median_uncertainty']:.1f} | {r['corr']:.4f} |\n"
            for r in results
        )
        write_section(
            f"{SECTION}\n\n"
            f"`python bench/bench_elo.py --matches {args.matches} --participants "
            f"{' '.join(map(str, args.participants))}` — {dt.date.today().isoformat()}, "
            f"{os.cpu_count()} CPUs (nproc), {platform.machine()}, Python "
            f"{platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
            f"load average {load:.1f} at start (shared machine).\n\n"
            f"{args.matches} simulated matches of 2–4 players (uniform) among participants "
            f"of known strength (2 pinned anchors), draw rate {args.draw_rate:g}. Each of "
            f"{args.repeat} runs times `decompose` (matches → pairwise results) and then "
            "`fit_ratings` on its output, to convergence: Newton on the full Hessian, "
            "tolerance 1e-6, exact uncertainty from the inverse Hessian. Best of the runs; "
            "ratio = (decompose + fit) / decompose, the time to rate the matches to "
            f"convergence against `decompose` alone. Goal: < {args.max_ratio:g}×.\n\n"
            "| participants | draws | decompose s (runs) | fit s (runs) | Newton iterations "
            "| ratio | median ± Elo | correlation with truth |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"{table}\n"
            "How the fit spends its time: counting pair outcomes, O(matches); then "
            "Newton iterations, each O(pairs of participants) for the gradient and the "
            "information matrix plus conjugate gradients on that dense m × m matrix "
            "(O(m²) a product, ~12 products a step); then one factorisation, O(m³), for "
            "the exact diagonal of the inverse Hessian (the uncertainties). The fit runs "
            "BLAS on one thread (a threaded BLAS stalls whenever another job holds a "
            "core). At 5,000 participants that factorisation alone, about 2/3 · 5000³ "
            "operations, takes longer than `decompose`: the goal is out of reach there "
            "for an exact uncertainty on this machine.\n\n"
            "Before (commit a87ac18, 2026-11-29, one dense Cholesky factorisation per "
            "Newton iteration, threaded BLAS): 1.11× at 200, 1.84× at 1,000, 3.09× at "
            "2,000 participants. The minorise–maximise iteration before that took 6,472 "
            "iterations (4.01 s with `decompose`) for 200 participants. Timings on this "
            "shared machine vary from run to run with the other jobs on it.\n\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
