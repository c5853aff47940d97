"""Re-hash a scrub's files on the node, in one command (`engine/scrub.py` ships it, with
`fleet/node_program.py`):

    scrub_hash.py    payload {"paths": [...], "timeout_s": T}  → {"files": [...]}

One reply per path, in order: `{"path", "size", "mtime_ns", "sha256"}` when hashed;
`{"path", "missing": true}` when there is no regular file there; `{"path", "changed":
true}` when its size, mtime or inode moved while it was read (a writer, not bit rot);
`{"path", "error": why}` when it could not be read, or not within T seconds (a hash
error is never a mismatch). Paths are relative to the data root, the working directory.
Standard library only, Python >= 3.8.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from typing import Any

from sync_assets.fleet.node_program import reply, sha256_file, stdin_payload


class HashTimeout(Exception):
    """A file took longer than its budget (a hung disk must not hold the whole scrub)."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise HashTimeout


def hash_file(path: str, timeout_s: float) -> dict[str, Any]:
    """What the scrub learns about one file (see the module's docstring)."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return {"path": path, "missing": True}
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    if not stat.S_ISREG(before.st_mode):
        return {"path": path, "missing": True}
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        digest = sha256_file(path)
        after = os.stat(path)
    except HashTimeout:
        return {"path": path, "error": f"not hashed within {timeout_s:g} s"}
    except FileNotFoundError:
        return {"path": path, "missing": True}
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seen = (before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev)
    if seen != (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev):
        return {"path": path, "changed": True}
    return {"path": path, "size": after.st_size, "mtime_ns": after.st_mtime_ns, "sha256": digest}


def hash_files(body: dict[str, Any]) -> dict[str, Any]:
    signal.signal(signal.SIGALRM, _on_alarm)
    timeout_s = float(body["timeout_s"])
    return {"files": [hash_file(str(path), timeout_s) for path in body["paths"]]}


def main(payload: bytes) -> int:
    return reply(lambda: hash_files(json.loads(payload)), (ValueError, KeyError, TypeError))


if __name__ == "__main__":
    sys.exit(main(payload=stdin_payload()))
