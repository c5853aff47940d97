"""An sshd node whose data disk is not mounted (its data root there, empty): the audit
over SSH drops none of the replicas recorded there, the last copies included."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from resources.catalog import Catalog
from resources.transport import Transports
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.engine.audit import DataRootEmpty, audit_nodes
from sync_assets.fleet.inventory import Node
from tests.cluster.test_audit import put
from tests.unit.test_audit_unmounted_root import REL

pytestmark = pytest.mark.cluster


def test_audit_over_sshd_of_unmounted_root_keeps_last_copies(
    tmp_path: Path, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    sshd = sshd_fleet(["store-1"])
    node = Node(roles=["storage"], **sshd.inventory_nodes()[0])  # type: ignore[arg-type]
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    mount = Path(node.data_root)
    shas = [put(node, catalog, REL.format(i), os.urandom(2048)) for i in range(3)]  # only copies
    (mount / "games").rename(tmp_path / "disk-offline")  # the data disk is not mounted
    transports = Transports()
    try:
        outcome = audit_nodes([node], catalog, transports.for_node)
    finally:
        transports.teardown_after_execution(None)  # type: ignore[arg-type]
    assert len(catalog.replicas_of(shas)) == 3, f"audit dropped the only copies: {outcome}"
    assert isinstance(outcome["store-1"], DataRootEmpty)
