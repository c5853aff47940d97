"""Reports from training repos: one validation for the Python API, the CLI and HTTP, and
the receiving side re-validates what reached the webserver without us.

Every rejection is checked for its exact message *and* for leaving no trace in the
instance: a rejected report must record nothing (LESSONS 6)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from sync_assets.cli.report import report
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.reports import (
    ASSET_KEYS,
    Candidate,
    Rejected,
    ReportPayload,
    candidate_from_event,
    report_from_event,
    validate_report,
)
from tests.deployment.test_webserver import free_port, graphql, stop_group

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CANDIDATE = ASSET_KEYS["candidate"]
NPZ = ASSET_KEYS["npz"]
MODEL = "models/candidate_hex8_2p.pth"
MODEL_BYTES = b"not really a model, but bytes with a known hash\n" * 100
MODEL_SHA = hashlib.sha256(MODEL_BYTES).hexdigest()
CONFIGS_LINE = "configs: [hex8_2p, square8_2p]"

# What fleetsync's definitions declare for `models/candidate`: external, not materializable.
FLEETSYNC_STUB = '''
"""Stands in for fleetsync's location: `models/candidate` as an external AssetSpec."""
import dagster as dg
from sync_assets.partitions import configs_partitions

candidate_spec = dg.AssetSpec(
    ["models", "candidate"],
    partitions_def=configs_partitions,
    deps=[dg.AssetKey(["training", "npz"])],
    group_name="models",
    kinds={"pytorch"},
    description="Candidate models reported by training repos (config, node, path, sha256).",
)

@dg.asset(key=["training", "npz"], partitions_def=configs_partitions, group_name="training")
def training_npz() -> None:
    """fleetsync's exporter (stub): materializable here, and only here."""

