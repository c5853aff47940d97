"""LocalTransport and path rules: atomic publish, verification, live snapshots, hostile names."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from resources.transport.base import ChecksumMismatch, TransferError
from resources.transport.local import LocalTransport, sha256_file
from resources.transport.paths import (
    STAGING_PREFIX,
    UnsafePathError,
    _checked_relpath,
    is_ignored,
    is_plain_relpath,
    safe_relpath,
    staging_name,
)
from sync_assets.fleet.inventory import Node

T = LocalTransport()


def make_node(tmp_path: Path, name: str, bandwidth_mbps: float | None = None) -> Node:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return Node(
        name=name,
        transport="local",
        roles=["storage"],
        data_root=str(root),
        bandwidth_mbps=bandwidth_mbps,
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def staging_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(STAGING_PREFIX)]


# ---- path rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("games/selfplay.db", "games/selfplay.db"),
        ("./games/./selfplay.db", "games/selfplay.db"),
        ("games//selfplay.db/", "games/selfplay.db"),
        ("a..b", "a..b"),
        ("...", "..."),
        ("..hidden/x", "..hidden/x"),
        ("with space.db", "with space.db"),
        ("$(touch pwned).db", "$(touch pwned).db"),
        ('it\'s "quoted".db', 'it\'s "quoted".db'),
        ("ünïcode.db", "ünïcode.db"),
    ],
)
def test_safe_relpath_accepts(raw: str, normalised: str) -> None:
    assert safe_relpath(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "./",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a/..",
        "..",
        "a\\b",
        "..\\x",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\x00b",
        "a\x7fb",
        "a\x85b",
        "bad\udcff.db",
    ],
)
def test_safe_relpath_rejects(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(raw)


def test_safe_relpath_fast_path_accepts_only_what_the_full_checks_return_unchanged() -> None:
    """The regex shortcut for plain names must never let through what the full checks
    refuse or would rewrite: compared on 20,000 random paths over a hostile alphabet."""
    rng = random.Random(7)
    alphabet = ["a", "Z", "0", "_", "-", ".", "/", " ", "\\", "\n", "\x00", "é", "$", "@", "%"]
    shortcut = 0
    for _ in range(20_000):
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if not is_plain_relpath(path):
            continue
        shortcut += 1
        assert _checked_relpath(path) == path, path
    assert shortcut > 500  # the alphabet exercises the shortcut, not only the slow path


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("x.tmp", True),
        ("games/selfplay.db.partial", True),
        (".rsync-partial/models/a.pth", True),
        ("games/.rsync-partial/selfplay.db", True),
        ("elo/unified_elo.db.lock", True),
        ("models/candidate_hex8_3p.pth.9f290FDf", True),
        ("models/.candidate_hex8_3p.pth.Ab12cd", True),
        ("training/hex8_2p.npz.q1W2e3R", True),
        ("games/selfplay.db-wal", True),
        ("games/selfplay.db-shm", True),
        ("games/selfplay.db-journal", True),
        ("models/.fleetsync-tmp-canonical_hex8_2p.pth.0123456789ab", True),
        ("games/selfplay.db", False),
        ("models/canonical_hex8_2p.pth", False),
        ("models/canonical_hex8_2p.pth.sha256", False),
        ("models/ringrift_best_hex8_2p.pth", False),
        ("training/hex8_2p.npz", False),
        ("models/a.pth.abc12", False),  # 5 chars: not an upload suffix
        ("models/a.pth.abcdefghi", False),  # 9 chars
        ("notes.txt.9f290FDf", False),  # unknown extension
        ("rsync-partial/x.db", False),
    ],
)
def test_is_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


def test_staging_name_same_directory_unique_and_ignored() -> None:
    a, b = (
        staging_name("./models/canonical_hex8_2p.pth"),
        staging_name("models/canonical_hex8_2p.pth"),
    )
    assert a != b
    for staged in (a, b):
        assert staged.startswith(f"models/{STAGING_PREFIX}canonical_hex8_2p.pth")
        assert is_ignored(staged)
    assert "/" not in staging_name("top.db")
    long_name = "é" * 200 + ".npz"
    assert len(staging_name(long_name).encode()) <= 255
    with pytest.raises(UnsafePathError):
        staging_name("../escape.db")


# ---- listing ------------------------------------------------------------------------


def test_listing_leaves_out_temp_files(tmp_path: Path) -> None:
    node = make_node(tmp_path, "a")
    root = Path(node.data_root)
    real = [
        "games/selfplay.db",
        "models/canonical_hex8_2p.pth",
        "models/canonical_hex8_2p.pth.sha256",
    ]
    junk = [
        "games/selfplay.db-wal",
        "games/selfplay.db-shm",
        "games/x.tmp",
        "training/hex8_2p.npz.partial",
        ".rsync-partial/models/x.pth",
        "elo/unified_elo.db.lock",
        "models/candidate_hex8_3p.pth.9f290FDf",
        staging_name("models/canonical_hex8_2p.pth"),
    ]
    for i, rel in enumerate(real + junk):
        write(root / rel, b"x" * (i + 1))
    listing = T.list(node, "")
    assert [f.path for f in listing.files] == sorted(real)
    assert listing.rejected == []
    assert listing.files[0].size == (root / listing.files[0].path).stat().st_size
    assert [f.path for f in T.list(node, "./models").files] == sorted(real[1:])
    assert T.list(node, "elo/nothing-here").files == []


def test_hostile_names_are_rejected_or_listed_and_never_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    node, other = make_node(tmp_path, "a"), make_node(tmp_path, "b")
    root = Path(node.data_root)
    safe = [
        "games/with space.db",
        "games/it's.db",
        'games/dq"uote.db',
        "games/$(touch pwned).db",
        "games/`touch pwned`.db",
        "games/a..b.db",
        "games/...",
        "games/-rf",
        "games/ok; touch pwned",
    ]
    unsafe = ["games/new\nline.db", "games/tab\there.db", "games/del\x7f.db", "games/evil\ndir"]
    for rel in safe + unsafe[:3]:
        write(root / rel, rel.encode())
    write(root / unsafe[3] / "inside.db", b"hidden below an unsafe directory")
    os.mkdir(os.fsencode(root / "games") + b"/bad\xff.db")  # not valid UTF-8
    outside = write(tmp_path / "outside" / "secret.db", b"secret")
    (root / "games" / "escape.db").symlink_to(outside)
    (root / "games" / "escape_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "games" / "dangling.db").symlink_to(root / "nowhere")
    (root / "models").mkdir()
    write(root / "models" / "canonical_hex8_2p.pth", b"weights")
    (root / "models" / "ringrift_best_hex8_2p.pth").symlink_to("canonical_hex8_2p.pth")
    os.mkfifo(root / "games" / "fifo.db")

    listing = T.list(node, "")

    listed = {f.path for f in listing.files}
    assert listed == set(safe) | {
        "models/canonical_hex8_2p.pth",
        "models/ringrift_best_hex8_2p.pth",
    }
    assert set(listing.rejected) == set(unsafe) | {
        "games/bad\udcff.db",
        "games/escape.db",
        "games/escape_dir",
        "games/dangling.db",
        "games/fifo.db",
    }
    for rel in safe:  # safe names survive reading, hashing and copying verbatim
        digest = T.sha256(node, rel)
        assert T.copy_between(node, rel, other, rel, digest).bytes_moved == len(rel.encode())
        assert (Path(other.data_root) / rel).read_bytes() == rel.encode()
    echoed = T.exec(node, [sys.executable, "-c", "import sys; print(sys.argv[1])", safe[3]])
    assert echoed.stdout.decode().strip() == safe[3]
    for escape in ("games/escape.db", "games/escape_dir/secret.db"):
        with pytest.raises(UnsafePathError, match="outside the data root"):
            T.stat(node, escape)
    with pytest.raises(UnsafePathError, match="'a'"):
        T.remove(node, "../outside/secret.db")
    T.remove(node, "games/escape.db")  # removes the link, never its target
    assert outside.read_bytes() == b"secret"
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*"))


# ---- copies -------------------------------------------------------------------------


def _copy_in_child(src: Node, dst: Node, rel: str, digest: str) -> None:
    LocalTransport().copy_between(src, rel, dst, rel, digest)


def test_killed_copy_never_appears_under_final_name(tmp_path: Path) -> None:
    rel = "models/canonical_hex8_2p.pth"
    payload = os.urandom(2 << 20)
    digest = hashlib.sha256(payload).hexdigest()
    slow_src, slow_dst = make_node(tmp_path, "a"), make_node(tmp_path, "b", bandwidth_mbps=4)
    write(Path(slow_src.data_root) / rel, payload)
    final = Path(slow_dst.data_root) / rel

    child = multiprocessing.get_context("fork").Process(
        target=_copy_in_child, args=(slow_src, slow_dst, rel, digest)
    )
    child.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if final.parent.is_dir() and any(p.stat().st_size for p in staging_files(final.parent)):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the throttled copy never started writing")
    finally:
        child.kill()
        child.join()
    assert child.exitcode == -9
    assert not final.exists()
    (junk,) = staging_files(final.parent)
    assert 0 < junk.stat().st_size < len(payload)
    assert T.list(slow_dst, "").files == []

    fast_src, fast_dst = make_node(tmp_path, "a"), make_node(tmp_path, "b")
    result = T.copy_between(fast_src, rel, fast_dst, rel, digest)
    assert (result.bytes_moved, result.size, result.sha256) == (len(payload), len(payload), digest)
    assert sha256_file(final) == digest
    assert [f.path for f in T.list(fast_dst, "").files] == [rel]
    assert T.copy_between(fast_src, rel, fast_dst, rel, digest).bytes_moved == 0


def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    src, dst = make_node(tmp_path, "src"), make_node(tmp_path, "dst")
    write(Path(src.data_root) / "training/hex8_2p.npz", b"shard bytes")
    with pytest.raises(ChecksumMismatch) as err:
        T.copy_between(src, "training/hex8_2p.npz", dst, "training/hex8_2p.npz", "0" * 64)
    for part in ("src", "dst", "training/hex8_2p.npz", "verify"):
        assert part in str(err.value)
    target_dir = Path(dst.data_root) / "training"
    assert list(target_dir.iterdir()) == []


def test_copy_skips_identical_target_and_replaces_different_one(tmp_path: Path) -> None:
    src, dst = make_node(tmp_path, "src"), make_node(tmp_path, "dst")
    digest = sha256_file(write(Path(src.data_root) / "m.pth", b"new weights"))
    target = write(Path(dst.data_root) / "m.pth", b"old weights")  # same size, other bytes
    assert T.copy_between(src, "m.pth", dst, "m.pth", digest).bytes_moved == len(b"new weights")
    assert target.read_bytes() == b"new weights"
    assert T.copy_between(src, "m.pth", dst, "m.pth", digest.upper()).bytes_moved == 0
    with pytest.raises(TransferError, match="'src'.*'gone.pth'.*stat source"):
        T.copy_between(src, "gone.pth", dst, "gone.pth", digest)


def test_copy_is_throttled_to_the_slower_node(tmp_path: Path) -> None:
    src, dst = make_node(tmp_path, "src", bandwidth_mbps=80), make_node(tmp_path, "dst", 8)
    digest = sha256_file(write(Path(src.data_root) / "x.npz", os.urandom(300_000)))
    result = T.copy_between(src, "x.npz", dst, "x.npz", digest)
    assert result.seconds >= 0.27  # 300 kB at 1 MB/s, not at 10 MB/s


# ---- SQLite snapshots ---------------------------------------------------------------

WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, txn INTEGER, v BLOB)")
txn = 0
while True:
    txn += 1
    db.execute("BEGIN IMMEDIATE")
    for _ in range(5):
        db.execute("INSERT INTO t(txn, v) VALUES (?, randomblob(300))", (txn,))
    db.execute("COMMIT")
    time.sleep(0.001)
"""

