"""audit_node: one listing finds deleted and truncated replicas without reading a byte."""

from __future__ import annotations

import builtins
import gc
import hashlib
import os
import posixpath
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import ExecResult, Listing, TransferError
from resources.transport.local import LocalTransport
from resources.transport.ssh import SshTransport
from sync_assets.demo.sshd_fleet import SshdFleet
from sync_assets.engine.audit import AuditResult, audit_node, audit_nodes, listing_root
from sync_assets.engine.replication import replicate
from sync_assets.fleet.inventory import DiskPolicy, Fleet, Node, Policy

KIND = "games_snapshot"


def make_node(root: Path, name: str) -> Node:
    (root / name).mkdir(parents=True, exist_ok=True)
    return Node(name=name, transport="local", roles=["storage"], data_root=str(root / name))


def put(node: Node, catalog: Catalog, rel: str, data: bytes) -> str:
    """Write a file on the node and record it as a verified replica (and its artifact)."""
    path = Path(node.data_root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    catalog.add_artifact(sha, kind=KIND, config=None, name=rel, size=len(data), origin_node="o")
    catalog.record_replica(sha, node.name, rel, len(data))
    return sha


def on_node(catalog: Catalog, node: str) -> set[str]:
    reps = catalog.replicas_frame()
    return set(reps.loc[reps["node"] == node, "path"])


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


def watch_reads(monkeypatch: pytest.MonkeyPatch, nodes_dir: Path) -> list[str]:
    """From now on, record every open of a node file and every SHA-256 computed."""
    seen: list[str] = []
    real_open, real_sha = builtins.open, hashlib.sha256

    def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).startswith(str(nodes_dir)):
            seen.append(f"open {file}")
        return real_open(file, *args, **kwargs)

    def watched_sha(*args: Any, **kwargs: Any) -> Any:
        seen.append("sha256")
        return real_sha(*args, **kwargs)

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(hashlib, "sha256", watched_sha)
    return seen


