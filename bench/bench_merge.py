"""Game merge benchmark: fleetsync's merge vs a plain ATTACH + INSERT OR IGNORE script.

    python bench/bench_merge.py [--games 200000 --nodes 8] [--dir D] [--max-ratio 1.5]

Generates `--nodes` single-config node DBs holding `--games` games in total
(each node also holds 10 % of its predecessor's games verbatim, and the last
node 1 % different games under its predecessor's ids), then merges them all
into a fresh canonical twice, in the same run: with `merge_snapshots`
(completeness filter, dedup, collision handling, schema-drift-safe column
lists, provenance) and with the naive script that copies every table with
`INSERT OR IGNORE INTO main.t SELECT * FROM src.t`. Both canonicals are
created by `open_game_db`, so they share file format and pragmas and the
ratio measures the merge logic alone. Then, once, `merge_snapshots` over
copies of the node DBs in an older schema (no keys, no NOT NULL, no index),
the path of its set-based drift checks (reported, not limited). Exits 1 if
the ratio exceeds `--max-ratio`; records the numbers in the "## Game merge"
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sync_assets.demo.synth_games import GameSpec, make_specs, strip_keys, write_game_db  # noqa: E402
from sync_assets.games.merge import merge_snapshots  # noqa: E402
from sync_assets.games.schema import GAME_TABLES, open_game_db  # noqa: E402

CONFIG = "hex8_2p"
SHARED_FRACTION = 0.10
COLLIDING_FRACTION = 0.01
BENCH_DOC = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Game merge"
T = TypeVar("T")


def build_fleet(root: Path, games: int, nodes: int, seed: int) -> list[tuple[str, str]]:
    """Write the node DBs (in parallel, one process per CPU) and return (path, label)."""
    per_node = games // nodes
    plans: list[list[GameSpec]] = []
    previous: list[GameSpec] = []
    for i in range(nodes):
        shared = previous[: int(per_node * SHARED_FRACTION)]
        n_colliding = int(per_node * COLLIDING_FRACTION) if i == nodes - 1 and previous else 0
        # The predecessor's ids for different games: non-unique generator ids.
        victims = previous[len(previous) - n_colliding :]
        colliding = [s._replace(seed=s.seed ^ 0x5EED) for s in victims]
        own = make_specs(
            configs=[CONFIG], n_games=per_node - len(shared) - len(colliding), seed=seed + i
        )
        plans.append([*own, *shared, *colliding])
        previous = own
    paths = [root / f"node{i}" / "games" / f"selfplay_{CONFIG}.db" for i in range(nodes)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write_game_db, paths, plans))
    return [(str(p), f"node{i}:games/{p.name}") for i, p in enumerate(paths)]


def plain_merge(canonical: Path, snapshots: list[tuple[str, str]]) -> None:
    """The naive merge: copy every table, first writer wins per primary key."""
    conn = open_game_db(canonical)
    try:
        for path, _ in snapshots:
            conn.execute("ATTACH DATABASE ? AS src", (path,))
            conn.execute("BEGIN IMMEDIATE")
            for table in GAME_TABLES:
                conn.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM src.{table}")
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE src")
    finally:
        conn.close()


def timed(fn: Callable[..., T], *args: object) -> tuple[float, T]:
    """Wall-clock seconds of fn(*args), and its result."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.1f}" for t in times)


def count_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in GAME_TABLES}
    finally:
        conn.close()


def write_section(text: str) -> None:
    """Replace only our section of docs/BENCHMARKS.md (others own the rest)."""
    doc = BENCH_DOC.read_text() if BENCH_DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(doc):  # keep the blank line before the next section
        doc = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    doc = doc.rstrip("\n") + "\n"
    BENCH_DOC.parent.mkdir(parents=True, exist_ok=True)
    BENCH_DOC.write_text(doc)


