"""Repair latency under a real dagster-daemon: from a node declared lost to its repair.

    python bench/bench_repair_latency.py [--interval 30] [--reps 3] [--lost-after 5] [--dir D]

Each rep builds the local demo fleet of tests/deployment/daemon.py (three durable nodes,
games collected: every snapshot on two of them), starts `dagster-daemon run` on a fresh
instance with `replication_deficit` ticking every `--interval` s (its production interval
is 30 s; the other sensors are stopped so that only the repair path is timed), waits for
the sensor's first tick plus a random part of an interval (a node dies at any phase of the
tick), then the durable node holding the most copies vanishes (its data root is moved
away) and is probed twice, `--lost-after` s apart: the second miss declares it lost (a
`node_events` row). Timed from that row: the first `replication_deficit` tick that
requested a repair run (in seconds, and in ticks: how many ticks were evaluated after the
loss up to and including it), the repair run's start, and the first repair transfer's
start (`transfers.finished_at - seconds`). Floor: the request within 2 ticks; goal: the
first repair transfer within 60 s of the loss, end to end through the daemon (tick, run
queue, run launch, repair planning). Also shown: from the first missed probe (the node's
death as fleetsync sees it) to that transfer. Records the numbers in the "## Repair
latency" section of docs/BENCHMARKS.md; exits 1 if a rep misses the floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
from bench_deficit import write_section  # noqa: E402  (this directory: the doc writer)

from resources.catalog import NodeState  # noqa: E402
from sync_assets.engine.probe import probe_and_record  # noqa: E402
from sync_assets.games.collect import SNAPSHOT_KIND, collect_node_games  # noqa: E402
from tests.deployment.daemon import Deployment  # noqa: E402

SECTION = "## Repair latency"
SENSOR = "replication_deficit"
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Rep:
    death_to_lost_s: float  # first missed probe -> lost (lost_after_s plus the probe)
    ticks: int  # replication_deficit ticks after the loss, up to the one that asked
    requested_s: float  # lost -> the tick that requested the repair run
    run_started_s: float  # lost -> the repair run started
    transfer_started_s: float  # lost -> the first repair transfer started

    @property
    def from_first_miss_s(self) -> float:
        return self.death_to_lost_s + self.transfer_started_s


def one_rep(root: Path, interval_s: int, lost_after_s: float, rng: random.Random) -> Rep:
    d = Deployment(root, interval_s=interval_s, lost_after_s=lost_after_s)
    try:
        for node in d.fleet.nodes:
            collect_node_games(node, d.fleet, d.catalog, d.transports)
        snapshots = sorted(d.catalog.artifacts_of(SNAPSHOT_KIND))
        durable = [n.name for n in d.fleet.durable_nodes]
        held = {n: {r.sha256 for r in d.catalog.replicas_of(snapshots, nodes=[n])} for n in durable}
        victim = d.fleet.node(max(durable, key=lambda n: len(held[n])))
        d.run_only({SENSOR})
        d.start()
        d.wait_for(f"a first {SENSOR} tick", lambda: d.sensor_ticks(SENSOR), TIMEOUT_S)
        time.sleep(rng.uniform(0, interval_s))  # the node dies at any phase of the tick

        Path(victim.data_root).rename(f"{victim.data_root}.gone")
        death = time.time()
        probe_and_record(victim, d.fleet, d.catalog, d.transports)
        time.sleep(lost_after_s)
        probe_and_record(victim, d.fleet, d.catalog, d.transports)
        events = d.catalog.node_events_frame()
        lost = events[(events["node"] == victim.name) & (events["to_state"] == NodeState.LOST)]
        assert len(lost) == 1, events
        lost_at = float(lost["at"].iloc[0])

        def first_transfer() -> float | None:
            t = d.catalog.transfers_frame()
            mine = t[t["sha256"].isin(held[victim.name]) & (t["finished_at"] > lost_at)]
            return float((mine["finished_at"] - mine["seconds"]).min()) if len(mine) else None

        transfer_at = d.wait_for("a repair transfer", first_transfer, TIMEOUT_S)
        ticks = [(at, runs) for at, runs in d.sensor_ticks(SENSOR) if at > lost_at]
        asked = next(i for i, (_, runs) in enumerate(ticks) if runs)
        [run] = d.instance.get_run_records(
            dg.RunsFilter(run_ids=[ticks[asked][1][0]]), limit=1
        )  # the first repair run that tick requested
        assert run.start_time is not None
        return Rep(
            death_to_lost_s=lost_at - death,
            ticks=asked + 1,
            requested_s=ticks[asked][0] - lost_at,
            run_started_s=run.start_time - lost_at,
            transfer_started_s=transfer_at - lost_at,
        )
    finally:
        d.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=int, default=30, help="replication_deficit tick, s")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lost-after", type=float, default=5.0, help="policy.lost_after_s")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rng = random.Random(args.seed)
    reps = []
    for i in range(args.reps):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rep = one_rep(Path(tmp), args.interval, args.lost_after, rng)
        reps.append(rep)
        print(
            f"rep {i + 1}: lost {rep.death_to_lost_s:.1f} s after the first miss; repair "
            f"requested {rep.requested_s:.1f} s after the loss ({rep.ticks} tick(s) of "
            f"{args.interval} s), run started at {rep.run_started_s:.1f} s, first transfer "
            f"at {rep.transfer_started_s:.1f} s ({rep.from_first_miss_s:.1f} s after the "
            "first miss)"
        )
    worst_ticks = max(r.ticks for r in reps)
    transfer = [r.transfer_started_s for r in reps]
    floor = "met" if worst_ticks <= 2 else "missed"
    goal = "met" if max(transfer) <= 60 else "missed"
    summary = (
        f"lost -> first repair transfer: median {statistics.median(transfer):.1f} s, worst "
        f"{max(transfer):.1f} s = {max(transfer) / args.interval:.2f} ticks of {args.interval} s "
        f"(goal 60 s: {goal}); repair requested within {worst_ticks} tick(s) (floor 2: {floor})"
    )
    print(summary)
    if not args.no_doc:
        rows = "".join(
            f"| {i + 1} | {r.death_to_lost_s:.1f} | {r.ticks} | {r.requested_s:.1f} | "
            f"{r.run_started_s:.1f} | **{r.transfer_started_s:.1f}** "
            f"({r.transfer_started_s / args.interval:.2f} ticks) | {r.from_first_miss_s:.1f} |\n"
            for i, r in enumerate(reps)
        )
        write_section(
            f"{SECTION}\n\n"
            f"`python bench/bench_repair_latency.py --interval {args.interval} --reps "
            f"{args.reps} --lost-after {args.lost_after:g}` — {dt.date.today()}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
            f"Dagster {dg.__version__}, load average {load:.1f} at start (shared machine).\n\n"
            "A real `dagster-daemon run` (sensor daemon, run queue, the default run launcher: "
            "each run is a new process) on a fresh instance over the local demo fleet (three "
            "durable nodes, every games snapshot on two), `replication_deficit` ticking every "
            f"{args.interval} s (its production interval; the other sensors stopped). The "
            "durable node holding the most copies vanishes at a random phase of the tick and "
            f"is probed twice, {args.lost_after:g} s apart (`policy.lost_after_s`): the "
            "second miss declares it lost (the bench probes with `probe_and_record`, so the "
            "loss is timed exactly; under `fleet_probe` the first miss waits for the next "
            "probe run, and the loss for the one after it). Seconds from that `node_events` "
            "row; *ticks* = sensor ticks evaluated after the loss up to the one that "
            "requested the repair.\n\n"
            "| rep | first miss → lost s | ticks to the request | request s | repair run "
            "started s | first repair transfer s | first miss → transfer s |\n"
            "|---|---|---|---|---|---|---|\n"
            f"{rows}\n"
            f"**Floor** (repair requested within 2 sensor ticks): worst {worst_ticks} "
            f"tick(s), {floor}. **Goal** (the first repair transfer within 60 s of the loss, "
            f"end to end): median {statistics.median(transfer):.1f} s, worst "
            f"{max(transfer):.1f} s ({max(transfer) / args.interval:.2f} ticks), {goal}. "
            "The wait for the next tick is up to one interval (on average half); after the "
            "tick come the run queue's dequeue (every 5 s), a new process for the run that "
            "imports the code location, and the repair's planning: on this shared 2-core "
            "machine that start-up is 20–40 s.\n",
            SECTION,
        )
    return 0 if worst_ticks <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
