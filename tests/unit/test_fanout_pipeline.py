"""`distribute` fans one artifact out concurrently and pipelined (issue 10, model fan-out):
each source serves up to `transfers_per_node` copies at once, and a node serves others as
soon as its own copy is verified. Checked on a local fleet through the catalog's transfer
log (each copy's interval: finished_at - seconds .. finished_at), and the wave decision
(`fanout_wave` with the copies still running) property-tested against its rules.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import CopyBatch, CopyOutcomes, Node
from resources.transport.local import LocalTransport
from sync_assets.engine.placement import fanout_wave
from sync_assets.engine.replication import distribute
from sync_assets.fleet.inventory import Fleet, load_inventory

MODEL = "models/canonical_hex8_2p.pth"
GPUS = [f"gpu-{i}" for i in range(1, 9)]


def link_fleet(tmp_path: Path, per_source: int, mbps: float) -> tuple[Fleet, Catalog]:
    """coord-1, store-1 and 8 GPU nodes, local directories, every link capped at `mbps`."""
    durable = [{"name": "coord-1", "roles": ["coordinator", "storage"]},
               {"name": "store-1", "roles": ["storage"]}]  # fmt: skip
    nodes = durable + [{"name": name, "roles": ["selfplay"], "ephemeral": True} for name in GPUS]
    for entry in nodes:
        root = tmp_path / "nodes" / str(entry["name"])
        root.mkdir(parents=True)
        entry |= {"transport": "local", "data_root": str(root), "bandwidth_mbps": mbps}
    doc = {"fleet": "t", "configs": ["hex8_2p"], "nodes": nodes,
           "policy": {"transfers_per_node": per_source}}  # fmt: skip
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    fleet = load_inventory(fleet_file)
    catalog.sync_nodes(fleet.nodes)
    return fleet, catalog


def put_model(fleet: Fleet, catalog: Catalog, node: str, paths: list[str], size: int) -> str:
    """The same random bytes at each path on `node`, recorded as verified replicas."""
    payload = os.urandom(size)
    sha = hashlib.sha256(payload).hexdigest()
    catalog.add_artifact(sha, kind="model", config="hex8_2p", name=MODEL, size=size,
                         origin_node=node)  # fmt: skip
    for path in paths:
        target = Path(fleet.node(node).data_root) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
        catalog.record_replica(sha, node, path, size)
    return sha


def on_disk(fleet: Fleet, node: str, path: str) -> str | None:
    file = Path(fleet.node(node).data_root) / path
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_copies_of_a_fanout_run_at_once_and_each_serves_once_it_holds_the_bytes(
    tmp_path: Path,
) -> None:
    """8 targets over links of 40 Mbit/s: copies overlap in time (serial copies never
    do), no source serves more than 2 at once, and every copy's source held verified
    bytes when it started: the origin, or a target whose own copy had finished."""
    fleet, catalog = link_fleet(tmp_path, per_source=2, mbps=40)
    sha = put_model(fleet, catalog, "coord-1", [MODEL], 1_000_000)  # 0.2 s a copy

    result = distribute(sha, MODEL, GPUS, fleet, catalog, Transports())

    assert (result.copies, result.failures, result.findings) == (8, [], [])
    assert all(on_disk(fleet, name, MODEL) == sha for name in GPUS)
    log = catalog.transfers_frame()
    assert sorted(log["target"]) == GPUS and set(log["status"]) == {"ok"}
    spans = {
        row.target: (row.finished_at - row.seconds, row.finished_at) for row in log.itertuples()
    }
    assert max_overlap(list(spans.values())) >= 2
    for row in log.itertuples():
        start = spans[row.target][0]
        assert row.source == "coord-1" or spans[row.source][1] <= start, row
        same_source = [spans[r.target] for r in log.itertuples() if r.source == row.source]
        assert max_overlap(same_source) <= 2
    assert len(set(log["source"])) >= 3  # a tree: targets served others


def test_a_source_path_found_gone_by_two_running_copies_drops_that_path_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coord-1 holds the model at two paths; the first (deleted behind fleetsync's back)
    is read by both copies of the first wave. The copy to gpu-2 fails only once the copy
    to gpu-1 has found the source gone and dropped its row (so its own look at the
    source finds no row to judge): both count as the source gone, not as failures, the
    other path serves both targets, and every target gets verified bytes."""
    fleet, catalog = link_fleet(tmp_path, per_source=2, mbps=400)
    other = "models/candidates/hex8_2p_v2.pth"
    sha = put_model(fleet, catalog, "coord-1", [MODEL, other], 200_000)
    (Path(fleet.node("coord-1").data_root) / MODEL).unlink()
    copy_many = LocalTransport.copy_many

    def second_after_first(
        self: LocalTransport, src: Node, dst: Node, items: CopyBatch
    ) -> CopyOutcomes:
        if dst.name == "gpu-2" and items[0].src_path == MODEL:
            deadline = time.monotonic() + 30
            while ("coord-1", MODEL) in held_by(catalog, sha) and time.monotonic() < deadline:
                time.sleep(0.01)
        return copy_many(self, src, dst, items)

    monkeypatch.setattr(LocalTransport, "copy_many", second_after_first)
    targets = GPUS[:4]

    result = distribute(sha, MODEL, targets, fleet, catalog, Transports())

    assert all(on_disk(fleet, name, MODEL) == sha for name in targets)
    assert result.failures == [] and result.copies == 4
    assert len(result.findings) == 2 and all(MODEL in f for f in result.findings)
    assert ("coord-1", MODEL) not in held_by(catalog, sha)
    assert ("coord-1", other) in held_by(catalog, sha)
    log = catalog.transfers_frame()
    first_try = log[log["target"].isin(["gpu-1", "gpu-2"])].sort_values("finished_at")
    assert list(first_try["status"]) == ["failed", "failed", "ok", "ok"]


