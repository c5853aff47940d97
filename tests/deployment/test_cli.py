"""The `fleetsync` console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


def test_check_reports_every_problem_without_traceback(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(
        "fleet: x\nnodes:\n  - name: gpu-1\n    transport: ssh\n    roles: [selfplay]\n"
        "    data_root: /data\n"
    )
    done = subprocess.run([FLEETSYNC, "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert f"{bad}: node gpu-1: host: required when transport is ssh" in lines
    assert all(line.startswith(f"{bad}: ") for line in lines)


def test_check_accepts_a_valid_file(tmp_path):
    good = tmp_path / "fleet.yaml"
    good.write_text(
        "fleet: x\nnodes:\n"
        + "".join(
            f"  - name: s{i}\n    transport: local\n    roles: [storage]\n"
            f"    data_root: {tmp_path / f's{i}'}\n"
            for i in range(2)
        )
    )
    done = subprocess.run([FLEETSYNC, "check", str(good)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == f"{good}: ok"


def test_check_of_a_missing_file(tmp_path):
    done = subprocess.run(
        [FLEETSYNC, "check", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 1 and "cannot read" in done.stdout
    assert "Traceback" not in done.stderr


def test_demo_twice_moves_nothing_the_second_time(tmp_path):
    import os
    import re
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    argv = [FLEETSYNC, "demo", "--dir", str(tmp_path / "demo"), "--nodes", "4", "--games", "30"]
    passes = []
    for _ in range(2):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        m = re.search(
            r"This pass: (\d+) games added to canonical DBs, ([\d.]+) MB moved", done.stdout
        )
        assert m, done.stdout[-2000:]
        passes.append((int(m.group(1)), float(m.group(2))))
    assert passes[0][0] > 0 and passes[0][1] > 0
    assert passes[1] == (0, 0.0)
    status = subprocess.run(
        [FLEETSYNC, "status"],
        capture_output=True,
        text=True,
        env={**env, "FLEETSYNC_FLEET": str(tmp_path / "demo" / "fleet.yaml")},
    )
    assert status.returncode == 0
    assert "Data at risk (no durable copy): 0.0 MB" in status.stdout


def _status_env(tmp_path, fleet_file):
    import os

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLEETSYNC_FLEET": str(fleet_file)}
    env.pop("FLEETSYNC_CATALOG_URL", None)  # the catalog under this DAGSTER_HOME
    return env


def test_status_without_a_valid_inventory_says_each_problem_without_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    done = subprocess.run([FLEETSYNC, "status"], env=_status_env(tmp_path, missing),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert done.stderr.startswith(f"{missing}: cannot read") and done.stdout == ""
    invalid = tmp_path / "fleet.yaml"
    invalid.write_text("fleet: x\nnodes:\n  - name: a\n    transport: bogus\n")
    done = subprocess.run([FLEETSYNC, "status"], env=_status_env(tmp_path, invalid),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    # The same lines `fleetsync check` prints for the file.
    check = subprocess.run([FLEETSYNC, "check", str(invalid)], capture_output=True, text=True)
    assert done.stderr.splitlines() == check.stdout.splitlines() != []


def test_status_on_a_new_catalog_lists_inventory_nodes_and_check_findings(tmp_path):
    from resources.catalog import Catalog
    from sync_assets.cli.status import NEVER_PROBED
    from sync_assets.demo.pipeline import build_demo_fleet
    from sync_assets.fleet.inventory import load_inventory

    fleet_file = build_demo_fleet(tmp_path / "demo", 4, 5)
    env = _status_env(tmp_path, fleet_file)
    argv = [FLEETSYNC, "status"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    nodes = done.stdout.split("\nNodes:\n")[1].split("\nRecent failed")[0].splitlines()[1:]
    names = [n.name for n in load_inventory(fleet_file).nodes]
    assert [line.split()[0] for line in nodes] == names
    assert all(NEVER_PROBED in line for line in nodes)

    (tmp_path / "home" / "fleetsync").mkdir(parents=True, exist_ok=True)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'home' / 'fleetsync' / 'catalog.db'}")
    aside = ".quarantine/games/collected/gpu-1/selfplay.x.db.cdcdcdcdcdcdcdcd"
    catalog.record_check_findings(
        "store-1",
        [
            (
                "ab" * 32,
                "games/collected/gpu-1/selfplay.x.db",
                "corrupt",
                f"found ...; moved aside to {aside}",
            )
        ],
    )
    catalog.record_scrub("store-1", 2_000_000, "scrub: 1 corrupt")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    checks = done.stdout.split("\nAudit and scrub (last per node):\n")[1].splitlines()
    assert checks[1].split()[0] == "store-1" and "scrub: 1 corrupt" in checks[1]
    findings = done.stdout.split("\nRecent audit/scrub findings (newest first):\n")[1]
    row = findings.splitlines()[1].split()
    assert row[0] == "store-1" and row[3:] == ["corrupt", "games/collected/gpu-1/selfplay.x.db",
                                               aside]  # fmt: skip
