"""fleet.yaml validation: every broken file yields exact, readable lines naming node and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.inventory import FleetInventory
from sync_assets.fleet.configs import STANDARD_CONFIGS
from sync_assets.fleet.inventory import (
    DiskPolicy,
    InventoryError,
    MinReplicas,
    check_inventory,
    load_fleet,
    load_inventory,
    parse_inventory,
)

# A real ed25519 public host key (ssh-keygen output), and one of another type's name on it.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILGcnCFABpT9R+1w64xVzujN04Fm7+8ELw1YfwV5H5Nn"
WRONG_TYPE_KEY = HOST_KEY.replace("ssh-ed25519", "ssh-rsa")

# CONTRACT.md's example, plus the two durable nodes its default min_replicas (2) requires.
CONTRACT_EXAMPLE = f"""\
fleet: demo
configs: [hex8_2p, square8_2p]          # optional; default: the 12 standard keys
policy:                                 # every field optional, defaults shown
  min_replicas: {{games: 2, npz: 2, models: 2, elo: 2}}
  disk: {{push_at: 0.50, urgent_at: 0.70, cleanup_at: 0.75, max_target_use: 0.70, min_free_gb: 20}}
  idle: {{enabled: false, gpu_util_below: 10, for_minutes: 30, min_retain: {{}}}}
  export: {{min_new_games: 50}}
  transfers_per_node: 2
  lost_after_s: 600                     # no successful probe this long -> lost
  retention: {{dry_run: true, shards_keep: 3, candidates_keep: 5, quarantine_days: 14}}
nodes:
  - name: gpu-1                         # [A-Za-z0-9_.-]+, unique
    transport: ssh                      # ssh | local
    host: 127.0.0.11                    # ssh only
    port: 22
    user: root
    key: ~/.ssh/fleet_ed25519           # private key path
    host_key: "{HOST_KEY}"
    roles: [selfplay, training]         # selfplay | training | eval | storage | coordinator
    provider: {{kind: vast, id: "1234"}}  # lambda | vast | runpod | hetzner | ssh | none
    ephemeral: true
    data_root: /data/fleet              # games/, training/, models/, elo/ below it
    bandwidth_mbps: 100                 # optional cap for transfers to/from this node
  - name: store-1
    transport: ssh
    host: 10.0.0.2
    key: ~/.ssh/fleet_ed25519
    known_hosts: ~/.ssh/fleet_known_hosts
    roles: [storage]
    data_root: /data/fleet
  - name: coord
    transport: local
    roles: [coordinator]
    data_root: ~/fleet
"""

# Two durable local nodes: a valid fleet that the cases below break one way at a time.
BASE = """\
fleet: t
nodes:
  - {name: s1, transport: local, roles: [storage], data_root: /srv/s1}
  - {name: s2, transport: local, roles: [coordinator], data_root: /srv/s2}
"""

SSH = f"""\
  - name: gpu-1
    transport: ssh
    host: 10.0.0.1
    key: /k
    host_key: "{HOST_KEY}"
    roles: [selfplay]
    data_root: /data