def held_by(catalog: Catalog, sha: str) -> set[tuple[str, str]]:
    return {(r.node, r.path) for r in catalog.replicas_of([sha])}


NAMES = "abcdefghijkl"


@settings(max_examples=500, deadline=None)
@given(
    holders=st.sets(st.sampled_from(NAMES), max_size=5),
    missing=st.lists(st.sampled_from(NAMES), unique=True, max_size=10),
    per_source=st.integers(1, 3),
    unavailable=st.frozensets(st.sampled_from(NAMES), max_size=3),
    busy=st.dictionaries(st.sampled_from(NAMES), st.integers(0, 3), max_size=5),
)
def test_a_wave_with_copies_still_running_respects_every_source_limit(
    holders: set[str],
    missing: list[str],
    per_source: int,
    unavailable: frozenset[str],
    busy: dict[str, int],
) -> None:
    """Sources hold the bytes and are available; each target at most once, never an
    unavailable one; a source's running copies plus its new ones never pass per_source,
    nor 1 once the targets waiting are no more than the nodes holding the bytes or
    receiving them; and the wave is full: a target left out has no source with room."""
    wave = fanout_wave(holders, missing, per_source, unavailable, busy=busy)
    sources = [s for s, _ in wave]
    targets = [t for _, t in wave]
    assert set(sources) <= holders - unavailable
    assert len(targets) == len(set(targets)) and set(targets) <= set(missing) - unavailable
    waiting = set(missing) - unavailable
    cap = per_source if len(waiting) > len(holders - unavailable) + sum(busy.values()) else 1
    for source in set(sources):
        assert busy.get(source, 0) + sources.count(source) <= cap
    for source, target in wave:
        assert target not in holders or source == target  # a holder serves itself
    room = {s for s in holders - unavailable if busy.get(s, 0) + sources.count(s) < cap}
    for target in waiting - set(targets):
        if target in holders:
            assert target not in room  # it would serve itself, but is busy
        else:
            assert not room


def test_a_source_shares_its_link_early_in_a_push_and_not_late() -> None:
    """One holder, five waiting: it takes two at once. Nine holders, eight waiting: each
    target gets a source of its own rather than half of a shared link."""
    early = fanout_wave({"a"}, list("bcdef"), per_source=2)
    assert early == [("a", "b"), ("a", "c")]
    holders = set("abcdefghi")
    late = fanout_wave(holders, list("jklmnopq"), per_source=2)
    assert len(late) == 8 and len({s for s, _ in late}) == 8
    # Two running copies will soon serve too: 3 holders + 2 receiving cover 5 waiting.
    running = fanout_wave(set("abc"), list("vwxyz"), per_source=2, busy={"a": 1, "b": 1})
    assert running == [("c", "v")]
