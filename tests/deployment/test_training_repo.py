"""The example training repo: a second code location that materialises `models/candidate`.

Checks that it loads, that a materialisation on a small local fleet publishes a model and
sidecar whose SHA-256 is the one in the metadata (and that fleetsync's receiving side
accepts the event), and that its definitions live beside fleetsync's external
`models/candidate` spec in one workspace without a collision."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from resources.inventory import FleetInventory
from sync_assets.cli.report import verify_on_node
from sync_assets.fleet.inventory import load_inventory
from sync_assets.partitions import configs_partitions
from sync_assets.reports import Candidate, ReportRequest, candidate_from_event
from tests.deployment.test_report import (
    MODEL_BYTES,
    REPO,
    running_webserver,
    write_fleet,
    write_workspace,
)
from tests.deployment.test_webserver import graphql

EXAMPLE = REPO / "examples" / "training_repo"
CONFIG = "hex8_2p"


@pytest.fixture(scope="module")
def training_repo() -> Iterator[object]:
    """The example's definitions module, imported the way its workspace entry does."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from training_repo import definitions

        yield definitions
    finally:
        sys.path.remove(str(EXAMPLE))


def write_shard(path: Path, n: int = 600, seed: int = 7) -> None:
    """A tiny but complete shard in DATA.md's layout (np.savez_compressed, object arrays
    included): values depend on the features, so training has something to learn."""
    rng = np.random.default_rng(seed)
    c, h = 40, 8
    features = rng.normal(size=(n, c, h, h)).astype(np.float32)
    globals_ = rng.normal(size=(n, 20)).astype(np.float32)
    signal = features[:, 0].mean(axis=(1, 2)) * 6 - features[:, 3].mean(axis=(1, 2)) * 4
    values = np.tanh(signal + 0.1 * rng.normal(size=n)).astype(np.float32)
    policy_indices = np.empty(n, dtype=object)
    policy_values = np.empty(n, dtype=object)
    for i in range(n):
        k = int(rng.integers(1, 6))
        policy_indices[i] = rng.choice(c * h * h, size=k, replace=False).astype(np.int32)
        policy_values[i] = rng.dirichlet(np.ones(k)).astype(np.float32)
    words = {
        "phases": ["placement", "movement"],
        "victory_types": ["elimination", "territory"],
        "engine_modes": ["gumbel_mcts", "descent"],
        "move_types": ["place", "move"],
        "opponent_types": ["self", "heuristic"],
    }
    arrays: dict[str, np.ndarray] = {
        "features": features,
        "globals": globals_,
        "values": values,
        "values_mp": np.stack([values, -values, np.zeros(n), np.zeros(n)], axis=1).astype(
            np.float32
        ),
        "num_players": np.full(n, 2, dtype=np.int32),
        "move_numbers": rng.integers(0, 80, size=n).astype(np.int32),
        "total_game_moves": np.full(n, 80, dtype=np.int32),
        "policy_indices": policy_indices,
        "policy_values": policy_values,
        **{
            key: np.array([choices[i % 2] for i in range(n)], dtype=object)
            for key, choices in words.items()
        },
        "opponent_elo": np.full(n, 1500, dtype=np.float32),
        "generator_elo": np.full(n, 1500, dtype=np.float32),
        "quality_score": rng.random(n).astype(np.float32),
    }
    checksums = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in arrays.items()
                 if v.dtype != object}  # fmt: skip
    meta: dict[str, np.ndarray] = {
        "board_type": np.array("hex8"),
        "board_size": np.array(h),
        "history_length": np.array(3),
        "feature_version": np.array(2),
        "policy_encoding": np.array("sparse"),
        "policy_size": np.array(c * h * h),
        "export_version": np.array(1),
        "metadata": np.array(
            {
                "export_time": 1.7e9,
                "newest_game_time": 1.7e9,
                "game_count": n // 80,
                "sample_count": n,
            },
            dtype=object,
        ),  # fmt: skip
        "data_checksums": np.array(json.dumps(checksums)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, **meta)  # type: ignore[arg-type]


@pytest.fixture
def fleet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_fleet(tmp_path)
    monkeypatch.setenv("FLEETSYNC_FLEET", str(path))
    return path


def materialize(
    training_repo: object, fleet_file: Path, instance: dg.DagsterInstance, **run_config: object
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [training_repo.candidate],  # type: ignore[attr-defined]
        partition_key=CONFIG,
        instance=instance,
        resources={"inventory": FleetInventory(path=str(fleet_file))},
        run_config={"ops": {"models__candidate": {"config": run_config}}} if run_config else None,
        raise_on_error=False,
    )


def test_definitions_load_with_fleetsync_partitions(training_repo: object) -> None:
    defs = training_repo.defs  # type: ignore[attr-defined]
    dg.Definitions.validate_loadable(defs)
    key = dg.AssetKey(["models", "candidate"])
    asset = defs.resolve_assets_def(key)
    assert asset.partitions_def == configs_partitions
    assert dg.AssetKey(["training", "npz"]) in asset.asset_deps[key]
    assert (EXAMPLE / "README.md").read_text().startswith("# Example")


def test_materialising_the_candidate_publishes_model_and_sidecar(
    training_repo: object, fleet_file: Path
) -> None:
    train_root = fleet_file.parent / "nodes" / "train-1"
    write_shard(train_root / "training" / f"{CONFIG}.npz")
    model = train_root / "models" / f"candidate_{CONFIG}.pth"
    with dg.instance_for_test() as instance:
        result = materialize(training_repo, fleet_file, instance)
        assert result.success
        (mat,) = result.asset_materializations_for_node("models__candidate")
        meta: dict[str, Any] = {k: v.value for k, v in mat.metadata.items()}
        records = instance.fetch_materializations(dg.AssetKey(["models", "candidate"]), limit=1)
        received = candidate_from_event(records.records[0], load_inventory(fleet_file))

    data = model.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert mat.partition == CONFIG
    assert {k: meta[k] for k in ("config", "node", "path", "sha256", "size", "promote")} == {
        "config": CONFIG,
        "node": "train-1",
        "path": f"models/candidate_{CONFIG}.pth",
        "sha256": digest,
        "size": len(data),
        "promote": False,
    }
    sidecar = (train_root / "models" / f"candidate_{CONFIG}.pth.sha256").read_text()
    assert sidecar == f"{digest}  candidate_{CONFIG}.pth\n"
    assert meta["samples"] == 600
    assert meta["loss_after"] < meta["loss_before"]
    assert not list((train_root / "models").glob("*.tmp"))  # nothing left half-written

    # fleetsync's receiving side accepts it, and the node agrees with the event.
    assert isinstance(received, Candidate)
    assert (received.sha256, received.size, received.path) == (digest, len(data), meta["path"])
    fleet = load_inventory(fleet_file)
    request = ReportRequest.model_validate(
        {"kind": "candidate", "config": CONFIG, "node": "train-1", "path": meta["path"],
         "sha256": digest},
        context={"fleet": fleet},
    )  # fmt: skip
    from resources.transport import Transports

    checked, problems = verify_on_node(request, fleet, Transports())
    assert problems == [] and checked is not None and checked.sha256 == digest


def test_same_shard_same_model_and_explicit_promotion(
    training_repo: object, fleet_file: Path
) -> None:
    """Deterministic training: re-materialising an unchanged shard reports the same bytes."""
    write_shard(fleet_file.parent / "nodes" / "train-1" / "training" / f"{CONFIG}.npz")
    with dg.instance_for_test() as instance:
        first = materialize(training_repo, fleet_file, instance)
        second = materialize(training_repo, fleet_file, instance, promote=True)
        metas = [
            {k: v.value for k, v in r.asset_materializations_for_node("models__candidate")[0]
             .metadata.items()}
            for r in (first, second)
        ]  # fmt: skip
    assert metas[0]["sha256"] == metas[1]["sha256"]
    assert (metas[0]["promote"], metas[1]["promote"]) == (False, True)


def test_without_a_shard_the_run_fails_and_says_why(
    training_repo: object, fleet_file: Path
) -> None:
    with dg.instance_for_test() as instance:
        result = materialize(training_repo, fleet_file, instance)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert failure is not None
        assert f"no local training node holds a usable training/{CONFIG}.npz" in failure.message
        assert instance.get_materialized_partitions(dg.AssetKey(["models", "candidate"])) == set()


def test_broken_shard_is_refused(training_repo: object, fleet_file: Path) -> None:
    """A truncated shard (LESSONS 5) is not trained on."""
    shard = fleet_file.parent / "nodes" / "train-1" / "training" / f"{CONFIG}.npz"
    write_shard(shard)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with dg.instance_for_test() as instance:
        result = materialize(training_repo, fleet_file, instance)
    assert not result.success
    # The candidate already on the node (from the fixture) is untouched.
    models = shard.parent.parent / "models"
    assert (models / f"candidate_{CONFIG}.pth").read_bytes() == MODEL_BYTES
    assert not list(models.glob("*.tmp"))


def test_workspace_with_both_locations_has_one_materializable_candidate(
    tmp_path: Path, fleet_file: Path
) -> None:
    """fleetsync's external AssetSpec + this location's asset: valid in one workspace
    (Dagster allows one materializable node per key), no collision, lineage across."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    workspace = write_workspace(tmp_path, with_training_repo=True)
    with running_webserver(workspace, env) as (port, _):
        data = graphql(
            port,
            """{
              assetNodeDefinitionCollisions(assetKeys: [{path: ["models", "candidate"]}])
                { assetKey { path } }
              assetNodeOrError(assetKey: {path: ["models", "candidate"]}) {
                ... on AssetNode {
                  isMaterializable
                  repository { location { name } }
                  dependencyKeys { path }
                  partitionKeys
                }
              }
              workspaceOrError { ... on Workspace { locationEntries {
                name locationOrLoadError { __typename } } } }
            }""",
        )
        log = (tmp_path / f"webserver-{port}.log").read_text()
    entries = {
        e["name"]: e["locationOrLoadError"]["__typename"]
        for e in data["workspaceOrError"]["locationEntries"]
    }
    assert entries == {"fleetsync": "RepositoryLocation", "training_repo": "RepositoryLocation"}
    assert data["assetNodeDefinitionCollisions"] == []
    node = data["assetNodeOrError"]
    assert node["isMaterializable"] is True
    assert node["repository"]["location"]["name"] == "training_repo"
    assert node["dependencyKeys"] == [{"path": ["training", "npz"]}]
    assert node["partitionKeys"] == load_inventory(fleet_file).configs  # the same inventory
    assert "in multiple code locations" not in log