WAL_LEFT_BEHIND = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
for _ in range(200):
    db.execute("INSERT INTO t(v) VALUES (randomblob(300))")
if sys.argv[2] == "crash":
    os._exit(0)  # no close, no checkpoint: committed rows live only in the -wal
db.close()
"""


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)


def assert_self_contained(snapshot: Path) -> sqlite3.Connection:
    """The snapshot is a healthy rollback-journal DB with no sidecar files."""
    assert not Path(f"{snapshot}-wal").exists()
    assert snapshot.read_bytes()[18:20] == b"\x01\x01"  # header: legacy (non-WAL) format
    conn = read_only(snapshot)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return conn


@pytest.fixture
def live_writer(tmp_path: Path) -> Iterator[tuple[Node, Path, subprocess.Popen[bytes]]]:
    node = make_node(tmp_path, "gpu1")
    db = Path(node.data_root) / "games" / "selfplay.db"
    db.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not db.exists() or max_id(db) < 50:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "writer produced no rows"
            time.sleep(0.02)
        yield node, db, proc
    finally:
        proc.kill()
        proc.wait()


def max_id(db: Path) -> int:
    conn = read_only(db)
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # table not created yet
    finally:
        conn.close()


def test_snapshots_of_a_live_wal_db_are_consistent(
    live_writer: tuple[Node, Path, subprocess.Popen[bytes]],
) -> None:
    node, db, proc = live_writer
    seen: list[int] = []
    for i in range(20):
        committed = max_id(db)
        info = T.snapshot_sqlite(node, "games/selfplay.db", f"snapshots/selfplay_{i}.db")
        snap = Path(node.data_root) / info.path
        assert info.size == snap.stat().st_size
        conn = assert_self_contained(snap)
        count, top, torn = conn.execute(
            "SELECT count(*), max(id), (SELECT count(*) FROM"
            " (SELECT txn FROM t GROUP BY txn HAVING count(*) != 5)) FROM t"
        ).fetchone()
        conn.close()
        assert top >= committed and count == top, "rows committed before the snapshot are missing"
        assert torn == 0, "a snapshot caught half a transaction"
        seen.append(top)
    assert proc.poll() is None, "the writer must have been running throughout"
    assert seen[-1] > seen[0], "the writer made no progress during the snapshots"
    assert Path(f"{db}-wal").exists()
    assert not staging_files(Path(node.data_root) / "snapshots")


@pytest.mark.parametrize("how_writer_left", ["crash", "close"])
def test_snapshot_never_touches_the_source(tmp_path: Path, how_writer_left: str) -> None:
    node = make_node(tmp_path, "gpu1")
    rel = "games/self play #1?%20.db"  # the read-only URI must quote the path
    db = Path(node.data_root) / rel
    db.parent.mkdir()
    subprocess.run([sys.executable, "-c", WAL_LEFT_BEHIND, str(db), how_writer_left], check=True)
    wal = Path(f"{db}-wal")
    assert wal.exists() == (how_writer_left == "crash")  # crash: the rows are only in the WAL
    before = (db.stat().st_size, db.stat().st_mtime_ns, sha256_file(db))
    wal_before = wal.stat().st_size if wal.exists() else 0

    first = T.snapshot_sqlite(node, rel, "snap/one.db")
    second = T.snapshot_sqlite(node, rel, "snap/two.db")

    assert (db.stat().st_size, db.stat().st_mtime_ns, sha256_file(db)) == before
    assert (wal.stat().st_size if wal.exists() else 0) == wal_before
    assert T.sha256(node, first.path) == T.sha256(node, second.path)
    conn = assert_self_contained(Path(node.data_root) / first.path)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (200,)
    conn.close()


def test_corrupt_source_is_a_transfer_error(tmp_path: Path) -> None:
    node = make_node(tmp_path, "gpu1")
    root = Path(node.data_root)
    write(root / "games" / "garbage.db", b"not a database" * 500)
    damaged = root / "games" / "damaged.db"
    conn = sqlite3.connect(damaged)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t(v) VALUES (randomblob(300))", [()] * 500)
    conn.commit()
    conn.close()
    with open(damaged, "r+b") as f:
        f.seek(5 * 4096 + 100)
        f.write(b"\xff" * 2000)
    for name in ("garbage.db", "damaged.db"):
        with pytest.raises(TransferError, match=rf"'gpu1'.*'games/{name}'.*snapshot") as err:
            T.snapshot_sqlite(node, f"games/{name}", f"snap/{name}")
        assert "\n" not in str(err.value)
        assert not (root / "snap" / name).exists()
    assert not staging_files(root / "snap")
    with pytest.raises(TransferError, match="dest is the source"):
        T.snapshot_sqlite(node, "games/damaged.db", "./games/damaged.db")


# ---- node ---------------------------------------------------------------------------


GRANDCHILD_SLEEPS = "import subprocess; subprocess.run(['sleep', '30'])"
"""Holds the output pipes open: a timeout must kill the whole process group."""


def test_probe_and_exec(tmp_path: Path) -> None:
    node = make_node(tmp_path, "a")
    probe = T.probe(node)
    assert probe.reachable and probe.disk_free_bytes and probe.gpu_util_percent is None
    gone = Node(name="gone", transport="local", roles=["storage"], data_root=str(tmp_path / "x"))
    assert not T.probe(gone).reachable

    result = T.exec(
        node, [sys.executable, "-c", "import os, sys; print(os.getcwd(), sys.stdin.read())"], b"hi"
    )
    assert result.returncode == 0
    assert result.stdout.decode().split() == [os.path.realpath(node.data_root), "hi"]
    started = time.monotonic()
    with pytest.raises(TransferError, match="'a'.*exec: timed out"):
        T.exec(node, [sys.executable, "-c", GRANDCHILD_SLEEPS], timeout=0.3)
    assert time.monotonic() - started < 5
