"""Validate an NPZ training shard (DATA.md, "NPZ shards"): numpy + standard library only.

Shipped to nodes and run there (`resources/transport/programs.py`), like `games/merge.py`:

    npz_check.py SHARD.npz     → the result as JSON on stdout; exit 0 valid, 1 invalid

because a shard must be checked where it was written and after every move (a resumed
partial transfer once turned a 955 MB shard into an "array" of 22 billion elements).
Python ≥ 3.8 and any numpy ≥ 1.17 (training nodes have it); nothing else.

Valid means: a readable zip whose members are `.npy` arrays; `features` and `values`
present; every per-sample array is at least 1-d with the same N (the first dimension
of `features`; a 0-d array is N of nothing); no dimension above 1e9; dtypes and
shapes as DATA.md's table (features [N, C, H, W] with C ∈ {40, 56, 64} and
H = W ∈ {8, 9, 19, 25}; globals [N, 20]; values in −1..1); and `data_checksums` (a 0-d
array holding a JSON object `{array name: sha256 hex}`) lists every other array with
the digest `array_sha256` gives. Headers are checked before any data is read, so an
absurd array is refused without decompressing it; large arrays are hashed in streamed
chunks, never loaded whole (a 2 M-sample feature tensor is tens of GB).

Object arrays (sparse policies, strings, the `metadata` dict) need `allow_pickle`:
only shards from our own fleet are ever opened here.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npy_format

ABSURD_DIMENSION = 10**9
FEATURE_CHANNELS = (40, 56, 64)
BOARD_SIDES = (8, 9, 19, 25)
REQUIRED = ("features", "values")
CHECKSUMS = "data_checksums"
CHUNK_BYTES = 16 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# What reading a damaged member raises (zipfile checks each member's CRC-32 at its end).
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, pickle.UnpicklingError)

# Per-sample arrays: name → (dtype kinds accepted, shape after N, what DATA.md says).
# Strings may be stored as object arrays of str (DATA.md) or as fixed-width unicode.
_FLOAT32 = ("float32",)
_SCALAR: tuple[int, ...] = ()  # one value per sample
PER_SAMPLE: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]] = {
    "features": (_FLOAT32, None),  # [C, H, W], checked on its own
    "globals": (_FLOAT32, (20,)),
    "values": (_FLOAT32, _SCALAR),
    "values_mp": (_FLOAT32, (4,)),
    **dict.fromkeys(("num_players", "move_numbers", "total_game_moves"), (("int32",), _SCALAR)),
    **dict.fromkeys(("policy_indices", "policy_values"), (("object",), _SCALAR)),
    **dict.fromkeys(
        ("phases", "victory_types", "engine_modes", "move_types", "opponent_types"),
        (("object", "unicode"), _SCALAR),
    ),
    **dict.fromkeys(("opponent_elo", "generator_elo", "quality_score"), (_FLOAT32, _SCALAR)),
}
# Element dtype of each sparse-policy entry.
POLICY_ELEMENT = {"policy_indices": "int32", "policy_values": "float32"}


# ---- the one definition of an array's SHA-256 (the exporter uses the same) ----------


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    return f"{dtype.str}|{','.join(str(d) for d in shape)}\n".encode()


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays inside a dict hash as their Python values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _object_payload(items: list[Any]) -> Iterator[bytes]:
    """The bytes an object array's elements (C order) hash as, in one of three forms:

    - every element a str: b"S", int64 UTF-8 byte lengths, the concatenated UTF-8;
    - every element a 1-d array of one plain dtype (sparse policies): b"A",
      "{dtype.str}\\n", int64 element lengths, the concatenated element bytes;
    - otherwise (e.g. the metadata dict): b"J", then per element "{length}\\n" and
      its canonical JSON (sorted keys, numpy values as Python values).
    The first two are vectorised: a 2 M-sample policy array hashes in about a second."""
    if all(type(x) is str for x in items):
        encoded = [x.encode("utf-8") for x in items]
        yield b"S"
        yield np.array([len(e) for e in encoded], dtype="<i8").tobytes()
        yield b"".join(encoded)
        return
    first = items[0] if items else None
    if isinstance(first, np.ndarray) and first.dtype.kind != "O":
        dtype = first.dtype
        if all(type(x) is np.ndarray and x.ndim == 1 and x.dtype == dtype for x in items):
            yield b"A" + f"{dtype.str}\n".encode()
            yield np.array([x.size for x in items], dtype="<i8").tobytes()
            yield np.concatenate(items).tobytes()
            return
    yield b"J"
    for item in items:
        data = json.dumps(item, sort_keys=True, separators=(",", ":"), default=_json_default)
        yield f"{len(data)}\n{data}".encode()


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array as `data_checksums` records it.

    Digest of `"{dtype.str}|{d0,d1,...}\\n"` followed by the payload: for a plain dtype
    the C-order bytes (what `np.save` writes for a C-contiguous array, so it can be
    hashed straight from the file); for an object array `_object_payload`."""
    digest = hashlib.sha256(_header(array.dtype, array.shape))
    if array.dtype.kind != "O":
        digest.update(np.ascontiguousarray(array).tobytes())
    else:
        for block in _object_payload(array.reshape(-1).tolist()):
            digest.update(block)
    return digest.hexdigest()


