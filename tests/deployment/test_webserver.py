"""`make dev`'s promise: a real dagster-webserver shows the demo's runs and assets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RUNS_QUERY = """
{ runsOrError { ... on Runs { results { jobName status tags { key value } } } } }
"""
ASSETS_QUERY = "{ assetNodes { assetKey { path } } }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


def stop_group(process: subprocess.Popen) -> None:
    """End a process started with `start_new_session` and everything in its group (the
    webserver's code server and the runs it launched): SIGTERM, then SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def demo_home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    done = subprocess.run(
        [
            str(BIN / "fleetsync"),
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--nodes",
            "4",
            "--games",
            "40",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Data at risk (no durable copy): 0.0 MB" in done.stdout
    env["FLEETSYNC_FLEET"] = str(tmp_path / "demo" / "fleet.yaml")
    return env


def test_webserver_shows_demo_runs_and_assets(demo_home):
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=demo_home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "webserver did not come up"
                time.sleep(1)
        runs = graphql(port, RUNS_QUERY)["runsOrError"]["results"]
        by_job: dict[str, set[str]] = {}
        for run in runs:
            by_job.setdefault(run["jobName"], set()).add(run["status"])
        assert by_job.keys() >= {"probe_nodes", "collect_games", "merge_games"}
        assert all(statuses == {"SUCCESS"} for statuses in by_job.values()), by_job
        partitions = {
            t["value"]
            for r in runs
            if r["jobName"] == "collect_games"
            for t in r["tags"]
            if t["key"] == "dagster/partition"
        }
        assert partitions == {"coord-1", "store-1", "train-1", "gpu-1"}
        keys = {"/".join(a["assetKey"]["path"]) for a in graphql(port, ASSETS_QUERY)["assetNodes"]}
        assert {"fleet/node_status", "games/selfplay", "games/canonical"} <= keys
    finally:
        stop_group(server)
