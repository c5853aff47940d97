"""A durable node that stops answering on a local fleet: suspect (at risk), then lost (its
copies stop counting), then `replicate` repairs from the other copy; back, it is audited
before it counts again."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from resources.catalog import NodeState
from resources.transport import Transports
from sync_assets.cli.status import fleet_status
from sync_assets.engine.probe import probe_and_record, sync_inventory
from sync_assets.engine.replication import counted_durable_nodes, replicate
from sync_assets.fleet.inventory import load_inventory
from sync_assets.games.collect import collect_node_games
from sync_assets.kinds import min_replicas_by_kind
from tests.unit.test_engine_defects import local_fleet, root_of

LOST_AFTER_S = 0.3


def test_a_silent_durable_node_is_lost_and_its_copies_are_repaired_elsewhere(
    tmp_path: Path,
) -> None:
    _, catalog = local_fleet(tmp_path, nodes=5, lost_after_s=LOST_AFTER_S)
    fleet_file = next((tmp_path / "fleet").glob("*.y*ml"))
    doc = yaml.safe_load(fleet_file.read_text())
    for node in doc["nodes"]:
        if node["name"] == "train-1":  # a third durable node: room for the repair
            node["roles"].append("storage")
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet = load_inventory(fleet_file)
    transports = Transports()
    sync_inventory(fleet, catalog)
    collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)
    snapshots = {r.sha256 for r in catalog.replicas_of(_all(catalog), nodes=["store-1"])}
    # Which two of the three durable nodes hold each snapshot depends on their free space.
    assert snapshots and all(len(_holders(catalog, [sha])) == 2 for sha in snapshots)
    wanted = min_replicas_by_kind(fleet)

    store = root_of(fleet, "store-1")
    store.rename(store.with_name("store-1.away"))  # stops answering
    assert not probe_and_record(fleet.node("store-1"), fleet, catalog, transports).reachable
    assert _state(catalog, "store-1") == NodeState.SUSPECT
    status = fleet_status(catalog, fleet)
    assert status.bytes_below_policy == 0 and status.bytes_relying_on_unreachable > 0
    assert catalog.below_policy(wanted, counted_durable_nodes(fleet, catalog)) == set()

    time.sleep(LOST_AFTER_S + 0.1)
    probe_and_record(fleet.node("store-1"), fleet, catalog, transports)
    assert _state(catalog, "store-1") == NodeState.LOST
    assert counted_durable_nodes(fleet, catalog) == {"coord-1", "train-1"}
    assert catalog.below_policy(wanted, counted_durable_nodes(fleet, catalog)) == snapshots
    assert fleet_status(catalog, fleet).bytes_below_policy > 0

    moved = replicate(snapshots, fleet, catalog, transports, lambda a: f"games/again/{a.name}")

    assert moved.failures == [] and moved.copies == len(snapshots)
    for sha in snapshots:  # two counted copies again, on the two durable nodes left
        assert _holders(catalog, [sha], nodes=["coord-1", "train-1"]) == {"coord-1", "train-1"}
    assert catalog.below_policy(wanted, counted_durable_nodes(fleet, catalog)) == set()

    store.with_name("store-1.away").rename(store)  # back: audited, then counted again
    assert probe_and_record(fleet.node("store-1"), fleet, catalog, transports).reachable
    assert _state(catalog, "store-1") == NodeState.ACTIVE
    events = catalog.node_events_frame()
    assert list(events["to_state"]) == ["suspect", "lost", "active"]
    assert "audited" in events["reason"].iloc[-1]


def _all(catalog) -> list[str]:
    return list(catalog.artifacts_frame()["sha256"])


def _holders(catalog, shas, nodes=None) -> set[str]:
    return {r.node for r in catalog.replicas_of(shas, nodes=nodes)}


def _state(catalog, node: str) -> NodeState:
    return catalog.node_lifecycle()[node][0]
