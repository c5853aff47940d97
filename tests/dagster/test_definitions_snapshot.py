"""The code location's public surface, pinned: a snapshot of `Definitions`, and CONTRACT.md.

`render()` lists, as sorted text, every asset key of `sync_assets.definitions.defs` with
its partitions definition (static: its keys; dynamic: its name), every asset check (asset
key and check name), every job with the assets it materializes, every sensor with its
default status, and every resource key. The test compares it with
`definitions_snapshot.txt` next to this file, so adding, removing or renaming any of them
fails here and shows up as a diff in review.

After an intended change, regenerate the snapshot, read its diff, and update CONTRACT.md
(and the README's migration notes) to match:

    FLEETSYNC_UPDATE_SNAPSHOT=1 .venv/bin/pytest -q tests/dagster/test_definitions_snapshot.py

The snapshot is rendered in a fresh interpreter with no `FLEETSYNC_FLEET` and an empty
working directory: the static `configs` partitions are read from the inventory when the
code location loads, and the snapshot pins the default (the 12 standard keys), whatever
inventory this test process or a developer's ./fleet.yaml would name.

The CONTRACT.md checks are independent of the snapshot: the asset keys and sensor names
that CONTRACT.md lists are pinned below as literals (the repository has no copy of it).
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from sync_assets.definitions import defs

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("definitions_snapshot.txt")
UPDATE_ENV = "FLEETSYNC_UPDATE_SNAPSHOT"

# CONTRACT.md, section "Asset keys": these are partitioned by `nodes` (dynamic) ...
CONTRACT_NODE_ASSETS = [
    "fleet/node_status",
    "games/selfplay",
    "elo/matches",
    "training/npz_on_node",
    "models/on_node",
    "elo/on_node",
]
# ... and these by `configs` (static).
CONTRACT_CONFIG_ASSETS = [
    "games/canonical",
    "training/npz",
    "models/candidate",
    "models/promoted",
    "elo/ratings",
]
# CONTRACT.md, section "Sensors".
CONTRACT_SENSORS = [
    "node_discovery",
    "replication_deficit",
    "ephemeral_sync",
    "disk_pressure",
    "idle_shutdown",
    "model_promotion",
    "training_trigger",
    "transfer_failures",
]
# Listed in CONTRACT.md but not built yet (the sensor issues that follow issue 9). Strict
# xfail: when one lands, its test passes unexpectedly and fails the run until it is
# removed from here.
SENSORS_NOT_BUILT_YET = {
    "disk_pressure",
    "idle_shutdown",
}
# Sensors beyond CONTRACT.md's list: extensions, each documented in the README.
EXTENSION_SENSORS = {
    "fleet_probe",  # README "Probing the whole fleet": one probe run per tick
    "fleet_audit",  # README "Audit and scrub on rotation"
    "routine_sync",  # README "Automation": collection from nodes that do not vanish
    "merge_trigger",  # README "Automation": the games, shard and Elo chains
    "shard_distribution",
    "ratings_trigger",
    "ratings_distribution",
}


# ---- the snapshot ---------------------------------------------------------------------


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str:
    if partitions_def is None:
        return "unpartitioned"
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic {partitions_def.name}"
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        # Definition order is kept: it is the order the UI and backfills use.
        return "static " + ",".join(partitions_def.get_partition_keys())
    return f"other {type(partitions_def).__name__}"  # a new kind must show up as a diff


def render(definitions: dg.Definitions) -> str:
    """The public surface of `definitions` as stable text, one item per line."""
    lines = ["[assets]"]
    specs = sorted(definitions.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())
    for spec in specs:
        lines.append(f"{spec.key.to_user_string()}  partitions: {_partitions(spec.partitions_def)}")

    lines.append("[asset_checks]")
    check_keys = definitions.resolve_asset_graph().asset_check_keys
    lines += sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in check_keys)

    lines.append("[jobs]")
    for job in sorted(definitions.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue  # Dagster's implicit asset job, not ours
        assets = sorted(key.to_user_string() for key in job.asset_layer.executable_asset_keys)
        lines.append(f"{job.name}  assets: {', '.join(assets)}")

    lines.append("[sensors]")
    for sensor in sorted(definitions.sensors or [], key=lambda s: s.name):
        lines.append(f"{sensor.name}  default: {sensor.default_status.name}")

    lines.append("[resources]")
    lines += sorted(definitions.resources or {})
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`render(defs)` from a fresh interpreter that sees no inventory (see the docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "FLEETSYNC_FLEET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-m", "tests.dagster.test_definitions_snapshot"],
        cwd=tmp_path_factory.mktemp("no_inventory"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_definitions_match_the_snapshot(rendered: str) -> None:
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(rendered)
    pinned = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            pinned.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=str(SNAPSHOT.relative_to(REPO)),
            tofile="sync_assets.definitions.defs",
        )
    )
    assert not diff, (
        "The code location's public surface changed. If that is intended, regenerate with "
        f"{UPDATE_ENV}=1, review the diff and update CONTRACT.md:\n{diff}"
    )


# ---- against CONTRACT.md --------------------------------------------------------------

DEFINED_ASSETS = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
DEFINED_SENSORS = {sensor.name for sensor in defs.sensors or []}


@pytest.mark.parametrize("key", CONTRACT_NODE_ASSETS)
def test_contract_node_asset_is_defined_per_node(key: str) -> None:
    assert key in DEFINED_ASSETS, f"CONTRACT.md lists asset {key}; Definitions lacks it"
    partitions_def = DEFINED_ASSETS[key].partitions_def
    assert isinstance(partitions_def, dg.DynamicPartitionsDefinition)
    assert partitions_def.name == "nodes"


@pytest.mark.parametrize("key", CONTRACT_CONFIG_ASSETS)
def test_contract_config_asset_is_defined_per_config(key: str) -> None:
    assert key in DEFINED_ASSETS, f"CONTRACT.md lists asset {key}; Definitions lacks it"
    assert isinstance(DEFINED_ASSETS[key].partitions_def, dg.StaticPartitionsDefinition)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                name in SENSORS_NOT_BUILT_YET, reason="not built yet", strict=True
            ),
        )
        for name in CONTRACT_SENSORS
    ],
)
def test_contract_sensor_is_defined(name: str) -> None:
    assert name in DEFINED_SENSORS, f"CONTRACT.md lists sensor {name}; Definitions lacks it"


def test_every_defined_asset_and_sensor_is_in_the_contract() -> None:
    """The other direction: nothing public that CONTRACT.md does not list."""
    assert not set(DEFINED_ASSETS) - set(CONTRACT_NODE_ASSETS + CONTRACT_CONFIG_ASSETS)
    assert not set(CONTRACT_NODE_ASSETS) & set(CONTRACT_CONFIG_ASSETS)
    assert not DEFINED_SENSORS - set(CONTRACT_SENSORS) - EXTENSION_SENSORS


if __name__ == "__main__":  # the `rendered` fixture's fresh interpreter
    sys.stdout.write(render(defs))
