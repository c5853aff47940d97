"""Reports: artifacts produced outside fleetsync (a candidate model, an export) enter the graph.

A training repo tells fleetsync "I wrote `models/candidate_hex8_2p.pth` on gpu-3" by
recording a Dagster materialization of `models/candidate` (partition = config) or
`training/npz`. Dagster records whatever it is given — any asset key, any partition
key, any metadata — so the contract is enforced here (LESSONS 6: events with `None`
paths and drifting field names once made promotion distribute nothing):

- one typed payload (`ReportPayload`), one validation (`validate_report`), every
  problem reported at once as one line `field: message`;
- the reporting side (`sync_assets/cli/report.py`: Python, command line, HTTP) validates
  before it records, and the receiving side re-validates (`candidate_from_event`),
  because anyone can POST straight to the webserver's `/report_asset_materialization/`
  endpoint;
- on both sides, a candidate's path is under `models/` and never names what fleetsync
  publishes there (`canonical_*`, `ringrift_best_*`): `candidate_path_problem`.

A report is a claim: it never moves or deletes a file, whatever it says. No I/O here.
"""

from __future__ import annotations

import difflib
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import dagster as dg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from resources.transport.paths import is_ignored, safe_relpath
from sync_assets.fleet.configs import ConfigKeyError, normalize_config
from sync_assets.fleet.inventory import Fleet, InventoryError, load_inventory
from sync_assets.models.promotion import candidate_path_problem

Kind = Literal["candidate", "npz"]
KINDS: tuple[Kind, ...] = ("candidate", "npz")
ASSET_KEYS: dict[Kind, dg.AssetKey] = {
    "candidate": dg.AssetKey(["models", "candidate"]),
    "npz": dg.AssetKey(["training", "npz"]),
}
KIND_OF_KEY: dict[dg.AssetKey, Kind] = {key: kind for kind, key in ASSET_KEYS.items()}
# The metadata keys a report carries; anything else on an event is the emitter's own.
FIELDS: tuple[str, ...] = ("config", "node", "path", "sha256", "size", "promote")

# File names an artifact of each kind may have: reporting an NPZ as a candidate model
# (or a checkpoint as a shard) is a mistake worth catching before anything moves.
_EXTENSIONS: dict[Kind, tuple[str, ...]] = {"candidate": (".pth", ".pt"), "npz": (".npz",)}
# DATA.md's names embed the config; when they do, it must be the reported one
# (a 2-player model reported as 4-player would be rated against the wrong field).
_NAMED_CONFIG: dict[Kind, re.Pattern[str]] = {
    "candidate": re.compile(r"^candidate_(?P<config>.+)\.pth$"),
    "npz": re.compile(r"^(?P<config>[^.]+)\.npz$"),
}
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

log = logging.getLogger("fleetsync.report")


# ---- the typed payload --------------------------------------------------------------------


def _fleet_of(info: ValidationInfo) -> Fleet | None:
    context = info.context
    return context.get("fleet") if isinstance(context, dict) else None


