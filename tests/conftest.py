"""Shared fixtures: real OpenSSH `sshd` nodes on loopback (tests marked `cluster`).

Teardown proves the fleet is really gone: no process of it survives — neither a
listener, nor a per-connection `sshd` session, nor a command run through one — found
by what it holds (a socket on a node's address) and what it names (the fleet root),
never by a broad process name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sync_assets.demo.sshd_fleet import SshdFleet

SURVIVOR_GRACE_S = 10.0


# ---- processes of a fleet (read from /proc; Linux only, like sshd_fleet) -----------------


def _live_pids() -> list[int]:
    """Every process that is not a zombie (a zombie is dead, only not yet reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            pids.append(int(entry))
    return pids


def _parents() -> dict[int, int]:
    parents = {}
    for pid in _live_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def _socket_inodes(endpoints: set[tuple[str, int]]) -> set[str]:
    """Inodes of TCP sockets whose local address is one of `endpoints` (listeners and
    accepted connections alike)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, port = cols[1].split(":")
            if len(addr) != 8:
                continue  # IPv6: the fleet listens on IPv4 loopback only
            host = socket.inet_ntoa(struct.pack("<I", int(addr, 16)))
            if (host, int(port, 16)) in endpoints:
                inodes.add(cols[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    found = set(roots)
    while True:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def node_processes(fleet: SshdFleet, names: list[str] | None = None) -> set[int]:
    """Live processes of the given nodes (all by default): their sshd listener, every
    sshd session serving a connection to them, and everything those sessions run."""
    wanted = names if names is not None else list(fleet.nodes)
    endpoints = {(fleet.nodes[n].host, fleet.nodes[n].port) for n in wanted}
    inodes = _socket_inodes(endpoints)
    me = os.getpid()
    parents = _parents()
    holders = {pid for pid in parents if pid != me and _holds_socket(pid, inodes)}
    for n in wanted:
        proc = fleet.nodes[n].process
        if proc is not None and proc.poll() is None:
            holders.add(proc.pid)
    return _descendants(holders, parents) - {me}


def fleet_processes(fleet: SshdFleet) -> set[int]:
    """Everything of the fleet still alive: node processes, plus any process naming the
    fleet's root on its command line (a listener's config, a command's data root)."""
    marker = str(fleet.root).encode()
    named = set()
    for pid in _live_pids():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                named.add(pid)
        except OSError:
            continue
    return (node_processes(fleet) | named) - {os.getpid()}


def describe(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd.strip()[:200]}")
    return out


def _sigkill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def vanish(fleet: SshdFleet, name: str) -> None:
    """The node's box disappears: SIGKILL its sshd, every session it forked and every
    command those sessions run, then let SshdFleet reap its listener. (sshd puts each
    session in a session of its own (setsid), so killing the listener's process group
    alone would leave established connections working.)"""
    _sigkill(node_processes(fleet, [name]))
    fleet.kill(name)
    deadline = time.monotonic() + 5
    while node_processes(fleet, [name]):
        assert time.monotonic() < deadline, describe(node_processes(fleet, [name]))
        time.sleep(0.05)


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def sshd_fleet(tmp_path: Path) -> Iterator[Callable[..., SshdFleet]]:
    """Factory: `sshd_fleet(names, root=None)` starts one real sshd per node under
    tmp_path (or `root`). At teardown every fleet is stopped and none of its processes
    may survive (sessions get a grace period to end after their clients hung up)."""
    fleets: list[SshdFleet] = []

    def start(names: list[str], root: Path | None = None) -> SshdFleet:
        fleet = SshdFleet(root or tmp_path / f"sshd-{len(fleets)}", list(names))
        fleets.append(fleet)
        return fleet.start()

    yield start

    survivors: dict[str, list[str]] = {}
    for fleet in fleets:
        fleet.stop()
        deadline = time.monotonic() + SURVIVOR_GRACE_S
        while (left := fleet_processes(fleet)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            survivors[str(fleet.root)] = describe(left)
            _sigkill(left)  # never leak them into the next test, but still fail this one
    assert not survivors, f"sshd fleet processes survived teardown: {survivors}"
