"""Over a real sshd node, one DB name that is not UTF-8 (node_probe's JSON carries it as
"\\udce9") is refused at the probe and does not blind the probe of the whole fleet (from a
hostile review: the catalog could not store it, and every node recorded after it was
never recorded, so a dead node was never declared lost)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from resources.catalog import Catalog
from resources.transport import Transports
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.engine.probe import probe_fleet
from sync_assets.fleet.inventory import Fleet, Node

pytestmark = pytest.mark.cluster


def test_ssh_node_odd_file_name_does_not_blind_the_fleet_probe(
    tmp_path: Path, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    sshd = sshd_fleet(["gpu-1", "gpu-2"])
    nodes = [Node(roles=["selfplay"], **n) for n in sshd.inventory_nodes()]  # type: ignore[arg-type]
    games = os.path.join(os.fsencode(nodes[0].data_root), b"games")
    os.makedirs(games, exist_ok=True)
    with open(os.path.join(games, b"selfplay_\xe9.db"), "wb") as f:
        f.write(b"x" * 100)
    with open(os.path.join(games, b"selfplay.db"), "wb") as f:
        f.write(b"y" * 10)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    fleet = Fleet(fleet="review", nodes=nodes)
    catalog.sync_nodes(fleet.nodes)
    transports = Transports()
    try:
        probes = probe_fleet(nodes, fleet, catalog, transports)
    finally:
        transports.teardown_after_execution(None)  # type: ignore[arg-type]
    assert set(probes) == {"gpu-1", "gpu-2"}
    assert catalog.nodes_frame()["last_probe_at"].notna().all()
    odd = probes[nodes[0].name]
    assert odd.reachable and odd.error is None, odd.error
    assert odd.rejected == ("games/selfplay_\udce9.db",)
    stored = {(r.node, r.path) for r in catalog.probed_databases([n.name for n in nodes])}
    assert stored == {(nodes[0].name, "games/selfplay.db")}