class CountingTransport(LocalTransport):
    """Counts operations: an audit is exactly one listing."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def list(self, node: Node, subdir: str) -> Listing:
        self.calls.append(f"list {subdir!r}")
        return super().list(node, subdir)

    def stat(self, node: Node, path: str) -> Any:
        self.calls.append(f"stat {path}")
        return super().stat(node, path)

    def exec(self, node: Node, argv: list[str], *args: Any, **kwargs: Any) -> ExecResult:
        self.calls.append(f"exec {argv[0]} ({len(argv) - 4} paths)")
        return super().exec(node, argv, *args, **kwargs)


class ShortListing(CountingTransport):
    """A listing that comes back without its last `lose` files (a truncated stream)."""

    def __init__(self, lose: int, confirm_output: bytes | None = None) -> None:
        super().__init__()
        self.lose = lose
        self.confirm_output = confirm_output

    def list(self, node: Node, subdir: str) -> Listing:
        full = super().list(node, subdir)
        return Listing(files=full.files[: -self.lose], rejected=full.rejected)

    def exec(self, node: Node, argv: list[str], *args: Any, **kwargs: Any) -> ExecResult:
        done = super().exec(node, argv, *args, **kwargs)
        if self.confirm_output is None:
            return done
        return ExecResult(done.returncode, self.confirm_output, done.stderr)


def test_deleted_and_truncated_files_are_found_without_hashing(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(tmp_path / "nodes", "store-1")
    other = make_node(tmp_path / "nodes", "store-2")
    shas = {rel: put(node, catalog, rel, os.urandom(4096 + i)) for i, rel in enumerate(
        ["games/a.db", "games/b.db", "games/c.db", "games/sub/d.db"]
    )}  # fmt: skip
    put(other, catalog, "games/a.db", b"x" * 4096)  # another node's replica is not audited
    root = Path(node.data_root)
    (root / "games/a.db").unlink()
    with open(root / "games/b.db", "r+b") as f:
        f.truncate(100)
    (root / "games/stray.db").write_bytes(b"not in the catalog")
    intact_before = {p: os.stat(root / p).st_mtime_ns for p in ("games/c.db", "games/sub/d.db")}
    transport = CountingTransport()
    reading = watch_reads(monkeypatch, tmp_path / "nodes")
    result = audit_node(node, catalog, transport)

    assert reading == []  # no file opened, nothing hashed
    # One listing, of the replicas' directory; one look at the two suspicious paths.
    assert transport.calls == ["list 'games'", "exec sh (2 paths)"]
    assert [m.path for m in result.missing] == ["games/a.db"]
    assert [(c.path, c.recorded_size, c.found_size) for c in result.changed] == [
        ("games/b.db", 4097, 100)
    ]
    assert sorted(result.ok) == ["games/c.db", "games/sub/d.db"]
    assert result.untracked == 1 and result.dropped == 2 and not result.clean
    assert result.missing[0].sha256 == shas["games/a.db"]
    # Catalog corrected on this node only; intact files untouched on disk.
    assert on_node(catalog, "store-1") == {"games/c.db", "games/sub/d.db"}
    assert on_node(catalog, "store-2") == {"games/a.db"}
    assert {p: os.stat(root / p).st_mtime_ns for p in intact_before} == intact_before
    # A second audit finds the catalog right: nothing left to drop.
    again = audit_node(node, catalog, transport)
    assert again.clean and again.dropped == 0 and len(again.ok) == 2


def test_a_short_listing_never_costs_a_replica(tmp_path: Path, catalog: Catalog) -> None:
    node = make_node(tmp_path / "nodes", "store-1")
    for i in range(5):
        put(node, catalog, f"games/{i}.db", os.urandom(100))
    (Path(node.data_root) / "games/0.db").unlink()
    transport = ShortListing(lose=2)  # games/3.db and games/4.db not listed
    result = audit_node(node, catalog, transport)
    assert [m.path for m in result.missing] == ["games/0.db"]
    assert sorted(result.recovered) == ["games/3.db", "games/4.db"]
    assert len(result.ok) == 4 and result.dropped == 1
    assert on_node(catalog, "store-1") == {f"games/{i}.db" for i in range(1, 5)}


def test_incomplete_confirmation_drops_nothing(tmp_path: Path, catalog: Catalog) -> None:
    node = make_node(tmp_path / "nodes", "store-1")
    for i in range(3):
        put(node, catalog, f"games/{i}.db", os.urandom(100))
    (Path(node.data_root) / "games/1.db").unlink()
    transport = ShortListing(lose=1, confirm_output=b"./games/0.db\x00100\x00")  # no END
    with pytest.raises(TransferError, match="incomplete output"):
        audit_node(node, catalog, transport)
    assert on_node(catalog, "store-1") == {"games/0.db", "games/1.db", "games/2.db"}


def test_unreachable_node_is_not_a_node_that_lost_its_files(
    tmp_path: Path, catalog: Catalog
) -> None:
    node = make_node(tmp_path / "nodes", "gpu-1")
    put(node, catalog, "games/a.db", b"abc")
    shutil.rmtree(node.data_root)  # unmounted / vanished box: the listing itself fails
    with pytest.raises(TransferError):
        audit_node(node, catalog, LocalTransport())
    assert on_node(catalog, "gpu-1") == {"games/a.db"}


def test_audit_nodes_audits_each_node_and_isolates_failures(
    tmp_path: Path, catalog: Catalog
) -> None:
    nodes = [make_node(tmp_path / "nodes", n) for n in ("store-1", "store-2", "gpu-1")]
    for node in nodes:
        put(node, catalog, "games/a.db", node.name.encode() * 10)
        put(node, catalog, "games/b.db", b"b" * 100)
    (Path(nodes[0].data_root) / "games/b.db").unlink()
    shutil.rmtree(nodes[2].data_root)
    results = audit_nodes(nodes, catalog, lambda _node: LocalTransport())
    first, second, third = (results[n.name] for n in nodes)
    assert isinstance(first, AuditResult) and [m.path for m in first.missing] == ["games/b.db"]
    assert isinstance(second, AuditResult) and second.clean and len(second.ok) == 2
    assert isinstance(third, TransferError)
    assert on_node(catalog, "store-1") == {"games/a.db"}
    assert on_node(catalog, "gpu-1") == {"games/a.db", "games/b.db"}  # unseen: untouched


class GcWatchingTransport(LocalTransport):
    """Records whether cyclic GC was on while each node was listed."""

    def __init__(self) -> None:
        self.gc_on_while_listing: list[bool] = []

    def list(self, node: Node, subdir: str) -> Listing:
        self.gc_on_while_listing.append(gc.isenabled())
        return super().list(node, subdir)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_audits_pause_garbage_collection_and_leave_it_as_found(
    tmp_path: Path, catalog: Catalog, enabled_before: bool
) -> None:
    nodes = [make_node(tmp_path / "nodes", n) for n in ("store-1", "store-2", "store-3")]
    for node in nodes:
        put(node, catalog, "games/a.db", node.name.encode())
    shutil.rmtree(nodes[2].data_root)  # one audit fails: the pause still ends
    transport = GcWatchingTransport()
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        results = audit_nodes(nodes, catalog, lambda _node: transport)
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()
    assert transport.gc_on_while_listing == [False] * 3
    assert isinstance(results["store-3"], TransferError)


def test_same_size_modified_after_verification_is_suspect_not_dropped(
    tmp_path: Path, catalog: Catalog
) -> None:
    node = make_node(tmp_path / "nodes", "store-1")
    put(node, catalog, "m/model.pth", b"a" * 64)
    path = Path(node.data_root) / "m/model.pth"
    path.write_bytes(b"b" * 64)
    later = time.time() + 60
    os.utime(path, (later, later))
    result = audit_node(node, catalog, LocalTransport())
    assert [s.path for s in result.suspect] == ["m/model.pth"] and result.clean
    assert on_node(catalog, "store-1") == {"m/model.pth"}


def test_node_without_replicas_costs_nothing(tmp_path: Path, catalog: Catalog) -> None:
    node = make_node(tmp_path / "nodes", "gpu-2")
    transport = CountingTransport()
    result = audit_node(node, catalog, transport)
    assert transport.calls == [] and result.listed_dir is None and result.clean


@pytest.mark.parametrize(
    ("paths", "root"),
    [
        (["games/a.db", "games/b/c.db"], "games"),
        (["games/collected/x/a.db", "games/collected/y/b.db"], "games/collected"),
        (["games/a.db", "models/m.pth"], ""),
        (["top.db", "games/a.db"], ""),
        (["games/x/a.db"], "games/x"),
        (["games/d0/a.db", "games/d01/b.db"], "games"),  # common prefix "games/d0"
        (["a/b", "a/b/c"], "a"),
        (["x.db", "y.db"], ""),
    ],
)
def test_listing_root_is_the_deepest_common_directory(paths: list[str], root: str) -> None:
    assert listing_root(min(paths), max(paths)) == root


def test_listing_root_from_the_extremes_matches_every_path() -> None:
    """The catalog hands over only the lowest and highest path: the directory found
    from them is the deepest one holding every path, on random path sets."""
    rng = random.Random(3)
    parts = ["a", "b", "ab", "a.b", "d0", "d01", "x y", "é"]
    for _ in range(3000):
        paths = [
            "/".join(rng.choices(parts, k=rng.randint(1, 4))) for _ in range(rng.randint(1, 6))
        ]
        dirs = {posixpath.dirname(p) for p in paths}
        expected = "" if "" in dirs else posixpath.commonpath(sorted(dirs))
        assert listing_root(min(paths), max(paths)) == expected, paths


def test_audit_then_plan_repairs_only_what_is_gone(tmp_path: Path, catalog: Catalog) -> None:
    """The no-op re-sync: audit + plan move nothing; after a loss, exactly the loss moves."""
    a, b = (make_node(tmp_path / "nodes", n) for n in ("store-1", "store-2"))
    # These nodes share this machine's disk, whatever else fills it: a floor it can meet.
    policy = Policy(disk=DiskPolicy(max_target_use=0.99, min_free_gb=0.1))
    fleet = Fleet(fleet="t", nodes=[a, b], policy=policy)
    catalog.sync_nodes(fleet.nodes)
    shas = []
    for i in range(5):
        data = os.urandom(1000 + i)
        sha = put(a, catalog, f"games/{i}.db", data)
        (Path(b.data_root) / "games").mkdir(exist_ok=True)
        (Path(b.data_root) / f"games/{i}.db").write_bytes(data)
        catalog.record_replica(sha, b.name, f"games/{i}.db", len(data))
        shas.append(sha)
    transports = Transports()

    def path_of(row: Any) -> str:
        return f"games/{shas.index(row.name)}.db"

    for node in (a, b):
        assert audit_node(node, catalog, transports.for_node(node)).clean
    assert replicate(shas, fleet, catalog, transports, path_of).copies == 0

    (Path(b.data_root) / "games/2.db").unlink()
    audited = audit_node(b, catalog, transports.for_node(b))
    assert [m.path for m in audited.missing] == ["games/2.db"]
    repaired = replicate(shas, fleet, catalog, transports, path_of)
    assert repaired.copies == 1 and not repaired.failures
    assert (Path(b.data_root) / "games/2.db").read_bytes() == (
        Path(a.data_root) / "games/2.db"
    ).read_bytes()
    assert audit_node(b, catalog, transports.for_node(b)).clean


# ---- over a real sshd node -------------------------------------------------------------


@pytest.mark.cluster
def test_audit_over_sshd_is_one_find_and_no_hashing(
    tmp_path: Path, catalog: Catalog, sshd_fleet: Callable[..., SshdFleet]
) -> None:
    sshd = sshd_fleet(["store-1"])
    node = Node(roles=["storage"], **sshd.inventory_nodes()[0])  # type: ignore[arg-type]
    for i in range(30):
        put(node, catalog, f"games/collected/n{i % 3}/{i}.db", os.urandom(2048))
    root = Path(node.data_root)
    (root / "games/collected/n0/0.db").unlink()
    with open(root / "games/collected/n1/1.db", "r+b") as f:
        f.truncate(7)
    transport = SshTransport()
    commands: list[str] = []
    real_run = transport._run

    def spy(node_: Node, command: str, *args: Any, **kwargs: Any) -> Any:
        commands.append(command)
        return real_run(node_, command, *args, **kwargs)

    transport._run = spy  # type: ignore[method-assign]
    try:
        result = audit_node(node, catalog, transport)
    finally:
        transport.close()
    # The listing, then one look at the two paths it found wrong; nothing reads contents.
    assert len(commands) == 2 and all("find " in c for c in commands)
    assert "n0/0.db" in commands[1] and "n1/1.db" in commands[1]
    assert not any(w in c for c in commands for w in ("sha256", "cat ", "md5", "python"))
    assert result.listed_dir == "games/collected"
    assert [m.path for m in result.missing] == ["games/collected/n0/0.db"]
    assert [(c.path, c.found_size) for c in result.changed] == [("games/collected/n1/1.db", 7)]
    assert len(result.ok) == 28 and result.dropped == 2
    assert len(on_node(catalog, "store-1")) == 28
