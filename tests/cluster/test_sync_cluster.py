"""`fleetsync sync` on real sshd nodes: one node's host key changed → the others synced,
exit 1 naming that node and "host key", never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sync_assets.demo.pipeline import build_demo_fleet, demo_nodes
from sync_assets.fleet.inventory import load_inventory

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


def test_sync_games_with_a_changed_host_key_syncs_the_others_and_names_it(
    tmp_path: Path, sshd_fleet
) -> None:
    root = tmp_path / "demo"
    sshd = sshd_fleet([n.name for n in demo_nodes(4)], root=root)
    fleet_file = build_demo_fleet(root, 4, 20, sshd=sshd)
    # gpu-1 now presents a key other than the pinned one (pinned: train-1's).
    doc = yaml.safe_load(fleet_file.read_text())
    for entry in doc["nodes"]:
        if entry["name"] == "gpu-1":
            entry["host_key"] = sshd.nodes["train-1"].host_key
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)

    done = subprocess.run(
        [FLEETSYNC, "sync", "games", "--targets", "all"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    for name in ("coord-1", "store-1", "train-1"):
        assert f"node {name}: ok" in done.stdout, out[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("node gpu-1: ")]
    assert len(failed) == 1 and failed[0].startswith("node gpu-1: FAILED: ")
    assert "host key" in failed[0]
    assert "failed: gpu-1" in done.stderr and "host key" in done.stderr

    # The others really synced: train-1's game DBs are on both durable nodes, gpu-1's nowhere.
    fleet = load_inventory(fleet_file)
    train_dbs = sorted(Path(fleet.node("train-1").data_root, "games").glob("*.db"))
    assert train_dbs
    for durable in fleet.durable_nodes:
        collected = Path(durable.data_root, "games", "collected")
        for db in train_dbs:
            assert len(list((collected / "train-1").glob(f"{db.stem}.*.db"))) == 1
        assert not (collected / "gpu-1").exists()
