"""`sync(..., url=U, wait=True)` follows its runs for at most `timeout_s`: runs that stay
QUEUED (no dagster-daemon serves the run queue) fail their targets with their status
instead of waiting forever; each status change is told as it happens; a GraphQL server
that is not Dagster is one line, never a KeyError."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync_assets.cli import sync as sync_mod
from sync_assets.cli.sync import Deployment, client_address, unfinished_reason
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.fleet.inventory import load_inventory


class ScriptedDeployment:
    """A deployment whose runs go through `script` (one status per poll, the last kept)."""

    script: tuple[str, ...] = ("QUEUED",)

    def __init__(self, url: str, address: Any) -> None:
        self.polls = 0

    def repository(self, job: str) -> dict[str, str]:
        return {"repositoryLocationName": "l", "repositoryName": "r"}

    def add_missing_partitions(self, *args: Any) -> None: ...

    def submit(self, repo: Any, job: str, tags: Any) -> str:
        return "run-" + tags["dagster/partition"]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        status = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return {i: status for i in ids}

    def events(self, run_id: str) -> list[Any]:
        return []


@pytest.fixture
def fleet_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fleet = build_demo_fleet(tmp_path / "demo", 4, 5)
    monkeypatch.setenv("FLEETSYNC_FLEET", str(fleet))
    return [n.name for n in load_inventory(fleet).nodes]


def test_wait_ends_when_runs_stay_queued_naming_each_target(
    fleet_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_mod, "Deployment", ScriptedDeployment)
    seen: list[tuple[str, str, str]] = []
    box: dict[str, Any] = {}

    def request() -> None:
        box["result"] = sync_mod.sync(
            "status", ["all"], url="http://x:3000", wait=True, poll_s=0.01, timeout_s=0.3,
            on_status=lambda *told: seen.append(told),
        )  # fmt: skip

    waiter = threading.Thread(target=request, daemon=True)
    waiter.start()
    waiter.join(20)
    assert not waiter.is_alive(), "sync --wait hangs on runs that never leave QUEUED"
    result = box["result"]
    assert not result.ok and sync_mod.exit_code(result) == sync_mod.EXIT_FAILED
    assert [t.node for t in result.failed] == fleet_names
    for target in result.failed:
        assert target.run_id == f"run-{target.node}"
        assert re.fullmatch(
            r"still QUEUED after \d+ s: is a dagster-daemon running\?", target.reason
        )
    # QUEUED told once per run (it never changed after).
    assert sorted(seen) == sorted((n, f"run-{n}", "QUEUED") for n in fleet_names)


def test_status_changes_are_told_then_the_outcome(
    fleet_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Starting(ScriptedDeployment):
        script = ("QUEUED", "QUEUED", "STARTED", "STARTED", "SUCCESS")

    monkeypatch.setattr(sync_mod, "Deployment", Starting)
    seen: list[tuple[str, str, str]] = []
    result = sync_mod.sync("status", "gpu-1", url="http://x:3000", poll_s=0.001,
                           on_status=lambda *told: seen.append(told))  # fmt: skip
    assert result.ok and [t.node for t in result.targets] == ["gpu-1"]
    assert not result.targets[0].submitted
    assert seen == [("gpu-1", "run-gpu-1", "QUEUED"), ("gpu-1", "run-gpu-1", "STARTED")]


def test_a_run_started_but_not_ended_by_the_timeout_goes_on(
    fleet_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Running(ScriptedDeployment):
        script = ("STARTED",)

    monkeypatch.setattr(sync_mod, "Deployment", Running)
    result = sync_mod.sync("games", "gpu-1", url="http://x", poll_s=0.01, timeout_s=0.05)
    [target] = result.failed
    assert re.fullmatch(
        r"still STARTED after \d+ s \(the run goes on in the deployment\)", target.reason
    )


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan")])
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(
    fleet_names: list[str], timeout_s: float
) -> None:
    result = sync_mod.sync("games", url="http://x", timeout_s=timeout_s)
    assert result.usage and sync_mod.exit_code(result) == sync_mod.EXIT_USAGE
    assert result.problems == (f"timeout: {timeout_s!r} is not a number of seconds above 0",)


@given(st.sampled_from(["SUBMITTED", "QUEUED", "NOT_STARTED", "STARTING", "STARTED",
                        "CANCELING"]), st.floats(0, 1e6))  # fmt: skip
def test_an_unfinished_run_names_its_status_and_blames_the_daemon_only_if_never_started(
    status: str, waited: float
) -> None:
    reason = unfinished_reason(status, waited)
    assert reason.startswith(f"still {status} after {round(waited)} s")
    never_started = status in {"SUBMITTED", "QUEUED", "NOT_STARTED", "STARTING"}
    assert reason.endswith(": is a dagster-daemon running?") == never_started
    assert reason.endswith("(the run goes on in the deployment)") == (not never_started)


@pytest.mark.parametrize(
    "reply", [{"hello": "world"}, {"repositoriesOrError": "x"}, {"repositoriesOrError": {}}, []]
)
def test_a_graphql_server_that_is_not_dagster_is_one_line(reply: Any) -> None:
    address, _ = client_address("http://127.0.0.1:9")
    deployment = Deployment("http://127.0.0.1:9", address)
    deployment.client._execute = lambda *args: reply  # type: ignore[method-assign]
    with pytest.raises(sync_mod.DeploymentError) as raised:
        deployment.repository("collect_games")
    line = str(raised.value)
    assert line.startswith(
        "deployment http://127.0.0.1:9: URL does not answer like a Dagster webserver: "
        "no repositoriesOrError in its reply "
    )
    assert "\n" not in line


def test_the_command_prints_progress_and_names_each_queued_target_exit_1(
    fleet_names: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sync_assets.cli.main import main

    monkeypatch.setattr(sync_mod, "Deployment", ScriptedDeployment)
    argv = ["sync", "games", "--targets", "gpu-1", "train-1", "--url", "http://x:3000", "--wait"]
    assert main([*argv, "--timeout", "0.2"]) == sync_mod.EXIT_FAILED
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    nodes = ["train-1", "gpu-1"]  # inventory order
    still = r"FAILED: still QUEUED after \d+ s: is a dagster-daemon running\?"
    expected = [
        *(re.escape(f"node {n}: submitted (run run-{n})") for n in nodes),
        *(re.escape(f"node {n}: queued (run run-{n})") for n in nodes),
        *(rf"node {n}: {still}" for n in nodes),
    ]
    lines = out.splitlines()
    assert len(lines) == len(expected), out
    assert all(re.fullmatch(e, line) for e, line in zip(expected, lines, strict=True)), out
    summary = err.splitlines()
    assert summary[:2] == ["sync games: 0 of 2 target(s) ok", "failed: train-1, gpu-1"]
    assert len(summary) == 4, err
    failed = zip(nodes, summary[2:], strict=True)
    assert all(re.fullmatch(rf"  node {n}: {still}", line) for n, line in failed), err