def measure(
    root: Path, snapshots: list[tuple[str, str]], repeat: int
) -> tuple[list[float], list[float], dict]:
    """Run both merges `repeat` times, alternating which goes first; canonicals are
    deleted after each run. Returns plain times, fleetsync times, last stats."""
    plain: list[float] = []
    fleet: list[float] = []
    stats: dict = {}
    for r in range(repeat):
        for which in ("plain", "fleetsync") if r % 2 == 0 else ("fleetsync", "plain"):
            target = root / f"{which}.db"
            if which == "plain":
                secs, _ = timed(plain_merge, target, snapshots)
                plain.append(secs)
            else:
                secs, stats = timed(merge_snapshots, target, CONFIG, snapshots)
                fleet.append(secs)
            print(f"  {which:9} {secs:6.1f}s  {count_rows(target)}")
            for leftover in root.glob(f"{which}.db*"):
                leftover.unlink()
    return plain, fleet, stats


def keyless_merge(root: Path, snapshots: list[tuple[str, str]]) -> float:
    """Seconds to merge copies of the node DBs in an older schema (no keys, no NOT NULL, no
    index): the merge's set-based checks for such tables, once (not part of the ratio)."""
    copies = []
    for path, label in snapshots:
        copy = root / "keyless" / Path(path).relative_to(root)
        copy.parent.mkdir(parents=True)
        shutil.copy(path, copy)
        strip_keys(copy, GAME_TABLES)
        copies.append((str(copy), label))
    secs, stats = timed(merge_snapshots, root / "keyless.db", CONFIG, copies)
    print(f"  keyless   {secs:6.1f}s  {count_rows(root / 'keyless.db')}")
    assert stats["totals"]["unreadable"] == 0
    return secs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; best counts")
    parser.add_argument("--max-ratio", type=float, default=1.5)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        gen_s, snapshots = timed(build_fleet, root, args.games, args.nodes, args.seed)
        print(f"generated {args.games} games on {args.nodes} nodes in {gen_s:.1f}s")
        plain, fleet, stats = measure(root, snapshots, args.repeat)
        keyless_s = keyless_merge(root, snapshots)
    plain_s, fleet_s = min(plain), min(fleet)
    ratio = fleet_s / plain_s
    verdict = "ok" if ratio <= args.max_ratio else "FAIL"
    print(f"best: plain {plain_s:.1f}s, fleetsync {fleet_s:.1f}s")
    print(f"ratio {ratio:.2f} (limit {args.max_ratio}): {verdict}")
    print(f"older schema (no keys): fleetsync {keyless_s:.1f}s ({keyless_s / plain_s:.2f}x)")
    print(f"totals: {stats['totals']}")

    if not args.no_doc:
        totals = stats["totals"]
        write_section(
            f"{SECTION}\n\n"
            f"`python bench/bench_merge.py --games {args.games} --nodes {args.nodes}` — "
            f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs (nproc), "
            f"{platform.machine()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, load average {load:.1f} at start "
            "(shared machine).\n\n"
            f"{args.nodes} single-config node DBs, {args.games} games (~20 moves each), "
            f"{SHARED_FRACTION:.0%} of each node's games duplicated on the next node, "
            f"{COLLIDING_FRACTION:.0%} colliding ids on the last node, ~5 % incomplete; "
            f"generated in {gen_s:.1f}s. Best of {args.repeat} alternating runs each. The "
            "ratio is for v18 node DBs, where the merge's checks for older schemas (repeated "
            "keys, NULLs where values are required) are not emitted.\n\n"
            "| merge into a fresh canonical | best s | runs s |\n|---|---|---|\n"
            f"| plain `ATTACH` + `INSERT OR IGNORE … SELECT *` per table | {plain_s:.1f} "
            f"| {_runs(plain)} |\n"
            f"| fleetsync `merge_snapshots` | {fleet_s:.1f} | {_runs(fleet)} |\n"
            f"| **ratio** (limit {args.max_ratio}) | **{ratio:.2f}** | |\n"
            f"| fleetsync, the same node DBs in an older schema (no keys, no NOT NULL, "
            f"no index), once | {keyless_s:.1f} ({keyless_s / plain_s:.2f}x plain) | |\n\n"
            f"fleetsync kept {totals['added']} games ({totals['collisions_kept']} under a "
            f"`~fingerprint` id), skipped {totals['duplicates']} duplicates and rejected "
            f"{totals['rejected']['unfinished']} unfinished and "
            f"{totals['rejected']['too_few_moves']} too-short games "
            f"({sum(totals['rejected'].values())} rejected in all); the plain script keeps "
            "all of them and merges colliding games' moves into one.\n"
        )
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
