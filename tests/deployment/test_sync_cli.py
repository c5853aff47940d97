"""`fleetsync sync` as a user runs it, on a local demo fleet and a fresh Dagster instance."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.fleet.inventory import Fleet, load_inventory

REPO = Path(__file__).resolve().parents[2]
FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home)
    fleet_file = build_demo_fleet(tmp_path / "demo", 4, 20)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    return env


def games_in(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM games").fetchone()[0])
    finally:
        con.close()


def assert_every_game_db_collected(fleet: Fleet) -> list[Path]:
    """Independently: each self-play DB has one snapshot with as many games on each durable
    node. Returns those snapshots."""
    sources = [
        db
        for n in fleet.nodes
        for db in sorted(Path(n.data_root, "games").glob("*.db"))
        if "selfplay" in n.roles
    ]
    assert sources
    collected = []
    for durable in fleet.durable_nodes:
        for db in sources:
            node = db.parents[1].name
            copies = list(
                Path(durable.data_root, "games", "collected", node).glob(f"{db.stem}.*.db")
            )
            assert len(copies) == 1, (durable.name, db)
            assert games_in(copies[0]) == games_in(db) > 0
            collected += copies
    return collected


def test_sync_games_all_collects_every_game_db_onto_every_durable_node(demo_env, tmp_path):
    argv = [FLEETSYNC, "sync", "games", "--targets", "all", "--priority", "high"]
    done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    fleet = load_inventory(demo_env["FLEETSYNC_FLEET"])
    assert [line for line in done.stdout.splitlines() if line.startswith("node ")] == [
        f"node {n.name}: ok" for n in fleet.nodes
    ]
    assert "sync games: 4 of 4 target(s) ok" in done.stdout

    assert_every_game_db_collected(fleet)

    # The runs are on the instance (so in the UI), tagged as urgent syncs of games.
    import dagster as dg

    with dg.DagsterInstance.from_config(demo_env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(n.name for n in fleet.nodes)
    assert {(r.job_name, r.tags["dagster/priority"], r.tags["fleetsync/sync"]) for r in runs} == {
        ("collect_games", "10", "games")
    }


def test_sync_unknown_target_exits_2_naming_it_and_runs_nothing(demo_env):
    argv = [FLEETSYNC, "sync", "status", "--targets", "gpu-1,nosuch"]
    done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "targets: unknown node(s): nosuch" in done.stderr
    assert not (Path(demo_env["DAGSTER_HOME"]) / "history").exists()


def test_sync_with_an_invalid_inventory_prints_its_problems(demo_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fleet: x\nnodes:\n  - name: gpu-1\n    transport: ssh\n"
                   "    roles: [selfplay]\n    data_root: /data\n")  # fmt: skip
    env = {**demo_env, "FLEETSYNC_FLEET": str(bad)}
    done = subprocess.run([FLEETSYNC, "sync", "games"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{bad}: node gpu-1: host: required when transport is ssh" in done.stderr


def test_sync_url_that_cannot_be_reached_or_read_is_one_clear_line(demo_env):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    argv = [FLEETSYNC, "sync", "games", "--url", url, "--wait"]
    done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == f"deployment {url}: Connection refused\n"
    assert done.stdout == ""
    assert not (Path(demo_env["DAGSTER_HOME"]) / "history").exists()  # nothing ran here

    for bad in ("ftp://127.0.0.1:3000", "127.0.0.1:3000", "http://127.0.0.1:99999"):
        argv = [FLEETSYNC, "sync", "games", "--url", bad]
        done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == (
            f"url: {bad!r} is not http[s]://HOST[:PORT][/PATH] of a Dagster webserver\n"
        )


def test_sync_in_python_returns_each_targets_outcome_and_never_raises(demo_env, monkeypatch):
    import dagster as dg
    import yaml

    from sync_assets import sync

    # gpu-1's data root is a file: its collection fails (after its retries), train-1's not.
    fleet_file = Path(demo_env["FLEETSYNC_FLEET"])
    broken_root = fleet_file.parent / "not-a-directory"
    broken_root.write_text("")
    doc = yaml.safe_load(fleet_file.read_text())
    for entry in doc["nodes"]:
        if entry["name"] == "gpu-1":
            entry["data_root"] = str(broken_root)
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("FLEETSYNC_FLEET", str(fleet_file))
    # The catalog lives under $DAGSTER_HOME: this fleet's own, not the suite's shared one.
    monkeypatch.setenv("DAGSTER_HOME", demo_env["DAGSTER_HOME"])
    monkeypatch.delenv("FLEETSYNC_CATALOG_URL", raising=False)

    with dg.DagsterInstance.ephemeral() as instance:
        result = sync("games", targets=["gpu-1", "train-1"], priority="high", instance=instance)
        assert set(instance.get_dynamic_partitions("nodes")) == {n["name"] for n in doc["nodes"]}
    outcomes = [(t.node, t.ok) for t in result.targets]
    assert outcomes == [("train-1", True), ("gpu-1", False)], [t.reason for t in result.targets]
    reason = result.failed[0].reason
    assert "gpu-1" in reason and "not a directory" in reason and "max_retries" not in reason
    assert not result.ok and not result.problems

    refused = sync("games", targets="gpu-1,nosuch")  # one string: as on the command line
    assert refused.usage and refused.targets == ()
    assert refused.problems[0].startswith("targets: unknown node(s): nosuch (")


def test_sync_status_with_a_node_data_root_gone_exits_1_naming_it_and_its_failed_check(demo_env):
    # The probe's run succeeds either way; its `reachable` check is what fails.
    fleet = load_inventory(demo_env["FLEETSYNC_FLEET"])
    broken = "gpu-1"
    broken_root = next(n.data_root for n in fleet.nodes if n.name == broken)
    shutil.rmtree(broken_root)
    argv = [FLEETSYNC, "sync", "status", "--targets", "all", "--wait"]  # in-process: waits anyway
    done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    progress = [line for line in done.stdout.splitlines() if line.startswith("node ")]
    assert [line for line in progress if not line.startswith(f"node {broken}:")] == [
        f"node {n.name}: ok" for n in fleet.nodes if n.name != broken
    ]
    [failed] = [line for line in progress if line.startswith(f"node {broken}:")]
    assert failed.startswith(f"node {broken}: FAILED: check reachable failed: ")
    assert str(broken_root) in failed
    ok = len(fleet.nodes) - 1
    assert f"sync status: {ok} of {len(fleet.nodes)} target(s) ok" in done.stderr
    assert f"failed: {broken}\n" in done.stderr
    assert f"  {failed}" in done.stderr


def test_sync_url_to_a_graphql_server_that_is_not_dagster_is_one_line(demo_env):
    import http.server
    import json
    import threading

    class OtherGraphQL(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"data": {"hello": "world"}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None: ...

    server = http.server.HTTPServer(("127.0.0.1", 0), OtherGraphQL)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        argv = [FLEETSYNC, "sync", "games", "--url", url, "--wait"]
        done = subprocess.run(argv, env=demo_env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"deployment {url}: URL does not answer like a Dagster webserver: no "
        'repositoriesOrError in its reply {"hello": "world"}'
    ]
