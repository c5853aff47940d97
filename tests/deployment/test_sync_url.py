"""`fleetsync sync --url`: runs submitted to a REAL running deployment (dagster-webserver on
a loopback port, a temporary DAGSTER_HOME, a local demo fleet), followed to their end.

The instance launches submitted runs at once (DefaultRunCoordinator), so no daemon is
needed, and no sensor runs beside the syncs this test asks for."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from resources.catalog import Catalog
from sync_assets import sync
from sync_assets.cli.sync import EXIT_FAILED, exit_code
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.games.collect import SNAPSHOT_KIND
from tests.deployment.test_sync_cli import assert_every_game_db_collected
from tests.deployment.test_webserver import free_port, stop_group

# dagster-graphql's client still passes variables the way gql 4 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UP_WITHIN_S = 240
LAUNCH_AT_ONCE = (
    "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
)
WORKSPACE = {
    "load_from": [
        {"python_module": {"module_name": "sync_assets.definitions",
                           "working_directory": str(REPO), "location_name": "fleetsync"}}
    ]
}  # fmt: skip


@dataclass
class Webserver:
    url: str
    env: dict[str, str]
    home: Path
    fleet: Fleet


def serving(client: DagsterGraphQLClient, job: str) -> bool:
    """The webserver answers and has loaded the code location with `job`."""
    try:
        names = client._execute("{ repositoriesOrError { ... on RepositoryConnection "
                                "{ nodes { pipelines { name } } } } }")  # fmt: skip
    except DagsterGraphQLClientError:
        return False
    repos = names["repositoriesOrError"].get("nodes", [])
    return any(p["name"] == job for r in repos for p in r["pipelines"])


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[Webserver]:
    yield from serve(tmp_path, LAUNCH_AT_ONCE)


@pytest.fixture
def queueing_webserver(tmp_path: Path) -> Iterator[Webserver]:
    """The project's own run queue (QueuedRunCoordinator) and no dagster-daemon: submitted
    runs stay QUEUED."""
    yield from serve(tmp_path, "")


def serve(tmp_path: Path, extra_config: str) -> Iterator[Webserver]:
    """A webserver on the project's dagster.yaml plus `extra_config`, up until closed."""
    home = tmp_path / "home"
    home.mkdir()
    config = (REPO / "dagster_home" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(config + extra_config)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump(WORKSPACE))
    fleet_file = build_demo_fleet(tmp_path / "demo", 4, 20)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)  # the catalog under this DAGSTER_HOME
    port = free_port()
    argv = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1",
            "-p", str(port)]  # fmt: skip
    log = (tmp_path / "webserver.log").open("wb")
    # Its own process group: the code server and the runs it launches go down with it.
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        deadline = time.monotonic() + UP_WITHIN_S
        while not serving(client, "collect_games"):
            assert server.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the webserver did not load fleetsync"
            time.sleep(1)
        yield Webserver(f"http://127.0.0.1:{port}", env, home, load_inventory(fleet_file))
    finally:
        stop_group(server)
        log.close()


