"""Promotion and distribution of models on a local fleet and a real Dagster instance."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg
import pytest

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets.cli.report import report
from sync_assets.demo.pipeline import build_demo_fleet, write_candidate
from sync_assets.fleet.inventory import load_inventory
from sync_assets.models.assets import models_on_node, models_promoted
from sync_assets.models.publish import PROMOTED_ALIAS

CONFIG = "hex8_2p"


@pytest.fixture
def fleet_env(tmp_path):
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=10)
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
        "exporter": Exporter(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield fleet, resources, instance


def promote(resources, instance) -> dg.AssetMaterialization:
    assert dg.materialize(
        [models_promoted], partition_key=CONFIG, instance=instance, resources=resources
    ).success
    event = instance.get_latest_materialization_event(models_promoted.key)
    return event.asset_materialization


def test_first_candidate_is_promoted_and_reaches_every_gpu_node(fleet_env):
    fleet, resources, instance = fleet_env
    trainer = fleet.nodes_with_role("training")[0]
    path = write_candidate(Path(fleet.nodes[0].data_root).parents[1], trainer.name, CONFIG, 1)
    report(
        "candidate", CONFIG, trainer.name, path, instance=instance, fleet=fleet
    ).raise_for_problems()
    mat = promote(resources, instance)
    assert mat.metadata["promoted"].value is True
    sha = resources["catalog"].alias(PROMOTED_ALIAS, CONFIG)
    assert sha == hashlib.sha256((Path(trainer.data_root) / path).read_bytes()).hexdigest()
    for node in fleet.gpu_nodes:
        assert dg.materialize(
            [models_on_node], partition_key=node.name, instance=instance, resources=resources
        ).success
        models = Path(node.data_root) / "models"
        assert hashlib.sha256((models / f"canonical_{CONFIG}.pth").read_bytes()).hexdigest() == sha
        assert os.readlink(models / f"ringrift_best_{CONFIG}.pth") == f"canonical_{CONFIG}.pth"


def test_a_truncated_candidate_is_rejected_left_alone_and_never_distributed(fleet_env):
    fleet, resources, instance = fleet_env
    trainer = fleet.nodes_with_role("training")[0]
    path = write_candidate(Path(fleet.nodes[0].data_root).parents[1], trainer.name, CONFIG, 2)
    report(
        "candidate", CONFIG, trainer.name, path, instance=instance, fleet=fleet
    ).raise_for_problems()
    model = Path(trainer.data_root) / path
    model.write_bytes(model.read_bytes()[:1000])  # an upload cut short after the report
    truncated = model.read_bytes()

    mat = promote(resources, instance)
    assert mat.metadata["promoted"].value is False
    assert mat.metadata["report_rejected"].value is True
    assert "report rejected, file left untouched" in mat.metadata["reason"].value
    assert model.read_bytes() == truncated  # a report never moves or deletes a file
    assert not (Path(trainer.data_root) / "quarantine").exists()
    catalog: Catalog = resources["catalog"]
    assert catalog.alias(PROMOTED_ALIAS, CONFIG) is None
    assert catalog.artifacts_frame(["model"]).empty  # recorded nowhere
    for node in fleet.gpu_nodes:
        assert dg.materialize(
            [models_on_node], partition_key=node.name, instance=instance, resources=resources
        ).success
        assert not (Path(node.data_root) / "models" / f"canonical_{CONFIG}.pth").exists()
