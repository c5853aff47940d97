"""Issue 8, item 9: the NPZ validator accepted 0-d per-sample arrays.

A 0-d `values`, `num_players` or even `features` passed as if it were shard metadata,
and a 0-d `features` ended the check before the checksums were verified. The shards
here are real `.npz` files written with numpy; their `data_checksums` and the expected
verdicts are computed by this file from DATA.md, not by the validator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_assets.training.export import NPZ_CHECK
from sync_assets.training.npz_check import check_npz

N = 3
# DATA.md, "NPZ shards": the per-sample arrays, each [N, ...].
PER_SAMPLE = (
    "features", "globals", "values", "values_mp", "num_players", "move_numbers",
    "total_game_moves", "policy_indices", "policy_values", "phases", "victory_types",
    "engine_modes", "move_types", "opponent_types", "opponent_elo", "generator_elo",
    "quality_score",
)  # fmt: skip


def _objects(items: list[np.ndarray]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def good_arrays() -> dict[str, np.ndarray]:
    """A small shard as DATA.md describes it (strings stored fixed-width, which DATA.md's
    readers accept like object arrays of str)."""
    rng = np.random.default_rng(8)
    f32, i32 = np.float32, np.int32
    return {
        "features": rng.standard_normal((N, 40, 8, 8)).astype(f32),
        "globals": rng.standard_normal((N, 20)).astype(f32),
        "values": np.array([1.0, -1.0, 0.0], dtype=f32),
        "values_mp": rng.uniform(-1, 1, (N, 4)).astype(f32),
        "num_players": np.full(N, 2, dtype=i32),
        "move_numbers": np.arange(N, dtype=i32),
        "total_game_moves": np.full(N, 40, dtype=i32),
        "policy_indices": _objects([np.array([i, i + 1], dtype=i32) for i in range(N)]),
        "policy_values": _objects([np.array([0.25, 0.75], dtype=f32) for _ in range(N)]),
        "phases": np.array(["placement", "movement", "movement"]),
        "victory_types": np.array(["territory"] * N),
        "engine_modes": np.array(["gumbel_mcts"] * N),
        "move_types": np.array(["place", "move", "move"]),
        "opponent_types": np.array(["self"] * N),
        "opponent_elo": np.full(N, 1500, dtype=f32),
        "generator_elo": np.full(N, 1510, dtype=f32),
        "quality_score": np.full(N, 0.9, dtype=f32),
        "board_type": np.array("hex8"),
        "board_size": np.array(9, dtype=i32),
        "export_version": np.array(3, dtype=i32),
    }


def digest(array: np.ndarray) -> str:
    """DATA.md's per-array SHA-256 as the spec in npz_check's docstring defines it,
    written out here for the two payload forms this shard uses."""
    shape = ",".join(str(d) for d in array.shape)
    h = hashlib.sha256(f"{array.dtype.str}|{shape}\n".encode())
    if array.dtype.kind != "O":
        h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()
    items = list(array.reshape(-1))  # sparse policies: 1-d arrays of one dtype
    h.update(b"A" + f"{items[0].dtype.str}\n".encode())
    h.update(np.array([x.size for x in items], dtype="<i8").tobytes())
    h.update(b"".join(x.tobytes() for x in items))
    return h.hexdigest()


def zero_d(array: np.ndarray) -> np.ndarray:
    """The array's first element as a 0-d array of the same dtype."""
    one = np.empty(1, dtype=array.dtype)
    one[0] = array.reshape(-1)[0] if array.dtype.kind != "O" else array[0]
    return one.reshape(())


def write_shard(path: Path, arrays: dict[str, np.ndarray], wrong_sum: str | None = None) -> Path:
    sums = {name: digest(a) for name, a in arrays.items()}
    if wrong_sum is not None:
        sums[wrong_sum] = "0" * 64
    np.savez_compressed(path, **arrays, data_checksums=np.array(json.dumps(sums)))
    return path


def zero_d_problem(name: str) -> str:
    return f"array {name!r}: 0-d, a per-sample array has one row per sample"


def test_the_fixture_shard_is_valid(tmp_path: Path) -> None:
    result = check_npz(write_shard(tmp_path / "good.npz", good_arrays()))
    assert result["problems"] == []
    assert result["ok"] and result["samples"] == N


@pytest.mark.parametrize("name", ["values", "num_players", "features"])
def test_0d_per_sample_array_is_invalid(tmp_path: Path, name: str) -> None:
    arrays = good_arrays()
    arrays[name] = zero_d(arrays[name])
    result = check_npz(write_shard(tmp_path / "bad.npz", arrays))
    assert not result["ok"]
    assert result["problems"] == [zero_d_problem(name)]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chosen=st.sets(st.sampled_from(PER_SAMPLE), min_size=1))
def test_every_0d_per_sample_array_is_named(tmp_path: Path, chosen: set[str]) -> None:
    arrays = good_arrays()
    for name in chosen:
        arrays[name] = zero_d(arrays[name])
    result = check_npz(write_shard(tmp_path / "bad.npz", arrays))
    assert not result["ok"]
    assert sorted(result["problems"]) == sorted(zero_d_problem(name) for name in chosen)
    # N is the first dimension of features, else of values; 0-d ones have none.
    expected_n = next((N for name in ("features", "values") if name not in chosen), None)
    assert result["samples"] == expected_n


def test_0d_features_do_not_stop_checksum_verification(tmp_path: Path) -> None:
    arrays = good_arrays()
    arrays["features"] = zero_d(arrays["features"])
    result = check_npz(write_shard(tmp_path / "bad.npz", arrays, wrong_sum="globals"))
    assert result["problems"] == [zero_d_problem("features"), "checksum mismatch for 'globals'"]


def test_missing_or_0d_sample_count_is_invalid(tmp_path: Path) -> None:
    arrays = good_arrays()
    arrays["features"], arrays["values"] = zero_d(arrays["features"]), zero_d(arrays["values"])
    result = check_npz(write_shard(tmp_path / "both.npz", arrays))
    assert not result["ok"] and result["samples"] is None
    assert result["problems"] == [zero_d_problem("features"), zero_d_problem("values")]

    arrays = good_arrays()
    del arrays["features"], arrays["values"]
    result = check_npz(write_shard(tmp_path / "none.npz", arrays))
    assert not result["ok"] and result["samples"] is None
    assert result["problems"] == ["missing array 'features'", "missing array 'values'"]


def test_the_shipped_checker_refuses_a_0d_values_shard(tmp_path: Path) -> None:
    """As run on a node: the bundled program on stdin, exit 1, the reason in its JSON."""
    arrays = good_arrays()
    arrays["values"] = zero_d(arrays["values"])
    shard = write_shard(tmp_path / "bad.npz", arrays)
    done = subprocess.run(
        [sys.executable, "-I", "-", str(shard)], input=NPZ_CHECK.bundle,
        capture_output=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["problems"] == [zero_d_problem("values")]
