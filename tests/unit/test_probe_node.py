"""The probe program (`node_probe`), the local transport's probe, and the catalog's probe
history: what one command sees on a node, and how it is kept."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import resources.catalog as catalog_module
from resources.catalog import PROBE_HISTORY_S, Catalog
from resources.transport import node_probe
from resources.transport.base import LiveDb, NodeProbe, RemoteFile
from resources.transport.local import LocalTransport
from sync_assets.fleet.inventory import Node

SLEEPER = "import sys, time; sys.stdout.write('up'); sys.stdout.flush(); time.sleep(60)"


def local_node(root: Path, name: str = "gpu-1") -> Node:
    root.mkdir(parents=True, exist_ok=True)
    return Node(name=name, transport="local", roles=["selfplay"], data_root=str(root))


def wal_db(path: Path, rows: int) -> sqlite3.Connection:
    """A game-like DB in WAL mode, its writes left in the WAL (the connection stays open)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS games (game_id TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO games VALUES (?)", [(f"g{i}",) for i in range(rows)])
    conn.commit()
    return conn


def expected_databases(root: Path) -> list[list[object]]:
    """Oracle: each regular `*.db` directly in games/ or elo/, with its -wal when present."""
    found: list[list[object]] = []
    for directory in ("games", "elo"):
        for path in sorted((root / directory).glob("*.db")):
            if not path.is_file() or path.is_symlink() and not path.resolve().is_file():
                continue
            wal = Path(f"{path}-wal")
            st = path.stat()
            wal_seen = (
                [wal.stat().st_size, wal.stat().st_mtime_ns] if wal.exists() else [None, None]
            )
            found.append([f"{directory}/{path.name}", st.st_size, st.st_mtime_ns, *wal_seen])
    return found


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def start(sleepers: list[subprocess.Popen[bytes]], cwd: Path, code: str = SLEEPER) -> None:
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.read(2) == b"up"  # it is running now
    sleepers.append(proc)


def test_databases_are_the_game_and_elo_dbs_with_their_wal(tmp_path: Path) -> None:
    root = tmp_path / "node"
    live = wal_db(root / "games" / "selfplay.db", 50)
    wal_db(root / "games" / "tournament_hex8_2p.db", 3).close()
    wal_db(root / "elo" / "unified_elo.db", 4).close()
    (root / "games" / "notes.txt").write_text("not a DB")
    (root / "games" / "collected" / "gpu-2").mkdir(parents=True)
    (root / "games" / "collected" / "gpu-2" / "selfplay.abc.db").write_bytes(b"x")  # not direct
    (root / "games" / "dir.db").mkdir()  # a directory is no DB
    (root / "training").mkdir()
    (root / "training" / "x.db").write_bytes(b"x")  # not games/ or elo/
    try:
        seen = node_probe.databases(str(root))
        assert seen == expected_databases(root)
        by_path = {row[0]: row for row in seen}
        assert set(by_path) == {
            "games/selfplay.db",
            "games/tournament_hex8_2p.db",
            "elo/unified_elo.db",
        }
        assert by_path["games/selfplay.db"][3] > 0  # its writes are in the WAL, seen
        before = by_path["games/selfplay.db"]
        live.executemany("INSERT INTO games VALUES (?)", [(f"h{i}",) for i in range(50)])
        live.commit()
        after = {row[0]: row for row in node_probe.databases(str(root))}["games/selfplay.db"]
        assert after[3] > before[3] and after[4] >= before[4]  # the WAL grew: a change seen
    finally:
        live.close()


def test_jobs_are_processes_working_in_the_data_root(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    root, elsewhere = tmp_path / "node", tmp_path / "elsewhere"
    (root / "games").mkdir(parents=True)
    elsewhere.mkdir()
    assert node_probe.jobs(os.path.realpath(root)) == 0
    start(sleepers, root / "games")  # working inside the data root
    start(sleepers, elsewhere)  # not
    db = root / "games" / "selfplay.db"
    holder = f"f = open({str(db)!r}, 'ab'); " + SLEEPER  # elsewhere, but holding a DB open
    start(sleepers, elsewhere, holder)
    assert node_probe.jobs(os.path.realpath(root)) == 2
    assert node_probe.jobs(os.path.realpath(elsewhere)) == 2  # both work there


def test_unknown_gpu_and_no_sshd_stay_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_probe, "GPU_QUERY", ["/nonexistent/nvidia-smi"])
    assert node_probe.gpu_util_percent() is None
    # A tool that runs but does not say a number: unknown, never 0.
    monkeypatch.setattr(node_probe, "GPU_QUERY", [sys.executable, "-c", "print('[N/A]')"])
    assert node_probe.gpu_util_percent() is None
    monkeypatch.setattr(node_probe, "GPU_QUERY", [sys.executable, "-c", "print('30\\n50')"])
    assert node_probe.gpu_util_percent() == 40.0
    # This test did not come through sshd: sessions are unknown, not 0.
    assert node_probe.terminal_sessions() is None


def test_local_probe_sees_the_same_facts_and_leaves_host_facts_unknown(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    node = local_node(tmp_path / "gpu-1")
    wal_db(Path(node.data_root) / "games" / "selfplay.db", 5).close()
    start(sleepers, Path(node.data_root))
    probe = LocalTransport().probe(node)
    assert probe.reachable and probe.error is None
    assert probe.gpu_util_percent is None and probe.sessions is None  # a directory's: unknown
    assert probe.jobs == 1
    assert probe.disk_total_bytes and probe.disk_free_bytes is not None
    expected = expected_databases(Path(node.data_root))
    assert [
        [
            d.db.path,
            d.db.size,
            d.db.mtime_ns,
            *((d.wal.size, d.wal.mtime_ns) if d.wal else (None, None)),
        ]
        for d in probe.databases
    ] == expected
    gone = LocalTransport().probe(
        local_node(tmp_path / "x").model_copy(update={"data_root": str(tmp_path / "none")})
    )
    assert not gone.reachable and gone.jobs is None and gone.databases == ()


def test_node_probe_seen_reads_the_program_output() -> None:
    seen = [["games/a.db", 10, 5, None, None], ["elo/unified_elo.db", 7, 8, 3, 9]]
    facts = {
        "disk_total_bytes": 100, "disk_free_bytes": 40, "gpu_util_percent": None, "jobs": 2,
        "sessions": 0, "databases": seen,
    }  # fmt: skip
    elo, wal = RemoteFile("elo/unified_elo.db", 7, 8), RemoteFile("elo/unified_elo.db-wal", 3, 9)
    dbs = (LiveDb(RemoteFile("games/a.db", 10, 5), None), LiveDb(elo, wal))
    assert NodeProbe.seen(facts) == NodeProbe(True, 100, 40, None, None, 2, 0, dbs)


def test_record_probe_keeps_history_prunes_it_and_the_last_dbs_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    clock = [1_000_000.0]
    monkeypatch.setattr(catalog_module, "_now", lambda: clock[0])
    first = (
        LiveDb(RemoteFile("games/selfplay.db", 10, 5), RemoteFile("games/selfplay.db-wal", 3, 6)),
    )
    catalog.record_probe("gpu-1", NodeProbe(True, 100, 40, 12.5, None, 3, 1, first))
    catalog.record_probe("gpu-2", NodeProbe(True, 100, 50))
    clock[0] += 60
    catalog.record_probe("gpu-1", NodeProbe(False, error="node gpu-1: timed out"))
    history = catalog.probe_history_frame("gpu-1")
    columns = history[["at", "reachable", "jobs", "sessions", "error"]]
    assert columns.astype(object).where(columns.notna(), None).values.tolist() == [
        [1_000_000.0, True, 3, 1, None],
        [1_000_060.0, False, None, None, "node gpu-1: timed out"],
    ]
    assert history["gpu_util_percent"].iloc[0] == 12.5
    assert len(catalog.probe_history_frame()) == 3
    assert len(catalog.probe_history_frame(since=1_000_030.0)) == 1
    # `probes` is still the latest.
    assert catalog.unreachable_nodes() == frozenset({"gpu-1"})
    assert catalog.disk_space(["gpu-1", "gpu-2"]) == {"gpu-1": (None, None), "gpu-2": (100, 50)}
    # A missed probe keeps the DBs the last answer saw; the join shows the last snapshot.
    catalog.set_source_state("gpu-1", "games/selfplay.db", "10:5:3:6", "ab" * 32)
    rows = catalog.probed_databases(["gpu-1", "gpu-2"])
    assert [tuple(r) for r in rows] == [
        (
            "gpu-1",
            "games/selfplay.db",
            "games",
            10,
            5,
            3,
            6,
            1_000_000.0,
            False,
            "10:5:3:6",
            1_000_060.0,
        )
    ]
    # The next answer replaces them; history older than PROBE_HISTORY_S is pruned.
    clock[0] += PROBE_HISTORY_S + 1
    later = (LiveDb(RemoteFile("elo/unified_elo.db", 7, 8), None),)
    catalog.record_probe("gpu-1", NodeProbe(True, 100, 30, None, None, 0, 0, later))
    assert catalog.probe_history_frame("gpu-1")["at"].tolist() == [clock[0]]
    assert len(catalog.probe_history_frame("gpu-2")) == 1  # pruned per node, at its probe
    rows = catalog.probed_databases(["gpu-1"])
    assert [(r.path, r.wal_size, r.collected_fingerprint) for r in rows] == [
        ("elo/unified_elo.db", None, None)
    ]
    # Nanosecond mtimes stay exact (rows, never floats).
    big = (LiveDb(RemoteFile("games/a.db", 1, 1_795_983_977_155_471_546), None),)
    catalog.record_probe("gpu-2", NodeProbe(True, databases=big))
    assert catalog.probed_databases(["gpu-2"])[0].mtime_ns == 1_795_983_977_155_471_546