"""

DURABLE = "durable nodes (role storage/coordinator, not ephemeral)"

BROKEN: list[tuple[str, str, list[str]]] = [
    # --- not a usable YAML mapping ---
    (
        "yaml-syntax",
        "fleet: [t\nnodes: x: y\n",
        [
            "fleet.yaml:2:6: invalid YAML: while parsing a flow sequence, "
            "expected ',' or ']', but got ':'"
        ],
    ),
    (
        "yaml-tab-indent",
        "fleet: t\n\tnodes: 1\n",
        [
            "fleet.yaml:2:1: invalid YAML: while scanning for the next token, "
            "found character '\\t' that cannot start any token"
        ],
    ),
    (
        "two-documents",
        "fleet: a\n---\nfleet: b\n",
        [
            "fleet.yaml:2:1: invalid YAML: expected a single document in the stream, "
            "but found another document"
        ],
    ),
    (
        "control-character",
        "fleet: \x00\n",
        ["fleet.yaml:1:8: invalid YAML: character U+0000 is not allowed"],
    ),
    ("empty", "", ["fleet.yaml: empty file: expected a mapping with fleet and nodes"]),
    (
        "only-comments",
        "# fleet: t\n",
        ["fleet.yaml: empty file: expected a mapping with fleet and nodes"],
    ),
    (
        "list",
        "- name: s1\n",
        [
            "fleet.yaml: must be a mapping with fleet and nodes (optionally configs, policy), "
            "not a list"
        ],
    ),
    (
        "scalar",
        "hello\n",
        [
            "fleet.yaml: must be a mapping with fleet and nodes (optionally configs, policy), "
            "not a string"
        ],
    ),
    (
        "duplicate-key",
        BASE + "fleet: u\n",
        ["fleet.yaml:5:1: duplicate key 'fleet' (YAML would silently keep only the last one)"],
    ),
    # --- top level ---
    (
        "missing-everything",
        "configs: [hex8_2p]\n",
        ["fleet.yaml: fleet: required", "fleet.yaml: nodes: required"],
    ),
    (
        "fleet-not-string",
        BASE.replace("fleet: t", "fleet: 7"),
        ['fleet.yaml: fleet: must be a string, not a number (quote it: "7")'],
    ),
    ("nodes-empty", "fleet: t\nnodes: []\n", ["fleet.yaml: nodes: must not be empty"]),
    (
        "nodes-mapping",
        "fleet: t\nnodes: {s1: {}}\n",
        ["fleet.yaml: nodes: must be a list, not a mapping"],
    ),
    (
        "unknown-top-level",
        BASE + "nodez: []\n",
        ["fleet.yaml: nodez: unknown field (did you mean nodes?)"],
    ),
    # --- configs ---
    (
        "config-unknown",
        BASE + "configs: [hex8_2p, chess_2p]\n",
        [
            "fleet.yaml: configs[1]: unknown config key 'chess_2p': expected {board}_{n}p with "
            "board in hex8, square8, square19, hexagonal and n in 2..4"
        ],
    ),
    (
        "config-not-string",
        BASE + "configs: [hex8_2p, 8]\n",
        ['fleet.yaml: configs[1]: must be a string, not a number (quote it: "8")'],
    ),
    (
        "configs-empty",
        BASE + "configs: []\n",
        ["fleet.yaml: configs: must not be empty (omit it for the 12 standard configs)"],
    ),
    (
        "configs-not-list",
        BASE + "configs: hex8_2p\n",
        ["fleet.yaml: configs: must be a list, not a string"],
    ),
    # --- nodes: names ---
    (
        "name-bad",
        BASE + "  - {name: gpu 1, transport: local, roles: [eval], data_root: /x}\n",
        ["fleet.yaml: node #3: name: must match [A-Za-z0-9_.-]+"],
    ),
    (
        "name-missing",
        BASE + "  - {transport: local, roles: [eval], data_root: /x}\n",
        ["fleet.yaml: node #3: name: required"],
    ),
    (
        "name-duplicate",
        BASE + "  - {name: s1, transport: local, roles: [eval], data_root: /x, port: 0}\n",
        [
            "fleet.yaml: node #3: name: s1 is already the name of node #1",
            "fleet.yaml: node #3: port: must be ≥ 1",
        ],
    ),
    (
        "node-not-mapping",
        BASE + "  - s3\n",
        ["fleet.yaml: node #3: must be a mapping, not a string"],
    ),
    # --- nodes: ssh identity and host keys ---
    (
        "transport-empty",
        BASE + "  - {name: e1, transport: , roles: [eval], data_root: /e}\n",
        ["fleet.yaml: node e1: transport: must be one of ssh, local (got nothing)"],
    ),
    (
        "ssh-needs-host-key-and-pin",
        BASE + "  - {name: gpu-1, transport: ssh, roles: [selfplay], data_root: /data}\n",
        [
            "fleet.yaml: node gpu-1: host: required when transport is ssh",
            "fleet.yaml: node gpu-1: key: required when transport is ssh (path of the private key)",
            "fleet.yaml: node gpu-1: host_key: required when transport is ssh: pin the host key "
            "with host_key or known_hosts (unknown host keys are never accepted)",
        ],
    ),
    (
        "ssh-both-pins",
        BASE + SSH + "    known_hosts: /kh\n",
        ["fleet.yaml: node gpu-1: known_hosts: give host_key or known_hosts, not both"],
    ),
    (
        "host-key-placeholder",
        BASE + SSH.replace(HOST_KEY, "ssh-ed25519 AAAA..."),
        [
            "fleet.yaml: node gpu-1: host_key: must be a public host key like "
            "'ssh-ed25519 AAAA...' (a line of ssh-keyscan output)"
        ],
    ),
    (
        "host-key-wrong-type",
        BASE + SSH.replace(HOST_KEY, WRONG_TYPE_KEY),
        [
            "fleet.yaml: node gpu-1: host_key: must be a public host key like "
            "'ssh-ed25519 AAAA...' (a line of ssh-keyscan output)"
        ],
    ),
    (
        "local-with-host",
        BASE + "  - {name: e1, transport: local, host: 10.0.0.9, roles: [eval], data_root: /e}\n",
        ["fleet.yaml: node e1: host: not allowed when transport is local"],
    ),
    # --- nodes: data roots ---
    (
        "data-root-relative",
        BASE + "  - {name: e1, transport: local, roles: [eval], data_root: data}\n",
        ["fleet.yaml: node e1: data_root: must be an absolute path"],
    ),
    (
        "data-root-tilde-on-ssh",
        BASE + SSH.replace("data_root: /data", "data_root: ~/data"),
        [
            "fleet.yaml: node gpu-1: data_root: must be an absolute path "
            "(~ is expanded only for local nodes)"
        ],
    ),
    (
        "data-root-nested-local",
        BASE + "  - {name: e1, transport: local, roles: [eval], data_root: /srv/s1/eval/}\n",
        [
            "fleet.yaml: node e1: data_root: /srv/s1/eval overlaps node s1's /srv/s1 on the same "
            "machine; copies there would not be distinct replicas"
        ],
    ),
    (
        "data-root-same-ssh-host",
        BASE + SSH + SSH.replace("gpu-1", "gpu-2"),
        [
            "fleet.yaml: node gpu-2: data_root: /data overlaps node gpu-1's /data on the same "
            "machine; copies there would not be distinct replicas"
        ],
    ),
    # --- nodes: types and choices ---
    (
        "node-types",
        BASE
        + """\
  - name: gpu-1
    transport: scp
    port: "22"
    roles: [selfplay, gpu]
    provider: {kind: aws, id: 1234}
    ephemeral: "yes"
    data_root: /data
    bandwidth_mbps: 0
    hostkey: x
