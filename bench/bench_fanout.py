"""Model fan-out benchmark: fleetsync's tree vs a star from one source, on capped links.

    python bench/bench_fanout.py [--targets 16] [--mbps 20] [--mib 20 5] [--reps 2] [--no-doc]

Builds a small network on this host (root, `ip` and `tc`): one bridge, and per node a
network namespace joined to it by a veth pair. `tc tbf` caps every node's uplink (its
namespace's end of the veth) and downlink (the bridge's end) at `--mbps`: a real link
per node, shared by every transfer that node makes at once (rsync `--bwlimit` would cap
each transfer instead, and a star of 16 transfers would get 16 links' worth). Each node
runs a real `sshd` in its namespace (`SshdFleet(netns=...)`): 1 source + `--targets`
GPU nodes, all of which pull with `rsync` (`pull_key`), so bytes go node to node over
the capped links. The orchestrator (this process) reaches the nodes through the bridge.

Both contenders are `distribute` (verified, recorded copies: the code the models asset
runs), on a fresh catalog and fresh SSH connections, interleaved:

  star  `transfers_per_node` = targets: the source sends to every target at once, so
        the star's time is its uplink's: targets × size ÷ link (16 concurrent copies).
  tree  `transfers_per_node` = 2 (the default policy): copies run concurrently and
        pipelined, a node serving others as soon as its own copy is verified (two at
        once only early in the push, `fanout_wave`).
  tree, 1 per source: `transfers_per_node` = 1, each node sending one copy at a time
        at its full link (a binomial tree); context, not gated.

`BENCH_FANOUT_LOG=1` prints every copy's interval from the transfer log.

A whole-file tree needs at least ceil(log2(targets + 1)) copy times (the holders can at
most double per copy time), so its ratio to the star is at best 5/16 = 0.31 for 16
targets; per-copy fixed costs (an SSH login and an rsync start per pull, hashing and
fsync at the target, the catalog) come on top, once per tree level. Floor: tree ÷ star
≤ 0.35 (ratio of medians) for the first `--mib`: 20 MiB, the small end of the fleet's
models (DATA.md: 15-200 MB), at 20 Mbit/s (the star takes ~2.5 min); other sizes are
context (at 5 MiB the fixed costs per copy weigh more than the bytes). Exits 1 above
the floor. Every target's file is hashed here after each run; a wrong or missing one
fails the run. Namespaces, the bridge and the sshd processes are removed on exit, also
on failure (finally, atexit, SIGTERM).
A full run rewrites the "## Model fan-out" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resources.catalog import Catalog  # noqa: E402
from resources.transport import Transports  # noqa: E402
from resources.transport.ssh import SshTransport  # noqa: E402
from sync_assets.demo.sshd_fleet import SshdFleet  # noqa: E402
from sync_assets.engine.replication import distribute  # noqa: E402
from sync_assets.fleet.inventory import Fleet, load_inventory  # noqa: E402

BENCH_DOC = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Model fan-out"
FLOOR = 0.35  # time ratio, tree ÷ star
TREE = "tree"  # the default policy: 2 copies per source at once
TREE_1 = "tree, 1 per source"
MODEL = "models/canonical_hex8_2p.pth"
SOURCE = "coord-1"
MIB = 1 << 20


# ---- the network ------------------------------------------------------------------------


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")


@dataclass
class Network:
    """A bridge on this host and one namespace per node, each link capped both ways."""

    names: list[str]
    mbps: float
    tag: str = field(default_factory=lambda: str(os.getpid() % 100000))
    subnet: str = "10.213.7"
    made: list[tuple[str, str]] = field(default_factory=list)  # ("netns"|"link", name)

    @property
    def bridge(self) -> str:
        return f"fsb{self.tag}"

    def namespace(self, i: int) -> str:
        return f"fsn{self.tag}-{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def create(self) -> dict[str, tuple[str, str]]:
        """Make it; {node: (namespace, address)} for `SshdFleet(netns=...)`."""
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        placed = {}
        for i, name in enumerate(self.names):
            ns, veth = self.namespace(i), f"fsv{self.tag}x{i}"
            run("ip", "netns", "add", ns)
            self.made.append(("netns", ns))
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # Uplink: what leaves the node; downlink: what the bridge sends into it.
            self._cap(["tc", "-n", ns], "eth0")
            self._cap(["tc"], veth)
            placed[name] = (ns, self.address(i))
        return placed

    def _cap(self, tc: list[str], dev: str) -> None:
        burst = max(32 * 1024, int(self.mbps * 1e6 / 8 / 250))  # ≥ one 4 ms tick of bytes
        run(*tc, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.mbps}mbit",
            "burst", str(burst), "latency", "100ms")  # fmt: skip

    def remove(self) -> None:
        """Remove what was made (a namespace takes its veth pair with it); idempotent."""
        while self.made:
            kind, name = self.made.pop()
            argv = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            subprocess.run(argv, capture_output=True)


# ---- the fleet --------------------------------------------------------------------------


def inventory(sshd: SshdFleet, targets: list[str], path: Path) -> Fleet:
    nodes = []
    for entry in sshd.inventory_nodes():
        roles = ["coordinator", "storage"] if entry["name"] == SOURCE else ["selfplay"]
        nodes.append({**entry, "roles": roles, "pull_key": str(sshd.client_key)})
    one = {kind: 1 for kind in ("games", "npz", "models", "elo")}  # one durable node
    doc = {"fleet": "bench-fanout", "configs": ["hex8_2p"], "nodes": nodes,
           "policy": {"min_replicas": one}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet = load_inventory(path)
    assert [n.name for n in fleet.gpu_nodes] == targets
    return fleet


def with_per_source(fleet: Fleet, per_source: int) -> Fleet:
    policy = fleet.policy.model_copy(update={"transfers_per_node": per_source})
    return fleet.model_copy(update={"policy": policy})


@dataclass
class Run:
    seconds: float
    depth: int  # longest chain of copies from the source
    most_at_once: int  # copies running at one instant (from the transfer log)
    longest_copy: float


def fan_out(fleet: Fleet, targets: list[str], sha: str, size: int, work: Path, label: str) -> Run:
    """One `distribute` to every target on a fresh catalog and fresh connections;
    every target's bytes are hashed here afterwards."""
    for name in targets:
        shutil.rmtree(Path(fleet.node(name).data_root) / "models", ignore_errors=True)
    db = work / f"catalog-{label}.db"  # a new URL per run: engines are cached per URL
    if db.exists():
        raise RuntimeError(f"{label}: a catalog for this run exists already")
    catalog = Catalog(url=f"sqlite:///{db}")
    catalog.sync_nodes(fleet.nodes)
    catalog.add_artifact(sha, kind="model", config="hex8_2p", name=MODEL, size=size,
                         origin_node=SOURCE)  # fmt: skip
    catalog.record_replica(sha, SOURCE, MODEL, size)
    subprocess.run(["sync"], check=True)  # nobody pays for another's writeback
    transports = Transports()
    started = time.perf_counter()
    try:
        result = distribute(sha, MODEL, targets, fleet, catalog, transports)
    finally:
        ssh = transports.for_node(fleet.node(SOURCE))
        assert isinstance(ssh, SshTransport)
        ssh.close()
    seconds = time.perf_counter() - started
    if result.failures or result.findings or result.copies != len(targets):
        raise RuntimeError(f"{label}: {result.copies} copies; {result.failures + result.findings}")
    for name in targets:
        got = hashlib.sha256((Path(fleet.node(name).data_root) / MODEL).read_bytes()).hexdigest()
        if got != sha:
            raise RuntimeError(f"{label}: {name} holds other bytes")
    log = catalog.transfers_frame()
    spans = [(r.finished_at - r.seconds, r.finished_at) for r in log.itertuples()]
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    source_of = dict(zip(log["target"], log["source"], strict=True))

    def depth(node: str) -> int:
        return 0 if node == SOURCE else 1 + depth(source_of[node])

    if os.environ.get("BENCH_FANOUT_LOG"):
        t0 = min(start for start, _ in spans)
        for (start, end), r in sorted(zip(spans, log.itertuples(), strict=True)):
            print(f"  {r.source:>7} -> {r.target}: {start - t0:6.2f} .. {end - t0:6.2f} s")
    return Run(seconds, max(map(depth, targets)), most, float(log["seconds"].max()))