class ReportRequest(BaseModel):
    """What a reporter asserts before fleetsync looks at the node: sha256 may be absent.

    Validated with `context={"fleet": fleet}`: node and config must belong to the
    inventory. Strict types: `"12"` is not a size and `"true"` is not a decision."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Kind
    config: str
    node: str
    path: str
    sha256: str | None = None
    promote: bool = False

    @field_validator("config")
    @classmethod
    def _config(cls, value: str, info: ValidationInfo) -> str:
        config = normalize_config(value)  # a ConfigKeyError is a ValueError: pydantic reports it
        fleet = _fleet_of(info)
        if fleet is not None and config not in fleet.configs:
            shown = config if config == value else f"{value!r} ({config})"
            raise ValueError(
                f"{shown} is not a config of fleet {fleet.fleet!r} "
                f"(configs: {', '.join(fleet.configs)})"
            )
        return config

    @field_validator("node")
    @classmethod
    def _node(cls, value: str, info: ValidationInfo) -> str:
        fleet = _fleet_of(info)
        if fleet is not None:
            names = [n.name for n in fleet.nodes]
            if value not in names:
                close = difflib.get_close_matches(value, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{value!r} is not a node of fleet {fleet.fleet!r}{hint}")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        rel = safe_relpath(value)  # an UnsafePathError is a ValueError: pydantic reports it
        if is_ignored(rel):
            raise ValueError(f"{rel!r} is a temporary or partial file name, not an artifact")
        kind: Kind | None = info.data.get("kind")
        if kind is None:
            return rel
        name = posixpath.basename(rel)
        if not name.endswith(_EXTENSIONS[kind]):
            raise ValueError(
                f"{rel!r}: a {kind} report names a {' or '.join(_EXTENSIONS[kind])} file"
            )
        named = _NAMED_CONFIG[kind].match(name)
        config = info.data.get("config")
        if named and config is not None:
            try:
                in_name = normalize_config(named.group("config"))
            except ConfigKeyError:
                in_name = None
            if in_name is not None and in_name != config:
                raise ValueError(f"{rel!r} names config {in_name}, the report says {config}")
        # Where a candidate may be: a claim naming the promoted model is refused on
        # both sides, before anything looks at (let alone touches) the file.
        problem = candidate_path_problem(rel) if kind == "candidate" else None
        if problem is not None:
            raise ValueError(problem)
        return rel

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not SHA256_HEX.match(value):
            raise ValueError(f"must be 64 hexadecimal digits, not {_show(value)}")
        return value.lower()

    @field_validator("promote")
    @classmethod
    def _promote(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("kind", "candidate") != "candidate":
            raise ValueError("only candidate reports carry a promotion decision")
        return value

    @property
    def asset_key(self) -> dg.AssetKey:
        return ASSET_KEYS[self.kind]


class ReportPayload(ReportRequest):
    """A complete, checked report: exactly what is recorded as materialization metadata."""

    sha256: str  # type: ignore[assignment]  # required once the file has been hashed
    size: int = Field(ge=0)

    def metadata(self) -> dict[str, str | int | bool]:
        """The materialization metadata (plain values: Dagster types them on record)."""
        meta: dict[str, str | int | bool] = {
            "config": self.config,
            "node": self.node,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
        }
        if self.kind == "candidate":
            meta["promote"] = self.promote
        return meta

    def description(self) -> str:
        return f"{self.kind} {self.config}: {self.path} on node {self.node}"


_M = TypeVar("_M", bound=ReportRequest)


def validate(model: type[_M], data: Mapping[str, Any], fleet: Fleet) -> tuple[_M | None, list[str]]:
    """A reporter's request (`ReportRequest`: sha256 optional, no size yet) or a complete
    report (`ReportPayload`), or every problem with it, one line each (`field: message`).
    Static: no I/O."""
    try:
        return model.model_validate(dict(data), context={"fleet": fleet}), []
    except ValidationError as exc:
        return None, [_problem(error) for error in exc.errors()]


def validate_report(
    data: Mapping[str, Any], fleet: Fleet
) -> tuple[ReportPayload | None, list[str]]:
    return validate(ReportPayload, data, fleet)


# ---- the receiving side -------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A valid candidate-model report, as read back from a materialization event."""

    config: str
    node: str
    path: str
    sha256: str
    size: int
    promote: bool
    storage_id: int | None = None


@dataclass(frozen=True)
class Rejected:
    """An event that does not make a valid report; `reason` is one line for logs and UI."""

    reason: str
    problems: tuple[str, ...] = field(default=())
    storage_id: int | None = None


class _Logger(Protocol):
    def warning(self, msg: str, *args: Any) -> Any: ...


EventLike = dg.EventLogRecord | dg.EventLogEntry | dg.AssetMaterialization