def fleetsync(web: Webserver, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "fleetsync"), "sync", *args, "--url", web.url]
    done = subprocess.run(argv, env=web.env, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return done


def finished_runs(home: Path, count: int) -> list[dg.DagsterRun]:
    """The instance's runs once `count` of them have ended (a run not waited for)."""
    deadline = time.monotonic() + 600
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            runs = instance.get_runs()
            if len(runs) >= count and all(r.is_finished for r in runs):
                return runs
            assert time.monotonic() < deadline, [(r.job_name, r.status) for r in runs]
            time.sleep(1)


def test_sync_url_runs_each_target_on_the_deployment_and_names_each_failure(
    webserver: Webserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    web, fleet = webserver, webserver.fleet
    monkeypatch.setenv("FLEETSYNC_FLEET", web.env["FLEETSYNC_FLEET"])  # for sync() in Python
    names = [n.name for n in fleet.nodes]

    # 1. Every node: submitted (in inventory order), then followed to the end.
    done = fleetsync(web, "games", "--targets", "all", "--priority", "high", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    submitted = [line.split(" (run ")[0] for line in lines if "submitted (run " in line]
    assert submitted == [f"node {n}: submitted" for n in names]
    assert sorted(line for line in lines if line.endswith(": ok")) == sorted(
        f"node {n}: ok" for n in names
    )
    assert lines[-1] == "sync games: 4 of 4 target(s) ok"
    # On the deployment's instance: one successful run per node, tagged as urgent syncs.
    runs = finished_runs(web.home, len(names))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(names)
    tagged = {"dagster/priority": "10", "fleetsync/sync": "games"}
    for run in runs:
        assert (run.job_name, run.status) == ("collect_games", dg.DagsterRunStatus.SUCCESS)
        assert {key: run.tags[key] for key in tagged} == tagged
    with dg.DagsterInstance.from_config(str(web.home)) as instance:
        assert set(instance.get_dynamic_partitions("nodes")) == set(names)
    # On disk, and in the catalog: every snapshot, by the hash of the bytes on disk.
    collected = assert_every_game_db_collected(fleet)
    catalog = Catalog(url=f"sqlite:///{web.home / 'fleetsync' / 'catalog.db'}")
    recorded = {
        (row.node, row.path, row.sha256)
        for row in catalog.replicas_frame([SNAPSHOT_KIND]).itertuples()
    }
    roots = {n.name: Path(n.data_root) for n in fleet.durable_nodes}
    for path in collected:
        node = next(name for name, root in roots.items() if root in path.parents)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert (node, path.relative_to(roots[node]).as_posix(), sha) in recorded

    # 2. Not waited for (Python): the run id comes back at once; the run goes on.
    result = sync("status", targets="coord-1", url=web.url, wait=False)
    [target] = result.targets
    assert result.ok and target.submitted and target.run_id
    [probe] = [r for r in finished_runs(web.home, len(names) + 1) if r.run_id == target.run_id]
    assert (probe.job_name, probe.status) == ("probe_nodes", dg.DagsterRunStatus.SUCCESS)
    assert probe.tags["dagster/partition"] == "coord-1"

    # 3. gpu-1's data root is gone: its collection fails (a failed step), train-1's not.
    gpu_root = fleet.node("gpu-1").data_root
    shutil.rmtree(gpu_root)
    done = fleetsync(web, "games", "--targets", "gpu-1,train-1", "--wait")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "node train-1: ok" in done.stdout.splitlines()
    [failed] = [line for line in done.stdout.splitlines() if line.startswith("node gpu-1: F")]
    assert failed.startswith("node gpu-1: FAILED: node 'gpu-1': ") and gpu_root in failed
    assert "data root is not a directory" in failed
    assert done.stderr.splitlines() == [
        "sync games: 1 of 2 target(s) ok", "failed: gpu-1", f"  {failed}"
    ]  # fmt: skip

    # 4. ... and its probe succeeds as a run but fails its `reachable` check: a failure too.
    result = sync("status", targets=["gpu-1"], url=web.url)
    [target] = result.failed
    assert target.reason.startswith("check reachable failed: node 'gpu-1': ")
    assert gpu_root in target.reason and exit_code(result) == EXIT_FAILED

    # 5. A URL that is not this webserver's GraphQL endpoint: one line, nothing submitted.
    runs_before = len(finished_runs(web.home, 0))
    result = sync("games", url=f"{web.url}/not-dagster")
    [problem] = result.problems
    assert problem.startswith(f"deployment {web.url}/not-dagster: 405 ")
    assert "\n" not in problem and exit_code(result) == EXIT_FAILED
    assert len(finished_runs(web.home, 0)) == runs_before


def test_sync_url_wait_gives_up_on_runs_no_daemon_starts_naming_each(
    queueing_webserver: Webserver,
) -> None:
    web = queueing_webserver
    done = fleetsync(web, "status", "--targets", "coord-1", "gpu-1", "--wait", "--timeout", "8")
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr[-3000:]
    nodes = ["coord-1", "gpu-1"]
    lines = done.stdout.splitlines()
    assert [line.split(" (run ")[0] for line in lines[:4]] == [
        *(f"node {n}: submitted" for n in nodes),
        *(f"node {n}: queued" for n in nodes),
    ]
    assert done.stderr.splitlines()[:2] == ["sync status: 0 of 2 target(s) ok",
                                            "failed: coord-1, gpu-1"]  # fmt: skip
    for node in nodes:
        assert (
            f"  node {node}: FAILED: still QUEUED after 8 s: is a dagster-daemon running?"
            in done.stderr.splitlines()
        )
    with dg.DagsterInstance.from_config(str(web.home)) as instance:
        assert {r.status for r in instance.get_runs()} == {dg.DagsterRunStatus.QUEUED}
