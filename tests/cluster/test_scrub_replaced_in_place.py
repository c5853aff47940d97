"""Real sshd nodes: a new promoted model is pulled onto gpu-1 by `rsync --times` (the
copy has landed and is verified; its catalog row is written when the reply comes back:
a lost reply, a killed run or a slow catalog leaves the old row). The scrub of gpu-1
sees an old mtime and different bytes: the file is a writer's, never moved aside."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import CopyItem
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.engine.scrub import QUARANTINE_DIR, scrub_node
from sync_assets.fleet.checks import replaced_in_place
from sync_assets.models.publish import canonical_model_path
from tests.cluster.test_ssh_cluster import inventory

pytestmark = pytest.mark.cluster


def test_over_sshd_pulled_model_keeps_source_mtime_and_is_not_quarantined(
    tmp_path: Path, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    sshd = sshd_fleet(["gpu-src", "gpu-1"])
    fleet = inventory(sshd, {"gpu-src": ["storage"], "gpu-1": ["selfplay"]},
                      {"gpu-1": {"pull_key": str(sshd.client_key)}}, 1)  # fmt: skip
    src, dst = fleet.node("gpu-src"), fleet.node("gpu-1")
    rel = canonical_model_path("c")
    old, new = os.urandom(8192), os.urandom(8192)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.sync_nodes(fleet.nodes)
    for node, data in ((dst, old), (src, new)):
        p = Path(node.data_root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        catalog.add_artifact(sha, kind="model", config="c", name=rel, size=8192, origin_node="x")
        catalog.record_replica(sha, node.name, rel, 8192)
    then = time.time() - 3600  # the candidate was written on its node an hour ago
    os.utime(Path(src.data_root) / rel, (then, then))
    transports = Transports()
    try:
        [outcome] = transports.copy_many(
            src, dst, [CopyItem(rel, rel, hashlib.sha256(new).hexdigest())]
        )  # landed; not recorded yet
        assert not isinstance(outcome, Exception), outcome
        result = scrub_node(dst, catalog, transports, replaced_in_place=replaced_in_place,
                            budget=2**30, hash_timeout_s=60)  # fmt: skip
    finally:
        transports.teardown_after_execution(None)  # type: ignore[arg-type]
    assert (Path(dst.data_root) / rel).read_bytes() == new, result.summary()
    assert not (Path(dst.data_root) / QUARANTINE_DIR).exists()
    assert result.rewritten == [rel]