""",
        [
            "fleet.yaml: node gpu-1: transport: must be one of ssh, local (got 'scp')",
            "fleet.yaml: node gpu-1: port: must be an integer, not a string",
            "fleet.yaml: node gpu-1: roles[1]: must be one of selfplay, training, eval, storage, "
            "coordinator (got 'gpu')",
            "fleet.yaml: node gpu-1: provider.kind: must be one of lambda, vast, runpod, hetzner, "
            "ssh, none (got 'aws')",
            "fleet.yaml: node gpu-1: provider.id: must be a string, not a number "
            '(quote it: "1234")',
            "fleet.yaml: node gpu-1: ephemeral: must be true or false, not a string",
            "fleet.yaml: node gpu-1: bandwidth_mbps: must be > 0",
            "fleet.yaml: node gpu-1: hostkey: unknown field (did you mean host_key?)",
        ],
    ),
    (
        "node-numbers",
        BASE + "  - {name: e1, transport: local, port: 22.5, roles: [], data_root: /e}\n"
        "  - {name: e2, transport: local, port: 70000, roles: [eval], data_root: /f}\n",
        [
            "fleet.yaml: node e1: port: must be a whole number, not 22.5",
            "fleet.yaml: node e1: roles: must not be empty",
            "fleet.yaml: node e2: port: must be ≤ 65535",
        ],
    ),
    # --- policy ---
    ("policy-empty", BASE + "policy:\n", ["fleet.yaml: policy: must be a mapping, not empty"]),
    (
        "disk-over-one",
        BASE + "policy: {disk: {push_at: 1.5}}\n",
        ["fleet.yaml: policy.disk.push_at: must be ≤ 1"],
    ),
    (
        "disk-order-explicit",
        BASE + "policy: {disk: {push_at: 0.8, urgent_at: 0.7}}\n",
        [
            "fleet.yaml: policy.disk.push_at: 0.8 is above urgent_at 0.7; "
            "needs push_at ≤ urgent_at ≤ cleanup_at"
        ],
    ),
    (
        "disk-order-against-default",
        BASE + "policy: {disk: {cleanup_at: 0.6}}\n",
        [
            "fleet.yaml: policy.disk.cleanup_at: 0.6 is below urgent_at 0.7 (default); "
            "needs push_at ≤ urgent_at ≤ cleanup_at"
        ],
    ),
    (
        "min-replicas-explicit",
        BASE + "policy: {min_replicas: {games: 3}}\n",
        [f"fleet.yaml: policy.min_replicas.games: 3 but the fleet has only 2 {DURABLE}"],
    ),
    (
        "min-replicas-one-durable",
        BASE.replace("roles: [coordinator]", "roles: [eval]")
        + "policy: {min_replicas: {games: 2, npz: 1, models: 1, elo: 1}}\n",
        [
            "fleet.yaml: policy.min_replicas.games: 2 but the fleet has only 1 durable node "
            "(role storage/coordinator, not ephemeral)"
        ],
    ),
    (
        "min-replicas-default-no-durable",
        "fleet: t\nnodes:\n"
        "  - {name: e1, transport: local, roles: [storage], ephemeral: true, data_root: /e}\n",
        [
            f"fleet.yaml: policy.min_replicas.{kind}: 2 (default) but the fleet has no {DURABLE}"
            for kind in ("games", "npz", "models", "elo")
        ],
    ),
    (
        "policy-types",
        BASE
        + "policy: {transfers_per_node: 0, idle: {min_retain: {gpu: 1}}, export: 5, extra: 1}\n",
        [
            "fleet.yaml: policy.idle.min_retain: key 'gpu' must be one of selfplay, training, "
            "eval, storage, coordinator",
            "fleet.yaml: policy.export: must be a mapping, not a number",
            "fleet.yaml: policy.transfers_per_node: must be ≥ 1",
            "fleet.yaml: policy.extra: unknown field",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(text, lines) for _, text, lines in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_file_reports_exact_lines(text: str, expected: list[str]) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text)
    assert caught.value.problems == expected


def test_every_problem_in_one_file_is_reported_in_file_order() -> None:
    text = f"""\
