"""The example's "training": a tiny numpy model, fast and deterministic. No Dagster here.

It stands in for a real training job (PyTorch on a GPU) so that the reporting path —
shard in, model file + sidecar out, a materialization carrying config, node, path,
sha256, size — can be exercised end to end in seconds on any machine.

Two choices worth keeping in a real repo:
- read only the rows you need from the shard's `.npy` members, streamed out of the zip,
  never `np.load(..., allow_pickle=True)[...]` on a multi-GB shard (pickle runs code,
  and a whole 2 M-sample `features` array is tens of GB);
- publish atomically: write a `*.tmp` name in the target directory (fleetsync never
  lists those), fsync, rename; the model first, its sidecar last.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

MAX_SAMPLES = 20_000
EPOCHS = 300
LEARNING_RATE = 0.5
MODEL_MAGIC = b"FLEETSYNC-EXAMPLE-MODEL v1\n"


class ShardError(ValueError):
    """A shard that cannot be trained on; the message says what is wrong with it."""


@dataclass(frozen=True)
class Trained:
    """A model's bytes and what an operator wants to read about it in the UI."""

    model_bytes: bytes
    samples: int
    inputs: int
    loss_before: float
    loss_after: float


def read_rows(shard: Path, name: str, limit: int) -> np.ndarray:
    """The first `limit` rows of array `name` in an `.npz`, streamed: bounded memory.

    Object arrays are refused (they need pickle); so are absurd shapes (DATA.md: a
    resumed partial transfer once produced a 22-billion-element "array")."""
    with zipfile.ZipFile(shard) as archive:
        member = f"{name}.npy"
        if member not in archive.namelist():
            raise ShardError(f"{shard.name}: no {name!r} array")
        with archive.open(member) as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise ShardError(f"{shard.name}: {name!r}: unsupported .npy version {version}")
            if dtype.hasobject:
                raise ShardError(f"{shard.name}: {name!r} is an object array")
            if fortran or not shape or any(d < 0 or d > 1e9 for d in shape):
                raise ShardError(f"{shard.name}: {name!r} has an unusable shape {shape}")
            rows = min(limit, shape[0])
            per_row = math.prod(shape[1:]) * dtype.itemsize
            raw = f.read(rows * per_row)
            if len(raw) != rows * per_row:
                raise ShardError(f"{shard.name}: {name!r} is truncated")
    return np.frombuffer(raw, dtype=dtype).reshape((rows, *shape[1:]))


def inputs_of(shard: Path, limit: int = MAX_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): per-channel means of `features` [N, C, H, W] plus `globals`, and `values`."""
    features = read_rows(shard, "features", limit)
    values = read_rows(shard, "values", limit)
    if features.ndim != 4 or values.ndim != 1 or len(features) != len(values):
        raise ShardError(
            f"{shard.name}: features {features.shape} and values {values.shape} "
            "do not make [N, C, H, W] → [N] samples"
        )
    if len(values) == 0:
        raise ShardError(f"{shard.name}: no samples")
    columns = [features.reshape(len(features), features.shape[1], -1).mean(axis=2)]
    try:
        extra = read_rows(shard, "globals", limit)
        if extra.ndim == 2 and len(extra) == len(values):
            columns.append(extra)
    except ShardError:
        pass  # globals are optional for this example
    x = np.concatenate(columns, axis=1).astype(np.float64)
    return x, np.clip(values.astype(np.float64), -1.0, 1.0)


def train(x: np.ndarray, y: np.ndarray, config: str) -> Trained:
    """value ≈ tanh(x·w + b), full-batch gradient descent on the squared error.

    Zero initialisation and a fixed schedule: the same shard always gives the same
    bytes, so re-materialising an unchanged shard reports the same sha256."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0

    def loss() -> float:
        return float(np.mean((np.tanh(z @ w + b) - y) ** 2))

    before = loss()
    for _ in range(EPOCHS):
        pred = np.tanh(z @ w + b)
        grad = 2.0 * (pred - y) * (1.0 - pred**2) / len(y)
        w -= LEARNING_RATE * (z.T @ grad)
        b -= LEARNING_RATE * float(grad.sum())
    after = loss()
    header = {"config": config, "inputs": int(z.shape[1]), "samples": int(len(y))}
    params = io.BytesIO()
    np.save(params, np.concatenate([w, [b], mean, std]).astype(np.float32))
    blob = MODEL_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + params.getvalue()
    return Trained(blob, len(y), int(z.shape[1]), before, after)


def publish(directory: Path, name: str, data: bytes) -> str:
    """Write `directory/name` atomically, then its `.sha256` sidecar; return the digest."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    _write_atomically(directory / name, data)
    _write_atomically(directory / f"{name}.sha256", f"{digest}  {name}\n".encode())
    return digest


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
