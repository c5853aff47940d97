"""Consistent single-file snapshot of a live (WAL) SQLite DB. Standard library only.

Runs in-process for local nodes and on the node itself for SSH nodes
(`sqlite_snapshot.py SOURCE STAGING FINAL`, shipped by `programs.py`), so the bytes of a
live DB never cross the network unsnapshotted (DATA.md: never copy a `.db` alone
while writers run).

Reads through the backup API on a read-only connection, so the source's WAL is
never checkpointed or deleted and writers keep going. SQLite may create an empty
`-wal`/`-shm` beside a quiescent WAL DB to take its read lock; the `.db` itself is
never modified.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from urllib.parse import quote

QUICK_CHECK_ABOVE_BYTES = 100 * 1024 * 1024
"""DATA.md: `quick_check` above ~100 MB (integrity_check is O(n log n) on 50 GB DBs)."""
SQLITE_BUSY_TIMEOUT_S = 30.0


class SnapshotError(Exception):
    """The step that failed, and why."""


def integrity_problems(conn: sqlite3.Connection, size: int) -> list[str]:
    """[] when the DB is sound: `quick_check` above ~100 MB, `integrity_check` below."""
    check = "quick_check" if size > QUICK_CHECK_ABOVE_BYTES else "integrity_check"
    problems = [row[0] for row in conn.execute(f"PRAGMA {check}")]
    return [] if problems == ["ok"] else problems


def check_file(path: str) -> list[str]:
    """Integrity problems of a DB file at rest (opened read-only, never modified)."""
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
        try:
            return integrity_problems(conn, os.path.getsize(path))
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as exc:
        return [str(exc)]


def snapshot(source: str, staging: str, final: str) -> int:
    """Back up `source` into `staging`, check it, publish it as `final`; returns its size.

    `staging` must be in `final`'s directory so the rename is atomic."""
    step = "open source"
    try:
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        src = sqlite3.connect(
            f"file:{quote(source)}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S
        )
        try:
            dst = sqlite3.connect(staging, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
            try:
                step = "backup"
                src.backup(dst)  # one step: one read transaction, consistent
                step = "journal_mode=DELETE"
                (mode,) = dst.execute("PRAGMA journal_mode=DELETE").fetchone()
                if mode != "delete":
                    raise sqlite3.DatabaseError(f"journal_mode stayed {mode!r}")
                step = "integrity check"
                problems = integrity_problems(dst, os.path.getsize(staging))
                if problems:
                    raise sqlite3.DatabaseError(" ".join("; ".join(problems).split())[:500])
            finally:
                dst.close()
        finally:
            src.close()
        step = "publish"
        with open(staging, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staging, final)
        fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise SnapshotError(f"{step}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return os.path.getsize(final)


def main(argv: list[str]) -> int:
    """CLI for remote use. `SOURCE STAGING FINAL`: prints {"size": N} or {"error": "step:
    why"}; `check PATH`: prints {"problems": [...]}. Exit 0 when all is well, else 1."""
    if argv[0] == "check":
        problems = check_file(argv[1])
        print(json.dumps({"problems": problems}))
        return 1 if problems else 0
    source, staging, final = argv
    try:
        size = snapshot(source, staging, final)
    except SnapshotError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"size": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