class StreamedHash:
    """`array_sha256` of a plain-dtype array fed in C-order chunks (streamed writers)."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self._digest = hashlib.sha256(_header(np.dtype(dtype), tuple(shape)))

    def update(self, chunk: bytes | memoryview) -> None:
        self._digest.update(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


# ---- reading --------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _read_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fp)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _kind(dtype: np.dtype) -> str:
    if dtype.kind == "O":
        return "object"
    if dtype.kind == "U":
        return "unicode"
    return dtype.name


class _Shard:
    """The arrays of one opened archive and the problems found so far."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.problems: list[str] = []
        self.headers: dict[str, tuple[tuple[int, ...], bool, np.dtype, int]] = {}
        self.members: dict[str, zipfile.ZipInfo] = {}
        self._objects: dict[str, np.ndarray] = {}

    def read_headers(self) -> None:
        """Every member's .npy header; sizes and absurd dimensions, before any data."""
        for info in self.archive.infolist():
            if not info.filename.endswith(".npy"):
                self.problems.append(f"unexpected member {info.filename!r} (not an .npy array)")
                continue
            name = info.filename[: -len(".npy")]
            self.members[name] = info
            try:
                with self.archive.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp)
                    offset = fp.tell()
            except _DAMAGED as exc:
                self.problems.append(f"array {name!r}: unreadable ({exc})")
                continue
            huge = [d for d in shape if d > ABSURD_DIMENSION]
            if huge:
                self.problems.append(
                    f"array {name!r}: dimension {huge[0]} > 1e9 (absurd; shape {list(shape)})"
                )
                continue
            if dtype.kind != "O":
                declared = dtype.itemsize * math.prod(shape)
                stored = info.file_size - offset
                if stored != declared:
                    self.problems.append(
                        f"array {name!r}: holds {stored} data bytes, its header declares "
                        f"{declared} ({dtype.str} {list(shape)})"
                    )
                    continue
            self.headers[name] = (shape, fortran, dtype, offset)

    def load(self, name: str) -> np.ndarray:
        """The whole array; object arrays are kept (unpickling them twice is the slow part)."""
        if name in self._objects:
            return self._objects[name]
        with self.archive.open(self.members[name]) as fp:
            array = npy_format.read_array(fp, allow_pickle=True)
        if array.dtype.kind == "O":
            self._objects[name] = array
        return array

    def digest(self, name: str) -> str:
        """`array_sha256` of a member; plain C-order arrays are hashed as streamed."""
        shape, fortran, dtype, offset = self.headers[name]
        if dtype.kind == "O" or fortran:
            return array_sha256(self.load(name))
        digest = StreamedHash(dtype, shape)
        with self.archive.open(self.members[name]) as fp:
            fp.seek(offset)
            while block := fp.read(CHUNK_BYTES):
                digest.update(block)
        return digest.hexdigest()


def _sample_count(shard: _Shard) -> tuple[str, int] | None:
    """(array, N): N is the first dimension of `features`, else of `values`. None when
    neither has one (missing, unreadable or 0-d, each a problem reported on its own)."""
    for name in REQUIRED:
        if name in shard.headers and shard.headers[name][0]:
            return name, shard.headers[name][0][0]
    return None


def _check_shapes(shard: _Shard, count: tuple[str, int] | None) -> None:
    """Per-sample arrays are at least 1-d with the shared N (a 0-d `values` is a scalar,
    not N samples); other arrays are 0-d shard metadata, or 1-d+ with the shared N."""
    for name, (shape, _, dtype, _) in sorted(shard.headers.items()):
        spec = PER_SAMPLE.get(name)
        if not shape:
            if spec is not None:
                shard.problems.append(
                    f"array {name!r}: 0-d, a per-sample array has one row per sample"
                )
            continue  # 0-d: shard-level metadata
        if count is not None and shape[0] != count[1]:
            counted, n = count
            shard.problems.append(f"unequal N: {name!r} has {shape[0]} rows, {counted!r} has {n}")
        if spec is None:
            continue
        kinds, rest = spec
        if _kind(dtype) not in kinds:
            shard.problems.append(
                f"array {name!r}: dtype {_kind(dtype)}, expected {' or '.join(kinds)}"
            )
        if name == "features":
            ok = (
                len(shape) == 4
                and shape[1] in FEATURE_CHANNELS
                and shape[2] == shape[3]
                and shape[2] in BOARD_SIDES
            )
            if not ok:
                shard.problems.append(
                    f"array 'features': shape {list(shape)}, expected [N, C, H, W] with "
                    f"C in {list(FEATURE_CHANNELS)} and H = W in {list(BOARD_SIDES)}"
                )
        elif rest is not None and tuple(shape[1:]) != rest:
            expected = ["N" if count is None else count[1], *rest]
            shard.problems.append(f"array {name!r}: shape {list(shape)}, expected {expected}")


