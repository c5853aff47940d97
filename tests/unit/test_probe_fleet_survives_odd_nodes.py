"""One odd node never blinds the probe of the whole fleet (from a hostile review): a DB
name that is not UTF-8 (any byte string is a valid POSIX name) is refused at the probe,
not stored; a probe reply of the wrong shape is that node's error; a node whose recording
fails is reported alone while the others are recorded and decided; a probe that never
ends (a local root on a hung NFS mount) is a missed probe after its deadline."""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources.catalog import Catalog
from resources.transport import Transports, node_probe
from resources.transport.base import NodeProbe
from resources.transport.local import LocalTransport
from sync_assets.engine.probe import probe_fleet
from sync_assets.fleet.assets import probe_metadata
from sync_assets.fleet.inventory import Fleet, Node

ODD_NAME = b"selfplay_\xe9.db"  # latin-1, not UTF-8


def local_fleet(tmp_path: Path, names: tuple[str, ...]) -> tuple[list[Node], Fleet, Catalog]:
    nodes = []
    for name in names:
        (tmp_path / name / "games").mkdir(parents=True)
        nodes.append(
            Node(name=name, transport="local", roles=["selfplay"], data_root=str(tmp_path / name))
        )
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    fleet = Fleet(fleet="review", nodes=nodes)
    catalog.sync_nodes(fleet.nodes)
    return nodes, fleet, catalog


def test_one_odd_file_name_does_not_blind_the_fleet_probe(tmp_path: Path) -> None:
    nodes, fleet, catalog = local_fleet(tmp_path, ("gpu-1", "gpu-2"))
    games = os.path.join(os.fsencode(tmp_path / "gpu-1" / "games"), ODD_NAME)
    with open(games, "wb") as f:
        f.write(b"x" * 100)
    (tmp_path / "gpu-1" / "games" / "selfplay.db").write_bytes(b"y" * 10)

    probes = probe_fleet(nodes, fleet, catalog, Transports())

    assert set(probes) == {"gpu-1", "gpu-2"}
    assert catalog.nodes_frame()["last_probe_at"].notna().all(), "a probe was never recorded"
    odd = probes["gpu-1"]
    assert odd.reachable and odd.error is None
    assert odd.rejected == ("games/" + os.fsdecode(ODD_NAME),)  # refused, counted
    assert [d.db.path for d in odd.databases] == ["games/selfplay.db"]
    assert probe_metadata(odd)["rejected_db_names"] == [r"'games/selfplay_\udce9.db'"]
    stored = {(r.node, r.path) for r in catalog.probed_databases(["gpu-1", "gpu-2"])}
    assert stored == {("gpu-1", "games/selfplay.db")}


# --- the probe reply is data: its shape and types are checked -------------------------------

BIG = 2**63
UNSAFE_NAMES = ["games/a\udce9.db", "games/a\nb.db", "games/../x.db", "/games/a.db",
                "games//a.db", "games/a\\b.db", "other/a.db", "games/sub/a.db", "games/a.txt",
                "./games/a.db", "games/\x7f.db"]  # fmt: skip
SAFE_NAMES = ["games/selfplay.db", "elo/unified_elo.db", "games/a b.db", "games/é.db"]
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
COUNT = st.none() | st.integers(0, BIG - 1)


