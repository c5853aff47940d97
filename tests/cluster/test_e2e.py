"""The whole graph on real sshd nodes, from a fresh Dagster instance, through the CLI:
games → canonical → NPZ → shards on training nodes; Elo matches → ratings on eval nodes;
a reported candidate → promotion → the promoted model on every GPU node."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_assets.fleet.inventory import load_inventory
from tests.expectations import canonical_count, expected_games

REPO = Path(__file__).resolve().parents[2]
FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.cluster
def test_full_chain_over_ssh_every_gpu_node_holds_the_promoted_model(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    demo = tmp_path / "demo"
    done = subprocess.run(
        [FLEETSYNC, "demo", "--ssh", "--dir", str(demo), "--nodes", "4", "--games", "20"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Data at risk (no durable copy): 0.0 MB" in done.stdout
    fleet = load_inventory(demo / "fleet.yaml")
    assert {n.transport for n in fleet.nodes} == {"ssh"}

    catalog = sa.create_engine(f"sqlite:///{home / 'fleetsync' / 'catalog.db'}")
    with catalog.connect() as conn:
        aliases = {
            (k, c): sha for k, c, sha in conn.execute(
                sa.text("SELECT kind, config, sha256 FROM aliases")
            )
        }  # fmt: skip
    for config in fleet.configs:
        # Canonical games: the independent count, on both durable nodes.
        for node in fleet.durable_nodes:
            assert canonical_count(node, config) == expected_games(fleet, config)
        # The current shard on every training node, byte-identical to the alias.
        shard_sha = aliases[("npz", config)]
        for node in fleet.nodes_with_role("training"):
            assert sha256(Path(node.data_root) / "training" / f"{config}.npz") == shard_sha
        # The promoted model on every GPU node: verified bytes, the symlink onto them.
        promoted = aliases[("model_promoted", config)]
        for node in fleet.gpu_nodes:
            models = Path(node.data_root) / "models"
            assert sha256(models / f"canonical_{config}.pth") == promoted, node.name
            link = models / f"ringrift_best_{config}.pth"
            assert os.readlink(link) == f"canonical_{config}.pth"
        # The promoted model is the reported candidate's bytes.
        trainer = fleet.nodes_with_role("training")[0]
        candidate = Path(trainer.data_root) / "models" / f"candidate_{config}.pth"
        assert sha256(candidate) == promoted

    # Ratings: published read-only on every eval node, anchors pinned.
    ratings_sha = aliases[("elo_ratings", "fleet")]
    for node in fleet.nodes_with_role("eval"):
        published = Path(node.data_root) / "elo" / "fleet_ratings.db"
        assert sha256(published) == ratings_sha
        assert not published.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        con = sqlite3.connect(f"file:{published}?mode=ro", uri=True)
        anchors = dict(
            con.execute(
                "SELECT participant_id, rating FROM ratings WHERE participant_id LIKE 'none:%'"
            ).fetchall()
        )
        con.close()
        assert anchors == {"none:random:d1": 400.0, "none:heuristic:d2": 1200.0}

    # A second pass over the unchanged fleet moves nothing.
    again = subprocess.run(
        [FLEETSYNC, "demo", "--ssh", "--dir", str(demo), "--nodes", "4", "--games", "20"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    idle = "This pass: 0 games added to canonical DBs, 0.0 MB moved"
    assert idle in again.stdout, again.stdout[-2500:]