def report_from_event(
    event: EventLike, fleet: Fleet | None = None, logger: _Logger | None = None
) -> ReportPayload | Rejected:
    """Re-validate a materialization of `models/candidate` or `training/npz` as a report.

    Whatever produced it — `fleetsync report`, a training repo's code location, or a
    raw POST to the webserver that bypassed us — the same rules apply; an invalid one
    is logged with its reason and returned as Rejected, never acted upon. Static only
    (no I/O: cheap enough for a sensor); the consumer re-hashes on the node before use."""
    storage_id = event.storage_id if isinstance(event, dg.EventLogRecord) else None
    payload, problems = _payload_of(event, fleet)
    if payload is not None:
        return payload
    rejected = Rejected("; ".join(problems), tuple(problems), storage_id)
    (logger or log).warning(f"ignoring reported materialization: {rejected.reason}")
    return rejected


def candidate_from_event(
    event: EventLike, fleet: Fleet | None = None, logger: _Logger | None = None
) -> Candidate | Rejected:
    """The candidate model a `models/candidate` materialization reports, or why it is ignored."""
    found = report_from_event(event, fleet, logger)
    if isinstance(found, Rejected):
        return found
    if found.kind != "candidate":
        reason = f"asset: {found.asset_key.to_user_string()} is not models/candidate"
        (logger or log).warning(f"ignoring reported materialization: {reason}")
        return Rejected(reason, (reason,))
    return Candidate(
        config=found.config,
        node=found.node,
        path=found.path,
        sha256=found.sha256,
        size=found.size,
        promote=found.promote,
        storage_id=event.storage_id if isinstance(event, dg.EventLogRecord) else None,
    )


def _payload_of(event: EventLike, fleet: Fleet | None) -> tuple[ReportPayload | None, list[str]]:
    entry = event.event_log_entry if isinstance(event, dg.EventLogRecord) else event
    mat = entry.asset_materialization if isinstance(entry, dg.EventLogEntry) else entry
    if not isinstance(mat, dg.AssetMaterialization):
        return None, ["event: not an asset materialization"]
    kind = KIND_OF_KEY.get(mat.asset_key)
    if kind is None:
        return None, [f"asset: {mat.asset_key.to_user_string()} is not a reportable asset"]
    if fleet is None:
        try:
            fleet = load_inventory(os.environ.get("FLEETSYNC_FLEET") or "fleet.yaml")
        except InventoryError as exc:
            return None, [f"inventory: {p}" for p in exc.problems]
    data: dict[str, Any] = {"kind": kind}
    for key in FIELDS:
        if key in mat.metadata:
            data[key] = mat.metadata[key].value
    payload, problems = validate_report(data, fleet)
    partition = mat.partition
    if partition is None:
        problems.insert(0, "partition: required (the config key)")
    elif partition not in fleet.configs:
        problems.insert(0, f"partition: {partition!r} is not a config of fleet {fleet.fleet!r}")
    elif payload is not None and payload.config != partition:
        problems.insert(0, f"partition: {partition} does not match config {payload.config}")
    return (payload if not problems else None), problems


# ---- messages -----------------------------------------------------------------------------

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
}


def _problem(error: Any) -> str:
    """A pydantic error as one line `field: message`, in words a reporter understands."""
    loc = ".".join(str(p) for p in error["loc"]) or "report"
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return f"{loc}: required"
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (a report has {', '.join(FIELDS)})"
    if kind == "literal_error" and loc == "kind":
        return f"kind: unknown kind {_show(value)}: expected {' or '.join(KINDS)}"
    if kind in _TYPE_WORDS:
        return f"{loc}: must be {_TYPE_WORDS[kind]}, not {_kind_of(value)}"
    if kind == "greater_than_equal":
        return f"{loc}: must be ≥ {error['ctx']['ge']} (got {value})"
    if kind == "value_error":
        return one_line(f"{loc}: {error['ctx']['error']}")
    return one_line(f"{loc}: {error['msg']}")


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(text: str) -> str:
    """Problems are one line each: collapse whatever a remote error message contained."""
    return " ".join(text.split())