# ---- report -----------------------------------------------------------------------------


def write_section(body: str) -> None:
    doc = BENCH_DOC.read_text() if BENCH_DOC.exists() else "# Benchmarks\n"
    section = f"{SECTION}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    doc = pattern.sub(lambda _: section, doc) if pattern.search(doc) else f"{doc}\n{section}"
    BENCH_DOC.write_text(doc.rstrip("\n") + "\n")


@dataclass
class Size:
    """All runs of one model size."""

    mib: float
    single: float  # one copy over one link, s
    runs: dict[str, list[Run]]

    @property
    def star(self) -> float:
        return statistics.median(r.seconds for r in self.runs["star"])

    def ratio(self, tree: str) -> float:
        return statistics.median(r.seconds for r in self.runs[tree]) / self.star


def measure(fleet: Fleet, targets: list[str], mib: float, reps: int, work: Path) -> Size:
    size = int(mib * MIB)
    payload = os.urandom(size)
    sha = hashlib.sha256(payload).hexdigest()
    source_file = Path(fleet.node(SOURCE).data_root) / MODEL
    source_file.parent.mkdir(parents=True, exist_ok=True)
    source_file.write_bytes(payload)
    contenders = {
        "star": with_per_source(fleet, len(targets)),
        TREE: fleet,
        TREE_1: with_per_source(fleet, 1),
    }
    single = fan_out(fleet, targets[:1], sha, size, work, f"{mib:g}-single").seconds
    print(f"{mib:g} MiB: one copy over one link {single:.2f} s", flush=True)
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for rep in range(reps):
        order = list(contenders)[rep % 3 :] + list(contenders)[: rep % 3]  # rotated
        for name in order:
            r = fan_out(contenders[name], targets, sha, size, work, f"{mib:g}-{name}-{rep}")
            runs[name].append(r)
            print(f"{mib:g} MiB rep {rep} {name}: {r.seconds:.2f} s, depth {r.depth}, "
                  f"{r.most_at_once} copies at once", flush=True)  # fmt: skip
    return Size(mib, single, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--mbps", type=float, default=20.0, help="every node's link, each way")
    parser.add_argument("--mib", type=float, nargs="+", default=[20.0, 5.0],
                        help="model sizes; the first is gated, the others are context")  # fmt: skip
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("tc"):
        print("bench_fanout: needs root, `ip` and `tc` (network namespaces)", file=sys.stderr)
        return 2

    targets = [f"gpu-{i:02d}" for i in range(1, args.targets + 1)]
    work = Path(args.dir or tempfile.mkdtemp(prefix="fleetsync-fanout-"))
    network = Network([SOURCE, *targets], args.mbps)
    sshd: SshdFleet | None = None

    def cleanup() -> None:
        if sshd is not None:
            sshd.stop()
        network.remove()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so finally and atexit run
    load_before = os.getloadavg()[0]
    try:
        sshd = SshdFleet(work, [SOURCE, *targets], netns=network.create()).start()
        fleet = inventory(sshd, targets, work / "fleet.yaml")
        sizes = [measure(fleet, targets, mib, args.reps, work) for mib in args.mib]
    finally:
        cleanup()
        atexit.unregister(cleanup)

    rounds = math.ceil(math.log2(len(targets) + 1))
    bound = rounds / len(targets)
    ok = sizes[0].ratio(TREE) <= FLOOR
    for sz in sizes:
        print(f"{sz.mib:g} MiB: star {sz.star:.2f} s, tree ÷ star = {sz.ratio(TREE):.3f}, "
              f"with 1 per source {sz.ratio(TREE_1):.3f} (floor {FLOOR}, whole-file bound "
              f"{bound:.3f})")  # fmt: skip
    verdict = "floor met" if ok else "FLOOR MISSED"
    print(f"gated ({sizes[0].mib:g} MiB): {verdict}")
    if not args.no_doc:
        write_section(report(args, targets, sizes, bound, rounds, verdict, load_before))
    return 0 if ok else 1


def report(
    args: argparse.Namespace,
    targets: list[str],
    sizes: list[Size],
    bound: float,
    rounds: int,
    verdict: str,
    load_before: float,
) -> str:
    link_s = MIB * 8 / (args.mbps * 1e6)  # seconds per MiB over one link
    rows = []
    for sz in sizes:
        for name, rs in sz.runs.items():
            rows.append(
                f"| {sz.mib:g} MiB | {name} | {statistics.median(r.seconds for r in rs):.2f} | "
                f"{', '.join(f'{r.seconds:.2f}' for r in rs)} | {rs[0].depth} | "
                f"{max(r.most_at_once for r in rs)} |"
            )
        gate = f"floor {FLOOR}: {verdict}" if sz is sizes[0] else "context"
        rows.append(
            f"| {sz.mib:g} MiB | **tree ÷ star** | **{sz.ratio(TREE):.3f}** ({gate}) | | | |"
        )
        rows.append(f"| {sz.mib:g} MiB | {TREE_1} ÷ star | {sz.ratio(TREE_1):.3f} | | | |")
    singles = ", ".join(
        f"{sz.mib:g} MiB {sz.single:.2f} s (size ÷ link {sz.mib * link_s:.2f} s)" for sz in sizes
    )
    return (
        f"`python bench/bench_fanout.py --targets {len(targets)} --mbps {args.mbps:g} "
        f"--mib {' '.join(f'{m:g}' for m in args.mib)} --reps {args.reps}` — "
        f"{dt.date.today()}, {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}, load average {load_before:.1f} at start (shared "
        "machine).\n\n"
        f"{len(targets) + 1} network namespaces on one bridge (a source and {len(targets)} "
        f"GPU nodes), each node's link capped by `tc tbf` at {args.mbps:g} Mbit/s up and "
        "down (a link per node, shared by all its transfers: no rsync `--bwlimit`), a real "
        "`sshd` in each; targets pull with rsync over the capped links. `distribute` to "
        "every target on a fresh catalog and fresh connections, each copy verified at its "
        "target and hashed again by the bench. Star: `transfers_per_node` = "
        f"{len(targets)}, every target at once from the source, bound by its uplink; tree: "
        "the default 2, concurrent and pipelined (a node serves as soon as its copy is "
        "verified; a source sends two at once only while the waiting targets outnumber the "
        "nodes holding or receiving the model); tree, 1 per source: "
        "`transfers_per_node: 1`, each node sending one "
        f"copy at a time at its full link. One copy over one link: {singles}. Depth: the "
        "longest chain of "
        "copies from the source; copies at once: from the transfer log.\n\n"
        "| model | fan-out | median s | runs s | depth | most copies at once |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"A whole-file tree needs at least ceil(log2({len(targets)} + 1)) = {rounds} copy "
        f"times (the holders at most double per copy time): {bound:.3f} of the star is its "
        "bound. Each copy also pays fixed costs that the star pays once and the tree once "
        "per level (3 levels at 2 per source, 5 at 1): a login and an rsync start on the "
        "target, "
        "the SSH handshake to the source, hashing and fsync at the target, the catalog. "
        "The single copies above show them; they grow with the machine's load, and a "
        "larger model makes them weigh less: the first size is gated (20 MiB, the small end "
        "of the fleet's models, 15-200 MB in DATA.md), the others are context. "
        "Before issue 10 `distribute` ran a wave's "
        "copies one after another: one copy time per target, "
        f"{len(targets)} × {sizes[0].single:.2f} s ≈ {len(targets) * sizes[0].single:.0f} s "
        f"at {sizes[0].mib:g} MiB (estimated from the single copy, not run), slower than "
        "the star. Reaching 1/16 plus pipeline fill needs chunk-level forwarding (a "
        "node sends on what it is still receiving), which fleetsync does not do: every "
        "copy is verified whole before it serves."
    )


if __name__ == "__main__":
    sys.exit(main())
