"""The probe over real sshd nodes: ONE command per node sees disk, GPU (unknown stays
unknown), running jobs, terminal sessions, and every game and Elo DB with its WAL."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from resources.transport.base import ExecResult, NodeProbe
from resources.transport.ssh import SshTransport
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.fleet.inventory import Node

pytestmark = pytest.mark.cluster


class CountingSsh(SshTransport):
    """Counts the commands sent to nodes."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(connect_timeout=5, workdir=workdir)
        self.commands = 0

    def _run(
        self, node: Node, command: str, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:  # type: ignore[override]
        self.commands += 1
        return super()._run(node, command, stdin, timeout)


def by_path(probe: NodeProbe) -> dict[str, tuple[int, int, int | None, int | None]]:
    return {
        d.db.path: (
            d.db.size,
            d.db.mtime_ns,
            *((d.wal.size, d.wal.mtime_ns) if d.wal else (None, None)),
        )
        for d in probe.databases
    }


def stat_of(root: Path, rel: str) -> tuple[int, int, int | None, int | None]:
    """Oracle: the DB's and its WAL's size and mtime, read here."""
    db, wal = root / rel, root / f"{rel}-wal"
    w = wal.stat() if wal.exists() else None
    return (
        db.stat().st_size,
        db.stat().st_mtime_ns,
        w.st_size if w else None,
        w.st_mtime_ns if w else None,
    )


def test_one_command_sees_fresh_dbs_jobs_sessions_and_unknown_gpu(
    tmp_path: Path, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    sshd = sshd_fleet(["gpu-1", "gpu-2"])
    a, b = (Node(roles=["selfplay"], ephemeral=True, **entry) for entry in sshd.inventory_nodes())  # type: ignore[arg-type]
    root = Path(a.data_root)
    (root / "games").mkdir()
    (root / "elo").mkdir()
    live = sqlite3.connect(root / "games" / "selfplay.db")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("CREATE TABLE games (game_id TEXT PRIMARY KEY)")
    live.commit()
    sqlite3.connect(root / "elo" / "unified_elo.db").close()
    t = CountingSsh(tmp_path / "ssh")
    sleeper = None
    shell = None
    try:
        first = t.probe(a)
        assert first.reachable and first.error is None, first.error
        assert t.commands == 1  # everything from one command
        assert first.disk_total_bytes and first.disk_free_bytes is not None
        if shutil.which("nvidia-smi") is None:
            assert first.gpu_util_percent is None  # no nvidia-smi: unknown, never 0
        assert first.jobs == 0 and first.sessions == 0
        seen = by_path(first)
        assert seen == {p: stat_of(root, p) for p in ("games/selfplay.db", "elo/unified_elo.db")}

        # Games written since: the probe sees the DB change (in its WAL).
        time.sleep(0.01)
        live.executemany("INSERT INTO games VALUES (?)", [(f"g{i}",) for i in range(200)])
        live.commit()
        # A self-play job working in the data root; someone logged in with a terminal.
        sleeper = subprocess.Popen(
            [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
            cwd=root / "games",
            stdout=subprocess.PIPE,
        )
        assert sleeper.stdout is not None and sleeper.stdout.readline() == b"up\n"
        shell = paramiko.SSHClient()
        shell.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the test's own login
        shell.connect(
            a.host or "",
            port=a.port,
            username=a.user,
            key_filename=a.key,
            allow_agent=False,
            look_for_keys=False,
        )
        channel = shell.invoke_shell()  # a pty: `sshd: USER@pts/N`
        deadline = time.monotonic() + 10
        while True:
            second = t.probe(a)
            if second.sessions or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert second.reachable and t.commands >= 2
        assert second.sessions == 1 and second.jobs == 1
        after = by_path(second)["games/selfplay.db"]
        assert after == stat_of(root, "games/selfplay.db")
        assert after != seen["games/selfplay.db"] and (after[2] or 0) > (
            seen["games/selfplay.db"][2] or 0
        )
        # The other node: its own sshd, its own data root: no session, no job there.
        other = t.probe(b)
        assert other.reachable and other.sessions == 0 and other.jobs == 0 and other.databases == ()
        channel.close()
    finally:
        live.close()
        if shell is not None:
            shell.close()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        t.close()

    # A node that is gone: unreachable, nothing seen, nothing made up.
    sshd.kill("gpu-2")
    gone = SshTransport(connect_timeout=3, workdir=tmp_path / "ssh2")
    try:
        missed = gone.probe(b)
    finally:
        gone.close()
    assert not missed.reachable and "gpu-2" in (missed.error or "")
    assert missed.jobs is None and missed.sessions is None and missed.databases == ()
