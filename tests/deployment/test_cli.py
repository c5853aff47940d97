"""The `fleetsync` console script as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


def test_check_reports_every_problem_without_traceback(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("fleet: x\nnodes:\n  - name: gpu-1\n    transport: ssh\n    roles: [selfplay]\n"
                   "    data_root: /data\n")
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
    done = subprocess.run([FLEETSYNC, "check", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
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
        m = re.search(r"This pass: (\d+) games added to canonical DBs, ([\d.]+) MB moved",
                      done.stdout)
        assert m, done.stdout[-2000:]
        passes.append((int(m.group(1)), float(m.group(2))))
    assert passes[0][0] > 0 and passes[0][1] > 0
    assert passes[1] == (0, 0.0)
    status = subprocess.run([FLEETSYNC, "status"], capture_output=True, text=True,
                            env={**env, "FLEETSYNC_FLEET": str(tmp_path / "demo" / "fleet.yaml")})
    assert status.returncode == 0
    assert "Data at risk (no durable copy): 0.0 MB" in status.stdout
