"""fleetsync against real OpenSSH `sshd` nodes on loopback (127.0.0.11, .12, …).

Nothing is mocked: every node is its own sshd with its own host key and data root;
fleetsync reaches them with paramiko (control) and OpenSSH rsync/ssh (bulk bytes),
exactly as it reaches cloud boxes. Every expectation is checked independently of
fleetsync: files hashed by this process, games counted with plain SQL, processes
found in /proc.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import yaml

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import CopyItem, CopyResult, NodeProbe, TransferError
from resources.transport.local import LocalTransport
from resources.transport.paths import UnsafePathError, is_ignored
from resources.transport.ssh import HostKeyRefused, SshTransport
from sync_assets.demo.pipeline import DEMO_CONFIGS, QUIET, build_demo_fleet, demo_nodes
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.demo.synth_games import generate_game_db
from sync_assets.engine import breaker
from sync_assets.engine.live_db import STAGING_DIR
from sync_assets.engine.placement import DiskFloor, plan_replication
from sync_assets.engine.replication import copy_recorded
from sync_assets.fleet.assets import node_status
from sync_assets.fleet.inventory import Fleet, InventoryError, Node, load_inventory, parse_inventory
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.games.canonical import CANONICAL_KIND, canonical_path
from sync_assets.games.collect import SNAPSHOT_KIND, collect_node_games
from tests.conftest import describe, node_processes, vanish
from tests.expectations import canonical_count, expected_games, file_sha256

pytestmark = pytest.mark.cluster

GIB = 1024**3
StartFleet = Callable[..., SshdFleet]


# ---- helpers -----------------------------------------------------------------------------


def inventory(
    sshd: SshdFleet,
    roles: dict[str, list[str]],
    extra: dict[str, dict[str, object]] | None = None,
    min_games: int = 2,
) -> Fleet:
    """The sshd nodes as a validated fleet.yaml would describe them."""
    entries = []
    for entry in sshd.inventory_nodes():
        name = str(entry["name"])
        entry["roles"] = roles[name]
        entry.update((extra or {}).get(name, {}))
        entries.append(entry)
    durable = sum(1 for r in roles.values() if {"storage", "coordinator"} & set(r))
    wanted = {kind: min(2, durable) for kind in ("npz", "models", "elo")}
    doc = {
        "fleet": "cluster-test",
        "configs": list(DEMO_CONFIGS),
        "policy": {
            "min_replicas": {"games": min_games, **wanted},
            "disk": {"max_target_use": 0.98, "min_free_gb": 0.5},
        },
        "nodes": entries,
    }
    return parse_inventory(yaml.safe_dump(doc), "fleet.yaml")


@pytest.fixture
def transports(sshd_fleet: StartFleet) -> Iterator[Transports]:
    """One Transports for the test; its SSH connections close before the fleet stops."""
    t = Transports()
    yield t
    t.teardown_after_execution(None)  # type: ignore[arg-type]


def ssh_of(transports: Transports, node: Node) -> SshTransport:
    t = transports.for_node(node)
    assert isinstance(t, SshTransport)
    return t


def catalog_at(tmp_path: Path) -> Catalog:
    return Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def visible_files(root: Path) -> list[str]:
    """Files below `root` a listing would show (fleetsync's own temp names left out)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not is_ignored(p.relative_to(root).as_posix())
        and ".fleetsync" not in p.relative_to(root).parts
    )


# ---- 1. collection over SSH: 4 self-play nodes → 2 durable nodes ---------------------------


def run_pass(
    fleet: Fleet, resources: dict[str, object], instance: dg.DagsterInstance, probe: bool
) -> dict[str, int]:
    """Probe (optionally), collect every node, merge every config, each a real Dagster
    run; every run and asset check must pass. Returns snapshots taken per node."""
    taken: dict[str, int] = {}
    per_node = [node_status, games_selfplay] if probe else [games_selfplay]
    runs = [(per_node, n.name) for n in fleet.nodes]
    runs += [([games_canonical], config) for config in fleet.configs]
    for assets, key in runs:
        result = dg.materialize(
            assets, partition_key=key, instance=instance, resources=resources, run_config=QUIET
        )
        assert result.success, (assets, key)
        failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        assert not failed, (assets, key, failed)
        for event in result.get_asset_materialization_events():
            if event.asset_key == games_selfplay.key:
                metadata = event.materialization.metadata
                taken[key] = int(metadata["snapshots_taken"].value)  # type: ignore[arg-type]
    return taken


