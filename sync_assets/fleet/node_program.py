"""What the Elo programs shipped to nodes share (`elo/matches.py`, `elo/ratings_db.py`):
their reply on stdout, the payload after them on stdin, a file's SHA-256 and a read-only
SQLite URI. Shipped with them as a bundle helper (resources/transport/programs.py):
standard library only, Python >= 3.8.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any


def reply(run: Callable[[], Any], errors: tuple[type[Exception], ...]) -> int:
    """Print what `run()` returns as JSON, exit status 0; on one of `errors`,
    `{"error": why}` and exit status 2."""
    try:
        result = run()
    except errors as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(result))
    return 0


def stdin_payload() -> bytes:
    """The runner's JSON payload, which follows the program on stdin (none at a terminal)."""
    return sys.stdin.buffer.read() if not sys.stdin.isatty() else b""


def sha256_file(path: str) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ro_uri(path: str) -> str:
    """Read-only SQLite URI of `path`: a mistyped path fails instead of creating a DB."""
    return "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
