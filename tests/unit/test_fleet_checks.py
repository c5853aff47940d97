"""Audit and scrub on rotation: the pure decisions against independently written oracles,
the catalog's `node_checks` / `check_findings`, and the shipped hashing program."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.catalog import Catalog, NodeState, ReplicaState
from resources.transport import Transports
from sensors.fleet_audit import checkable
from sync_assets.engine import scrub_hash
from sync_assets.engine.scrub import (
    SCRUB_HASH_PY,
    ScrubCandidate,
    nodes_to_check,
    quarantine_path,
    scrub_selection,
)
from sync_assets.fleet.inventory import Node

NAMES = [f"n{i}" for i in range(12)]


# ---- nodes_to_check ---------------------------------------------------------------------


def oracle_nodes(
    eligible: set[str], last: dict[str, float | None], k: int, due_before: float | None
) -> list[str]:
    """Pick one at a time: a never-checked node beats any checked one; among never
    checked, the smaller name; among checked, the older check, then the smaller name."""

    def before(a: str, b: str) -> bool:
        ta, tb = last.get(a), last.get(b)
        if (ta is None) != (tb is None):
            return ta is None
        if ta is not None and tb is not None and ta != tb:
            return ta < tb
        return a < b

    left = {
        n
        for n in eligible
        if due_before is None or (at := last.get(n)) is None or not at > due_before
    }
    chosen = []
    while left and len(chosen) < k:
        best = next(iter(left))
        for other in left:
            if before(other, best):
                best = other
        chosen.append(best)
        left.remove(best)
    return chosen


@settings(max_examples=1000)
@given(
    eligible=st.sets(st.sampled_from(NAMES)),
    last=st.dictionaries(
        st.sampled_from(NAMES), st.one_of(st.none(), st.sampled_from([0.0, 5.0, 50.0, 99.0]))
    ),
    k=st.integers(-1, 14),
    due_before=st.none() | st.sampled_from([-1.0, 0.0, 5.0, 60.0, 100.0]),
)
def test_nodes_to_check_matches_the_oracle(
    eligible: set[str], last: dict[str, float | None], k: int, due_before: float | None
) -> None:
    chosen = nodes_to_check(eligible, last, k, due_before=due_before)
    assert chosen == oracle_nodes(eligible, last, k, due_before)
    assert set(chosen) <= eligible and len(chosen) <= max(k, 0)


@settings(max_examples=500)
@given(
    inventory=st.lists(st.sampled_from(NAMES), unique=True),
    states=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(list(NodeState))),
    unavailable=st.frozensets(st.sampled_from(NAMES)),
    last=st.dictionaries(st.sampled_from(NAMES), st.none() | st.floats(0, 100)),
)
def test_a_lost_retired_suspect_or_unavailable_node_is_never_checked(
    inventory: list[str],
    states: dict[str, NodeState],
    unavailable: frozenset[str],
    last: dict[str, float | None],
) -> None:
    eligible = checkable(inventory, states, unavailable)
    for name in nodes_to_check(eligible, last, len(NAMES)):
        assert name in inventory and name not in unavailable
        assert states.get(name, NodeState.ACTIVE) == NodeState.ACTIVE


def test_rotation_reaches_every_node() -> None:
    """Checked nodes go to the back: ceil(n / k) rounds check every node once."""
    last: dict[str, float | None] = {}
    seen = []
    for now in range(4):
        chosen = nodes_to_check(NAMES, last, 5)
        last.update(dict.fromkeys(chosen, float(now)))
        seen.append(chosen)
    assert set(itertools.chain(*seen[:3])) == set(NAMES)  # 12 nodes, 5 a round
    assert seen[2][2:] == seen[0][:3]  # then those checked longest ago, in their order


# ---- scrub_selection ----------------------------------------------------------------------


candidates = st.lists(
    st.builds(
        ScrubCandidate,
        sha256=st.sampled_from(["a" * 64, "b" * 64, "c" * 64]),
        path=st.text("xyz/", min_size=1, max_size=4),
        size=st.sampled_from([0, 1, 7, 100, 2**31, 2**40]),
        verified_at=st.sampled_from([0.0, 1.0, 2.5, 10.0]),
        kind=st.just("games_snapshot"),
    ),
    max_size=25,
)


@settings(max_examples=1000)
@given(candidates, st.sampled_from([0, 1, 8, 100, 2**31, 2**41]))
def test_scrub_selection_is_the_oldest_prefix_within_budget(
    replicas: list[ScrubCandidate], budget: int
) -> None:
    chosen = scrub_selection(replicas, budget)
    # Oracle: the age order is every replica ranked by how many come strictly before it.
    ranked = sorted(
        replicas,
        key=lambda c: sum((o.verified_at, o.path, o.sha256) < (c.verified_at, c.path, c.sha256)
                          for o in replicas),
    )  # fmt: skip
    expected = []
    for n in range(1, len(ranked) + 1):
        if n == 1 or sum(c.size for c in ranked[:n]) <= budget:
            expected = ranked[:n]
        else:
            break
    assert chosen == expected
    if replicas:
        assert chosen, "at least one file, however large"
        assert len(chosen) == 1 or sum(c.size for c in chosen) <= budget
        oldest = min(c.verified_at for c in replicas)
        assert chosen[0].verified_at == oldest
        rest = [c for c in replicas if c not in chosen]
        assert all(c.verified_at >= max(x.verified_at for x in chosen) for c in rest)


def test_quarantine_path_keeps_the_name_and_tells_the_bytes() -> None:
    assert quarantine_path("games/collected/a/x.db", "f" * 64) == (
        ".quarantine/games/collected/a/x.db." + "f" * 16
    )


# ---- catalog ------------------------------------------------------------------------------


def test_node_checks_rows_keep_what_the_other_check_wrote(tmp_path: Path) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'c.db'}")
    assert catalog.node_checks() == {}
    catalog.record_audit("n1", "audit: ok", at=10.0)
    catalog.record_scrub("n1", 123, "scrub: 3/3 matched", at=20.0)
    catalog.record_audit("n1", "audit: 1 missing", at=30.0)
    row = catalog.node_checks()["n1"]
    assert (row.audited_at, row.scrubbed_at, row.scrub_bytes) == (30.0, 20.0, 123)
    assert row.last_finding == "audit: 1 missing"


def test_scrub_candidates_and_refresh(tmp_path: Path) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'c.db'}")
    for i, state in enumerate([ReplicaState.VERIFIED, ReplicaState.VERIFIED, ReplicaState.STAGING]):
        sha = f"{i:064x}"
        catalog.add_artifact(sha, kind="npz", config=None, name=f"f{i}", size=i, origin_node="n1")
        catalog.record_replica(sha, "n1", f"f{i}", i, state=state)
        catalog.record_replica(sha, "n2", f"f{i}", i)
    rows = catalog.scrub_candidates("n1")
    assert [r.path for r in rows] == ["f0", "f1"]  # staging never, oldest first
    assert {r.kind for r in rows} == {"npz"}
    before = rows[1].verified_at
    catalog.refresh_verified("n1", [(rows[1].sha256, "f1"), ("0" * 64, "nowhere")], before + 5)
    catalog.refresh_verified("n1", [(rows[1].sha256, "f1")], before - 100)  # never back
    assert [r.path for r in catalog.scrub_candidates("n1")] == ["f0", "f1"]
    refreshed = {r.path: r.verified_at for r in catalog.scrub_candidates("n1")}
    assert refreshed["f1"] == before + 5
    n2 = {r.path: r.verified_at for r in catalog.scrub_candidates("n2")}
    assert n2["f1"] < before + 5  # another node's copy is another replica
    catalog.record_check_findings("n1", [("0" * 64, "f0", "corrupt", "moved aside")])
    frame = catalog.check_findings_frame("n1")
    assert list(frame["finding"]) == ["corrupt"] and catalog.check_findings_frame("n2").empty


# ---- the shipped hashing program -----------------------------------------------------------


def test_scrub_hash_program_reports_each_file(tmp_path: Path) -> None:
    root = tmp_path / "node"
    (root / "d").mkdir(parents=True)
    (root / "d/a.db").write_bytes(b"hello")
    (root / "d/dir").mkdir()
    os.mkfifo(root / "d/fifo")
    node = Node(name="n1", transport="local", roles=["storage"], data_root=str(root))
    answer = Transports().run_program(
        node,
        SCRUB_HASH_PY,
        [],
        {"paths": ["d/a.db", "d/gone.db", "d/dir", "d/fifo"], "timeout_s": 5},
        timeout=60,
    )
    hashed, gone, directory, fifo = answer["files"]
    st = (root / "d/a.db").stat()
    assert hashed == {
        "path": "d/a.db",
        "size": 5,
        "mtime_ns": st.st_mtime_ns,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
    }
    assert gone == {"path": "d/gone.db", "missing": True}
    assert directory == {"path": "d/dir", "missing": True}
    assert fifo == {"path": "d/fifo", "missing": True}  # never opened: a FIFO would block


def test_a_slow_file_is_a_hash_error_and_a_file_written_while_read_is_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.db"
    path.write_bytes(b"x" * 10)

    def hung_disk(_path: str) -> str:
        time.sleep(30)
        return ""

    monkeypatch.setattr(scrub_hash, "sha256_file", hung_disk)
    signal.signal(signal.SIGALRM, scrub_hash._on_alarm)
    started = time.monotonic()
    assert scrub_hash.hash_file(str(path), 0.2) == {
        "path": str(path),
        "error": "not hashed within 0.2 s",
    }
    assert time.monotonic() - started < 5

    def writer_meanwhile(file: str) -> str:
        Path(file).write_bytes(b"y" * 11)
        return "0" * 64

    monkeypatch.setattr(scrub_hash, "sha256_file", writer_meanwhile)
    assert scrub_hash.hash_file(str(path), 5) == {"path": str(path), "changed": True}