def _check_contents(shard: _Shard, n: int | None) -> dict[str, Any] | None:
    """Values in −1..1, sparse policies well formed, metadata consistent with N."""
    if "values" in shard.headers and shard.headers["values"][2].kind == "f":
        values = shard.load("values")
        bad = int(np.count_nonzero(~(np.abs(values.astype(np.float64)) <= 1.0)))
        if bad:
            shard.problems.append(f"array 'values': {bad} value(s) outside -1..1 or not finite")
    lengths: dict[str, np.ndarray] = {}
    for name, element in POLICY_ELEMENT.items():
        if name not in shard.headers or shard.headers[name][2].kind != "O":
            continue
        items = shard.load(name).reshape(-1)
        wrong = [
            i
            for i, x in enumerate(items)
            if not (isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype == element)
        ]
        if wrong:
            shard.problems.append(
                f"array {name!r}: {len(wrong)} entries are not 1-d {element} arrays "
                f"(first at sample {wrong[0]})"
            )
        else:
            lengths[name] = np.fromiter((x.size for x in items), np.int64, items.size)
    if len(lengths) == 2:
        indices, values = lengths["policy_indices"], lengths["policy_values"]
        if indices.shape == values.shape and (indices != values).any():
            first = int(np.flatnonzero(indices != values)[0])
            shard.problems.append(
                f"policy_indices and policy_values differ in length at sample {first}"
            )
    if "metadata" not in shard.headers:
        return None
    metadata = shard.load("metadata")[()]
    if not isinstance(metadata, dict):
        shard.problems.append("array 'metadata': not a dict")
        return None
    count = metadata.get("sample_count")
    if count is not None and n is not None and count != n:
        shard.problems.append(f"metadata sample_count {count} != {n} samples")
    return metadata


def _check_checksums(shard: _Shard) -> None:
    if CHECKSUMS not in shard.headers:
        shard.problems.append(f"no {CHECKSUMS}")
        return
    try:
        recorded = json.loads(str(shard.load(CHECKSUMS)[()]))
    except ValueError as exc:
        shard.problems.append(f"{CHECKSUMS} is not JSON ({exc})")
        return
    if not isinstance(recorded, dict) or not all(
        isinstance(v, str) and _HEX64.match(v) for v in recorded.values()
    ):
        shard.problems.append(f"{CHECKSUMS} is not a JSON object of SHA-256 hex digests")
        return
    arrays = set(shard.headers) - {CHECKSUMS}
    for name in sorted(set(recorded) - arrays):
        if name not in shard.members:
            shard.problems.append(f"{CHECKSUMS} names {name!r}, which is not in the shard")
    for name in sorted(arrays):
        if name not in recorded:
            shard.problems.append(f"array {name!r} has no entry in {CHECKSUMS}")
        elif shard.digest(name) != recorded[name]:
            shard.problems.append(f"checksum mismatch for {name!r}")


def check_npz(path: str | Path) -> dict[str, Any]:
    """Validate the shard at `path`; never raises for a bad file, it says why instead.

    Returns {"ok", "problems" (one readable line each), "path", "bytes", "sha256" (of
    the file, as the catalog keys it), "samples" (N, or None when unknown), "arrays"
    ({name: [dtype, shape]}), "metadata" (the shard's dict, when readable)}."""
    path = Path(path)
    result: dict[str, Any] = {
        "ok": False, "problems": [], "path": str(path), "bytes": 0, "sha256": None,
        "samples": None, "arrays": {}, "metadata": None,
    }  # fmt: skip
    if not path.is_file():
        result["problems"] = [f"no such file: {path}"]
        return result
    result["bytes"] = path.stat().st_size
    result["sha256"] = _file_sha256(path)
    try:
        with zipfile.ZipFile(path) as archive:
            shard = _Shard(archive)
            _inspect(shard, result)
    except zipfile.BadZipFile as exc:
        result["problems"] = [f"not a zip archive (truncated or corrupt): {exc}"]
        return result
    result["problems"] = shard.problems
    result["ok"] = not shard.problems
    return result


def _inspect(shard: _Shard, result: dict[str, Any]) -> None:
    shard.read_headers()
    result["arrays"] = {
        name: [_kind(dtype), list(shape)] for name, (shape, _, dtype, _) in shard.headers.items()
    }
    missing = [name for name in REQUIRED if name not in shard.members]
    shard.problems.extend(f"missing array {name!r}" for name in missing)
    count = _sample_count(shard)
    result["samples"] = count[1] if count is not None else None
    _check_shapes(shard, count)
    # Contents and checksums are checked whatever the shapes said: one defect found
    # must not hide another.
    try:
        result["metadata"] = _check_contents(shard, result["samples"])
        _check_checksums(shard)
    except _DAMAGED as exc:
        shard.problems.append(f"corrupt array data: {exc}")


def main(argv: list[str] | None = None) -> int:
    """CLI: print check_npz's result as JSON; exit 0 when valid, 1 when not."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(json.dumps({"error": "usage: npz_check.py SHARD.npz"}))
        return 2
    result = check_npz(args[0])
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
