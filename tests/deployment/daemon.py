"""A real `dagster-daemon run` on a temporary instance, over a local demo fleet.

Shared by tests/deployment/test_daemon_scenarios.py and bench/bench_repair_latency.py:
`Deployment.start()` launches the daemon (which starts the code location's gRPC server,
evaluates the sensors that are on by default and launches their runs as processes),
`wait_for` polls an outcome against a deadline, and `stop()` ends the daemon and every
process it started — found by descent from it and by the instance directory in their
environment (a run's node programs start sessions of their own), never by a name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import dagster as dg
import yaml
from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, InstigatorType
from dagster._core.workspace.load_target import ModuleTarget

from resources.catalog import Catalog
from resources.transport import Transports
from sensors._common import INTERVAL_ENV
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.engine.probe import probe_and_record, sync_inventory
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.partitions import NODES

REPO = Path(__file__).resolve().parents[2]
MODULE = "sync_assets.definitions"
BIN = Path(sys.executable).parent
CONFIG = "hex8_2p"  # one config: one export, one rating
STOP_GRACE_S = 20.0
T = TypeVar("T")


def write_fleet(
    root: Path, *, lost_after_s: float, ephemeral: Collection[str] = (), games_per_node: int = 30
) -> Path:
    """The 4-node local demo fleet (coord-1 and store-1 durable, train-1, gpu-1 eval) plus
    a third durable node, store-2, so that a lost durable node leaves room to repair to;
    one config, exported from 5 new games, a node lost `lost_after_s` after its first miss;
    the `ephemeral` nodes marked so."""
    fleet_file = build_demo_fleet(root, node_count=4, games_per_node=games_per_node)
    doc = yaml.safe_load(fleet_file.read_text())
    doc["configs"] = [CONFIG]
    for node in doc["nodes"]:
        node["ephemeral"] = node["name"] in ephemeral
    doc["policy"] |= {"lost_after_s": lost_after_s, "export": {"min_new_games": 5}}
    store = next(n for n in doc["nodes"] if n["name"] == "store-1")
    (root / "nodes" / "store-2").mkdir(parents=True, exist_ok=True)
    doc["nodes"].append(
        store | {"name": "store-2", "data_root": str(root / "nodes" / "store-2"),
                 "provider": {"kind": "hetzner", "id": "store-2"}}
    )  # fmt: skip
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return fleet_file


def _live_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _descendants(root: int) -> set[int]:
    parents = {}
    for pid in _live_pids():
        stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
        if ")" in stat:
            parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found = {root}
    while more := {p for p, pp in parents.items() if pp in found} - found:
        found |= more
    return found


def _cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")[:200]


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return bool(stat) and stat[stat.rindex(")") + 2] not in "ZX"


@dataclass
class Deployment:
    """A local demo fleet, its catalog, a temporary Dagster instance, and (once started)
    the daemon serving `sync_assets.definitions` on it."""

    root: Path
    interval_s: int = 2
    lost_after_s: float = 1.0
    ephemeral: tuple[str, ...] = ()
    fleet_file: Path = field(init=False)
    home: Path = field(init=False)
    log: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.fleet_file = write_fleet(
            self.root / "fleet", lost_after_s=self.lost_after_s, ephemeral=self.ephemeral
        )
        self.home = self.root / "dagster_home"
        self.home.mkdir()
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", self.home)
        self.log = self.root / "daemon.log"
        self.fleet: Fleet = load_inventory(self.fleet_file)
        self.catalog_url = f"sqlite:///{self.root / 'catalog.db'}"
        self.catalog = Catalog(url=self.catalog_url)
        self.transports = Transports()
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        # What node discovery and a first probe would have done: partitions, nodes, disks.
        self.instance.add_dynamic_partitions(NODES, [n.name for n in self.fleet.nodes])
        sync_inventory(self.fleet, self.catalog)
        for node in self.fleet.nodes:
            probe_and_record(node, self.fleet, self.catalog, self.transports)

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {
            "DAGSTER_HOME": str(self.home),
            "FLEETSYNC_CATALOG_URL": self.catalog_url,
            "FLEETSYNC_FLEET": str(self.fleet_file),
            INTERVAL_ENV: str(self.interval_s),
        }

    def run_only(self, sensors: Collection[str]) -> None:
        """Stop every other sensor of the code location before the daemon starts, the way
        the UI's stop button does (a STOPPED state row for the daemon's own origin): a
        scenario waits on its chain, not on the whole fleet's housekeeping runs."""
        from sync_assets.definitions import defs

        [location] = ModuleTarget(
            module_name=MODULE, attribute=None, working_directory=str(REPO), location_name=None
        ).create_origins()
        repository = RemoteRepositoryOrigin(location, "__repository__")
        for sensor in defs.sensors or []:
            if sensor.name not in sensors:
                origin = RemoteInstigatorOrigin(repository, sensor.name)
                state = InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.STOPPED)
                self.instance.add_instigator_state(state)

    def sensor_ticks(self, name: str) -> list[tuple[float, list[str]]]:
        """(time, run ids requested) of every tick of sensor `name` so far, oldest first."""
        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        ticks = [
            (tick.timestamp, list(tick.run_ids))
            for state in states
            if state.instigator_name == name
            for tick in self.instance.get_ticks(state.instigator_origin_id, state.selector_id)
        ]
        return sorted(ticks)

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-m", MODULE, "-d", str(REPO)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def processes(self) -> set[int]:
        """The daemon, its code server, its runs and their node programs, still alive."""
        marker = f"DAGSTER_HOME={self.home}\0".encode()
        mine = {p for p in _live_pids() if marker in _read(f"/proc/{p}/environ")}
        if self.process is not None:
            mine |= _descendants(self.process.pid)
        return {p for p in mine if p != os.getpid() and _alive(p)}

    def stop(self) -> list[str]:
        """SIGTERM the daemon's process group, then SIGKILL whatever of it is left after a
        grace period; returns the processes that needed SIGKILL (described)."""
        if self.process is None:
            return []
        started = self.processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while (left := started | self.processes()) and time.monotonic() < deadline:
            self.process.poll()  # reap the daemon itself
            left = {p for p in left if _alive(p)}
            if not left:
                break
            time.sleep(0.2)
        survivors = {p for p in started | self.processes() if _alive(p)}
        described = [f"{p}: {_cmdline(p)}" for p in sorted(survivors)]
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in survivors) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.instance.dispose()
        return described

    # ---- watching -----------------------------------------------------------------------

    def runs(self) -> list[dict[str, str]]:
        """Every run of the instance: job, status, partition, the sensor that asked for it."""
        return [
            {
                "job": r.job_name,
                "status": r.status.value,
                "partition": r.tags.get("dagster/partition", ""),
                "sensor": r.tags.get("dagster/sensor_name", ""),
                "run_id": r.run_id,
            }
            for r in self.instance.get_runs()
        ]

    def report(self) -> str:
        """What a failed wait shows: the runs, why failed ones failed, the daemon's log."""
        lines = [f"runs: {self.runs()}"]
        for run in self.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
            for record in self.instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is not None and event.is_failure:
                    lines.append(f"{run.job_name} {run.run_id[:8]}: {record.message[:1500]}")
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(lines) + "\n--- daemon log (tail) ---\n" + log[-6000:]

    def wait_for(self, what: str, outcome: Callable[[], T], timeout_s: float) -> T:
        """Poll `outcome` every 0.5 s until it is truthy; fail with the report at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            if value := outcome():
                return value
            assert self.process is None or self.process.poll() is None, (
                f"the daemon exited while waiting for {what}\n{self.report()}"
            )
            assert time.monotonic() < deadline, (
                f"no {what} within {timeout_s:.0f} s\n{self.report()}"
            )
            time.sleep(0.5)
