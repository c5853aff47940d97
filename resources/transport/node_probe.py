"""Everything a probe sees on a node, in one pass: one command per node. Standard library
only: it runs in-process for local nodes and is shipped to SSH nodes (`node_probe.py`, by
`programs.py`), where it prints one JSON object. Unknown is null, never 0.

- disk: total and free bytes of the file system holding the data root.
- gpu_util_percent: mean utilisation over the GPUs `nvidia-smi` lists; null without
  `nvidia-smi` or when it fails (a node whose GPUs cannot be read is not idle).
- jobs: running jobs, by one rule: a process whose working directory or an open file lies
  in the data root (self-play writing a game DB, an evaluation writing the Elo DB, a
  trainer holding a shard open, a copy in progress), the probe itself and its ancestors
  left out. Processes the probe's user may not inspect are not seen: run it as the user
  that runs the jobs, or root. Null without a readable /proc.
- sessions: SSH sessions with a terminal (`sshd: USER@pts/N`: someone logged in) served by
  the sshd the probe came through. fleetsync never asks for a terminal, so none of them is
  its own. Null when the probe did not come through sshd (a local node) or /proc cannot
  be read.
- databases: `[path, size, mtime_ns, wal_size, wal_mtime_ns]` for every `games/*.db` and
  `elo/*.db` (DATA.md), wal_* null without a `-wal` file beside it. A DB in WAL mode is
  written in its WAL first: the WAL's size and mtime are part of what changed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from typing import Any

DATABASE_DIRS = ("games", "elo")
GPU_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
GPU_TIMEOUT_S = 20
PROC = "/proc"


def probe(data_root: str, *, host: bool = True) -> dict[str, Any]:
    """What the node holding `data_root` looks like now. `host=False` (a local node, a
    directory on the orchestrator's host): the host's GPUs and SSH sessions are not the
    node's, they stay unknown."""
    root = os.path.realpath(data_root)
    usage = os.statvfs(root)
    return {
        "disk_total_bytes": usage.f_blocks * usage.f_frsize,
        "disk_free_bytes": usage.f_bavail * usage.f_frsize,
        "gpu_util_percent": gpu_util_percent() if host else None,
        "jobs": jobs(root),
        "sessions": terminal_sessions() if host else None,
        "databases": databases(root),
    }


def gpu_util_percent() -> float | None:
    try:
        done = subprocess.run(GPU_QUERY, capture_output=True, text=True, timeout=GPU_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        utils = [float(line) for line in done.stdout.split()]
    except ValueError:
        return None  # "[N/A]" and the like: not a number, so not known
    return sum(utils) / len(utils) if utils else None


def _parent(pid: int) -> int | None:
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name in parentheses may hold anything: fields follow the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _ancestry(pid: int) -> list[int]:
    """pid, its parent, ..., up to init."""
    chain = [pid]
    while (parent := _parent(chain[-1])) and parent not in chain:
        chain.append(parent)
    return chain


def _pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _works_in(pid: int, root: str) -> bool:
    base = f"{PROC}/{pid}"
    try:
        if _within(os.readlink(f"{base}/cwd"), root):
            return True
        for fd in os.listdir(f"{base}/fd"):
            try:
                if _within(os.readlink(f"{base}/fd/{fd}"), root):
                    return True
            except OSError:
                continue  # closed while we looked
    except OSError:
        return False  # gone, or not ours to inspect
    return False


def jobs(root: str) -> int | None:
    try:
        own = set(_ancestry(os.getpid()))
        return sum(1 for pid in _pids() if pid not in own and _works_in(pid, root))
    except OSError:
        return None


def _read(pid: int, name: str) -> str:
    try:
        with open(f"{PROC}/{pid}/{name}", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _is_sshd(pid: int) -> bool:
    return _read(pid, "comm").startswith("sshd")


def terminal_sessions() -> int | None:
    try:
        chain = _ancestry(os.getpid())
        sshd = [pid for pid in chain if _is_sshd(pid)]
        if not sshd:
            return None
        listener = sshd[-1]  # the topmost sshd: the one listening for this node
        count = 0
        for pid in _pids():
            if pid in chain or not _is_sshd(pid) or "@pts/" not in _read(pid, "cmdline"):
                continue
            if listener in _ancestry(pid):
                count += 1
        return count
    except OSError:
        return None


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def databases(root: str) -> list[list[Any]]:
    found = []
    for directory in DATABASE_DIRS:
        try:
            names = sorted(os.listdir(os.path.join(root, directory)))
        except OSError:
            continue  # no such directory on this node
        for name in names:
            if not name.endswith(".db"):
                continue
            path = f"{directory}/{name}"
            db = _stat(os.path.join(root, path))
            if db is None or not stat.S_ISREG(db.st_mode):
                continue
            wal = _stat(os.path.join(root, f"{path}-wal"))
            wal_seen = (wal.st_size, wal.st_mtime_ns) if wal else (None, None)
            found.append([path, db.st_size, db.st_mtime_ns, *wal_seen])
    return found


if __name__ == "__main__":
    # Shipped: run in the data root (the transport's exec changes there first).
    json.dump(probe(os.getcwd()), sys.stdout)