def is_safe_db_name(path: str) -> bool:
    """Written from the rules (DATA.md, paths.safe_relpath), not from the code."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if any(unicodedata.category(c) == "Cc" for c in path) or "\\" in path:
        return False
    return re.fullmatch(r"(games|elo)/[^/]+\.db", path) is not None


def oracle_databases(row: Any) -> tuple[str, str | None] | None:
    """('rejected', path) for an unsafe name, ('db', None) for a good row, None: malformed."""
    if not isinstance(row, list) or len(row) != 5 or not isinstance(row[0], str):
        return None
    path, size, mtime, wal_size, wal_mtime = row
    if not is_safe_db_name(path):
        return ("rejected", path)

    def integer(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v < BIG

    wal_unknown = wal_size is None and wal_mtime is None
    wal_known = integer(wal_size, 0) and integer(wal_mtime, -BIG)
    good = integer(size, 0) and integer(mtime, -BIG) and (wal_unknown or wal_known)
    return ("db", None) if good else None


def well_formed(facts: Any) -> bool:
    keys = ["disk_total_bytes", "disk_free_bytes", "gpu_util_percent", "jobs", "sessions"]
    if not isinstance(facts, dict) or not {*keys, "databases"} <= set(facts):
        return False
    for key in ("disk_total_bytes", "disk_free_bytes", "jobs", "sessions"):
        v = facts[key]
        if v is not None and (type(v) is not int or not 0 <= v < BIG):
            return False
    gpu = facts["gpu_util_percent"]
    if gpu is not None and (type(gpu) not in (int, float) or not 0 <= gpu <= 100):  # percent
        return False
    rows = facts["databases"]
    return isinstance(rows, list) and all(oracle_databases(r) is not None for r in rows)


@st.composite
def replies(draw: st.DrawFn) -> Any:
    """Mostly near-valid replies, each field sometimes replaced by any JSON value."""
    name = st.sampled_from(UNSAFE_NAMES + SAFE_NAMES) | ANY_JSON
    row = st.tuples(name, COUNT | ANY_JSON, COUNT | ANY_JSON, COUNT, COUNT).map(list) | ANY_JSON
    facts = {
        "disk_total_bytes": draw(COUNT | ANY_JSON),
        "disk_free_bytes": draw(COUNT),
        "gpu_util_percent": draw(st.none() | st.floats(-1, 101) | ANY_JSON),
        "jobs": draw(COUNT),
        "sessions": draw(COUNT | ANY_JSON),
        "databases": draw(st.lists(row, max_size=4) | ANY_JSON),
    }
    if draw(st.booleans()):
        facts.pop(draw(st.sampled_from(sorted(facts))))
    return facts if draw(st.integers(0, 9)) else draw(ANY_JSON)


@pytest.fixture(scope="module")
def shared_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    yield Catalog(url=f"sqlite:///{tmp_path_factory.mktemp('probe') / 'catalog.db'}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=replies())
def test_a_reply_is_read_whole_or_refused_and_what_is_read_can_be_recorded(
    facts: Any, shared_catalog: Catalog
) -> None:
    try:
        probe = NodeProbe.seen(facts)
    except ValueError:
        assert not well_formed(facts), facts
        return
    assert well_formed(facts), facts
    expected = [oracle_databases(r) for r in facts["databases"]]
    assert list(probe.rejected) == [e[1] for e in expected if e and e[0] == "rejected"]
    assert len(probe.databases) == sum(1 for e in expected if e == ("db", None))
    shared_catalog.record_probe("gpu-x", probe)  # never raises: the catalog holds it all


def test_a_malformed_local_reply_is_an_error_and_keeps_the_dbs_seen_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, fleet, catalog = local_fleet(tmp_path, ("gpu-1",))
    (tmp_path / "gpu-1" / "games" / "selfplay.db").write_bytes(b"y" * 10)
    probe_fleet(nodes, fleet, catalog, Transports())
    good = node_probe.probe
    monkeypatch.setattr(
        node_probe, "probe", lambda root, host: good(root, host=host) | {"jobs": "3"}
    )
    [bad] = probe_fleet(nodes, fleet, catalog, Transports()).values()
    assert bad.reachable and bad.error and "jobs" in bad.error
    assert catalog.nodes_frame().set_index("name").loc["gpu-1", "probe_error"] == bad.error
    assert [r.path for r in catalog.probed_databases(["gpu-1"])] == ["games/selfplay.db"]


# --- each node recorded on its own; each probe bounded in time -----------------------------


def test_one_nodes_recording_error_is_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, fleet, catalog = local_fleet(tmp_path, ("gpu-1", "gpu-2"))
    os.rmdir(tmp_path / "gpu-2" / "games")
    os.rmdir(tmp_path / "gpu-2")  # gpu-2 is gone: its miss must still be decided
    record = Catalog.record_probe

    def failing_for_gpu_1(self: Catalog, node: str, probe: NodeProbe) -> None:
        if node == "gpu-1":
            raise RuntimeError("disk I/O error")
        record(self, node, probe)

    monkeypatch.setattr(Catalog, "record_probe", failing_for_gpu_1)
    probes = probe_fleet(nodes, fleet, catalog, Transports())
    assert probes["gpu-1"].error == "node gpu-1: recording the probe failed: " + repr(
        RuntimeError("disk I/O error")
    )
    assert not probes["gpu-2"].reachable
    frame = catalog.nodes_frame().set_index("name")
    assert frame.loc["gpu-2", "last_probe_at"] > 0 and frame.loc["gpu-2", "state"] == "suspect"
    assert list(catalog.node_events_frame()["node"]) == ["gpu-2"]


def test_a_probe_that_never_ends_is_a_missed_probe_after_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, fleet, catalog = local_fleet(tmp_path, ("gpu-1", "gpu-2"))
    hung = threading.Event()
    good = node_probe.probe

    def hangs_on_gpu_1(root: str, host: bool = True) -> dict[str, Any]:
        if root.endswith("gpu-1"):
            hung.wait(60)  # statvfs on a hung NFS root
        return good(root, host=host)

    monkeypatch.setattr(node_probe, "probe", hangs_on_gpu_1)
    started = time.monotonic()
    try:
        probes = probe_fleet(nodes, fleet, catalog, Transports(), timeout_s=1.0)
    finally:
        hung.set()
    assert time.monotonic() - started < 20
    assert probes["gpu-1"] == NodeProbe(False, error="node gpu-1: probe timed out after 1 s")
    assert probes["gpu-2"].reachable and probes["gpu-2"].error is None
    frame = catalog.nodes_frame().set_index("name")
    assert frame.loc["gpu-1", "probe_error"] == "node gpu-1: probe timed out after 1 s"
    assert frame.loc["gpu-1", "state"] == "suspect" and frame.loc["gpu-2", "state"] == "active"


def test_local_transport_refuses_the_odd_name_itself(tmp_path: Path) -> None:
    nodes, _, _ = local_fleet(tmp_path, ("gpu-1",))
    with open(os.path.join(os.fsencode(tmp_path / "gpu-1" / "games"), ODD_NAME), "wb"):
        pass
    probe = LocalTransport().probe(nodes[0])
    assert probe.reachable and probe.databases == () and len(probe.rejected) == 1
