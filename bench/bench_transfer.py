"""Transfer benchmark: fleetsync's SSH transport vs plain rsync over the same sshd.

    python bench/bench_transfer.py [--quick] [--reps 5] [--only abc] [--dir D]
                                   [--no-prototype] [--no-doc]

Starts two real OpenSSH nodes (`SshdFleet`, loopback, under a temp dir on the same
disk as the repo) and measures, in the same run, interleaved, alternating order:

  a. one large random file node → node: `SshTransport.copy_between` by direct pull
     (the target holds `pull_key`) ÷ `rsync -a` pulling the same file from the same
     sshd into the target's directory. Floor: throughput ratio ≥ 0.9. The relay
     route (orchestrator in the middle) is reported, not gated.
  b. 5,000 files of 64 KiB: `copy_many` ÷ one `rsync -a` of the directory.
     Floor: throughput ratio ≥ 0.8.
  c. no-op re-sync of 10,000 files already on both nodes and in the catalog:
     `audit_nodes` (both nodes at once) + `replicate` (which plans nothing) ÷
     `rsync -a --dry-run` of the directory. Floor: time ratio ≤ 1.0.

Context rows run the same rsync started through the target's sshd, the way an
orchestrator starts a command on a remote node (one more login shell).

Every fleetsync measurement starts cold (a new SshTransport: its SSH handshakes are
paid, as rsync pays its own). Before every measurement the previous outputs are
removed, dirty pages are flushed (`sync`, so nobody pays for another's writeback)
and the source is read into the page cache (so both read it warm; dropping caches
needs privileges we do not have). The ratio of medians is gated; best, per-rep
paired ratios and every rep are shown; a rep that raises is recorded, not timed,
and fails the gate.

Unless `--no-prototype`, each fleetsync case is also run with the fixes still
proposed (`ProposedSshTransport`, `AGENT_OVERRIDES`, `replicate_deficits`,
`proposed_planner`: production plus deltas) to show their gain in the same
conditions. Exits 1 if the production code misses a floor; a full run (not
`--quick`, all cases) rewrites the "## Transfers" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resources.catalog import Catalog  # noqa: E402
from resources.catalog import artifacts as artifacts_table  # noqa: E402
from resources.catalog import nodes as nodes_table  # noqa: E402
from resources.catalog import replicas as replicas_table  # noqa: E402
from resources.inventory import Fleet, Node  # noqa: E402
from resources.transport import Transports  # noqa: E402
from resources.transport import ssh as ssh_module  # noqa: E402
from resources.transport.base import (  # noqa: E402
    CopyItem,
    CopyResult,
    ExecResult,
    Listing,
    RemoteFile,
)
from resources.transport.paths import (  # noqa: E402
    UnsafePathError,
    is_ignored,
    safe_relpath,
)
from resources.transport.ssh import SshTransport, _mtime_ns  # noqa: E402

try:
    from resources.transport import node_agent  # the agent production runs on targets
except ImportError:  # an older production without one: no transfer prototype
    node_agent = None  # type: ignore[assignment]
from sync_assets import placement, replication  # noqa: E402
from sync_assets.audit import AuditResult, audit_node, audit_nodes  # noqa: E402
from sync_assets.replication import ReplicationResult, replicate  # noqa: E402
from sync_assets.sshd_fleet import SshdFleet  # noqa: E402

BENCH_DOC = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Transfers"
MIB = 1 << 20
KIND = "games_snapshot"
FLOOR_BIG = 0.9  # throughput ratio, fleetsync ÷ rsync
FLOOR_MANY = 0.8  # throughput ratio
CEIL_NOOP = 1.0  # time ratio, fleetsync ÷ rsync --dry-run


# ---- the fixes still proposed, as a prototype on top of production ------------------
#
# `ProposedSshTransport` is the production SshTransport plus only what production does
# not do yet; where production already has a fix (the node agent, the `_run` EOF fix)
# the prototype uses production's. Each delta falls back to production when the code
# it patches has changed, so the `proposed` rows never measure stale code.

# Appended to production's node agent (resources/transport/node_agent.py) before its
# `main()` runs: a pull that trusts the hash alone when the source was not stat'ed,
# and every step's time goes to stderr.
AGENT_OVERRIDES = r'''
import atexit as _atexit
import time as _time

_TIMES = {}


def _timed(step, fn):
    def wrapper(*args, **kwargs):
        started = _time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMES[step] = _TIMES.get(step, 0.0) + _time.monotonic() - started
    return wrapper


_pull = pull


def pull(job):
    """A size of -1: the caller did not stat the source; trust the hash alone."""
    final = job["final"]
    if job.get("size", 0) < 0 and os.path.isfile(final) and sha256_of(final) == job["sha256"]:
        return {"size": os.path.getsize(final), "moved": 0}
    return _pull(job)


rsync = _timed("rsync", rsync)
publish = _timed("verify+publish", publish)
publish_many = _timed("hash | syncfs, rename", publish_many)
_atexit.register(lambda: sys.stderr.write("\nAGENT-TIMES " + json.dumps(_TIMES) + "\n"))
'''
_MAIN_GUARD = '\nif __name__ == "__main__":'


def proposed_agent_command() -> str | None:
    """Production's agent command with AGENT_OVERRIDES spliced in; None if production
    has no agent, or its source no longer has the shape the overrides expect."""
    command = getattr(ssh_module, "AGENT_COMMAND", None)
    source = Path(node_agent.__file__).read_text() if node_agent else ""
    needed = ("def publish_many(", "def rsync(", "def publish(", "def flush_all(", _MAIN_GUARD)
    if command is None or not all(word in source for word in needed):
        return None
    patched = source.replace(_MAIN_GUARD, AGENT_OVERRIDES + _MAIN_GUARD, 1)
    return 'py=/usr/bin/python3; [ -x "$py" ] || py=python3; exec "$py" -I -c ' + shlex.quote(
        patched
    )


class ProposedSshTransport(SshTransport):
    """Production SshTransport plus the fixes still proposed in docs/BENCHMARKS.md:
    the overlapped batch publish (AGENT_OVERRIDES), no `stat` round trip to the source
    before a pull (the agent reports the size it received), a faster listing parse."""

    agent_command = proposed_agent_command()

    def __init__(self) -> None:
        super().__init__()
        self.agent_times: dict[str, float] = defaultdict(float)  # step → s, on the node

    def _run(
        self, node: Node, command: str, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:
        if self.agent_command is None or command != getattr(ssh_module, "AGENT_COMMAND", ""):
            return super()._run(node, command, stdin, timeout)
        done = super()._run(node, self.agent_command, stdin, timeout)
        err, _, times = done.stderr.rpartition(b"\nAGENT-TIMES ")
        for step, seconds in json.loads(times or b"{}").items():
            self.agent_times[step] += seconds
        return ExecResult(done.returncode, done.stdout, err if times else done.stderr)

    def _size_or_fail(self, node: Node, rel: str, what: str) -> int:
        """Pull route: no round trip; -1 tells the agent to trust the hash alone."""
        if getattr(self, "_pulling", False):
            return -1
        return super()._size_or_fail(node, rel, what)

    def copy_between(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        self._pulling = bool(dst.pull_key) and self.agent_command is not None
        try:
            done = super().copy_between(src, src_path, dst, dst_path, sha256)
        finally:
            self._pulling = False
        if done.size >= 0:
            return done
        got = Path(dst.data_root, done.path).stat().st_size  # bench only: nodes are local
        return CopyResult(done.path, done.sha256, got, done.bytes_moved, done.seconds)

    def list(self, node: Node, subdir: str) -> Listing:
        """Production's listing with a fast path for plain names (no per-character
        Unicode scan) and no per-entry scan of an empty list of refused directories."""
        if subdir in ("", "."):
            rel_dir, start = "", node.data_root
        else:
            rel_dir, start = self._abs(node, subdir, "list")
        q = shlex.quote(start)
        command = (
            f"[ -d {q} ] || exit 0; find {q} -mindepth 1 -printf '%y\\0%Y\\0%s\\0%T@\\0%l\\0%P\\0'"
        )
        fields = self._check(node, self._run(node, command), f"list {rel_dir or '.'}").split("\0")
        files: list[RemoteFile] = []
        rejected: list[str] = []
        bad_dirs: list[str] = []
        prefix = f"{rel_dir}/" if rel_dir else ""
        plain = _PLAIN_PATH.fullmatch
        for i in range(0, len(fields) - 5, 6):
            kind, target_kind, size, mtime, link, name = fields[i : i + 6]
            rel = prefix + name
            if bad_dirs and any(rel.startswith(d + "/") for d in bad_dirs):
                continue
            if not plain(rel):
                try:
                    safe_relpath(rel)
                except UnsafePathError:
                    rejected.append(rel)
                    if kind == "d":
                        bad_dirs.append(rel)
                    continue
            if kind == "d" or is_ignored(rel):
                continue
            if kind == "l":
                try:
                    ok = target_kind == "f" and not link.startswith("/") and safe_relpath(link)
                except UnsafePathError:
                    ok = False
                if not ok:
                    rejected.append(rel)
                    continue
            elif kind != "f":
                rejected.append(rel)
                continue
            files.append(RemoteFile(rel, int(size), _mtime_ns(mtime)))
        files.sort(key=lambda f: f.path)
        return Listing(files=files, rejected=sorted(rejected))


# A path that safe_relpath would return unchanged: ASCII name characters, no empty,
# `.` or `..` component, not absolute.
_COMPONENT = r"(?!\.\.?(?:/|$))[\w.+,=@%-]+"
_PLAIN_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)


def below_policy(catalog: Catalog, fleet: Fleet, shas: Iterable[str]) -> list[str]:
    """The artifacts among `shas` with fewer verified copies on active durable nodes
    than their kind's policy — counted by the database in one query, which returns
    nothing at all when the fleet is in order (the planner's own count, in SQL)."""
    mins = replication.min_replicas_by_kind(fleet)
    if not mins:
        return []
    r, n, a = replicas_table, nodes_table, artifacts_table
    durable = sa.select(n.c.name).where(n.c.durable & (n.c.state == "active"))
    copies = (
        sa.select(r.c.sha256, sa.func.count(sa.distinct(r.c.node)).label("n"))
        .where((r.c.state == "verified") & r.c.node.in_(durable))
        .group_by(r.c.sha256)
        .subquery()
    )
    wanted = sa.case(mins, value=a.c.kind, else_=0)
    query = (
        sa.select(a.c.sha256)
        .outerjoin(copies, copies.c.sha256 == a.c.sha256)
        .where(sa.func.coalesce(copies.c.n, 0) < wanted)
    )
    with catalog.engine.connect() as conn:
        deficits = {row.sha256 for row in conn.execute(query)}
    return [sha for sha in shas if sha in deficits]


def replicate_deficits(
    shas: Iterable[str],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    target_path: Callable[[Any], str],
) -> ReplicationResult:
    """`replicate`, handed only what `below_policy` finds: a fleet in order costs one
    aggregate query instead of three catalog frames and a pandas plan."""
    deficits = below_policy(catalog, fleet, shas)
    if not deficits:
        return ReplicationResult()
    return replicate(deficits, fleet, catalog, transports, target_path)


def proposed_planner() -> Callable[..., Any]:
    """`plan_replication` with its two `groupby(...).agg(set)` (a Python call per group:
    ~0.2 s each for 10,000 artifacts) replaced by one pass building the dicts."""
    source = inspect.getsource(placement)
    for old in PLANNER_PATCH:
        if old not in source:
            return placement.plan_replication  # already changed upstream
        source = source.replace(old, PLANNER_PATCH[old])
    namespace: dict[str, Any] = {"__name__": placement.__name__}
    exec(compile(source, f"{placement.__file__} (proposed)", "exec"), namespace)
    return namespace["plan_replication"]


PLANNER_PATCH = {
    'holders = counted.groupby("sha256")["node"].agg(set).to_dict()': (
        "holders = _sets_by_sha(counted)"
    ),
    'anywhere = usable.groupby("sha256")["node"].agg(set).to_dict()': (
        "anywhere = _sets_by_sha(usable)"
    ),
    "def _blocked(": (
        "def _sets_by_sha(frame: pd.DataFrame) -> dict[str, set[str]]:\n"
        "    out: dict[str, set[str]] = {}\n"
        '    for sha, node in zip(frame["sha256"].to_numpy(), frame["node"].to_numpy()):\n'
        "        out.setdefault(sha, set()).add(node)\n"
        "    return out\n\n\n"
        "def _blocked("
    ),
}


# ---- measuring ------------------------------------------------------------------------


@dataclass
class Phases:
    """Seconds per remote step of one fleetsync call (what a profile of it shows)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def label(self, command: str) -> str:
        if command == getattr(ssh_module, "AGENT_COMMAND", None):
            return "agent"
        if "rsync" in command:
            return "rsync pull"
        if "sha256sum" in command or "hashlib" in command:
            return "verify+publish"
        if "find " in command:
            return "stat/list"
        if command.startswith("rm "):
            return "cleanup"
        return "other"

    def text(self, total: float) -> str:
        known = sum(v for k, v in self.seconds.items() if not k.startswith("("))
        parts = {**self.seconds, "local (relay stream, catalog, planning)": total - known}
        return ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if v >= 0.005)


@contextmanager
def profiled(transport: SshTransport) -> Iterator[Phases]:
    """Time every remote command the transport runs, by step."""
    phases = Phases()
    real = transport._run
    depth = [0]
    innermost = [""]  # a wrapped command that runs another: counted once, as the inner one

    def timed_run(node: Node, command: str, *args: Any, **kwargs: Any) -> ExecResult:
        started = time.perf_counter()
        depth[0] += 1
        innermost[0] = phases.label(command)
        try:
            return real(node, command, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                phases.seconds[innermost[0]] += time.perf_counter() - started

    transport._run = timed_run  # type: ignore[method-assign]
    try:
        yield phases
    finally:
        del transport._run
        for step, seconds in getattr(transport, "agent_times", {}).items():
            phases.seconds[f"(agent: {step})"] += seconds


@dataclass
class Series:
    """All reps of one contender in one case."""

    name: str
    times: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    reps: list[int] = field(default_factory=list)  # the rep each time belongs to
    errors: list[str] = field(default_factory=list)  # reps that raised: not timed

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        return min(self.times) if self.times else float("nan")


@dataclass
class Case:
    """One benchmark case: a reference, contenders, and how the ratio is gated."""

    key: str
    title: str
    reference: Series
    contenders: list[Series]
    gated: str  # name of the contender held to the floor
    floor: float
    higher_is_better: bool  # throughput ratio (ref/fs) vs time ratio (fs/ref)
    payload_bytes: int = 0
    how: str = ""

    def ratio(self, series: Series, best: bool = False) -> float:
        ref = self.reference.best if best else self.reference.median
        mine = series.best if best else series.median
        return ref / mine if self.higher_is_better else mine / ref

    def paired(self, series: Series) -> float:
        """Median over reps of the ratio within each rep: the two ran back to back, so
        load that drifts over minutes (a shared machine) cancels out."""
        ref = dict(zip(self.reference.reps, self.reference.times, strict=True))
        ratios = [
            ref[rep] / t if self.higher_is_better else t / ref[rep]
            for rep, t in zip(series.reps, series.times, strict=True)
            if rep in ref
        ]
        return statistics.median(ratios) if ratios else float("nan")

    def ok(self) -> bool:
        """The gated contender met the floor, at its median, and never failed."""
        gated = next(s for s in self.contenders if s.name == self.gated)
        r = self.ratio(gated)
        met = r >= self.floor if self.higher_is_better else r <= self.floor
        return met and not gated.errors


def flush_and_warm(paths: list[Path]) -> None:
    """Even conditions: no one else's dirty pages pending, the source in page cache."""
    os.sync()
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.read(8 * MIB):
                    pass


def remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


@dataclass
class Bench:
    """The two sshd nodes and how plain rsync reaches the source."""

    sshd: SshdFleet
    src: Node
    dst: Node  # holds pull_key: direct pull
    dst_relay: Node  # same node without pull_key: relayed through this process
    known_hosts: Path
    reps: int
    prototype: bool

    @classmethod
    def start(cls, sshd: SshdFleet, reps: int, prototype: bool) -> Bench:
        entries = {e["name"]: e for e in sshd.inventory_nodes()}
        src = Node(roles=["storage"], **entries["src"])  # type: ignore[arg-type]
        dst = Node(roles=["storage"], pull_key=str(sshd.client_key), **entries["dst"])  # type: ignore[arg-type]
        known_hosts = sshd.root / "bench_known_hosts"
        known_hosts.write_text(
            f"[{src.host}]:{src.port} {src.host_key}\n[{dst.host}]:{dst.port} {dst.host_key}\n"
        )
        relay = dst.model_copy(update={"pull_key": None})
        return cls(sshd, src, dst, relay, known_hosts, reps, prototype)

    @property
    def src_root(self) -> Path:
        return Path(self.src.data_root)

    @property
    def dst_root(self) -> Path:
        return Path(self.dst.data_root)

    def ssh(self, node: Node) -> list[str]:
        """OpenSSH with its defaults (cipher included), our key, the pinned host key."""
        return [
            "ssh", "-i", str(self.sshd.client_key), "-p", str(node.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
        ]  # fmt: skip

    def rsync(self, *args: str, via_target: bool = False) -> None:
        """Plain rsync, run on the target (this machine), pulling from the source's sshd
        with OpenSSH's default cipher and options, the same key and pinned host key.
        via_target: started the way an orchestrator would start it on a remote target,
        through the target's sshd (one more login shell, like fleetsync's own)."""
        argv = ["rsync", *args[:-2], "-e", shlex.join(self.ssh(self.src)), "--", *args[-2:]]
        if via_target:
            argv = [*self.ssh(self.dst), f"{self.dst.user}@{self.dst.host}", shlex.join(argv)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    def remote(self, path: Path) -> str:
        return f"{self.src.user}@{self.src.host}:{path}"

    def transport(self, kind: str) -> SshTransport:
        """`fleetsync`: production; `proposed`: production plus the prototype fixes."""
        return SshTransport() if kind == "fleetsync" else ProposedSshTransport()

    def contenders(self, names: list[str]) -> list[str]:
        return [n for n in names if self.prototype or "proposed" not in n]

    def run_case(
        self,
        case: Case,
        runners: dict[str, Callable[[], str]],
        before: Callable[[], None],
    ) -> Case:
        """Interleave every contender `reps` times, alternating the order each rep."""
        order = [case.reference, *case.contenders]
        for rep in range(self.reps):
            for series in order if rep % 2 == 0 else order[::-1]:
                before()
                try:
                    seconds, phases = timed(runners[series.name])
                except Exception as exc:  # a failed rep is a finding, not the end of the run
                    series.errors.append(f"rep {rep + 1}: {type(exc).__name__}: {exc}"[:400])
                    print(f"  [{case.key}] rep {rep + 1} {series.name:30} FAILED: {exc!s:.200}")
                    continue
                series.times.append(seconds)
                series.reps.append(rep)
                series.phases.append(str(phases))
                print(f"  [{case.key}] rep {rep + 1} {series.name:30} {seconds:7.2f} s", flush=True)
        return case


# ---- a. one large file ----------------------------------------------------------------


def bench_big_file(b: Bench, size_mib: int) -> Case:
    big = b.src_root / "big" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(size_mib):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    sha = digest.hexdigest()
    ref_out, fs_out = b.dst_root / "ref" / "big.bin", b.dst_root / "fs" / "big.bin"
    ref_out.parent.mkdir(parents=True, exist_ok=True)
    size = size_mib * MIB

    def fleetsync(dst: Node, kind: str) -> Callable[[], str]:
        def run() -> str:
            transport = b.transport(kind)
            try:
                with profiled(transport) as phases:
                    seconds, done = timed(
                        lambda: transport.copy_between(b.src, "big/big.bin", dst, "fs/big.bin", sha)
                    )
            finally:
                transport.close()
            assert isinstance(done, CopyResult) and done.bytes_moved == size, done
            assert fs_out.stat().st_size == size
            return phases.text(seconds)

        return run

    def reference(via_target: bool = False) -> Callable[[], str]:
        def run() -> str:
            b.rsync("-a", b.remote(big), str(ref_out), via_target=via_target)
            assert ref_out.stat().st_size == size
            return ""

        return run

    routes = {
        "rsync, started through dst's sshd": reference(via_target=True),
        "fleetsync pull": fleetsync(b.dst, "fleetsync"),
        "fleetsync relay": fleetsync(b.dst_relay, "fleetsync"),
        "proposed pull": fleetsync(b.dst, "proposed"),
        "proposed relay": fleetsync(b.dst_relay, "proposed"),
    }
    names = b.contenders(list(routes))
    case = Case(
        "a", f"{size_mib} MiB random file node → node", Series("rsync -a"),
        [Series(n) for n in names], gated="fleetsync pull", floor=FLOOR_BIG,
        higher_is_better=True, payload_bytes=size,
        how=(
            f"one {size_mib} MiB file of random bytes. Reference: `rsync -a SRC:big.bin "
            "DST/` run on the target machine against the source's sshd (OpenSSH default "
            "cipher). fleetsync: `SshTransport().copy_between(src, …, dst, …, sha256)` "
            "with `dst.pull_key` set (rsync on the target pulls from the source; SHA-256 "
            "checked at the target, fsync, atomic rename), and without it (relay: two "
            "`ssh` streams through this process). Cold transport each time."
        ),
    )  # fmt: skip

    def before() -> None:
        remove(ref_out, fs_out)
        flush_and_warm([big])

    runners: dict[str, Callable[[], str]] = {"rsync -a": reference(), **routes}
    b.run_case(case, runners, before)
    remove(big, ref_out, fs_out)
    return case


# ---- b. many small files --------------------------------------------------------------


def bench_many_files(b: Bench, count: int, size_kib: int) -> Case:
    src_dir = b.src_root / "many"
    src_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        data = os.urandom(size_kib * 1024)
        (src_dir / f"{i:05d}.bin").write_bytes(data)
        items.append(
            CopyItem(f"many/{i:05d}.bin", f"fs_many/{i:05d}.bin", hashlib.sha256(data).hexdigest())
        )
    ref_out, fs_out = b.dst_root / "ref_many", b.dst_root / "fs_many"

    def fleetsync(dst: Node, kind: str) -> Callable[[], str]:
        def run() -> str:
            transport = b.transport(kind)
            try:
                with profiled(transport) as phases:
                    seconds, done = timed(lambda: transport.copy_many(b.src, dst, items))
            finally:
                transport.close()
            assert isinstance(done, list) and all(isinstance(r, CopyResult) for r in done), done
            return phases.text(seconds)

        return run

    def reference(via_target: bool = False) -> Callable[[], str]:
        def run() -> str:
            b.rsync("-a", b.remote(src_dir) + "/", str(ref_out) + "/", via_target=via_target)
            return ""

        return run

    routes = {
        "rsync, started through dst's sshd": reference(via_target=True),
        "fleetsync pull": fleetsync(b.dst, "fleetsync"),
        "fleetsync relay": fleetsync(b.dst_relay, "fleetsync"),
        "proposed pull": fleetsync(b.dst, "proposed"),
        "proposed relay": fleetsync(b.dst_relay, "proposed"),
    }
    names = b.contenders(list(routes))
    case = Case(
        "b", f"{count:,} files of {size_kib} KiB", Series("rsync -a"),
        [Series(n) for n in names], gated="fleetsync pull", floor=FLOOR_MANY,
        higher_is_better=True, payload_bytes=count * size_kib * 1024,
        how=(
            f"{count:,} random files of {size_kib} KiB in one directory. Reference: one "
            "`rsync -a SRC:many/ DST/ref_many/` on the target machine. fleetsync: "
            "`copy_many(src, dst, items)` with every item's SHA-256 (one rsync "
            "--files-from pull, or one relayed tar, then one remote verify+publish "
            "step). Cold transport each time."
        ),
    )  # fmt: skip

    def before() -> None:
        remove(ref_out, fs_out)
        flush_and_warm([src_dir])

    b.run_case(case, {"rsync -a": reference(), **routes}, before)
    remove(src_dir, ref_out, fs_out)
    return case


# ---- c. no-op re-sync -----------------------------------------------------------------


def seed_catalog(catalog: Catalog, fleet: Fleet, files: list[tuple[str, str, int]]) -> None:
    """Record every file as an artifact with a verified replica on both nodes (one
    transaction: 30,000 single-row transactions would only slow the set-up)."""
    catalog.sync_nodes(fleet.nodes)
    now = time.time()
    with catalog.engine.begin() as conn:
        conn.execute(
            artifacts_table.insert(),
            [
                {"sha256": sha, "kind": KIND, "config": None, "name": rel, "size": size,
                 "origin_node": "src", "created_at": now}
                for rel, sha, size in files
            ],
        )  # fmt: skip
        conn.execute(
            replicas_table.insert(),
            [
                {"sha256": sha, "node": node, "path": rel, "size": size, "verified_at": now,
                 "state": "verified"}
                for rel, sha, size in files
                for node in ("src", "dst")
            ],
        )  # fmt: skip


def bench_noop(b: Bench, count: int, tmp: Path) -> Case:
    rel_dir = "noop"
    files: list[tuple[str, str, int]] = []
    for i in range(count):
        rel = f"{rel_dir}/d{i % 100:02d}/{i:05d}.bin"
        data = os.urandom(1024)
        path = b.src_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    # The target already has everything, with the source's mtimes (as rsync -a leaves it).
    subprocess.run(["cp", "-a", str(b.src_root / rel_dir), str(b.dst_root)], check=True)
    fleet = Fleet(fleet="bench", nodes=[b.src, b.dst])
    catalog = Catalog(url=f"sqlite:///{tmp / 'catalog.db'}")
    seed_catalog(catalog, fleet, files)
    shas = [sha for _, sha, _ in files]
    path_of = {sha: rel for rel, sha, _ in files}

    proposed_plan = proposed_planner()

    def fleetsync(kind: str) -> Callable[[], str]:
        """kind: `sequential` (audit_node, one node after the other), `fleetsync`
        (audit_nodes: listings overlap), `proposed` (+ fast listing parse and planner),
        `speculative` (proposed, and planning runs while the nodes are being listed;
        re-planned if the audit corrected anything)."""

        def run() -> str:
            transports = Transports()
            ssh = b.transport("fleetsync" if kind in ("sequential", "fleetsync") else "proposed")
            transports._ssh = ssh
            nodes = [b.src, b.dst]

            def plan() -> Any:
                move = replicate if kind in ("sequential", "fleetsync") else replicate_deficits
                return move(shas, fleet, catalog, transports, lambda a: path_of[a.name])

            try:
                with (
                    profiled(ssh) as phases,
                    swapped(replication, "plan_replication", proposed_plan, kind),
                ):
                    started = time.perf_counter()
                    if kind == "sequential":
                        audits: list[Any] = [audit_node(n, catalog, ssh) for n in nodes]
                        planned = plan()
                    elif kind == "speculative":
                        with ThreadPoolExecutor(1) as pool:
                            auditing = pool.submit(audit_nodes, nodes, catalog, transports.for_node)
                            planned = plan()
                            audits = list(auditing.result().values())
                        if not all(isinstance(a, AuditResult) and a.clean for a in audits):
                            planned = plan()
                    else:
                        audits = list(audit_nodes(nodes, catalog, transports.for_node).values())
                        planned = plan()
                    seconds = time.perf_counter() - started
            finally:
                ssh.close()
            assert all(isinstance(a, AuditResult) and a.clean for a in audits), audits
            assert all(len(a.ok) == count for a in audits), audits
            assert planned.copies == 0 and not planned.failures, planned
            audit_s = max(a.seconds for a in audits)
            return f"{phases.text(seconds)}; slowest audit_node {audit_s:.2f}"

        return run

    def reference(via_target: bool = False) -> Callable[[], str]:
        def run() -> str:
            src, dst = b.remote(b.src_root / rel_dir) + "/", f"{b.dst_root / rel_dir}/"
            b.rsync("-a", "--dry-run", src, dst, via_target=via_target)
            return ""

        return run

    runners = {
        "rsync, started through dst's sshd": reference(via_target=True),
        "fleetsync audit+plan": fleetsync("fleetsync"),
        "fleetsync, audits in turn": fleetsync("sequential"),
        "proposed audit+plan": fleetsync("proposed"),
        "proposed audit ‖ plan": fleetsync("speculative"),
    }
    case = Case(
        "c", f"no-op re-sync of {count:,} files", Series("rsync -a --dry-run"),
        [Series(n) for n in b.contenders(list(runners))], gated="fleetsync audit+plan",
        floor=CEIL_NOOP, higher_is_better=False,
        how=(
            f"{count:,} files of 1 KiB in 100 directories, already on both nodes (mtimes "
            "preserved) and recorded in a SQLite catalog as verified replicas on both. "
            "Reference: `rsync -a --dry-run SRC:noop/ DST/noop/` on the target machine "
            "(walks both sides, transfers nothing). fleetsync: a cold `Transports()`, "
            "`audit_nodes([src, dst])` (one `find` per node, both at once, compared with "
            "the catalog, no hashing) then `replicate(all shas)`, which plans nothing; "
            "`audits in turn` calls `audit_node` for one node after the other. Context row "
            "`rsync, started through dst's sshd`: the same rsync started the way an "
            "orchestrator reaches a remote target (`ssh DST rsync …`), i.e. paying one "
            "more login shell, as fleetsync does for the second node."
        ),
    )  # fmt: skip

    def before() -> None:
        os.sync()

    b.run_case(case, {"rsync -a --dry-run": reference(), **runners}, before)
    remove(b.src_root / rel_dir, b.dst_root / rel_dir)
    return case


@contextmanager
def swapped(module: Any, name: str, value: Any, kind: str) -> Iterator[None]:
    """Use the proposed planner for the `proposed`/`speculative` runs only."""
    if kind not in ("proposed", "speculative"):
        yield
        return
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


# ---- report ---------------------------------------------------------------------------


def table(cases: list[Case]) -> list[str]:
    """Markdown table: every series' median and best, ratio against the reference."""
    lines = [
        "| case | contender | median s | best s | MB/s (median) | ratio (median) "
        "| ratio (best) | ratio (paired) | floor | failed reps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        for s in [c.reference, *c.contenders]:
            rate = f"{c.payload_bytes / s.median / 1e6:.0f}" if c.payload_bytes else ""
            if s is c.reference:
                ratio = best = paired = floor = ""
            else:
                ratio, best = f"{c.ratio(s):.2f}", f"{c.ratio(s, best=True):.2f}"
                paired = f"{c.paired(s):.2f}"
                sign = "≥" if c.higher_is_better else "≤"
                verdict = ("ok" if c.ok() else "**MISSED**") if s.name == c.gated else "info"
                floor = f"{sign} {c.floor:g} {verdict}"
            lines.append(
                f"| {c.key}. {c.title} | {s.name} | {s.median:.2f} | {s.best:.2f} | {rate} "
                f"| {ratio} | {best} | {paired} | {floor} | {len(s.errors) or ''} |"
            )
    return lines


def failures(cases: list[Case]) -> list[str]:
    return [f"- {c.key}. {s.name}, {e}" for c in cases for s in c.contenders for e in s.errors]


def phases_lines(cases: list[Case]) -> list[str]:
    """Where fleetsync's time went, in its median rep."""
    lines = []
    for c in cases:
        for s in c.contenders:
            if not s.times or not any(s.phases):
                continue
            i = s.times.index(sorted(s.times)[len(s.times) // 2])
            lines.append(f"- {c.key}. {s.name} ({s.times[i]:.2f} s): {s.phases[i]}")
    return lines


def version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (done.stdout or done.stderr).splitlines()[0].strip()


def environment(work: Path) -> str:
    load = os.getloadavg()
    df = subprocess.run(
        ["df", "--output=source,fstype", str(work)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    device = " ".join(df[-1].split()) if df else "?"
    return (
        f"{dt.datetime.now().isoformat(timespec='minutes')}, nproc {os.cpu_count()}, "
        f"{platform.machine()}, {platform.platform(terse=True)}, Python "
        f"{platform.python_version()}, {version(['rsync', '--version'])}, "
        f"{version(['ssh', '-V'])}, work dir on {device}; load average "
        f"{load[0]:.1f} / {load[1]:.1f} at start (shared machine, other test runs)"
    )


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


def section(args: argparse.Namespace, env: str, cases: list[Case]) -> str:
    command = "python bench/bench_transfer.py" + (" --quick" if args.quick else "")
    reps = "\n".join(
        f"- {c.key}. {s.name}: " + ", ".join(f"{t:.2f}" for t in s.times)
        for c in cases
        for s in [c.reference, *c.contenders]
    )
    how = "\n".join(f"- **{c.key}.** {c.how}" for c in cases)
    return "\n".join(
        [
            SECTION,
            "",
            f"`{command}` (reps {args.reps}) — {env}.",
            "",
            *table(cases),
            "",
            "Ratios: a, b are throughput ratios (rsync time ÷ fleetsync time, higher is "
            "better); c is a time ratio (fleetsync ÷ rsync, lower is better). `median` = "
            "ratio of the medians (what is gated), `best` = of the best times, `paired` = "
            "median of the per-rep ratios (each rep runs both back to back, so it is the "
            "least sensitive to other jobs' load drifting over minutes). Gated: the "
            "production `SshTransport` direct-pull route (a, b) and audit + plan (c); "
            "the other rows are informational. `proposed …` = production plus the fixes "
            "still open below (6–10), prototyped in this bench; `audit ‖ plan` = planning "
            "runs while the nodes are listed and is redone only if an audit corrected "
            "the catalog.",
            "",
            "How each was measured (same run, same two sshd nodes on loopback, "
            "interleaved, order alternated every rep; before each measurement the outputs "
            "are removed, `sync` flushes pending writeback and the source is read into the "
            "page cache, so both sides read warm and write cold; every fleetsync call "
            "starts with a new transport and pays its own SSH handshakes):",
            "",
            how,
            "",
            "Where fleetsync's time goes (median rep; seconds per remote step, timed "
            "around every command the transport runs — steps overlap when nodes are "
            "listed at once; `(agent: …)` are steps timed on the node inside one agent "
            "command; `local` is what is left: the relay stream, catalog, planning):",
            "",
            *phases_lines(cases),
            "",
            *(["Failed reps (not timed):", "", *failures(cases), ""] if failures(cases) else []),
            "Every rep, seconds:",
            "",
            reps,
            "",
            FINDINGS,
        ]
    )


FINDINGS = """### Findings and fixes

**History.** Against the transport as it was first measured (same machine, same
bench, 2026-11-23 19:54, 5 reps, ratio of medians), fleetsync missed every floor:
1 GiB pull 0.51 (relay 0.44), 5,000 files 0.34, no-op re-sync 3.40. The causes and
the fixes, measured in that run as `proposed` rows (1 GiB pull 1.23, 5,000 files
0.76, no-op 1.71, 1.46 with planning overlapped):

1. `SshTransport._run` stopped reading at the exit status, before EOF: stdout came
   back truncated (16 of 30 runs of `head -c 3000000 /dev/zero`; a `find` listing
   of 10,000 files lost 459). **Applied** (commit c8ca36c).
2. Every remote command starts the login shell, and bash runs `~/.bashrc` for ssh
   commands (here `pyenv init`: ~0.25 s per command; conda on GPU boxes is no
   better); `python3` on PATH may be a shim (pyenv's: ~0.2 s per start). A pull
   cost 5 remote shells. **Applied** in the working tree: one node-agent command on
   the target per copy or batch (`resources/transport/node_agent.py`), started on
   `/usr/bin/python3 -I` when present.
3. Verification used coreutils `sha256sum` (Debian 12: no SHA-NI, ~0.2 GB/s here
   against ~1 GB/s for OpenSSL/hashlib). **Applied**: hashlib on the node, the
   staged file's fsync in a thread meanwhile.
4. The batch publish made two journal commits per file (fsync, rename, fsync dir).
   **Applied**: one syncfs(2) per batch, one fsync per directory.
5. Tried and dropped: streaming `ssh SRC tail -c +N` into the agent, hashed while
   written (one pass, resumable) — 0.85 against 1.22 for rsync + agent: the Python
   copy loop is slower than rsync on 2 cores.

**Still open** — prototyped in `ProposedSshTransport` / `AGENT_OVERRIDES` /
`below_policy` / `proposed_planner`, i.e. what the `proposed` rows add to production:

6. `copy_between` stats the source before every pull: one more round trip, one
   more login shell (~0.3 s here). Let the agent report the size it received
   (`reply["size"]`; a job `size` of -1 = "not known, trust the hash").
7. (done in production since: `node_agent.publish_many` runs the `syncfs` in a thread
   while a few threads hash.)
8. `SshTransport.list` parsing costs ~25 µs per entry: `safe_relpath` checks
   Unicode categories character by character and `any(...)` over an empty
   `bad_dirs` runs per entry. Accept at once a path matching `_PLAIN_PATH` (ASCII
   name characters, no empty / `.` / `..` component: exactly the paths
   `safe_relpath` returns unchanged), fall back to `safe_relpath` otherwise; test
   `bad_dirs` only when non-empty.
9. `sync_assets/replication.py`: a no-op `replicate` reads three whole catalog
   frames and plans in pandas (~0.5–1 s for 10,000 artifacts). First ask the
   database which of `shas` are below policy — `below_policy`: one aggregate query
   (verified replicas on active durable nodes per artifact, against the kind's
   minimum as a `CASE`; the planner's own count, checked equal on a random catalog)
   that returns no rows when the fleet is in order — and plan only those
   (`replicate_deficits`). In `placement.plan_replication`, the two
   `groupby("sha256")["node"].agg(set)` make a Python call per group (~0.2 s each
   for 10,000 artifacts): build both dicts in one `zip` (`PLANNER_PATCH`).
10. A re-sync asset can plan while the nodes are being listed (`audit_nodes` in a
   thread) and re-plan only if an audit corrected the catalog (`audit ‖ plan`).

Not prototyped:

11. `list` reports a symlinked file's own size (`%s` of the link: 7 bytes for
   `link.db -> real.db`) where `LocalTransport` reports the target's. For accepted
   links, one more `stat -L --printf '%s\\0' -- …` (only when links exist). The
   audit is not fooled: it re-checks resized paths with `find -L` before dropping.
12. End the `list` command with a sentinel (`…; echo END`) and refuse a listing
   without it: a short listing must be an error, never fewer files.
13. `resources/catalog.py`: `replicas` has no index on `node` (its primary key
   starts with `sha256`), so per-node queries scan the table: add
   `Index("ix_replicas_node", replicas.c.node)`; and give the catalog the two calls
   `audit.py` makes on the table itself: `replicas_on_node(node, states)` and
   `drop_replicas(node, [(sha256, path), …])` in one transaction.
14. The relay (`_pump`) moves ~70–125 MB/s here: Python copies 1 MiB chunks between
   two `ssh` pipes on 2 cores; `os.splice` (Linux) between the pipes would take
   Python out of the loop. Informational: the relay has no floor.

**What the no-op floor measures here.** rsync walks the target locally and pays one
login shell (on the source); fleetsync's orchestrator reaches both nodes over SSH
and pays two, ~0.25–0.5 s each on this image. The context row `rsync, started
through dst's sshd` is the same rsync paying that one extra shell.
"""


# ---- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 3 reps, no doc (a smoke run)"
    )
    parser.add_argument("--reps", type=int, help="reps per contender (default 5, quick 3)")
    parser.add_argument("--dir", type=Path, help="parent of the temp dir (default: system tmp)")
    parser.add_argument("--no-prototype", action="store_true", help="skip `proposed` rows")
    parser.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument(
        "--only", default="abc", help="cases to run, e.g. `ac` (a partial run writes no doc)"
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 5)
    big_mib, many, noop = (256, 1000, 2000) if args.quick else (1024, 5000, 10_000)

    parent = args.dir or Path(tempfile.gettempdir())
    env = environment(parent)
    print(env, flush=True)
    cases: list[Case] = []
    with (
        tempfile.TemporaryDirectory(prefix="fleetsync-bench-", dir=parent) as tmp,
        SshdFleet(Path(tmp) / "fleet", ["src", "dst"]) as sshd,
    ):
        b = Bench.start(sshd, args.reps, prototype=not args.no_prototype)
        if "a" in args.only:
            cases.append(bench_big_file(b, big_mib))
        if "b" in args.only:
            cases.append(bench_many_files(b, many, 64))
        if "c" in args.only:
            cases.append(bench_noop(b, noop, Path(tmp)))
    print()
    print("\n".join(table(cases)))
    print()
    print("\n".join(phases_lines(cases)))
    if args.no_doc or args.quick or sorted(args.only) != ["a", "b", "c"]:
        print(f"\n{SECTION!r} of {BENCH_DOC.relative_to(REPO)} left as it is (not a full run)")
    else:
        write_section(section(args, env, cases))
        print(f"\nwrote the {SECTION!r} section of {BENCH_DOC.relative_to(REPO)}")
    missed = [c.key for c in cases if not c.ok()]
    if missed:
        print(f"floor missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
