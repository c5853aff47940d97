"""The scrub never moves a good file aside when a newer version landed at a path that is
replaced in place (the writer renamed its verified bytes over the path but has not
recorded them yet: distribute records after the copy), nor when the bytes found are a
version the catalog knows: it drops the stale row and leaves the file.

1. npz on a training node: `training/{config}.npz` is the config's current shard,
   replaced by an atomic rename on every new export (training/shards.py);
2. the promoted model `models/canonical_{config}.pth`, landed by `rsync --times` with
   the SOURCE's older mtime (so "written since verified" cannot tell);
3. a content-named file holding another known artifact's bytes: not rot.
True rot in a content-named file is still moved aside (tests/dagster/test_fleet_audit.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from resources.catalog import Catalog
from resources.transport import Transports
from sync_assets.engine import scrub as scrub_mod
from sync_assets.engine.scrub import QUARANTINE_DIR, scrub_node
from sync_assets.fleet.checks import replaced_in_place
from sync_assets.fleet.inventory import Node
from sync_assets.models.publish import canonical_model_path
from sync_assets.training.shards import node_shard_path, shard_path


def _setup(tmp_path: Path, kind: str, rel: str, old: bytes) -> tuple[Node, Catalog, str]:
    root = tmp_path / "n1"
    node = Node(name="n1", transport="local", roles=["storage"], data_root=str(root))
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(old)
    sha = hashlib.sha256(old).hexdigest()
    catalog.add_artifact(sha, kind=kind, config="c", name=rel, size=len(old), origin_node="n1")
    catalog.record_replica(sha, "n1", rel, len(old))
    return node, catalog, sha


def _land_during_hash(monkeypatch: Any, path: Path, new: bytes, mtime_s: float | None) -> None:
    """The writer renames verified bytes over `path` while the scrub's command runs."""
    real = Transports.run_program

    def racing(self: Transports, node: Node, program: Any, *a: Any, **k: Any) -> Any:
        if program is scrub_mod.SCRUB_HASH_PY:
            staging = path.with_name(path.name + ".staging")
            staging.write_bytes(new)
            if mtime_s is not None:  # rsync --times: the source's mtime
                os.utime(staging, (mtime_s, mtime_s))
            os.replace(staging, path)
        return real(self, node, program, *a, **k)

    monkeypatch.setattr(Transports, "run_program", racing)


def _scrub(node: Node, catalog: Catalog) -> scrub_mod.ScrubResult:
    return scrub_node(
        node, catalog, Transports(), replaced_in_place=replaced_in_place, budget=2**30,
        hash_timeout_s=60,
    )  # fmt: skip


def _left_in_place(node: Node, catalog: Catalog, rel: str, old_sha: str, new: bytes) -> None:
    assert (Path(node.data_root) / rel).read_bytes() == new
    assert not (Path(node.data_root) / QUARANTINE_DIR).exists()
    assert catalog.replicas_of([old_sha]) == []  # the stale row is gone
    [finding] = catalog.check_findings_frame("n1").itertuples()
    assert (finding.sha256, finding.path, finding.finding) == (old_sha, rel, "rewritten")


def test_current_npz_shard_landing_is_not_quarantined(tmp_path: Path, monkeypatch: Any) -> None:
    rel = node_shard_path("c")
    old, new = os.urandom(4096), os.urandom(4096)  # same-size shards of one config
    node, catalog, sha = _setup(tmp_path, "npz", rel, old)
    time.sleep(0.01)
    _land_during_hash(monkeypatch, Path(node.data_root) / rel, new, None)
    result = _scrub(node, catalog)
    assert result.rewritten == [rel] and not result.corrupt, result.summary()
    _left_in_place(node, catalog, rel, sha, new)


def test_promoted_model_landing_with_source_mtime_is_not_quarantined(
    tmp_path: Path, monkeypatch: Any
) -> None:
    rel = canonical_model_path("c")
    old, new = os.urandom(8192), os.urandom(8192)  # fixed-architecture checkpoints
    node, catalog, sha = _setup(tmp_path, "model", rel, old)
    # Written on its source an hour ago; rsync --times keeps that mtime.
    _land_during_hash(monkeypatch, Path(node.data_root) / rel, new, time.time() - 3600)
    result = _scrub(node, catalog)
    assert result.rewritten == [rel] and not result.corrupt, result.summary()
    _left_in_place(node, catalog, rel, sha, new)


def test_a_content_named_file_holding_a_known_version_is_not_quarantined(
    tmp_path: Path,
) -> None:
    old, new = os.urandom(4096), os.urandom(4096)
    rel = shard_path("c", hashlib.sha256(old).hexdigest())
    node, catalog, sha = _setup(tmp_path, "npz", rel, old)
    new_sha = hashlib.sha256(new).hexdigest()
    catalog.add_artifact(new_sha, kind="npz", config="c", name=node_shard_path("c"),
                         size=len(new), origin_node="n1")  # fmt: skip
    path = Path(node.data_root) / rel
    st = path.stat()
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime unchanged, like rot
    result = _scrub(node, catalog)
    assert result.rewritten == [rel] and not result.corrupt, result.summary()
    _left_in_place(node, catalog, rel, sha, new)


def test_rot_in_a_content_named_shard_is_still_moved_aside(tmp_path: Path) -> None:
    old = os.urandom(4096)
    rel = shard_path("c", hashlib.sha256(old).hexdigest())
    node, catalog, _ = _setup(tmp_path, "npz", rel, old)
    path = Path(node.data_root) / rel
    st = path.stat()
    rotten = bytes([old[0] ^ 1]) + old[1:]
    path.write_bytes(rotten)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = _scrub(node, catalog)
    assert result.corrupt == [rel] and not path.exists()
    aside = Path(node.data_root) / scrub_mod.quarantine_path(
        rel, hashlib.sha256(rotten).hexdigest()
    )
    assert aside.read_bytes() == rotten


def test_replaced_in_place_paths() -> None:
    """Only the on-node current shard of npz; every path of the rewritable kinds; no
    content-named copy."""
    sha = "ab" * 32
    assert replaced_in_place("npz", node_shard_path("hex8_2p"))
    assert not replaced_in_place("npz", shard_path("hex8_2p", sha))
    assert replaced_in_place("model", canonical_model_path("hex8_2p"))
    assert replaced_in_place("games_canonical", "games/canonical_hex8_2p.db")
    assert replaced_in_place("elo_ratings", "elo/unified_elo.db")
    assert not replaced_in_place("games_snapshot", f"games/collected/gpu-1/a.{sha[:16]}.db")
    assert not replaced_in_place("elo_snapshot", f"elo/collected/gpu-1/unified_elo.{sha[:16]}.db")
