"""scrub_node over a real sshd node: the files are hashed on the node in one shipped
command, a flipped bit is moved aside there, a resized file is left to the audit's look,
and a node that stops answering changes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.engine.scrub import quarantine_path, scrub_node
from sync_assets.fleet.checks import replaced_in_place
from sync_assets.fleet.inventory import Node
from tests.cluster.test_audit import put

pytestmark = pytest.mark.cluster
SCRUB: dict[str, Any] = {
    "replaced_in_place": replaced_in_place,
    "budget": 2**30,
    "hash_timeout_s": 60,
}


def test_scrub_over_sshd_hashes_on_the_node_and_moves_rot_aside(
    tmp_path: Path, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    sshd = sshd_fleet(["store-1"])
    node = Node(roles=["storage"], **sshd.inventory_nodes()[0])  # type: ignore[arg-type]
    paths = [f"games/collected/n{i % 2}/{i}.db" for i in range(6)]
    shas = {p: put(node, catalog, p, os.urandom(4096)) for p in paths}
    root = Path(node.data_root)
    rotten, resized = root / paths[0], root / paths[1]
    st = rotten.stat()
    data = bytearray(rotten.read_bytes())
    data[100] ^= 0x01
    rotten.write_bytes(bytes(data))
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))  # rot leaves the mtime alone
    with open(resized, "r+b") as f:
        f.truncate(9)
    before = {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")}

    transports = Transports()
    try:
        result = scrub_node(node, catalog, transports, **SCRUB)
    finally:
        transports.teardown_after_execution(None)  # type: ignore[arg-type]

    aside = root / quarantine_path(paths[0], hashlib.sha256(bytes(data)).hexdigest())
    assert aside.read_bytes() == bytes(data) and not rotten.exists()
    assert result.corrupt == [paths[0]] and result.gone == [paths[1]]
    assert result.matched == 4 and not result.errors and not result.failures
    after = {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")}
    assert sorted(after) == sorted(paths[2:])
    assert all(after[p] > before[p] for p in paths[2:])
    findings = catalog.check_findings_frame("store-1")
    assert sorted(zip(findings["path"], findings["finding"], strict=True)) == [
        (paths[0], "corrupt"),
        (paths[1], "resized"),
    ]
    assert set(findings["sha256"]) == {shas[paths[0]], shas[paths[1]]}

    # The node stops answering: the scrub raises and the catalog stays as it was.
    sshd.stop()
    transports = Transports(connect_timeout_s=3)
    with pytest.raises(TransferError):
        scrub_node(node, catalog, transports, **SCRUB)
    assert {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")} == after