def test_collect_over_ssh_two_verified_durable_copies_and_idempotent(
    tmp_path: Path, sshd_fleet: StartFleet
) -> None:
    root = tmp_path / "demo"
    sshd = sshd_fleet([n.name for n in demo_nodes(6)], root=root)
    fleet_file = build_demo_fleet(root, node_count=6, games_per_node=40, sshd=sshd)
    fleet = load_inventory(fleet_file)
    assert {n.transport for n in fleet.nodes} == {"ssh"}
    durable = {n.name for n in fleet.durable_nodes}
    assert durable == {"coord-1", "store-1"}
    assert len([n for n in fleet.nodes if "selfplay" in n.roles]) == 4
    catalog = catalog_at(tmp_path)
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": catalog,
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        first = run_pass(fleet, resources, instance, probe=True)
        assert first == {n.name: 4 if "selfplay" in n.roles else 0 for n in fleet.nodes}

        nodes = catalog.nodes_frame().set_index("name")
        assert nodes["reachable"].astype(bool).all(), nodes["probe_error"].to_dict()

        # Every snapshot: exactly two verified copies on distinct durable nodes, each a
        # file that is there with the recorded bytes (hashed here, not by fleetsync).
        snaps = catalog.artifacts_frame([SNAPSHOT_KIND])
        assert set(snaps["origin_node"]) == {"train-1", "gpu-1", "gpu-2", "gpu-3"}
        assert len(snaps) == 16  # 4 game DBs on each self-play node
        reps = catalog.replicas_frame([SNAPSHOT_KIND])
        assert reps[reps["state"] != "verified"].empty, "staging snapshots left behind"
        for snap in snaps.itertuples(index=False):
            mine = reps[reps["sha256"] == snap.sha256]
            assert set(mine["node"]) == durable, (snap.name, snap.origin_node)
            for rep in mine.itertuples(index=False):
                path = Path(fleet.node(rep.node).data_root) / rep.path
                assert path.is_file(), f"{rep.node}:{rep.path} recorded but missing"
                assert path.stat().st_size == rep.size == snap.size
                assert file_sha256(path) == snap.sha256, f"{rep.node}:{rep.path} differs"
                with read_only(path) as conn:
                    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for n in fleet.nodes:  # origin staging snapshots removed once policy is met
            assert visible_files(Path(n.data_root) / STAGING_DIR) == [], n.name

        # Canonical DBs: the independent count, on both durable nodes, same bytes.
        for config in DEMO_CONFIGS:
            expected = expected_games(fleet, config)
            assert expected > 0, config
            alias = catalog.alias(CANONICAL_KIND, config)
            for name in sorted(durable):
                node = fleet.node(name)
                assert canonical_count(node, config) == expected, (config, name)
                path = Path(node.data_root) / canonical_path(config)
                assert file_sha256(path) == alias, (config, name)

        transfers = catalog.transfers_frame()
        assert transfers[transfers["status"] != "ok"].empty, transfers["error"].tolist()
        assert transfers["bytes"].sum() > 0
        assert set(transfers["target"]) <= durable

        # Second pass over an unchanged fleet: nothing moves, nothing new is registered.
        artifacts_before = len(catalog.artifacts_frame())
        second = run_pass(fleet, resources, instance, probe=False)
        after = catalog.transfers_frame()
        new = after.iloc[len(transfers) :]
        assert new["bytes"].sum() == 0, new[["source", "target", "path", "bytes"]]
        assert len(catalog.artifacts_frame()) == artifacts_before
        for config in DEMO_CONFIGS:
            for name in sorted(durable):
                assert canonical_count(fleet.node(name), config) == expected_games(fleet, config)
        # ... and no DB is snapshotted again (on the node, a snapshot reads the whole DB).
        again = {node: n for node, n in second.items() if n}
        assert not again, f"unchanged DBs snapshotted again on the second pass: {again}"


# ---- 2. snapshots of a live WAL DB on an sshd node -----------------------------------------

WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, txn INTEGER NOT NULL, v BLOB)")
log = open(sys.argv[2], "a", buffering=1)
db.execute("BEGIN IMMEDIATE")
db.executemany("INSERT INTO t(txn, v) VALUES (0, randomblob(400))", [()] * 20000)
db.execute("COMMIT")
log.write("ready\n")
txn = 0
while True:
    txn += 1
    db.execute("BEGIN IMMEDIATE")
    ids = [db.execute("INSERT INTO t(txn, v) VALUES (?, randomblob(300))", (txn,)).lastrowid
           for _ in range(5)]
    db.execute("COMMIT")
    log.write(" ".join(map(str, ids)) + "\n")  # written only once COMMIT has returned
    time.sleep(0.001)
"""


SNAPSHOTS = 20


def committed_ids(log: Path) -> set[int]:
    """Ids the writer has seen committed (complete lines only)."""
    text = log.read_text()
    lines = text.split("\n")[:-1]  # the last piece may be a line still being written
    return {int(i) for line in lines if line != "ready" for i in line.split()}


def test_snapshots_of_a_live_wal_db_over_ssh(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports
) -> None:
    sshd = sshd_fleet(["gpu-1", "store-1"])
    fleet = inventory(sshd, {"gpu-1": ["selfplay"], "store-1": ["storage"]}, min_games=1)
    node = fleet.node("gpu-1")
    t = ssh_of(transports, node)
    data = Path(node.data_root)
    db = data / "games" / "selfplay.db"
    db.parent.mkdir()
    log = tmp_path / "committed.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(log)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not log.exists() or len(committed_ids(log)) < 50:
            assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
            assert time.monotonic() < deadline, "the writer committed nothing"
            time.sleep(0.02)
        tops = []
        for i in range(SNAPSHOTS):
            before = committed_ids(log)  # read before the snapshot begins
            info = t.snapshot_sqlite(node, "games/selfplay.db", f"snapshots/live {i}.db")
            snap = data / info.path
            assert info.path == f"snapshots/live {i}.db"
            assert info.size == snap.stat().st_size
            assert not Path(f"{snap}-wal").exists() and not Path(f"{snap}-journal").exists()
            assert snap.read_bytes()[18:20] == b"\x01\x01", "snapshot still in WAL mode"
            with read_only(snap) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                ids = {r[0] for r in conn.execute("SELECT id FROM t WHERE txn > 0")}
                torn = conn.execute(
                    "SELECT count(*) FROM (SELECT txn FROM t WHERE txn > 0"
                    " GROUP BY txn HAVING count(*) != 5)"
                ).fetchone()[0]
                prefill = conn.execute("SELECT count(*) FROM t WHERE txn = 0").fetchone()[0]
            missing = before - ids
            assert not missing, f"snapshot {i} lacks {len(missing)} committed rows"
            assert torn == 0, f"snapshot {i} caught half a transaction"
            assert prefill == 20000
            tops.append(max(ids))
        assert writer.poll() is None, "the writer must have run throughout"
        assert tops == sorted(tops) and tops[-1] > tops[0], "no progress during snapshots"
        assert Path(f"{db}-wal").exists(), "the source's WAL was removed"
        assert sorted(p.name for p in (data / "snapshots").iterdir()) == sorted(
            f"live {i}.db" for i in range(SNAPSHOTS)
        ), "staging files left beside the snapshots"
    finally:
        writer.kill()
        writer.wait()


# ---- the harness itself ------------------------------------------------------------------


def test_sshd_fleet_kill_takes_established_sessions_down(
    sshd_fleet: StartFleet, transports: Transports
) -> None:
    """`SshdFleet.kill` promises "a box vanishing": the listener *and* every session it
    forked. sshd puts each session in its own session (setsid), so this needs more than
    killing the listener's process group."""
    sshd = sshd_fleet(["gpu-1", "store-1"])
    fleet = inventory(sshd, {"gpu-1": ["selfplay"], "store-1": ["storage"]}, min_games=1)
    node = fleet.node("gpu-1")
    t = ssh_of(transports, node)
    assert t.exec(node, ["echo", "up"]).stdout == b"up\n"
    sshd.kill("gpu-1")
    left = describe(node_processes(sshd, ["gpu-1"]))
    try:
        answered: bytes | None = t.exec(node, ["echo", "still up"]).stdout
    except TransferError:
        answered = None
    assert answered is None and not left, (
        f"after SshdFleet.kill, gpu-1 still answers over the established connection "
        f"({answered!r}); surviving processes: {left}"
    )


