"""Transient-only retries under Dagster's real retry policy, and the `transfer_failures`
sensor on real failed runs: catalog row, breaker, run tags, `fleetsync status`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import NodeUnreachable
from resources.transport.programs import RemoteProgramFailed
from resources.transport.ssh import HostKeyRefused
from sensors.transfer_failures import NODE_TAG, transfer_failures
from sync_assets.cli.main import main as fleetsync
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.engine import breaker
from sync_assets.fleet.inventory import load_inventory
from sync_assets.games.assets import games_selfplay
from sync_assets.retries import network_retry, retry_transient_only

TINY_DELAY_S = 0.01


def flaky_asset(errors: list[Exception | None], attempts: list[int]) -> dg.AssetsDefinition:
    """An asset under the real policy (tiny delays) that raises errors[i] at attempt i
    (None: succeeds), counting attempts."""

    def flaky() -> None:
        attempts.append(1)
        error = errors[min(len(attempts), len(errors)) - 1]
        if error is not None:
            raise error

    return dg.asset(name="flaky", retry_policy=network_retry(TINY_DELAY_S))(
        retry_transient_only(flaky)
    )


def retries_of(result: dg.ExecuteInProcessResult) -> int:
    return sum(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def failure_from(description: str, cause: Exception) -> dg.Failure:
    """What an asset raises with `raise dg.Failure(description) from cause`."""
    failure = dg.Failure(description=description)
    failure.__cause__ = cause
    return failure


EXPORTER_FAILED = RemoteProgramFailed("train-1", "exporter", 1, None, "KeyError: 'moves'")


@pytest.mark.parametrize(
    "error",
    [
        HostKeyRefused("gpu-1", "node gpu-1: host key of 10.0.0.5:22 does not match"),
        EXPORTER_FAILED,
        # training/npz tells an exporter's failure in its own words, raised from it.
        failure_from("config hex8_2p: the exporter failed", EXPORTER_FAILED),
        ValueError("a bad report"),
    ],
)
def test_a_permanent_error_is_attempted_once(error: Exception) -> None:
    attempts: list[int] = []
    result = dg.materialize([flaky_asset([error], attempts)], raise_on_error=False)
    assert not result.success
    assert len(attempts) == 1 and retries_of(result) == 0


def test_a_transient_error_is_retried_with_backoff_until_the_policy_gives_up() -> None:
    attempts: list[int] = []
    unreachable = NodeUnreachable("gpu-1", "node gpu-1: ssh session failed: Connection reset")
    result = dg.materialize([flaky_asset([unreachable], attempts)], raise_on_error=False)
    assert not result.success
    assert len(attempts) == 4 and retries_of(result) == 3  # max_retries = 3

    for failure in (
        failure_from("config hex8_2p: export", NodeUnreachable("gpu-1", "node gpu-1: timed out")),
        dg.Failure("node gpu-1: 2 transfer(s) failed"),  # of its own: the next attempt replans
    ):
        attempts.clear()
        result = dg.materialize([flaky_asset([failure], attempts)], raise_on_error=False)
        assert len(attempts) == 4 and retries_of(result) == 3

    attempts.clear()
    healed = flaky_asset([ConnectionResetError("Connection reset by peer"), None], attempts)
    assert dg.materialize([healed]).success and len(attempts) == 2


@pytest.fixture
def broken_fleet(tmp_path: Path) -> Iterator[tuple[dict[str, Any], dg.DagsterInstance, Path]]:
    """A demo fleet of local nodes whose gpu-1 has a file where its data root should be."""
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=10)
    doc = yaml.safe_load(fleet_file.read_text())
    broken_root = tmp_path / "not-a-directory"
    broken_root.write_text("")
    for entry in doc["nodes"]:
        if entry["name"] == "gpu-1":
            entry["data_root"] = str(broken_root)
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("nodes", [n.name for n in load_inventory(fleet_file).nodes])
        yield resources, instance, fleet_file


def sense(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance, catalog: Catalog):
    context = dg.build_run_status_sensor_context(
        sensor_name="transfer_failures",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"catalog": catalog},
    ).for_run_failure()
    return transfer_failures(context)


def test_a_real_asset_fails_a_missing_data_root_at_once_and_the_sensor_records_it(
    broken_fleet, monkeypatch, capsys
) -> None:
    resources, instance, fleet_file = broken_fleet
    catalog: Catalog = resources["catalog"]
    started = time.monotonic()
    result = dg.materialize(
        [games_selfplay], partition_key="gpu-1", instance=instance, resources=resources,
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success and retries_of(result) == 0
    assert time.monotonic() - started < 5  # the policy's first delay is 5 s: none was taken
    [failure] = result.get_step_failure_events()
    user = failure.step_failure_data.user_failure_data
    assert {k: v.value for k, v in user.metadata.items()} == {
        "error_class": "TransferError",
        "transient": False,
        "node": "gpu-1",
    }

    assert sense(result, instance, catalog) is None
    [row] = catalog.recent_run_failures(10).to_dict("records")
    assert (row["run_id"], row["job"], row["node"]) == (
        result.run_id, result.dagster_run.job_name, "gpu-1",
    )  # fmt: skip
    assert "not a directory" in row["error"] and not row["transient"]
    assert row["step"] == failure.step_key
    state = breaker.state(catalog, "gpu-1")
    assert state.failures == pytest.approx(1.0, abs=0.01) and state.last_failure_at is not None
    assert "not a directory" in catalog.breaker("gpu-1").last_error
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[NODE_TAG] == "gpu-1" and tags["fleetsync/failure"] == "permanent"

    # A tick that sees the same run again records nothing twice.
    sense(result, instance, catalog)
    assert len(catalog.recent_run_failures(10)) == 1

    monkeypatch.setenv("FLEETSYNC_FLEET", str(fleet_file))
    monkeypatch.setenv("FLEETSYNC_CATALOG_URL", catalog.url)
    assert fleetsync(["status"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Recent failed runs") :]
    [line] = [line for line in section.splitlines() if line.lstrip().startswith("gpu-1 ")]
    assert result.dagster_run.job_name in line and "permanent" in line
    when = datetime.fromtimestamp(row["failed_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert when in line and row["error"].splitlines()[0][:60] in line


def test_the_sensor_records_a_transient_failure_against_the_node_the_error_names(
    tmp_path: Path,
) -> None:
    attempts: list[int] = []
    error = NodeUnreachable(
        "store-1", "node store-1: cannot connect: [Errno 111] Connection refused"
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [flaky_asset([error], attempts)], instance=instance, raise_on_error=False
        )
        catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
        sense(result, instance, catalog)
        [row] = catalog.recent_run_failures(10).to_dict("records")
        assert (row["node"], bool(row["transient"]), row["file"]) == ("store-1", True, "")
        assert row["error"] == str(error)
        assert breaker.state(catalog, "store-1").failures == pytest.approx(1.0, abs=0.01)
        assert instance.get_run_by_id(result.run_id).tags["fleetsync/failure"] == "transient"
