"""Has a live DB changed since it was last collected? What a probe saw of it against the
last snapshot taken of it (`sources`), both in the collectors' fingerprint form."""

from __future__ import annotations

from resources.transport.base import RemoteFile
from sync_assets.engine.live_db import fingerprint


def seen_fingerprint(
    size: int, mtime_ns: int, wal_size: int | None, wal_mtime_ns: int | None
) -> str:
    """A probed DB's fingerprint, in the form the collectors record (`live_db.fingerprint`)."""
    wal = (
        None if wal_size is None or wal_mtime_ns is None else RemoteFile("", wal_size, wal_mtime_ns)
    )
    return fingerprint(RemoteFile("", size, mtime_ns), wal)


def is_fresh(seen: str, seen_at: float, collected: str | None, collected_at: float | None) -> bool:
    """The DB holds data no snapshot has: never snapshotted, or the probe saw it, after its
    last snapshot, in another state than that snapshot's. (A probe older than the snapshot
    says nothing new: the snapshot already took what it saw, or more.)"""
    if collected is None or collected_at is None:
        return True
    return seen != collected and seen_at > collected_at