# ---- 3. a node vanishes mid-transfer, then comes back -------------------------------------

BIG_BYTES = 200 * 1024 * 1024
THROTTLE_MBPS = 320  # 40 MB/s: ~5 s for BIG_BYTES, so the kill lands mid-copy


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """200 MiB of random bytes (incompressible) and their SHA-256, made once."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with open(path, "wb") as f:
        for _ in range(BIG_BYTES // (8 << 20)):
            f.write(os.urandom(8 << 20))
    return path, file_sha256(path)


def landed_bytes(root: Path) -> int:
    """Bytes in files below root (a file renamed while we look is skipped)."""
    total = 0
    for p in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size if p.is_file() else 0
    return total


@pytest.mark.parametrize("victim", ["target", "source"])
@pytest.mark.parametrize("route", ["pull", "relay"])
def test_node_killed_mid_copy_leaves_nothing_and_retry_completes(
    tmp_path: Path,
    sshd_fleet: StartFleet,
    transports: Transports,
    big_file: tuple[Path, str],
    route: str,
    victim: str,
) -> None:
    sshd = sshd_fleet(["gpu-1", "store-1"])
    extra: dict[str, dict[str, object]] = {"gpu-1": {"bandwidth_mbps": THROTTLE_MBPS}}
    if route == "pull":
        extra["store-1"] = {"pull_key": str(sshd.client_key)}
    fleet = inventory(sshd, {"gpu-1": ["selfplay"], "store-1": ["storage"]}, extra, 1)
    src, dst = fleet.node("gpu-1"), fleet.node("store-1")
    assert (dst.pull_key is not None) == (route == "pull")
    rel = "npz/hex8_2p/shard 0001.npz"
    source_file = Path(src.data_root) / rel
    source_file.parent.mkdir(parents=True)
    os.link(big_file[0], source_file)
    sha = big_file[1]
    catalog = catalog_at(tmp_path)
    catalog.sync_nodes(fleet.nodes)
    catalog.add_artifact(
        sha, kind="npz", config="hex8_2p", name=rel, size=BIG_BYTES, origin_node=src.name
    )
    catalog.record_replica(sha, src.name, rel, BIG_BYTES)
    killed = (src if victim == "source" else dst).name
    final = Path(dst.data_root) / rel
    dst_root = Path(dst.data_root)

    outcome: list[object] = []
    copier = threading.Thread(
        target=lambda: outcome.append(
            copy_recorded(src, dst, [CopyItem(rel, rel, sha)], catalog, transports)
        ),
        daemon=True,
    )
    copier.start()
    deadline = time.monotonic() + 30
    while landed_bytes(dst_root) < BIG_BYTES // 4:
        assert copier.is_alive(), f"copy ended before it could be interrupted: {outcome}"
        assert time.monotonic() < deadline, "no bytes reached the target"
        time.sleep(0.02)
    vanish(sshd, killed)
    copier.join(20)
    if copier.is_alive():
        frame = sys._current_frames()[copier.ident or 0]
        stack = "".join(traceback.format_stack(frame)[-6:])
        vanish(sshd, src.name if killed == dst.name else dst.name)  # unblock, then fail
        copier.join(30)
        pytest.fail(
            f"{route}: copy_recorded still running 20 s after {victim} {killed} vanished "
            f"mid-copy; it was blocked in:\n{stack}"
        )
    assert len(outcome) == 1, "copy_recorded raised instead of returning the failure"
    (failed,) = outcome[0]  # type: ignore[misc]
    assert isinstance(failed, TransferError), failed

    # Nothing under the final name; no replica; the failure logged.
    assert not final.exists(), "a partial file was published under the final name"
    reps = catalog.replicas_frame()
    assert reps[(reps["sha256"] == sha) & (reps["node"] == dst.name)].empty
    log = catalog.transfers_frame()
    assert list(log["status"]) == ["failed"]
    assert (log.iloc[0]["source"], log.iloc[0]["target"]) == (src.name, dst.name)
    assert log.iloc[0]["error"], "the failure's reason is not in the transfer log"
    breaker_after_kill = breaker.state(catalog, killed)

    # Checked last, so one run reports every problem of this scenario.
    problems = []
    if breaker_after_kill.failures < 1:  # losing a node mid-copy is a node failure
        problems.append(
            f"{victim} {killed} vanished mid-copy but its breaker did not count it "
            f"(transfer error: {log.iloc[0]['error']!r})"
        )

    # The node comes back; the retry (unthrottled) completes and verifies.
    sshd.restart(killed)
    fast_src = src.model_copy(update={"bandwidth_mbps": None})
    t = ssh_of(transports, dst)
    if listed := [f.path for f in t.list(dst, "npz").files]:
        problems.append(f"the interrupted copy is visible in a listing of {dst.name}: {listed}")
    (done,) = copy_recorded(fast_src, dst, [CopyItem(rel, rel, sha)], catalog, transports)
    assert isinstance(done, CopyResult), done
    assert done.size == BIG_BYTES and done.sha256 == sha
    assert final.stat().st_size == BIG_BYTES
    assert file_sha256(final) == sha, "the retried copy is not the source's bytes"
    reps = catalog.replicas_frame()
    mine = reps[(reps["sha256"] == sha) & (reps["node"] == dst.name)]
    assert list(mine["path"]) == [rel] and list(mine["state"]) == ["verified"]
    assert list(catalog.transfers_frame()["status"]) == ["failed", "ok"]
    assert [f.path for f in t.list(dst, "npz").files] == [rel]
    assert breaker.state(catalog, killed).failures == 0, "a verified copy must close the breaker"
    if leftovers := [
        (p.relative_to(dst_root).as_posix(), p.stat().st_size)
        for p in dst_root.rglob("*")
        if p.is_file() and p != final and p.stat().st_size > 1 << 20
    ]:
        problems.append(f"bytes of the interrupted copy left on {dst.name}: {leftovers}")
    assert not problems, f"{route} route, {victim} killed:\n" + "\n".join(problems)


# ---- 4. host keys: pinned or refused ------------------------------------------------------


def test_host_keys_are_pinned_and_unknown_keys_refused(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports
) -> None:
    sshd = sshd_fleet(["gpu-1", "gpu-2", "store-1"])
    roles = {"gpu-1": ["selfplay"], "gpu-2": ["selfplay"], "store-1": ["storage"]}
    a, b = sshd.nodes["gpu-1"], sshd.nodes["gpu-2"]
    (Path(a.data_root) / "f.bin").write_bytes(b"pinned bytes")
    sha = file_sha256(Path(a.data_root) / "f.bin")

    def workdir(name: str) -> Path:
        (tmp_path / name).mkdir()  # SshTransport writes its known_hosts files there
        return tmp_path / name

    # host_key of another node: refused before anything runs, naming the node.
    wrong = inventory(sshd, roles, {"gpu-1": {"host_key": b.host_key}}, min_games=1).node("gpu-1")
    t = SshTransport(connect_timeout=5, workdir=workdir("ssh-other-key"))
    try:
        with pytest.raises(HostKeyRefused, match=r"^node gpu-1: host key of .* does not match"):
            t.exec(wrong, ["touch", "ran"])
        probe = t.probe(wrong)
        assert not probe.reachable and "gpu-1" in (probe.error or "")
        # The OpenSSH client used for bulk bytes pins the same key and refuses too.
        bulk = subprocess.run(
            [*t._ssh_argv(wrong), "touch", "ran"], capture_output=True, text=True, timeout=30
        )
        assert bulk.returncode == 255 and "host key" in bulk.stderr.lower(), bulk.stderr
    finally:
        t.close()
    assert not (Path(a.data_root) / "ran").exists()

    # No pin at all: the inventory itself is refused, with one located line.
    with pytest.raises(InventoryError) as refused:
        inventory(sshd, roles, {"gpu-1": {"host_key": None}}, min_games=1)
    assert refused.value.problems == [
        "fleet.yaml: node gpu-1: host_key: required when transport is ssh: pin the host key "
        "with host_key or known_hosts (unknown host keys are never accepted)"
    ]

    # known_hosts files: right key works (control and bulk), wrong or absent key refused.
    def known_hosts(name: str, line_key: str, hashed: bool = False) -> str:
        path = tmp_path / f"known_hosts.{name}.{uuid.uuid4().hex[:6]}"
        node = sshd.nodes[name]
        path.write_text(f"[{node.host}]:{node.port} {line_key}\n")
        if hashed:
            subprocess.run(
                ["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True
            )
            assert path.read_text().startswith("|1|")
        return str(path)

    cases = {
        "right": known_hosts("gpu-1", a.host_key),
        "right-hashed": known_hosts("gpu-1", a.host_key, hashed=True),
        "wrong": known_hosts("gpu-1", b.host_key),
        "absent": known_hosts("gpu-2", b.host_key),  # a file with no line for gpu-1
    }
    for case, path in cases.items():
        fleet = inventory(
            sshd, roles, {"gpu-1": {"host_key": None, "known_hosts": path}}, min_games=1
        )
        node, store = fleet.node("gpu-1"), fleet.node("store-1")
        t = SshTransport(connect_timeout=5, workdir=workdir(f"ssh-{case}"))
        try:
            if case.startswith("right"):
                assert t.exec(node, ["cat", "f.bin"]).stdout == b"pinned bytes"
                target = f"copied/{case}.bin"  # relayed: the OpenSSH client reads the file
                assert t.copy_between(node, "f.bin", store, target, sha).bytes_moved == 12
                assert (Path(store.data_root) / target).read_bytes() == b"pinned bytes"
            else:
                with pytest.raises(HostKeyRefused, match=r"^node gpu-1: host key"):
                    t.exec(node, ["touch", "ran"])
                with pytest.raises(HostKeyRefused):
                    t.copy_between(node, "f.bin", store, f"copied/{case}.bin", sha)
                assert not (Path(store.data_root) / f"copied/{case}.bin").exists()
        finally:
            t.close()
    assert not (Path(a.data_root) / "ran").exists()


# ---- 5. hostile file names ----------------------------------------------------------------


def test_hostile_names_over_ssh_listed_or_rejected_copied_intact_never_run(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports
) -> None:
    sshd = sshd_fleet(["gpu-1", "store-1", "store-2"])
    fleet = inventory(
        sshd,
        {"gpu-1": ["selfplay"], "store-1": ["storage"], "store-2": ["storage"]},
        {"store-1": {"pull_key": str(sshd.client_key)}},  # store-1 pulls, store-2 is relayed
    )
    src, puller, relayed = fleet.node("gpu-1"), fleet.node("store-1"), fleet.node("store-2")
    t = ssh_of(transports, src)
    root = Path(src.data_root)
    tag = f"pwned-{uuid.uuid4().hex[:8]}"
    safe = [
        "games/with space.db",
        "games/it's.db",
        'games/dq"uote.db',
        f"games/$(touch {tag}).db",
        f"games/`touch {tag}`.db",
        f"games/x; touch {tag}; y.db",
        f"games/'; touch {tag}; '.db",
        f"games/$(touch${{IFS}}{tag}) && touch {tag} | cat > {tag}.db",
        "games/a..b.db",
        "games/...",
        "games/-rf",
        "games/--help.db",
        "games/star*?[x].db",
        "games/%s %n $HOME ~.db",
        "games/ünïcode ✓.db",
        "games/trailing space .db",
        f"-rf --checkpoint-action=exec=touch {tag}",  # top level: a tar/rsync option?
        f"--rsh=touch {tag}",
        f"sub dir/-e touch {tag}/x.db",
    ]
    unsafe = ["games/new\nline.db", "games/tab\there.db", "games/del\x7f.db"]
    for rel in safe + unsafe:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"content of {rel}".encode())
    (root / "games" / "evil\ndir").mkdir()
    (root / "games" / "evil\ndir" / "inside.db").write_bytes(b"below an unsafe directory")
    os.mkdir(os.fsencode(root / "games") + b"/bad\xff.db")
    outside = tmp_path / "outside" / "secret.db"
    outside.parent.mkdir()
    outside.write_bytes(b"secret")
    (root / "games" / "escape.db").symlink_to(outside)
    (root / "games" / "up.db").symlink_to("../../../outside/secret.db")
    os.mkfifo(root / "games" / "fifo.db")
    live_name = f"games/`touch {tag}` $(touch {tag}) it's.db"
    generate_game_db(root / live_name, configs=["hex8_2p"], n_games=5, seed=3)
    safe.append(live_name)
    (root / "games" / "alias.db").symlink_to("it's.db")  # a sibling: listed as its target

    listing = t.list(src, "")
    assert {f.path for f in listing.files} == set(safe) | {"games/alias.db"}
    # Exactly what LocalTransport sees in the same directory: paths, sizes (a link's
    # are its target's), mtimes to the nanosecond, and the same refusals.
    local = LocalTransport().list(src.model_copy(update={"transport": "local"}), "")
    assert listing.files == local.files
    assert listing.rejected == local.rejected
    assert next(f for f in listing.files if f.path == "games/alias.db").size == len(
        b"content of games/it's.db"
    )
    (root / "games" / "alias.db").unlink()
    listing = t.list(src, "")
    assert {f.path for f in listing.files} == set(safe)
    assert set(listing.rejected) == set(unsafe) | {
        "games/evil\ndir",
        "games/bad\udcff.db",
        "games/escape.db",
        "games/up.db",
        "games/fifo.db",
    }
    assert {f.path for f in t.list(src, "games").files} == {
        s for s in safe if s.startswith("games/")
    }
    sizes = {f.path: f.size for f in listing.files}

    # Safe names survive hashing on the node, and copies on both routes, one by one
    # (a few of the worst) and batched (all of them), byte for byte.
    digests = {rel: file_sha256(root / rel) for rel in safe}
    worst = [  # quotes and `;`, $() with pipes and redirects, leading dashes, a dir
        f"games/'; touch {tag}; '.db",
        f"games/$(touch${{IFS}}{tag}) && touch {tag} | cat > {tag}.db",
        f"-rf --checkpoint-action=exec=touch {tag}",
        f"sub dir/-e touch {tag}/x.db",
    ]
    assert set(worst) <= set(safe)
    for rel in worst:
        assert t.sha256(src, rel) == digests[rel], rel
        assert t.stat(src, rel).size == sizes[rel]  # type: ignore[union-attr]
        for dst in (puller, relayed):
            done = t.copy_between(src, rel, dst, rel, digests[rel])
            assert done.bytes_moved == sizes[rel], (dst.name, rel)
            assert (Path(dst.data_root) / rel).read_bytes() == (root / rel).read_bytes()
    for dst in (puller, relayed):
        items = [CopyItem(rel, f"batch/{rel}", digests[rel]) for rel in safe]
        results = t.copy_many(src, dst, items)
        assert all(isinstance(r, CopyResult) for r in results), (dst.name, results)
        for rel in safe:
            assert (Path(dst.data_root) / "batch" / rel).read_bytes() == (root / rel).read_bytes()
        listed = {f.path for f in t.list(dst, "").files if not f.path.startswith(".fleetsync/")}
        assert listed == set(worst) | {f"batch/{rel}" for rel in safe}, dst.name

    # A live DB under a hostile name snapshots to a hostile name.
    snap = t.snapshot_sqlite(src, live_name, f"snaps/'; touch {tag}; '.db")
    with read_only(root / snap.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    echoed = t.exec(src, ["printf", "%s", worst[1]])
    assert echoed.stdout.decode() == worst[1]

    # Unsafe names are refused before any I/O.
    for bad in ("games/new\nline.db", "../outside/secret.db", "games/../../x", "/etc/passwd"):
        with pytest.raises(UnsafePathError):
            t.copy_between(src, bad, puller, "x.db", "0" * 64)
        with pytest.raises(UnsafePathError):
            t.stat(src, bad)
    t.remove(src, "games/-rf")
    assert not (root / "games" / "-rf").exists() and (root / "games" / "--help.db").exists()
    assert outside.read_bytes() == b"secret"

    # Nothing was executed: the payloads would create a file named `tag` (or `tag.db`)
    # wherever a shell ran them: home, /, /tmp, this directory, or under any data root.
    payload = [tag, f"{tag}.db"]
    places = [Path.home(), Path("/"), Path("/tmp"), Path.cwd()]
    executed = [place / name for place in places for name in payload if (place / name).exists()]
    executed += [p for name in payload for p in tmp_path.rglob(name)]
    assert executed == [], f"a hostile name was executed: {executed}"


# ---- 6. circuit breaker: a dead durable node is routed around ------------------------------


def test_breaker_opens_on_a_dead_durable_node_and_the_planner_routes_around_it(
    tmp_path: Path, sshd_fleet: StartFleet, transports: Transports
) -> None:
    names = ["gpu-1", "store-1", "store-2", "store-3"]
    sshd = sshd_fleet(names)
    pull = {"pull_key": str(sshd.client_key)}
    fleet = inventory(
        sshd,
        {"gpu-1": ["selfplay"], "store-1": ["storage"], "store-2": ["storage"],
         "store-3": ["storage"]},
        {"store-1": pull, "store-2": pull, "store-3": pull},
    )  # fmt: skip
    gpu = fleet.node("gpu-1")
    games = Path(gpu.data_root) / "games"
    generate_game_db(games / "selfplay_hex8_2p.db", configs=["hex8_2p"], n_games=20, seed=1)
    generate_game_db(games / "tournament_square8_2p.db", configs=["square8_2p"], n_games=20, seed=2)
    catalog = catalog_at(tmp_path)
    catalog.sync_nodes(fleet.nodes)
    # A probe from before store-1 died: it has the most room, so it is the first choice.
    for name, free_gib in (("gpu-1", 500), ("store-1", 900), ("store-2", 800), ("store-3", 700)):
        seen = NodeProbe(True, disk_total_bytes=1000 * GIB, disk_free_bytes=free_gib * GIB)
        catalog.record_probe(name, seen)
    vanish(sshd, "store-1")

    # Every pass tries store-1 again (once per batch) until its breaker opens.
    passes, state = 0, breaker.state(catalog, "store-1")
    while not breaker.open_nodes(catalog):
        passes += 1
        assert passes <= 3, f"breaker still closed after 3 failing passes: {state}"
        result = collect_node_games(gpu, fleet, catalog, transports)
        assert result.replication.failures, passes
        assert all("node store-1" in f for f in result.replication.failures), passes
        assert sorted(result.under_replicated) == [
            "games/selfplay_hex8_2p.db",
            "games/tournament_square8_2p.db",
        ]
        state = breaker.state(catalog, "store-1")
        assert (state.opened_at is not None) == (round(state.failures, 1) >= 3), state
    assert breaker.open_nodes(catalog) == {"store-1"}
    assert breaker.state(catalog, "store-2").failures == 0
    assert breaker.state(catalog, "gpu-1").failures == 0
    log = catalog.transfers_frame()
    tried = log[log["target"] == "store-1"]
    assert len(tried) >= 3 and (tried["status"] == "failed").all()
    assert tried["error"].str.contains("node store-1").all()

    # The planner's own choice without the breaker would still be store-1.
    snaps = catalog.artifacts_frame([SNAPSHOT_KIND])
    args = (snaps, catalog.replicas_frame(), catalog.nodes_frame(), {SNAPSHOT_KIND: 2},
            DiskFloor(0.98, 0.5))  # fmt: skip
    naive = plan_replication(*args)
    assert set(naive.transfers["target"]) == {"store-1"}
    routed = plan_replication(*args, unavailable=breaker.open_nodes(catalog))
    assert set(routed.transfers["target"]) == {"store-3"}

    opened = breaker.state(catalog, "store-1")
    result = collect_node_games(gpu, fleet, catalog, transports)
    assert result.replication.failures == []
    assert result.under_replicated == []
    assert breaker.state(catalog, "store-1") == opened, "the open node was attempted"
    after = catalog.transfers_frame()
    new = after.iloc[len(log) :]
    assert not new.empty and set(new["target"]) == {"store-3"}
    assert "store-1" not in set(new["source"]) | set(new["target"])
    reps = catalog.replicas_frame([SNAPSHOT_KIND])
    for snap in snaps.itertuples(index=False):
        mine = reps[(reps["sha256"] == snap.sha256) & (reps["state"] == "verified")]
        assert set(mine["node"]) == {"store-2", "store-3"}, snap.name
        for rep in mine.itertuples(index=False):
            assert file_sha256(Path(fleet.node(rep.node).data_root) / rep.path) == snap.sha256
    assert not node_processes(sshd, ["store-1"]), "store-1 came back by itself"


@pytest.mark.cluster
def test_command_output_is_never_truncated(sshd_fleet):
    """sshd may send the exit status before the last output bytes: all must arrive."""
    from resources.transport.ssh import SshTransport
    from sync_assets.fleet.inventory import Node

    fleet = sshd_fleet(["a"])
    node = Node(roles=["storage"], **fleet.inventory_nodes()[0])
    transport = SshTransport()
    try:
        for _ in range(30):
            done = transport.exec(node, ["head", "-c", "3000000", "/dev/zero"])
            assert len(done.stdout) == 3_000_000
    finally:
        transport.close()
