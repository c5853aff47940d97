"""The fleet inventory (`fleet.yaml`): typed model, policy defaults, validation.

Policy defaults live here and nowhere else (LESSONS 1: scattered thresholds).
"""

from __future__ import annotations

import base64
import difflib
import functools
import itertools
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from resources.inventory import FleetInventory
from sync_assets.fleet.configs import STANDARD_CONFIGS, ConfigKeyError, normalize_config

Role = Literal["selfplay", "training", "eval", "storage", "coordinator"]
ProviderKind = Literal["lambda", "vast", "runpod", "hetzner", "ssh", "none"]
DURABLE_ROLES: frozenset[str] = frozenset({"storage", "coordinator"})
GPU_ROLES: frozenset[str] = frozenset({"selfplay", "training", "eval"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MinReplicas(_Strict):
    games: int = Field(2, ge=1)
    npz: int = Field(2, ge=1)
    models: int = Field(2, ge=1)
    elo: int = Field(2, ge=1)


class DiskPolicy(_Strict):
    push_at: float = Field(0.50, gt=0, le=1)
    urgent_at: float = Field(0.70, gt=0, le=1)
    cleanup_at: float = Field(0.75, gt=0, le=1)
    max_target_use: float = Field(0.70, gt=0, le=1)
    min_free_gb: float = Field(20, ge=0)


class IdlePolicy(_Strict):
    enabled: bool = False
    gpu_util_below: float = Field(10, ge=0, le=100)
    for_minutes: int = Field(30, ge=1)
    min_retain: dict[Role, int] = Field(default_factory=dict)


class ExportPolicy(_Strict):
    min_new_games: int = Field(50, ge=1)


class ScrubPolicy(_Strict):
    """The scrub on rotation (sync_assets/engine/scrub.py): bytes re-hashed per node, how
    often, and how long one file may take."""

    every_s: float = Field(86_400, gt=0)
    budget_gib: float = Field(2, gt=0)
    hash_timeout_s: float = Field(600, gt=0)


class RetentionPolicy(_Strict):
    """What old data may be removed (CONTRACT.md); nothing acts on it yet."""

    dry_run: bool = True
    shards_keep: int = Field(3, ge=1)
    candidates_keep: int = Field(5, ge=1)
    quarantine_days: float = Field(14, ge=0)


class Policy(_Strict):
    min_replicas: MinReplicas = MinReplicas()
    disk: DiskPolicy = DiskPolicy()
    idle: IdlePolicy = IdlePolicy()
    export: ExportPolicy = ExportPolicy()
    transfers_per_node: int = Field(2, ge=1)
    # No successful probe this long (or gone from its provider) -> the node is lost.
    lost_after_s: float = Field(600, gt=0)
    retention: RetentionPolicy = RetentionPolicy()
    scrub: ScrubPolicy = ScrubPolicy()


class Provider(_Strict):
    kind: ProviderKind = "none"
    id: str | None = None


class Node(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    transport: Literal["ssh", "local"]
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key: str | None = None
    host_key: str | None = None
    known_hosts: str | None = None
    roles: list[Role] = Field(min_length=1)
    provider: Provider = Provider()
    ephemeral: bool = False
    data_root: str
    bandwidth_mbps: float | None = Field(None, gt=0)
    # Private key *on this node* that other SSH nodes accept: lets it pull from them
    # directly (receivers pull); without it, copies are relayed through the orchestrator.
    pull_key: str | None = None

    @property
    def durable(self) -> bool:
        """Storage or coordinator, and not ephemeral: where collected copies count."""
        return not self.ephemeral and bool(DURABLE_ROLES.intersection(self.roles))


class Fleet(_Strict):
    fleet: str
    configs: list[str] = Field(default_factory=lambda: list(STANDARD_CONFIGS))
    policy: Policy = Policy()
    nodes: list[Node] = Field(min_length=1)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"node {name!r} is not in fleet {self.fleet!r}")

    @property
    def durable_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.durable]

    @property
    def gpu_nodes(self) -> list[Node]:
        """Nodes that run models (self-play, training, evaluation): they get promoted models."""
        return [n for n in self.nodes if GPU_ROLES.intersection(n.roles)]

    def nodes_with_role(self, role: Role) -> list[Node]:
        return [n for n in self.nodes if role in n.roles]


# --- Reading and validating a file -------------------------------------------------------
#
# Everything below turns a file into a Fleet or into *all* of its problems at once, one
# readable line each, naming the node and field: whoever runs `fleetsync check` fixes the
# whole file in one pass, and a bad file is never a traceback (CONTRACT: fleet.yaml).

Loc = tuple[str | int, ...]
Found = list[tuple[Loc, str]]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SECTIONS: dict[tuple[str, ...], type[BaseModel]] = {
    (): Fleet,
    ("policy",): Policy,
    ("policy", "min_replicas"): MinReplicas,
    ("policy", "disk"): DiskPolicy,
    ("policy", "idle"): IdlePolicy,
    ("policy", "export"): ExportPolicy,
    ("nodes",): Node,
    ("nodes", "provider"): Provider,
}
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}
_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}
_HOST_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})  # fmt: skip
_DURABLE_TEXT = "durable node{s} (role storage/coordinator, not ephemeral)"