defs = dg.Definitions(assets=[candidate_spec, training_npz])
'''


# ---- a small local fleet ------------------------------------------------------------------


def write_fleet(root: Path) -> Path:
    """Three local nodes (two durable, one training) with a candidate model + sidecar."""
    nodes = {"coord-1": ["coordinator"], "store-1": ["storage"], "train-1": ["training"]}
    lines = ["fleet: test", CONFIGS_LINE, "nodes:"]
    for name, roles in nodes.items():
        (root / "nodes" / name).mkdir(parents=True, exist_ok=True)
        lines.append(
            f"  - {{name: {name}, transport: local, roles: {json.dumps(roles)}, "
            f"data_root: {root / 'nodes' / name}}}"
        )
    models = root / "nodes" / "train-1" / "models"
    models.mkdir(exist_ok=True)
    (models / "candidate_hex8_2p.pth").write_bytes(MODEL_BYTES)
    (models / "candidate_hex8_2p.pth.sha256").write_text(f"{MODEL_SHA}  candidate_hex8_2p.pth\n")
    path = root / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fleet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_fleet(tmp_path)
    monkeypatch.setenv("FLEETSYNC_FLEET", str(path))
    return path


@pytest.fixture
def fleet(fleet_file: Path) -> Fleet:
    return load_inventory(fleet_file)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.EventLogRecord]:
    return list(instance.fetch_materializations(key, limit=100).records)


def assert_nothing_recorded(instance: dg.DagsterInstance) -> None:
    for key in ASSET_KEYS.values():
        assert materializations(instance, key) == []


# ---- the payload --------------------------------------------------------------------------


GOOD = {
    "kind": "candidate",
    "config": "hex8_2p",
    "node": "train-1",
    "path": MODEL,
    "sha256": MODEL_SHA,
    "size": len(MODEL_BYTES),
}


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        ({"sha256": None, "size": None}, ["sha256: required", "size: required"]),
        ({"path": None}, ["path: required"]),
        ({"sha256": "abc"}, ["sha256: must be 64 hexadecimal digits, not 'abc'"]),
        ({"sha256": "g" * 64}, [f"sha256: must be 64 hexadecimal digits, not '{'g' * 36}..."]),
        ({"size": -1}, ["size: must be ≥ 0 (got -1)"]),
        ({"size": "12"}, ["size: must be an integer, not a string"]),
        ({"size": 12.0}, ["size: must be an integer, not the number 12.0"]),
        ({"path": "../x"}, ["path: '../x': '..' component"]),
        ({"path": "/etc/passwd"}, ["path: '/etc/passwd': absolute path"]),
        ({"path": "models/x.pth.tmp"},
         ["path: 'models/x.pth.tmp' is a temporary or partial file name, not an artifact"]),
        ({"path": "training/hex8_2p.npz"},
         ["path: 'training/hex8_2p.npz': a candidate report names a .pth or .pt file"]),
        ({"path": "models/candidate_square8_2p.pth"},
         ["path: 'models/candidate_square8_2p.pth' names config square8_2p, "
          "the report says hex8_2p"]),
        ({"path": "models/./canonical_hex8_2p.pth"},
         ["path: 'models/canonical_hex8_2p.pth': canonical_* and ringrift_best_* are "
          "fleetsync's promoted models, never a candidate"]),
        ({"path": "candidate_hex8_2p.pth"},
         ["path: 'candidate_hex8_2p.pth': a candidate model is a file under models/"]),
        ({"node": "gpu-9"}, ["node: 'gpu-9' is not a node of fleet 'test'"]),
        ({"node": "train1"},
         ["node: 'train1' is not a node of fleet 'test' (did you mean 'train-1'?)"]),
        ({"config": "square19_4p"},
         ["config: square19_4p is not a config of fleet 'test' (configs: hex8_2p, square8_2p)"]),
        ({"config": "chess_2p"},
         ["config: unknown config key 'chess_2p': expected {board}_{n}p with board in hex8, "
          "square8, square19, hexagonal and n in 2..4"]),
        ({"kind": "model"}, ["kind: unknown kind 'model': expected candidate or npz"]),
        ({"promote": "yes"}, ["promote: must be true or false, not a string"]),
        ({"colour": "red"},
         ["colour: unknown field (a report has config, node, path, sha256, size, promote)"]),
    ],
)  # fmt: skip
def test_validate_report_rejects_with_exact_messages(
    fleet: Fleet, change: dict[str, object], problems: list[str]
) -> None:
    data = {**GOOD, **change}
    for key in [k for k, v in change.items() if v is None]:
        del data[key]
    payload, found = validate_report(data, fleet)
    assert payload is None
    assert found == problems


def test_validate_report_lists_every_problem_at_once_and_normalises(fleet: Fleet) -> None:
    _, found = validate_report(
        {"kind": "npz", "config": "sq8_2", "node": "x", "path": "a/../b.npz",
         "sha256": "1", "size": -5, "promote": True},
        fleet,
    )  # fmt: skip
    assert found == [
        "node: 'x' is not a node of fleet 'test'",
        "path: 'a/../b.npz': '..' component",
        "sha256: must be 64 hexadecimal digits, not '1'",
        "promote: only candidate reports carry a promotion decision",
        "size: must be ≥ 0 (got -5)",
    ]
    payload, found = validate_report(
        {**GOOD, "config": "HEX8_2", "path": "./models//candidate_hex8_2p.pth",
         "sha256": MODEL_SHA.upper()},
        fleet,
    )  # fmt: skip
    assert found == []
    assert payload is not None
    assert (payload.config, payload.path, payload.sha256) == ("hex8_2p", MODEL, MODEL_SHA)


# ---- the Python API -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (("candidate", "hex8_2p", "train-1", MODEL), {"sha256": "xyz"},
         "sha256: must be 64 hexadecimal digits, not 'xyz'"),
        (("candidate", "hex8_2p", "train-1", "../x"), {}, "path: '../x': '..' component"),
        (("candidate", "hex8_2p", "gpu-9", MODEL), {},
         "node: 'gpu-9' is not a node of fleet 'test'"),
        (("candidate", "square19_4p", "train-1", "models/candidate_square19_4p.pth"), {},
         "config: square19_4p is not a config of fleet 'test' (configs: hex8_2p, square8_2p)"),
        (("model", "hex8_2p", "train-1", MODEL), {},
         "kind: unknown kind 'model': expected candidate or npz"),
        (("npz", "hex8_2p", "train-1", "training/hex8_2p.npz"), {"promote": True},
         "promote: only candidate reports carry a promotion decision"),
        (("candidate", "square8_2p", "train-1", "models/candidate_square8_2p.pth"), {},
         "path: models/candidate_square8_2p.pth on node train-1 does not exist"),
        (("candidate", "hex8_2p", "train-1", MODEL), {"sha256": "0" * 64},
         f"sha256: the report says {'0' * 64}, but {MODEL} on node train-1 hashes to "
         f"{MODEL_SHA}"),
    ],
)  # fmt: skip
def test_report_rejects_and_records_nothing(
    fleet_file: Path,
    instance: dg.DagsterInstance,
    args: tuple[str, ...],
    kwargs: dict[str, object],
    problem: str,
) -> None:
    result = report(*args, instance=instance, **kwargs)  # type: ignore[arg-type]
    assert not result.ok
    assert result.problems == (problem,)
    assert result.recorded_to is None
    assert_nothing_recorded(instance)


def test_stale_sidecar_is_rejected(fleet_file: Path, instance: dg.DagsterInstance) -> None:
    """A sidecar that disagrees with the file: one of the two is half-written."""
    sidecar = fleet_file.parent / "nodes" / "train-1" / f"{MODEL}.sha256"
    sidecar.write_text(f"{'1' * 64}  candidate_hex8_2p.pth\n")
    result = report("candidate", "hex8_2p", "train-1", MODEL, instance=instance)
    assert result.problems == (
        f"sidecar: {MODEL}.sha256 on node train-1 says {'1' * 64}, but the file hashes to "
        f"{MODEL_SHA} (stale sidecar or incomplete file)",
    )
    sidecar.write_text("garbage\n")
    result = report("candidate", "hex8_2p", "train-1", MODEL, instance=instance)
    assert result.problems == (
        f"sidecar: {MODEL}.sha256 on node train-1 is not '<sha256>  <file name>'",
    )
    assert_nothing_recorded(instance)


def test_bad_inventory_is_a_problem_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance
) -> None:
    monkeypatch.setenv("FLEETSYNC_FLEET", str(tmp_path / "missing.yaml"))
    result = report("candidate", "hex8_2p", "train-1", MODEL, instance=instance)
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"{tmp_path / 'missing.yaml'}: cannot read:")
    assert_nothing_recorded(instance)


def test_good_report_is_recorded_with_partition_and_metadata(
    fleet_file: Path, instance: dg.DagsterInstance
) -> None:
    # An alias config and an unnormalised path: recorded under the canonical forms.
    result = report(
        "candidate", "hex8_2", "train-1", "./models/candidate_hex8_2p.pth", promote=True,
        instance=instance,
    )  # fmt: skip
    assert result.ok, result.problems
    assert result.recorded_to == "instance"
    records = materializations(instance, CANDIDATE)
    assert len(records) == 1
    mat = records[0].event_log_entry.asset_materialization
    assert mat is not None
    assert mat.partition == "hex8_2p"
    assert {k: v.value for k, v in mat.metadata.items()} == {
        "config": "hex8_2p",
        "node": "train-1",
        "path": MODEL,
        "sha256": MODEL_SHA,
        "size": len(MODEL_BYTES),
        "promote": True,
    }
    assert mat.tags is not None and mat.tags["dagster/data_version"] == MODEL_SHA
    assert instance.get_materialized_partitions(CANDIDATE) == {"hex8_2p"}
    assert materializations(instance, NPZ) == []

    # The receiving side reads back exactly what was reported.
    found = candidate_from_event(records[0])
    assert isinstance(found, Candidate)
    assert (found.config, found.node, found.path, found.sha256, found.size, found.promote) == (
        "hex8_2p", "train-1", MODEL, MODEL_SHA, len(MODEL_BYTES), True
    )  # fmt: skip
    assert found.storage_id == records[0].storage_id

    # A given sha256 that matches the node (any case) is accepted too.
    again = report("candidate", "hex8_2p", "train-1", MODEL, MODEL_SHA.upper(), instance=instance)
    assert again.ok, again.problems
    assert len(materializations(instance, CANDIDATE)) == 2


def test_npz_report_goes_to_training_npz(fleet_file: Path, instance: dg.DagsterInstance) -> None:
    shard = fleet_file.parent / "nodes" / "train-1" / "training" / "square8_2p.npz"
    shard.parent.mkdir()
    shard.write_bytes(b"shard bytes")
    result = report("npz", "square8_2p", "train-1", "training/square8_2p.npz", instance=instance)
    assert result.ok, result.problems
    (record,) = materializations(instance, NPZ)
    mat = record.event_log_entry.asset_materialization
    assert mat is not None and mat.partition == "square8_2p"
    assert "promote" not in mat.metadata
    assert isinstance(report_from_event(record), ReportPayload)
    # ... and it is not a candidate.
    assert isinstance(candidate_from_event(record), Rejected)
    assert materializations(instance, CANDIDATE) == []


def test_without_dagster_home_the_report_is_refused_in_one_line(
    fleet_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = report("candidate", "hex8_2p", "train-1", MODEL)
    assert not result.ok
    assert len(result.problems) == 1 and result.problems[0].startswith("dagster instance:")
    assert "\n" not in result.problems[0]


# ---- the receiving side -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "metadata", "reason"),
    [
        ("hex8_2p", {**GOOD, "path": None},
         "path: must be a string, not null"),
        ("hex8_2p", {k: v for k, v in GOOD.items() if k not in ("kind", "sha256")},
         "sha256: required"),
        ("hex8_2p", {**GOOD, "size": -3}, "size: must be ≥ 0 (got -3)"),
        (None, GOOD, "partition: required (the config key)"),
        ("chess_2p", GOOD, "partition: 'chess_2p' is not a config of fleet 'test'"),
        ("square8_2p", GOOD, "partition: square8_2p does not match config hex8_2p"),
    ],
)  # fmt: skip
def test_candidate_from_event_rejects_invalid_events(
    fleet: Fleet,
    instance: dg.DagsterInstance,
    partition: str | None,
    metadata: dict[str, object],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meta = {k: v for k, v in metadata.items() if k != "kind"}
    instance.report_runless_asset_event(
        dg.AssetMaterialization(CANDIDATE, partition=partition, metadata=meta)  # type: ignore[arg-type]
    )
    (record,) = materializations(instance, CANDIDATE)
    with caplog.at_level("WARNING", logger="fleetsync.report"):
        found = candidate_from_event(record, fleet)
    assert isinstance(found, Rejected)
    assert found.reason == reason
    assert found.storage_id == record.storage_id
    assert f"ignoring reported materialization: {reason}" in caplog.text


def test_candidate_from_event_takes_entries_and_materializations(fleet: Fleet) -> None:
    meta: dict[str, Any] = {k: v for k, v in GOOD.items() if k != "kind"}
    meta["loss"] = 0.25  # the emitter's own extras are ignored, not rejected
    mat = dg.AssetMaterialization(CANDIDATE, partition="hex8_2p", metadata=meta)
    assert isinstance(candidate_from_event(mat, fleet), Candidate)
    other = dg.AssetMaterialization(["games", "canonical"], partition="hex8_2p", metadata={})
    found = candidate_from_event(other, fleet)
    assert isinstance(found, Rejected)
    assert found.reason == "asset: games/canonical is not a reportable asset"


# ---- the command line ---------------------------------------------------------------------


def cli() -> list[str]:
    return [str(BIN / "fleetsync"), "report"]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.fixture
def cli_env(tmp_path: Path, fleet_file: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    return env


def test_cli_records_a_good_report(cli_env: dict[str, str]) -> None:
    done = run_cli(["candidate", "--config", "hex8_2p", "--node", "train-1", "--path", MODEL,
                    "--promote"], cli_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"reported models/candidate [hex8_2p]: {MODEL} on node train-1")
    with dg.DagsterInstance.from_config(cli_env["DAGSTER_HOME"]) as inst:
        (record,) = materializations(inst, CANDIDATE)
        found = candidate_from_event(record, load_inventory(cli_env["FLEETSYNC_FLEET"]))
    assert isinstance(found, Candidate) and found.promote and found.sha256 == MODEL_SHA


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (["candidate", "--config", "hex8_2p", "--node", "train-1", "--path", MODEL,
          "--sha256", "f" * 64],
         [f"sha256: the report says {'f' * 64}, but {MODEL} on node train-1 hashes to "
          f"{MODEL_SHA}"]),
        (["model", "--config", "chess_2p", "--node", "gpu-9", "--path", "../x", "--sha256", "z"],
         ["kind: unknown kind 'model': expected candidate or npz",
          "config: unknown config key 'chess_2p': expected {board}_{n}p with board in hex8, "
          "square8, square19, hexagonal and n in 2..4",
          "node: 'gpu-9' is not a node of fleet 'test'",
          "path: '../x': '..' component",
          "sha256: must be 64 hexadecimal digits, not 'z'"]),
        (["candidate"], ["config: required (--config)", "node: required (--node)",
                         "path: required (--path)"]),
    ],
)  # fmt: skip
def test_cli_rejects_with_one_line_per_problem(
    cli_env: dict[str, str], args: list[str], lines: list[str]
) -> None:
    done = run_cli(args, cli_env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == lines
    assert "Traceback" not in done.stderr + done.stdout
    with dg.DagsterInstance.from_config(cli_env["DAGSTER_HOME"]) as inst:
        assert_nothing_recorded(inst)


def test_cli_with_a_broken_inventory(cli_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("fleet: x\nnodes: 3\n")
    done = run_cli(["candidate", "--config", "hex8_2p", "--node", "train-1", "--path", MODEL],
                   {**cli_env, "FLEETSYNC_FLEET": str(broken)})  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{broken}: nodes: must be a list, not a number"]
    assert "Traceback" not in done.stderr


# ---- over HTTP, against a real dagster-webserver ------------------------------------------


@contextlib.contextmanager
def running_webserver(workspace: Path, env: dict[str, str]) -> Iterator[tuple[int, list[str]]]:
    """A real `dagster-webserver` on 127.0.0.1; yields (port, stderr lines so far).

    Started in its own session and stopped by its process group id (never by name)."""
    port = free_port()
    log_path = workspace.parent / f"webserver-{port}.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=workspace.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "webserver did not come up"
                time.sleep(0.5)
        yield port, log_path.read_text().splitlines()
    finally:
        stop_group(server)


def write_workspace(directory: Path, *, with_training_repo: bool = False) -> Path:
    """A workspace: fleetsync's declaration of models/candidate (stub), optionally plus the
    example training repo as a second location — exactly the YAML the README gives."""
    (directory / "fleetsync_stub.py").write_text(FLEETSYNC_STUB)
    locations: list[dict[str, object]] = [
        {
            "python_file": {
                "relative_path": "fleetsync_stub.py",
                "working_directory": str(REPO),
                "location_name": "fleetsync",
            }
        }
    ]
    if with_training_repo:
        locations.append(
            {
                "python_module": {
                    "module_name": "training_repo.definitions",
                    "working_directory": str(REPO / "examples" / "training_repo"),
                    "location_name": "training_repo",
                }
            }
        )
    path = directory / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": locations}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def webserver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, Path]]:
    """(url, DAGSTER_HOME, fleet.yaml) of a real webserver on a fresh instance."""
    root = tmp_path_factory.mktemp("http")
    fleet_path = write_fleet(root)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_path)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    with running_webserver(write_workspace(root), env) as (port, _):
        yield f"http://127.0.0.1:{port}", home, fleet_path


def test_http_report_shows_up_as_a_materialization(webserver: tuple[str, Path, Path]) -> None:
    url, home, fleet_path = webserver
    fleet = load_inventory(fleet_path)
    result = report("candidate", "hex8_2p", "train-1", MODEL, url=url + "/", fleet=fleet)
    assert result.ok, result.problems
    assert result.recorded_to == url + "/"
    with dg.DagsterInstance.from_config(str(home)) as inst:
        records = [
            r for r in materializations(inst, CANDIDATE)
            if (m := r.event_log_entry.asset_materialization) and m.metadata.get("node")
        ]  # fmt: skip
        assert records, "the webserver recorded nothing"
        mat = records[0].event_log_entry.asset_materialization
        assert mat is not None and mat.partition == "hex8_2p"
        assert mat.tags is not None and mat.tags.get("dagster/data_version") == MODEL_SHA
        found = candidate_from_event(records[0], fleet)
    assert isinstance(found, Candidate)
    assert (found.node, found.path, found.sha256) == ("train-1", MODEL, MODEL_SHA)
    # And the UI sees it on the declared asset.
    data = graphql(
        int(url.rsplit(":", 1)[1]),
        '{ assetNodes(assetKeys: [{path: ["models", "candidate"]}]) '
        "{ assetKey { path } isMaterializable isExecutable } }",
    )
    assert data["assetNodes"] == [
        {"assetKey": {"path": ["models", "candidate"]}, "isMaterializable": False,
         "isExecutable": False}
    ]  # fmt: skip


def test_http_rejection_records_nothing(webserver: tuple[str, Path, Path]) -> None:
    url, home, fleet_path = webserver
    fleet = load_inventory(fleet_path)
    with dg.DagsterInstance.from_config(str(home)) as inst:
        before = len(materializations(inst, CANDIDATE))
    bad = report("candidate", "hex8_2p", "train-1", MODEL, "0" * 64, url=url, fleet=fleet)
    assert bad.problems == (
        f"sha256: the report says {'0' * 64}, but {MODEL} on node train-1 hashes to {MODEL_SHA}",
    )
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert len(materializations(inst, CANDIDATE)) == before


def test_garbage_posted_straight_to_the_webserver_is_ignored_on_receipt(
    webserver: tuple[str, Path, Path],
) -> None:
    """A client that bypasses `fleetsync report`: Dagster records it, we must not use it."""
    url, home, fleet_path = webserver
    body = {
        "partition": "nonsense_9p",
        "metadata": {"node": "gpu-404", "path": "../../etc/passwd", "sha256": "none",
                     "size": -1, "promote": "true"},
        "description": "garbage",
    }  # fmt: skip
    req = urllib.request.Request(
        f"{url}/report_asset_materialization/models/candidate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200  # Dagster itself validates nothing
    with dg.DagsterInstance.from_config(str(home)) as inst:
        records = [
            r for r in materializations(inst, CANDIDATE)
            if (m := r.event_log_entry.asset_materialization) and m.description == "garbage"
        ]  # fmt: skip
    assert len(records) == 1
    found = candidate_from_event(records[0], load_inventory(fleet_path))
    assert isinstance(found, Rejected)
    assert found.problems == (
        "partition: 'nonsense_9p' is not a config of fleet 'test'",
        "config: required",
        "node: 'gpu-404' is not a node of fleet 'test'",
        "path: '../../etc/passwd': '..' component",
        "sha256: must be 64 hexadecimal digits, not 'none'",
        "promote: must be true or false, not a string",
        "size: must be ≥ 0 (got -1)",
    )


def test_http_unreachable_webserver_is_one_problem_line(fleet_file: Path, fleet: Fleet) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = report("candidate", "hex8_2p", "train-1", MODEL, url=url, fleet=fleet)
    assert not result.ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"url: cannot reach {url}: ")
