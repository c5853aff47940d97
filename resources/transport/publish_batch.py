"""Verify and publish a batch of staged files on the target node. Standard library only.

Run on SSH nodes as `python3 -c <this source>` with a JSON list of
`[staged, final, sha256]` on stdin; prints a JSON list with one result per item.
Each file is hashed where it landed; only a match is fsynced and renamed into
place, a mismatch is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys


def publish(staged: str, final: str, expected: str) -> dict[str, object]:
    digest = hashlib.sha256()
    try:
        with open(staged, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
            os.fsync(f.fileno())
        got = digest.hexdigest()
        if got != expected:
            os.unlink(staged)
            return {
                "error": f"verify at target: sha256 {got} != expected {expected}",
                "mismatch": True,
            }
        os.makedirs(os.path.dirname(final), exist_ok=True)
        size = os.path.getsize(staged)
        os.replace(staged, final)
        fd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return {"error": f"publish: {exc}"}
    return {"size": size}


def main(items: list[list[str]]) -> None:
    print(json.dumps([publish(*item) for item in items]))


if __name__ == "__main__":
    main(json.load(sys.stdin))