class InventoryError(Exception):
    """An inventory that cannot be used; `problems` holds every problem, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys, which PyYAML silently lets win."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.Mark, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    self.duplicates.append((key_node.start_mark, key_node.value))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def parse_inventory(text: str, source: str = "fleet.yaml") -> Fleet:
    """The Fleet in `text`, or InventoryError with every problem (`source` prefixes each)."""
    data, problems = _read_yaml(text, source)
    if data is None:
        raise InventoryError(
            [*problems, f"{source}: empty file: expected a mapping with fleet and nodes"]
        )
    if not isinstance(data, dict):
        shape = f"a mapping with fleet and nodes (optionally configs, policy), not {_kind_of(data)}"
        raise InventoryError([*problems, f"{source}: must be {shape}"])
    labels = _node_labels(data.get("nodes"))
    fleet, found = _validate(data, labels)
    found.sort(key=_order)
    problems += [_line(source, loc, message, labels) for loc, message in found]
    if problems or fleet is None:
        raise InventoryError(problems)
    return fleet


def load_inventory(path: str | Path) -> Fleet:
    """The Fleet in the file at `path`; unreadable, non-text and invalid files → InventoryError."""
    source = str(path)
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InventoryError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            [f"{source}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset {exc.start})"]
        ) from exc
    return parse_inventory(text, source)


def check_inventory(path: str | Path) -> list[str]:
    """Problem lines for `fleetsync check` (empty when the file is valid); never raises."""
    try:
        load_inventory(path)
    except InventoryError as exc:
        return exc.problems
    return []


def load_fleet(inventory: FleetInventory) -> Fleet:
    """The validated fleet of the inventory resource; InventoryError lists every problem.

    Read again only when the file changes (path, size and mtime), so every caller of one
    unchanged file shares one Fleet."""
    path = Path(inventory.path).expanduser()
    try:
        st = path.stat()
    except OSError:
        return load_inventory(inventory.path)  # raises the readable InventoryError
    return _cached_load(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _cached_load(path: str, _size: int, _mtime_ns: int) -> Fleet:
    return load_inventory(path)


def _read_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """Parsed YAML and duplicate-key problems; a file that does not parse → InventoryError."""
    try:
        loader = _Loader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        bad = f"U+{exc.character:04X}"
        raise InventoryError(
            [f"{source}:{line}:{column}: invalid YAML: character {bad} is not allowed"]
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise InventoryError([f"{where}: invalid YAML: {what}"]) from exc
    except yaml.YAMLError as exc:
        raise InventoryError([f"{source}: invalid YAML: {exc}"]) from exc
    except RecursionError as exc:
        raise InventoryError([f"{source}: invalid YAML: nested too deeply"]) from exc
    problems = [
        f"{source}:{mark.line + 1}:{mark.column + 1}: duplicate key {key!r} "
        "(YAML would silently keep only the last one)"
        for mark, key in loader.duplicates
    ]
    return data, problems


def _validate(data: dict[Any, Any], labels: dict[int, str]) -> tuple[Fleet | None, Found]:
    """Normalise, check types strictly (YAML already typed them), then cross-field rules.

    Cross-field rules skip values that already failed, so a bad value is reported once.
    """
    found: Found = []
    raw = _normalised(data, found)
    fleet: Fleet | None = None
    try:
        fleet = Fleet.model_validate(raw, strict=True)
    except ValidationError as exc:
        found += [_from_pydantic(error) for error in exc.errors()]
    invalid = {loc for loc, _ in found}
    nodes = raw.get("nodes")
    if isinstance(nodes, list):
        found += _node_rules(nodes, labels, invalid)
        policy = raw.get("policy", {})
        if isinstance(policy, dict) and nodes:
            found += _policy_rules(policy, _count_durable(nodes), invalid)
    return fleet, found


def _normalised(data: dict[Any, Any], found: Found) -> dict[Any, Any]:
    """A copy with configs normalised and de-duplicated, paths expanded, host keys checked."""
    raw = dict(data)
    configs = raw.get("configs")
    if isinstance(configs, list):
        raw["configs"] = _normalised_configs(configs, found)
    nodes = raw.get("nodes")
    if isinstance(nodes, list):
        raw["nodes"] = [
            _normalised_node(node, ("nodes", i), found) if isinstance(node, dict) else node
            for i, node in enumerate(nodes)
        ]
    return raw


def _normalised_configs(configs: list[Any], found: Found) -> list[Any]:
    """Canonical keys (`sq8_2` → `square8_2p`), first occurrence kept; bad keys reported."""
    if not configs:
        found.append((("configs",), "must not be empty (omit it for the 12 standard configs)"))
    keys: list[Any] = []
    for i, key in enumerate(configs):
        if isinstance(key, str):
            try:
                key = normalize_config(key)
            except ConfigKeyError as exc:
                found.append((("configs", i), str(exc)))
        keys.append(key)
    if all(isinstance(key, str) for key in keys):
        return list(dict.fromkeys(keys))
    return keys


def _normalised_node(node: dict[Any, Any], at: Loc, found: Found) -> dict[Any, Any]:
    """Local paths with `~` expanded; host_key reduced to `type base64` or reported."""
    node = dict(node)
    for field in ("key", "known_hosts"):
        if isinstance(node.get(field), str):
            node[field] = os.path.expanduser(node[field])
    if node.get("transport") == "local" and isinstance(node.get("data_root"), str):
        node["data_root"] = os.path.expanduser(node["data_root"])
    if isinstance(node.get("host_key"), str):
        pinned = _pinned_host_key(node["host_key"])
        if pinned is None:
            example = "'ssh-ed25519 AAAA...' (a line of ssh-keyscan output)"
            found.append(((*at, "host_key"), f"must be a public host key like {example}"))
        else:
            node["host_key"] = pinned
    return node


def _pinned_host_key(value: str) -> str | None:
    """`[host] type base64 [comment]` → `type base64`, if the key decodes as that type."""
    words = value.split()
    for i, word in enumerate(words[:2]):
        if word in _HOST_KEY_TYPES and i + 1 < len(words):
            try:
                blob = base64.b64decode(words[i + 1], validate=True)
            except ValueError:  # binascii.Error, or non-ASCII text
                return None
            embedded = word.encode()
            if blob[:4] == len(embedded).to_bytes(4, "big") and blob[4:].startswith(embedded):
                return f"{word} {words[i + 1]}"
            return None
    return None


def _node_rules(nodes: list[Any], labels: dict[int, str], invalid: set[Loc]) -> Found:
    """Unique names, a pinned ssh identity, local nodes without a host, sound data roots."""
    found: Found = []
    first_with_name: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        name = node.get("name")
        if isinstance(name, str) and _NAME_RE.match(name):
            if name in first_with_name:
                first = first_with_name[name] + 1
                found.append((("nodes", i, "name"), f"{name} is already the name of node #{first}"))
            first_with_name.setdefault(name, i)
        if node.get("transport") == "ssh":
            found += _ssh_rules(node, ("nodes", i))
        elif node.get("transport") == "local" and node.get("host") is not None:
            found.append((("nodes", i, "host"), "not allowed when transport is local"))
    return found + _root_rules(nodes, labels, invalid)


def _root_rules(nodes: list[Any], labels: dict[int, str], invalid: set[Loc]) -> Found:
    """Absolute data roots, none inside another on the same machine (fake replicas)."""
    found: Found = []
    seen: list[tuple[int, tuple[Any, ...], PurePosixPath]] = []
    for i, node in enumerate(nodes):
        loc: Loc = ("nodes", i, "data_root")
        root = node.get("data_root") if isinstance(node, dict) else None
        if not isinstance(root, str) or loc in invalid:
            continue
        transport = node.get("transport")
        if not (Path(root) if transport == "local" else PurePosixPath(root)).is_absolute():
            hint = " (~ is expanded only for local nodes)" if root.startswith("~") else ""
            found.append((loc, f"must be an absolute path{hint}"))
            continue
        if transport == "local":
            machine: tuple[Any, ...] = ()
        elif transport == "ssh" and isinstance(node.get("host"), str):
            machine = ("ssh", node["host"], node.get("port", 22))
        else:
            continue
        path = PurePosixPath(os.path.normpath(root))
        for j, other_machine, other in seen:
            if machine == other_machine and (
                path.is_relative_to(other) or other.is_relative_to(path)
            ):
                overlap = f"{path} overlaps {labels[j]}'s {other} on the same machine"
                found.append((loc, f"{overlap}; copies there would not be distinct replicas"))
        seen.append((i, machine, path))
    return found


def _ssh_rules(node: dict[Any, Any], at: Loc) -> Found:
    """An ssh node needs an address, a key, and exactly one pinned host key (never auto-add)."""
    found: Found = []
    for field, what in (("host", ""), ("key", " (path of the private key)")):
        if node.get(field) in (None, ""):
            found.append(((*at, field), f"required when transport is ssh{what}"))
    pins = [field for field in ("host_key", "known_hosts") if node.get(field) not in (None, "")]
    if not pins:
        pin = "pin the host key with host_key or known_hosts (unknown host keys are never accepted)"
        found.append(((*at, "host_key"), f"required when transport is ssh: {pin}"))
    elif len(pins) == 2:
        found.append(((*at, "known_hosts"), "give host_key or known_hosts, not both"))
    return found


def _count_durable(nodes: list[Any]) -> int:
    """Durable nodes as the raw entries describe them (mirrors Node.durable)."""
    return sum(
        1
        for node in nodes
        if isinstance(node, dict)
        and node.get("ephemeral", False) is False
        and isinstance(node.get("roles"), list)
        and any(role in DURABLE_ROLES for role in node["roles"] if isinstance(role, str))
    )


def _policy_rules(policy: dict[Any, Any], durable: int, invalid: set[Loc]) -> Found:
    """Disk thresholds in order, and replica targets the durable nodes can actually hold."""
    found: Found = []
    disk = policy.get("disk", {})
    if isinstance(disk, dict):
        chain = ("push_at", "urgent_at", "cleanup_at")
        for low, high in itertools.pairwise(chain):
            a = _setting(disk, DiskPolicy, ("policy", "disk", low), invalid)
            b = _setting(disk, DiskPolicy, ("policy", "disk", high), invalid)
            if a is None or b is None or a[0] <= b[0]:
                continue
            rule = "; needs push_at ≤ urgent_at ≤ cleanup_at"
            if a[1] and not b[1]:  # only the higher one was written: point at it
                found.append((("policy", "disk", high), f"{b[2]} is below {low} {a[2]}{rule}"))
            else:
                found.append((("policy", "disk", low), f"{a[2]} is above {high} {b[2]}{rule}"))
    replicas = policy.get("min_replicas", {})
    if isinstance(replicas, dict):
        have = f"only {durable}" if durable else "no"
        nodes = _DURABLE_TEXT.format(s="" if durable == 1 else "s")
        for kind in MinReplicas.model_fields:
            loc: Loc = ("policy", "min_replicas", kind)
            wanted = _setting(replicas, MinReplicas, loc, invalid)
            if wanted is not None and wanted[0] > durable:
                found.append((loc, f"{wanted[2]} but the fleet has {have} {nodes}"))
    return found


def _setting(
    section: dict[Any, Any], model: type[BaseModel], loc: Loc, invalid: set[Loc]
) -> tuple[float, bool, str] | None:
    """(value, is_default, text) of a valid numeric setting, the model default if absent."""
    field = str(loc[-1])
    if loc in invalid:
        return None
    if field in section:
        return section[field], False, f"{section[field]:g}"
    default = model.model_fields[field].default
    return default, True, f"{default:g} (default)"


def _from_pydantic(error: Any) -> tuple[Loc, str]:
    """A pydantic error as (location, plain-words message)."""
    loc: Loc = tuple(error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "literal_error":
        choices = ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
        if loc[-1] == "[key]":
            return loc[:-2], f"key {loc[-2]!r} must be one of {choices}"
        return loc, f"must be one of {choices} (got {_show(value)})"
    if kind == "missing":
        return loc, "required"
    if kind == "extra_forbidden":
        model = _SECTIONS.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        close = (
            difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
        )
        return loc, "unknown field" + (f" (did you mean {close[0]}?)" if close else "")
    if kind == "int_type" and isinstance(value, float):
        return loc, f"must be a whole number, not {value:g}"
    if kind in _TYPE_WORDS:
        quote = f' (quote it: "{value}")' if kind == "string_type" and _is_number(value) else ""
        return loc, f"must be {_TYPE_WORDS[kind]}, not {_kind_of(value)}{quote}"
    if kind in _COMPARISONS:
        key, sign = _COMPARISONS[kind]
        return loc, f"must be {sign} {ctx[key]:g}"
    if kind == "too_short":
        return loc, "must not be empty"
    if kind == "string_pattern_mismatch":
        return loc, f"must match {ctx['pattern'].strip('^$')}"
    message: str = error["msg"].replace("Input should be", "must be")
    return loc, message[:1].lower() + message[1:]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind_of(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if _is_number(value):
        return "a number"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    """A short rendering of a rejected value (`key:` with nothing after it is None)."""
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _node_labels(nodes: Any) -> dict[int, str]:
    """`node NAME`, or `node #N` (1-based) when the name is missing, invalid or repeated."""
    if not isinstance(nodes, list):
        return {}
    names = [n.get("name") if isinstance(n, dict) else None for n in nodes]
    return {
        i: f"node {name}"
        if isinstance(name, str) and _NAME_RE.match(name) and names.count(name) == 1
        else f"node #{i + 1}"
        for i, name in enumerate(names)
    }


def _order(item: tuple[Loc, str]) -> list[int]:
    """Sort key: fields in model order (unknown ones last in their section), items by index."""
    key: list[int] = []
    section: tuple[str, ...] = ()
    for part in item[0]:
        if isinstance(part, int):
            key.append(part)
            continue
        fields = list(_SECTIONS[section].model_fields) if section in _SECTIONS else []
        key.append(fields.index(part) if part in fields else len(fields))
        section += (part,)
    return key


def _line(source: str, loc: Loc, message: str, labels: dict[int, str]) -> str:
    """`SOURCE: [node X: ]field.path: message`."""
    parts = [source]
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        parts.append(labels.get(loc[1], f"node #{loc[1] + 1}"))
        loc = loc[2:]
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    if path:
        parts.append(path)
    return ": ".join([*parts, message])
