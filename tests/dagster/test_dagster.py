"""The Dagster layer on a real instance and a fleet of local nodes with realistic game DBs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors.node_discovery import node_discovery
from sync_assets.demo.pipeline import DEMO_CONFIGS, build_demo_fleet
from sync_assets.demo.synth_games import generate_game_db
from sync_assets.fleet.assets import node_status
from sync_assets.fleet.inventory import load_inventory
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.games.canonical import CANONICAL_KIND
from sync_assets.games.collect import SNAPSHOT_KIND
from tests.expectations import canonical_count, expected_games

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_env(tmp_path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=5, games_per_node=60)
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield fleet, resources, instance


def run_pass(fleet, resources, instance) -> None:
    for asset in (node_status, games_selfplay):
        for n in fleet.nodes:
            assert dg.materialize(
                [asset], partition_key=n.name, instance=instance, resources=resources
            ).success
    for config in fleet.configs:
        assert dg.materialize(
            [games_canonical], partition_key=config, instance=instance, resources=resources
        ).success


def test_definitions_validate(tmp_path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=10)
    env = {**os.environ, "FLEETSYNC_FLEET": str(fleet_file), "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_node_discovery_adds_inventory_nodes(tmp_path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=6, games_per_node=10)
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
    }
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        result = node_discovery(ctx)
        assert isinstance(result, dg.SensorResult)
        add, delete = result.dynamic_partitions_requests
        assert sorted(add.partition_keys) == sorted(
            ["coord-1", "store-1", "train-1", "gpu-1", "gpu-2", "gpu-3"]
        )
        assert list(delete.partition_keys) == []
        instance.add_dynamic_partitions("nodes", list(add.partition_keys))
        again = node_discovery(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(again, dg.SkipReason)


def test_full_pass_collects_merges_and_is_idempotent(fleet_env):
    fleet, resources, instance = fleet_env
    catalog: Catalog = resources["catalog"]
    run_pass(fleet, resources, instance)

    # Every snapshot of every node: two verified copies on distinct durable nodes.
    reps = catalog.replicas_frame([SNAPSHOT_KIND])
    durable = {n.name for n in fleet.durable_nodes}
    verified = reps[(reps["state"] == "verified") & reps["node"].isin(durable)]
    per_snapshot = verified.groupby("sha256")["node"].nunique()
    assert len(per_snapshot) == len(catalog.artifacts_frame([SNAPSHOT_KIND]))
    assert (per_snapshot == 2).all()
    assert reps[reps["state"] == "staging"].empty  # origin staging files cleaned up

    # The canonical DB of each config: the exact independent count, on both durable nodes.
    for config in DEMO_CONFIGS:
        expected = expected_games(fleet, config)
        assert expected > 0
        for node in fleet.durable_nodes:
            assert canonical_count(node, config) == expected, (config, node.name)
        alias = catalog.alias(CANONICAL_KIND, config)
        canon = catalog.replicas_frame([CANONICAL_KIND])
        holders = canon[canon["sha256"] == alias]
        assert sorted(holders["node"]) == sorted(durable)

    moved_first = catalog.transfers_frame()["bytes"].sum()
    assert moved_first > 0
    mat = instance.get_latest_materialization_event(
        dg.AssetKey(["games", "canonical"])
    ).asset_materialization
    assert {"games_added", "duplicates", "rejected", "bytes_moved", "durable_copies"} <= set(
        mat.metadata
    )

    # Second pass over an unchanged fleet: zero bytes, zero rows.
    transfers_before = len(catalog.transfers_frame())
    run_pass(fleet, resources, instance)
    assert len(catalog.transfers_frame()) == transfers_before
    for config in DEMO_CONFIGS:
        assert canonical_count(fleet.durable_nodes[0], config) == expected_games(fleet, config)


def test_new_games_on_an_ephemeral_node_reach_canonical(fleet_env):
    fleet, resources, instance = fleet_env
    catalog: Catalog = resources["catalog"]
    run_pass(fleet, resources, instance)
    config = DEMO_CONFIGS[0]
    before = canonical_count(fleet.durable_nodes[0], config)
    gpu = next(n for n in fleet.nodes if n.ephemeral)
    generate_game_db(
        Path(gpu.data_root) / "games" / f"tournament_{config}.db",
        configs=[config],
        n_games=25,
        seed=999,
        incomplete_fraction=0.0,
    )
    snaps_before = len(catalog.artifacts_frame([SNAPSHOT_KIND]))
    run_pass(fleet, resources, instance)
    assert len(catalog.artifacts_frame([SNAPSHOT_KIND])) == snaps_before + 1
    assert canonical_count(fleet.durable_nodes[0], config) == before + 25
    assert canonical_count(fleet.durable_nodes[1], config) == before + 25
