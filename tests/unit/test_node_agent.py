"""The node agent's own steps, run here directly (it is the same file sent to nodes)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from resources.transport import node_agent


def test_batch_publish_verifies_renames_and_refuses_a_mismatch(tmp_path: Path) -> None:
    staged = tmp_path / "batch"
    staged.mkdir()
    good, bad = os.urandom(70_000), os.urandom(70_000)
    (staged / "good.bin").write_bytes(good)
    (staged / "bad.bin").write_bytes(bad)
    plan = [
        [
            str(staged / "good.bin"),
            str(tmp_path / "out/good.bin"),
            hashlib.sha256(good).hexdigest(),
        ],
        [str(staged / "bad.bin"), str(tmp_path / "out/bad.bin"), hashlib.sha256(good).hexdigest()],
    ]
    first, second = node_agent.publish_many(plan)
    assert first == {"size": 70_000}
    assert (tmp_path / "out/good.bin").read_bytes() == good
    assert second["mismatch"] and not (tmp_path / "out/bad.bin").exists()
    assert not (staged / "bad.bin").exists()  # a mismatch is deleted, never published