fleet: t
configs: [sq8_2, nope]
policy: {{disk: {{push_at: 0.9}}, min_replicas: {{games: 4}}}}
nodes:
  - name: s1
    transport: local
    roles: [storage]
    data_root: relative
  - name: bad name
    transport: ssh
    host_key: "{HOST_KEY}"
    known_hosts: /kh
    roles: [storage]
    data_root: /d
  - name: s1
    transport: local
    roles: [coordinator]
    data_root: /e
"""
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, source="prod.yaml")
    assert caught.value.problems == [
        "prod.yaml: configs[1]: unknown config key 'nope': expected {board}_{n}p with board in "
        "hex8, square8, square19, hexagonal and n in 2..4",
        f"prod.yaml: policy.min_replicas.games: 4 but the fleet has only 3 {DURABLE}",
        "prod.yaml: policy.disk.push_at: 0.9 is above urgent_at 0.7 (default); "
        "needs push_at ≤ urgent_at ≤ cleanup_at",
        "prod.yaml: node #1: data_root: must be an absolute path",
        "prod.yaml: node #2: name: must match [A-Za-z0-9_.-]+",
        "prod.yaml: node #2: host: required when transport is ssh",
        "prod.yaml: node #2: key: required when transport is ssh (path of the private key)",
        "prod.yaml: node #2: known_hosts: give host_key or known_hosts, not both",
        "prod.yaml: node #3: name: s1 is already the name of node #1",
    ]
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_contract_example_parses_with_defaults_and_normalisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    fleet = parse_inventory(CONTRACT_EXAMPLE)
    assert fleet.fleet == "demo"
    assert fleet.configs == ["hex8_2p", "square8_2p"]
    gpu, store, coord = fleet.nodes
    assert gpu.key == "/home/op/.ssh/fleet_ed25519"
    assert gpu.host_key == HOST_KEY
    assert (gpu.provider.kind, gpu.provider.id, gpu.bandwidth_mbps) == ("vast", "1234", 100)
    assert not gpu.durable
    assert store.known_hosts == "/home/op/.ssh/fleet_known_hosts"
    assert (store.port, store.user, store.provider.kind, store.ephemeral) == (
        22,
        "root",
        "none",
        False,
    )
    assert coord.data_root == "/home/op/fleet"
    assert [n.name for n in fleet.durable_nodes] == ["store-1", "coord"]
    assert fleet.policy.disk == DiskPolicy(
        push_at=0.5, urgent_at=0.7, cleanup_at=0.75, max_target_use=0.7, min_free_gb=20
    )
    assert fleet.policy.lost_after_s == 600
    retention = fleet.policy.retention
    assert (retention.dry_run, retention.shards_keep, retention.candidates_keep) == (True, 3, 5)
    assert retention.quarantine_days == 14


def test_lost_after_and_retention_are_validated_with_located_errors() -> None:
    policy = "policy:\n  lost_after_s: 0\n  retention: {shards_keep: 0, keep_all: true}\n"
    text = BASE.replace("nodes:", policy + "nodes:")
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text)
    problems = "\n".join(caught.value.problems)
    assert "policy.lost_after_s" in problems
    assert "policy.retention.shards_keep" in problems
    assert "policy.retention.keep_all: unknown field" in problems


def test_minimal_file_gets_every_default() -> None:
    fleet = parse_inventory(BASE)
    assert fleet.configs == list(STANDARD_CONFIGS)
    assert fleet.policy.min_replicas == MinReplicas(games=2, npz=2, models=2, elo=2)
    assert (fleet.policy.transfers_per_node, fleet.policy.export.min_new_games) == (2, 50)
    assert fleet.policy.idle.enabled is False
    assert fleet.node("s1").bandwidth_mbps is None


def test_configs_are_normalised_and_deduplicated() -> None:
    fleet = parse_inventory(BASE + "configs: [sq8_2, square8_2p, HEX_3P, hexagonal_3p, hex8_4]\n")
    assert fleet.configs == ["square8_2p", "hexagonal_3p", "hex8_4p"]


def test_host_key_pasted_from_ssh_keyscan_keeps_only_type_and_key() -> None:
    fleet = parse_inventory(BASE + SSH.replace(HOST_KEY, f"10.0.0.1 {HOST_KEY} comment"))
    assert fleet.node("gpu-1").host_key == HOST_KEY


def test_load_and_check_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BASE)
    assert [n.name for n in load_inventory(path).nodes] == ["s1", "s2"]
    assert check_inventory(path) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
            "not a UTF-8 text file (byte 0x89 at offset 0)",
        ),
        (b"\x00\x01\x02binary", "1:1: invalid YAML: character U+0000 is not allowed"),
        (b"[" * 20000, "invalid YAML: nested too deeply"),
        (
            BASE.encode() + b"  - {name: e1\n",
            "6:1: invalid YAML: while parsing a flow mapping, expected ',' or '}', "
            "but got '<stream end>'",
        ),
    ],
    ids=["png", "control-bytes", "deep-nesting", "truncated"],
)
def test_check_reports_garbage_as_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(content)
    separator = "" if expected[0].isdigit() else " "
    assert check_inventory(path) == [f"{path}:{separator}{expected}"]


def test_check_reports_unreadable_paths(tmp_path: Path) -> None:
    assert check_inventory(tmp_path / "absent.yaml") == [
        f"{tmp_path}/absent.yaml: cannot read: No such file or directory"
    ]
    assert check_inventory(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


def test_resource_path_defaults_to_env_at_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETSYNC_FLEET", raising=False)
    assert FleetInventory().path == "./fleet.yaml"
    path = tmp_path / "fleet.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("FLEETSYNC_FLEET", str(path))
    resource = FleetInventory()
    monkeypatch.setenv("FLEETSYNC_FLEET", "/elsewhere.yaml")
    assert resource.path == str(path)
    assert load_fleet(resource) is load_fleet(resource)
    assert FleetInventory(path="/elsewhere.yaml").path == "/elsewhere.yaml"


def test_resource_load_raises_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: t\nnodes: []\n")
    with pytest.raises(InventoryError, match=r"nodes: must not be empty$"):
        load_fleet(FleetInventory(path=str(path)))
