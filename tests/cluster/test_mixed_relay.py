"""Mixed fleets: copies between a local node and a real sshd node, relayed through this
host. Every expectation is checked independently: bytes hashed by this process, files
looked for on disk, games counted with plain SQL."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from resources.transport import Transports
from resources.transport.base import ChecksumMismatch, CopyItem, CopyResult, NodeUnreachable
from resources.transport.paths import STAGING_PREFIX, UnsafePathError
from sync_assets.demo.pipeline import DEMO_CONFIGS, fleet_document, seed_demo_data
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.fleet.inventory import Fleet, Node, load_inventory, parse_inventory
from tests.deployment.test_sync_cli import games_in

pytestmark = pytest.mark.cluster

StartFleet = Callable[..., SshdFleet]
BIG = 3 * (1 << 20) + 12345  # several 1 MiB chunks and a ragged tail
DIRECTIONS = [("store-1", "gpu-1"), ("gpu-1", "store-1")]  # local → ssh, ssh → local


def mixed_fleet(
    sshd: SshdFleet, local_root: Path, extra: dict[str, dict[str, object]] | None = None
) -> Fleet:
    """store-1: a local directory; gpu-1: the sshd node."""
    local_root.mkdir(parents=True, exist_ok=True)
    nodes: list[dict[str, object]] = [
        {"name": "store-1", "transport": "local", "data_root": str(local_root),
         "roles": ["storage"]},
        {**sshd.inventory_nodes()[0], "roles": ["selfplay"], "ephemeral": True},
    ]  # fmt: skip
    for node in nodes:
        node.update((extra or {}).get(str(node["name"]), {}))
    one_copy = {kind: 1 for kind in ("games", "npz", "models", "elo")}
    doc = {
        "fleet": "mixed",
        "configs": list(DEMO_CONFIGS),
        "policy": {"min_replicas": one_copy},
        "nodes": nodes,
    }
    return parse_inventory(yaml.safe_dump(doc), "fleet.yaml")


@pytest.fixture
def fleet(tmp_path: Path, sshd_fleet: StartFleet) -> Fleet:
    return mixed_fleet(sshd_fleet(["gpu-1"]), tmp_path / "local" / "store-1")


@pytest.fixture
def transports(sshd_fleet: StartFleet) -> Iterator[Transports]:
    """Its SSH connections close before the fleet stops."""
    t = Transports(connect_timeout_s=5)
    yield t
    t.teardown_after_execution(None)  # type: ignore[arg-type]


def put(node: Node, rel: str, data: bytes) -> str:
    path = Path(node.data_root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def staged(node: Node) -> list[str]:
    return [p.name for p in Path(node.data_root).rglob(f"{STAGING_PREFIX}*")]


@pytest.mark.parametrize(("src_name", "dst_name"), DIRECTIONS)
def test_mixed_copy_streams_verifies_and_publishes_both_ways(
    fleet: Fleet, transports: Transports, src_name: str, dst_name: str
) -> None:
    src, dst = fleet.node(src_name), fleet.node(dst_name)
    data = os.urandom(BIG)
    sha = put(src, "games/selfplay.db", data)
    small = put(src, "models/m.pth", b"weights")
    items = [
        CopyItem("games/selfplay.db", "games/collected/x/selfplay.db", sha),
        CopyItem("models/m.pth", "models/m.pth", small),
    ]
    first = transports.copy_many(src, dst, items)
    assert all(isinstance(r, CopyResult) for r in first), first
    assert [(r.path, r.sha256, r.size, r.bytes_moved) for r in first] == [  # type: ignore[union-attr]
        ("games/collected/x/selfplay.db", sha, BIG, BIG),
        ("models/m.pth", small, 7, 7),
    ]
    target = Path(dst.data_root, "games/collected/x/selfplay.db")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert Path(dst.data_root, "models/m.pth").read_bytes() == b"weights"
    assert staged(dst) == []
    # Again: the target's copy is found by size and hash, nothing moves.
    again = transports.copy_many(src, dst, items)
    assert [r.bytes_moved for r in again] == [0, 0]  # type: ignore[union-attr]


@pytest.mark.parametrize(("src_name", "dst_name"), DIRECTIONS)
def test_mixed_copy_with_a_wrong_hash_leaves_nothing_under_the_final_name(
    fleet: Fleet, transports: Transports, src_name: str, dst_name: str
) -> None:
    src, dst = fleet.node(src_name), fleet.node(dst_name)
    put(src, "games/a.db", b"the real bytes")
    claimed = hashlib.sha256(b"other bytes").hexdigest()
    [outcome] = transports.copy_many(src, dst, [CopyItem("games/a.db", "games/a.db", claimed)])
    assert isinstance(outcome, ChecksumMismatch), outcome
    assert claimed in str(outcome) and dst_name in str(outcome)
    assert not Path(dst.data_root, "games/a.db").exists()
    assert staged(dst) == []


@pytest.mark.parametrize(("src_name", "dst_name"), DIRECTIONS)
@pytest.mark.parametrize("hostile", ["../escape.db", "/etc/passwd", "games/a\nb.db"])
def test_mixed_copy_refuses_hostile_names_before_moving_a_byte(
    fleet: Fleet, transports: Transports, src_name: str, dst_name: str, hostile: str
) -> None:
    src, dst = fleet.node(src_name), fleet.node(dst_name)
    sha = put(src, "games/a.db", b"bytes")
    for item in (CopyItem(hostile, "games/b.db", sha), CopyItem("games/a.db", hostile, sha)):
        with pytest.raises(UnsafePathError):
            transports.copy_many(src, dst, [item])
    assert not Path(dst.data_root, "games/b.db").exists()
    assert not Path(dst.data_root).parent.joinpath("escape.db").exists()
    assert staged(dst) == []


@pytest.mark.parametrize(("src_name", "dst_name"), DIRECTIONS)
def test_mixed_copy_is_paced_to_the_link_cap_and_appears_only_whole(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports, src_name: str, dst_name: str
) -> None:
    # 4 Mbit/s = 500 kB/s: 1 MB takes ≥ 2 s, time enough to watch the final name.
    fleet = mixed_fleet(
        sshd_fleet(["gpu-1"]), tmp_path / "local" / "store-1", {src_name: {"bandwidth_mbps": 4}}
    )
    src, dst = fleet.node(src_name), fleet.node(dst_name)
    data = os.urandom(1_000_000)
    sha = put(src, "big.bin", data)
    final = Path(dst.data_root, "out/big.bin")
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if final.exists():
                seen.append(len(final.read_bytes()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        [outcome] = transports.copy_many(src, dst, [CopyItem("big.bin", "out/big.bin", sha)])
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - started
    assert isinstance(outcome, CopyResult), outcome
    assert elapsed >= 1.8, elapsed
    assert set(seen) <= {len(data)}  # never a partial file under the final name
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha


@pytest.mark.parametrize(("src_name", "dst_name"), DIRECTIONS)
def test_mixed_copy_to_or_from_a_node_with_a_changed_host_key_fails_the_batch(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports, src_name: str, dst_name: str
) -> None:
    sshd = sshd_fleet(["gpu-1", "gpu-2"])
    wrong_key = {"gpu-1": {"host_key": sshd.nodes["gpu-2"].host_key}}
    fleet = mixed_fleet(sshd, tmp_path / "local" / "store-1", wrong_key)
    src, dst = fleet.node(src_name), fleet.node(dst_name)
    sha = put(src, "games/a.db", b"bytes")
    with pytest.raises(NodeUnreachable, match="host key"):
        transports.copy_many(src, dst, [CopyItem("games/a.db", "games/a.db", sha)])
    assert not Path(dst.data_root, "games/a.db").exists()


# ---- end to end: a mixed fleet collects its games -------------------------------------------


def test_a_mixed_fleet_collects_every_game_db_onto_local_and_ssh_durable_nodes(
    tmp_path: Path, sshd_fleet: StartFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from sync_assets import sync

    root = tmp_path / "demo"
    nodes = seed_demo_data(root, 4, 20)
    doc = fleet_document(root, nodes, sshd_fleet([n.name for n in nodes], root=root))
    # coord-1 (durable) and train-1 (self-play) are local directories; store-1 (durable,
    # pulls from SSH peers) and gpu-1 (self-play) are sshd nodes.
    local = {"coord-1", "train-1"}
    doc["nodes"] = [
        {"name": e["name"], "transport": "local", "data_root": e["data_root"], "roles": e["roles"]}
        if e["name"] in local else e
        for e in doc["nodes"]  # type: ignore[attr-defined]
    ]  # fmt: skip
    fleet_file = root / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet = load_inventory(fleet_file)
    assert {n.name: n.transport for n in fleet.nodes} == {
        "coord-1": "local", "store-1": "ssh", "train-1": "local", "gpu-1": "ssh",
    }  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FLEETSYNC_FLEET", str(fleet_file))
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the catalog of this fleet alone
    monkeypatch.delenv("FLEETSYNC_CATALOG_URL", raising=False)

    with dg.DagsterInstance.ephemeral() as instance:
        result = sync("games", targets=["all"], instance=instance)
    assert result.ok, [(t.node, t.reason) for t in result.failed]

    sources = [
        db
        for n in fleet.nodes
        if "selfplay" in n.roles
        for db in sorted(Path(n.data_root, "games").glob("*.db"))
    ]
    assert {db.parents[1].name for db in sources} == {"train-1", "gpu-1"}
    for durable in fleet.durable_nodes:  # local ← ssh, ssh ← local, and same-kind pairs
        for db in sources:
            collected = Path(durable.data_root, "games", "collected", db.parents[1].name)
            [copy] = collected.glob(f"{db.stem}.*.db")
            assert games_in(copy) == games_in(db) > 0, (durable.name, db)
        assert staged(durable) == []
