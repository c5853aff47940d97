"""Issue 8, items 4, 11, 12, 13: the Elo match union and publishing.

Every test works on real SQLite Elo DBs in the DATA.md shapes (written by
`synth.write_elo_db`, or by hand with SQL where a shape needs exact bytes) and, where
the assets matter, on a LocalTransport fleet. Expected answers come from the rows the
test wrote (plain Python over them, or the fit of the distinct simulated matches),
never from what the union reports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
import sqlite3
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import NodeProbe
from sync_assets.demo.synth_elo import anchored_strengths, match_rows, simulate, write_elo_db
from sync_assets.elo import matches as m
from sync_assets.elo import ratings_db
from sync_assets.elo.assets import elo_matches, elo_ratings
from sync_assets.elo.collect import ELO_DB, MATCHES_DB, SNAPSHOT_KIND, collected_path
from sync_assets.elo.identity import Identity, select_matches
from sync_assets.elo.publish import RATINGS_ALIAS, RATINGS_DB, catalog_identity
from sync_assets.fleet.inventory import load_inventory
from tests.dagster.test_elo import _expected, _fleet_yaml, _materialize

CONFIG = "hex8_2p"
P, Q, R = "p_hex8_2p:mcts:b1", "q_hex8_2p:mcts:b1", "r_hex8_2p:mcts:b1"
T0 = 1_700_000_000.0


# ---- a LocalTransport fleet (coord-1, store-1 durable; gpu-1 eval; train-1) ---------------


@pytest.fixture
def env(tmp_path: Path):
    root = tmp_path / "fleet"
    fleet_file = _fleet_yaml(root)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": catalog,
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield SimpleNamespace(
            root=root, fleet_file=fleet_file, resources=resources, instance=instance,
            catalog=catalog,
        )  # fmt: skip


def _fleet(env: SimpleNamespace):
    return load_inventory(env.fleet_file)


def _collect_all(env: SimpleNamespace) -> None:
    for node in _fleet(env).nodes:
        result = _materialize(elo_matches, node.name, env.resources, env.instance)
        assert result.success, node.name


def _rate(env: SimpleNamespace) -> dg.ExecuteInProcessResult:
    return _materialize(elo_ratings, CONFIG, env.resources, env.instance)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    return error.message


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def _ratings_files(env: SimpleNamespace) -> dict[str, bytes]:
    found = {}
    for node in _fleet(env).nodes:
        path = env.root / node.name / RATINGS_DB
        if path.exists():
            found[node.name] = path.read_bytes()
    return found


def _published(env: SimpleNamespace, node: str = "store-1") -> pd.DataFrame:
    rows = pd.DataFrame(ratings_db.read_rows(str(env.root / node / RATINGS_DB)))
    mine = rows[(rows["board_type"] == "hex8") & (rows["num_players"] == 2)]
    return mine.set_index("participant_id").sort_index()


def _assert_published_equals_fit_of(env: SimpleNamespace, rows: list[dict]) -> None:
    got, want = _published(env), _expected(rows, {})
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got["rating"], want["rating"], rtol=0, atol=1e-9)
    for column in ("games", "wins", "losses", "draws"):
        assert got[column].tolist() == want[column].tolist(), column


def _simulated(n: int, seed: int, start: float = T0) -> list[dict]:
    """`n` 2-player matches of known strengths, each with a UUID match id."""
    sim = simulate(anchored_strengths(CONFIG, 8, seed=seed), n, seed=seed + 1)
    rows = match_rows(sim, CONFIG, id_prefix="x", start=start)
    rng = np.random.default_rng(seed)
    for row in rows:
        row["id"] = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return rows


def _snapshot_of(env: SimpleNamespace, node: str) -> str:
    arts = env.catalog.artifacts_frame([SNAPSHOT_KIND])
    [sha] = arts.loc[arts["origin_node"] == node, "sha256"]
    return str(sha)


def _durable_copy(env: SimpleNamespace, node: str, sha: str) -> Path:
    reps = env.catalog.replicas_frame([SNAPSHOT_KIND])
    [path] = reps.loc[(reps["node"] == node) & (reps["sha256"] == sha), "path"]
    return env.root / node / str(path)


def _new_first_durable_node(env: SimpleNamespace, name: str) -> None:
    """A fresh storage node heads the inventory: it becomes the union primary."""
    doc = yaml.safe_load(env.fleet_file.read_text())
    (env.root / name).mkdir()
    entry = {"name": name, "transport": "local", "data_root": str(env.root / name),
             "roles": ["storage"], "ephemeral": False, "provider": {"kind": "none"}}  # fmt: skip
    doc["nodes"].insert(0, entry)
    env.fleet_file.write_text(yaml.safe_dump(doc))


def _probe(env: SimpleNamespace, node: str, reachable: bool) -> None:
    env.catalog.record_probe(node, NodeProbe(reachable, error=None if reachable else "gone"))


# ---- item 4: never publish from a union that lacks a collected snapshot -------------------


def test_ratings_are_not_published_over_good_ones_when_the_union_lacks_a_snapshot(env) -> None:
    rows = _simulated(400, seed=1)
    write_elo_db(env.root / "gpu-1" / ELO_DB, rows[:250])
    write_elo_db(env.root / "train-1" / ELO_DB, rows[150:])
    _collect_all(env)
    assert _rate(env).success
    alias = env.catalog.alias(*RATINGS_ALIAS)
    files = _ratings_files(env)
    assert {"coord-1", "store-1"} <= set(files)
    _assert_published_equals_fit_of(env, rows)

    # A new durable node becomes the primary with nothing on it; coord-1 vanishes and
    # store-1's disk lost its copy of gpu-1's snapshot (the catalog does not know yet).
    _new_first_durable_node(env, "store-0")
    gpu_sha = _snapshot_of(env, "gpu-1")
    _durable_copy(env, "store-1", gpu_sha).unlink()
    (env.root / "coord-1").rename(env.root / "coord-1.away")
    _probe(env, "coord-1", reachable=False)

    failed = _rate(env)
    assert not failed.success
    message = _failure(failed)
    assert "not publishing" in message and gpu_sha[:16] in message and "gpu-1" in message
    assert env.catalog.alias(*RATINGS_ALIAS) == alias
    files_now = _ratings_files(env)
    assert files_now == {n: b for n, b in files.items() if n != "coord-1"}  # store-0: none

    # Collecting a node still succeeds; the union's gap fails a check there, not the step.
    collected = _materialize(elo_matches, "gpu-1", env.resources, env.instance)
    assert collected.success
    assert _checks(collected)["union_complete"] is False
    assert any(gpu_sha[:16] in e for e in _metadata(collected)["staging_errors"])

    # coord-1 is back: the union takes in everything and the same ratings stand.
    (env.root / "coord-1.away").rename(env.root / "coord-1")
    _probe(env, "coord-1", reachable=True)
    assert _rate(env).success
    assert env.catalog.alias(*RATINGS_ALIAS) == alias
    _assert_published_equals_fit_of(env, rows)


def test_a_corrupt_collected_snapshot_is_quarantined_instead_of_blocking_ratings(env) -> None:
    rows = _simulated(300, seed=2)
    write_elo_db(env.root / "gpu-1" / ELO_DB, rows)
    _collect_all(env)
    # A collected snapshot whose bytes (verified: every copy is the same) are no Elo DB.
    garbage = b"not an sqlite database, whatever the catalog says " * 64
    sha = hashlib.sha256(garbage).hexdigest()
    env.catalog.add_artifact(
        sha, kind=SNAPSHOT_KIND, config=None, name=ELO_DB, size=len(garbage),
        origin_node="train-1",
    )  # fmt: skip
    artifact = env.catalog.artifacts_frame([SNAPSHOT_KIND]).set_index("sha256").loc[sha]
    path = collected_path(artifact.rename(sha))
    for node in ("coord-1", "store-1"):
        (env.root / node / path).parent.mkdir(parents=True, exist_ok=True)
        (env.root / node / path).write_bytes(garbage)
        env.catalog.record_replica(sha, node, path, len(garbage))

    rated = _rate(env)
    assert rated.success, _failure(rated)
    _assert_published_equals_fit_of(env, rows)
    meta = _metadata(rated)
    assert [u["sha256"] for u in meta["unreadable_snapshots"]] == [sha]
    assert _checks(rated)["no_unreadable_snapshots"] is False
    # Reported on every pass (never read again), by elo/matches too; the bytes stay.
    again = _materialize(elo_matches, "gpu-1", env.resources, env.instance)
    assert again.success and _checks(again)["no_unreadable_snapshots"] is False
    assert _checks(again)["union_complete"] is True
    assert (env.root / "coord-1" / path).read_bytes() == garbage


def test_a_damaged_copy_on_the_primary_blocks_publishing_until_it_is_copied_again(
    env,
) -> None:
    rows = _simulated(300, seed=3)
    write_elo_db(env.root / "gpu-1" / ELO_DB, rows[:200])
    write_elo_db(env.root / "train-1" / ELO_DB, rows[100:])
    _collect_all(env)
    assert _rate(env).success
    alias, files = env.catalog.alias(*RATINGS_ALIAS), _ratings_files(env)
    # coord-1 (the primary) rebuilds its union DB and finds its copy of a snapshot rotten.
    sha = _snapshot_of(env, "train-1")
    damaged = _durable_copy(env, "coord-1", sha)
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2] + b"\0" * (len(good) - len(good) // 2))
    for suffix in ("", "-wal", "-shm"):
        (env.root / "coord-1" / (MATCHES_DB + suffix)).unlink(missing_ok=True)

    failed = _rate(env)
    assert not failed.success
    assert "damaged copy" in _failure(failed) and sha[:16] in _failure(failed)
    assert env.catalog.alias(*RATINGS_ALIAS) == alias and _ratings_files(env) == files
    reps = env.catalog.replicas_frame([SNAPSHOT_KIND])
    assert not ((reps["node"] == "coord-1") & (reps["sha256"] == sha)).any()

    assert _rate(env).success  # copied again from store-1, unioned, published
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == sha
    assert env.catalog.alias(*RATINGS_ALIAS) == alias
    _assert_published_equals_fit_of(env, rows)


# ---- item 11: one match recorded with opposite results ------------------------------------


def _canonical_db(path: Path, rows: list[tuple]) -> Path:
    """(id, [players], winner or None, timestamp, game_id or None) rows in the canonical
    writer's shape (a text id; game_id filled where it knows one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE match_history (id TEXT PRIMARY KEY, participant_ids TEXT,"
        " winner_id TEXT, board_type TEXT, num_players INTEGER, game_length INTEGER,"
        " timestamp REAL, tournament_id TEXT, metadata TEXT, game_id TEXT)"
    )
    con.executemany(
        "INSERT INTO match_history VALUES (?, ?, ?, 'hex8', 2, 40, ?, NULL, '{}', ?)",
        [(i, json.dumps(players), w, t, g) for i, players, w, t, g in rows],
    )
    con.commit()
    con.close()
    return path


def _union(fleet_db: Path, paths: list[Path]) -> dict:
    snaps = [
        {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "label": p.name}
        for p in paths
    ]
    return m.union_snapshots(str(fleet_db), snaps)


def _tables(fleet_db: Path) -> tuple[list[tuple], list[tuple]]:
    con = sqlite3.connect(fleet_db)
    try:
        return tuple(  # type: ignore[return-value]
            con.execute(f"SELECT * FROM {t} ORDER BY match_key, fingerprint").fetchall()
            for t in ("matches", "conflicts")
        )
    finally:
        con.close()


def test_one_match_with_opposite_winners_is_a_conflict_not_a_win_for_each(tmp_path) -> None:
    a = _canonical_db(tmp_path / "a.db", [
        ("m1", [P, Q], P, T0, None),           # p beat q ...
        ("m2", [P, Q], P, T0 + 60, None),      # an id reused for another game (other time)
        ("m3", [P, R], R, T0 + 120, None),     # the same on both nodes
        ("m4", [Q, R], Q, T0 + 180, None),
    ])  # fmt: skip
    b = _canonical_db(tmp_path / "b.db", [
        ("m1", [Q, P], Q, T0 + 0.4, None),     # ... and q beat p, same game (same second)
        ("m2", [P, Q], Q, T0 + 3600, None),
        ("m3", [R, P], R, T0 + 120, None),
    ])  # fmt: skip
    c = _canonical_db(tmp_path / "c.db", [("m1", [P, Q], None, T0, None)])  # a third: a draw

    # Independently: per (id, players, second), the results recorded.
    results: dict[tuple, set] = {}
    for db in (a, b, c):
        con = sqlite3.connect(db)
        for i, players, w, t in con.execute("SELECT id, participant_ids, winner_id, timestamp"
                                            " FROM match_history"):  # fmt: skip
            results.setdefault((i, tuple(sorted(json.loads(players))), int(t)), set()).add(w)
        con.close()
    kept = {k: next(iter(w)) for k, w in results.items() if len(w) == 1}
    conflicting = [k for k, w in results.items() if len(w) > 1]
    assert len(kept) == 4 and len(conflicting) == 1

    tables = set()
    for order in itertools.permutations([a, b, c]):
        fleet_db = tmp_path / f"fleet-{'-'.join(p.stem for p in order)}.db"
        stats = _union(fleet_db, list(order))
        dumped = m.dump_config(str(fleet_db), CONFIG)
        got = sorted((r[0].split("~")[0], tuple(sorted(r[1])), r[2] or "draw") for r in dumped)
        assert got == sorted((k[0], k[1], w or "draw") for k, w in kept.items())
        assert stats["rows"] == len(kept) and stats["conflicts"] == len(conflicting)
        assert m.count_conflicts(str(fleet_db), CONFIG) == 1
        tables.add(repr(_tables(fleet_db)))
        assert len(_tables(fleet_db)[1]) == 3  # every version of m1 kept aside
    assert len(tables) == 1  # the same union in every arrival order

    fitted = select_matches(dumped, CONFIG, Identity()).matches
    played = fitted["participants"].explode().value_counts().to_dict()
    assert played == {P: 3, Q: 3, R: 2}  # m1 counted for nobody


def test_conflicting_matches_show_in_metadata_and_fail_a_check(env) -> None:
    rows = _simulated(120, seed=4)
    write_elo_db(env.root / "gpu-1" / ELO_DB, rows[:80])
    write_elo_db(env.root / "train-1" / ELO_DB, rows[40:])
    disputed = dict(rows[0], id=str(uuid.uuid4()), participant_ids=[P, Q], winner_id=P)
    write_elo_db(env.root / "gpu-1" / ELO_DB, [disputed])
    write_elo_db(env.root / "train-1" / ELO_DB, [dict(disputed, winner_id=Q)])
    _collect_all(env)
    rated = _rate(env)
    assert rated.success
    _assert_published_equals_fit_of(env, rows)  # the disputed game rated for nobody
    assert _metadata(rated)["conflicting_matches"] == 1
    assert _checks(rated)["no_conflicting_matches"] is False
    collected = _materialize(elo_matches, "train-1", env.resources, env.instance)
    assert _metadata(collected)["conflicting_matches_in_union"] == 1
    assert _checks(collected)["no_conflicting_matches"] is False


# ---- item 12: reused file names never identify weights ------------------------------------

SHA_OLD, SHA_NEW, SHA_V17 = "a1" * 32, "b2" * 32, "c3" * 32


def test_a_reused_candidate_name_never_credits_its_results_to_old_weights(tmp_path) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    # The first candidate was registered; the one played now never was (yet).
    for sha, path in [(SHA_OLD, "models/candidate_hex8_2p.pth"),
                      (SHA_V17, "models/hex8_2p_v17.pth")]:  # fmt: skip
        catalog.add_artifact(
            sha, kind="model", config=CONFIG, name=path, size=1, origin_node="train-1"
        )
    cand, best, v17 = (f"{n}:gumbel_mcts:b800" for n in
                       ("candidate_hex8_2p", "ringrift_best_hex8_2p", "hex8_2p_v17"))  # fmt: skip
    net = "net_x:gumbel_mcts:b800"
    base = "none:random:d1"

    def row(i: int, player: str, meta: dict | None = None) -> dict:
        return {"id": f"g{i}", "participant_ids": [player, base], "winner_id": player,
                "board_type": "hex8", "num_players": 2, "game_length": 30,
                "timestamp": T0 + i, "tournament_id": None,
                "metadata": json.dumps(meta or {})}  # fmt: skip

    rows = [
        row(1, cand),                                        # the new candidate, no hash
        row(2, cand, {"model_sha256": {cand: SHA_NEW}}),      # recorded with its hash
        row(3, v17),                                          # a name that meant one sha
        row(4, best),                                         # stale participants row
        row(5, net),                                          # loads a reused file
    ]  # fmt: skip
    db = write_elo_db(tmp_path / "elo.db", rows, participants={
        best: {"model_version": SHA_OLD},
        net: {"model_path": "models/candidate_hex8_2p.pth", "model_version": SHA_OLD},
    })  # fmt: skip
    fleet_db = tmp_path / "fleet.db"
    _union(fleet_db, [db])
    dumped = m.dump_config(str(fleet_db), CONFIG)
    selection = select_matches(dumped, CONFIG, catalog_identity(catalog))
    picked = selection.matches
    got = dict(zip(picked["match_id"], map(sorted, picked["participants"]), strict=True))
    assert got == {
        "g1": sorted([cand, base]),
        "g2": sorted([f"{SHA_NEW}:gumbel_mcts:b800", base]),
        "g3": sorted([f"{SHA_V17}:gumbel_mcts:b800", base]),
        "g4": sorted([best, base]),
        "g5": sorted([net, base]),
    }
    assert not any(SHA_OLD in p for ps in got.values() for p in ps)


@given(
    prefix=st.sampled_from(["candidate_", "canonical_", "ringrift_best_", "Candidate_"]),
    config=st.sampled_from(["hex8_2p", "sq8_3p", "square19_4P", "hexagonal_2p"]),
    directory=st.sampled_from(["", "models/", "/data/fleet/models/"]),
    suffix=st.sampled_from(["", ".pth"]),
)
def test_reused_names_are_recognised_in_every_form(
    prefix: str, config: str, directory: str, suffix: str
) -> None:
    from sync_assets.elo.identity import is_reused_name  # new in this fix

    assert is_reused_name(f"{directory}{prefix}{config}{suffix}")
    assert not is_reused_name(f"{directory}{config}_v17{suffix}")
    assert not is_reused_name(f"{directory}my_{prefix}{config}{suffix}")


# ---- item 13: one match through both Elo writers ------------------------------------------

_HARNESS_DDL = (
    "CREATE TABLE match_history (id INTEGER PRIMARY KEY AUTOINCREMENT, participant_a TEXT,"
    " participant_b TEXT, winner TEXT, rankings TEXT, worker TEXT, game_id TEXT,"
    " board_type TEXT, num_players INTEGER, game_length INTEGER, timestamp TEXT)"
)


def _harness_db(path: Path, rows: list[dict], when: Any) -> Path:
    """The tournament harness's table, written by hand: node-local integer ids from 1,
    the match UUID in game_id, the winner as a seat label, `when(epoch)` as timestamp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(_HARNESS_DDL)
    for r in rows:
        a, b = r["participant_ids"]
        seat = None if r["winner_id"] is None else "ab"[[a, b].index(r["winner_id"])]
        con.execute(
            "INSERT INTO match_history (participant_a, participant_b, winner, rankings, worker,"
            " game_id, board_type, num_players, game_length, timestamp)"
            " VALUES (?, ?, ?, NULL, 'w1', ?, 'hex8', 2, ?, ?)",
            # The harness writes UUIDs in upper case: the same identity all the same.
            (
                a,
                b,
                seat,
                r["id"].upper() if _UUID_TEXT.match(r["id"]) else r["id"],
                r["game_length"],
                when(r["timestamp"]),
            ),
        )
    con.commit()
    con.close()
    return path


def _iso(epoch: float, hours: int, precision: str) -> str:
    zone = dt.timezone(dt.timedelta(hours=hours))
    return dt.datetime.fromtimestamp(epoch, zone).isoformat(timespec=precision)


def test_one_match_seen_through_both_elo_writers_counts_once(env) -> None:
    rows = _simulated(300, seed=5, start=T0 + 0.437)  # fractions of a second
    # gpu-1: the harness (ISO, UTC, milliseconds); coord-1: the harness too, other local
    # ids for other matches (its row 1 is not gpu-1's row 1), ISO at +02:00 to the
    # second; train-1: the canonical writer (REAL epoch), with game_id filled beside its
    # own text ids, or (older rows) no game_id and the UUID as its id.
    _harness_db(env.root / "gpu-1" / ELO_DB, rows[:150], lambda t: _iso(t, 0, "milliseconds"))
    _harness_db(env.root / "coord-1" / ELO_DB, rows[100:220], lambda t: _iso(t, 2, "seconds"))
    canonical = [(f"t-{i}", r["id"]) for i, r in enumerate(rows[200:])] + [
        (r["id"], None) for r in rows[:50]
    ]
    _canonical_db(env.root / "train-1" / ELO_DB, [
        (text_id, r["participant_ids"], r["winner_id"], r["timestamp"], game_id)
        for (text_id, game_id), r in zip(canonical, rows[200:] + rows[:50], strict=True)
    ])  # fmt: skip
    seen_in: dict[str, int] = {}
    for part in (rows[:150], rows[100:220], rows[200:] + rows[:50]):
        for r in part:
            seen_in[r["id"]] = seen_in.get(r["id"], 0) + 1
    _collect_all(env)
    rated = _rate(env)
    assert rated.success
    _assert_published_equals_fit_of(env, rows)  # 300 matches, each once
    meta = _metadata(rated)
    assert meta["matches_merged_by_game_id"] == sum(n > 1 for n in seen_in.values()) == 120
    assert meta["matches_used"] == len(rows)


@st.composite
def _records(draw: st.DrawFn) -> list[tuple]:
    """Rows of a few games, some recorded several times, in several forms: (key, players,
    second, winner, fraction, form, db). Keys come from a small pool, so ids are reused
    for other games and one game may be recorded with different results."""
    keys = [str(uuid.UUID(int=i + 1)) for i in range(3)] + ["m1", "tourney-7"]
    games = draw(st.lists(st.tuples(
        st.sampled_from(keys), st.sampled_from([(P, Q), (Q, P), (P, R)]),
        st.sampled_from([0, 1, 90]), st.floats(0.0, 0.999),
    ), min_size=1, max_size=6))  # fmt: skip
    out = []
    for key, players, second, fraction in games:
        for _ in range(draw(st.integers(1, 3))):
            winner = draw(st.sampled_from([players[0], players[1], None]))
            form = draw(st.sampled_from(["harness", "canonical", "canonical_game_id"]))
            out.append((key, players, second, winner, fraction, form, draw(st.integers(0, 2))))
    return out


_UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _write_forms(directory: Path, records: list[tuple]) -> list[Path]:
    """Each db index gets a harness DB and a canonical DB (text ids are unique per DB: a
    second row of one key there goes to the harness DB instead)."""
    harness: dict[int, list[dict]] = {}
    canonical: dict[int, list[tuple]] = {}
    for n, (key, players, second, winner, fraction, form, db) in enumerate(records):
        t = T0 + second + fraction
        used = {r[0] for r in canonical.get(db, [])} | {r[-1] for r in canonical.get(db, [])}
        if form == "harness" or key in used:
            harness.setdefault(db, []).append({"participant_ids": list(players),
                "winner_id": winner, "id": key, "game_length": 30, "timestamp": t})  # fmt: skip
        elif form == "canonical":
            canonical.setdefault(db, []).append((key, list(players), winner, t * 1000, key))
        else:  # a local text id, the identity in game_id
            canonical.setdefault(db, []).append((f"local-{n}", list(players), winner, t, key))
    paths = []
    for db, rows in harness.items():
        paths.append(_harness_db(directory / f"h{db}.db", rows, lambda t: _iso(t, -5, "auto")))
    for db, crows in canonical.items():
        paths.append(_canonical_db(directory / f"c{db}.db", [
            (i, p, w, t, g if i.startswith("local-") else None) for i, p, w, t, g in crows
        ]))  # fmt: skip
    return paths


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records(), seed=st.randoms(use_true_random=False))
def test_union_counts_each_game_once_whatever_writer_format_and_order(records, seed) -> None:
    """Brute force: a game is (key, players as a set, second), the second left out for a
    UUID key (one game whatever each writer's clock said); its rows agree → one match
    with that result; they disagree → a conflict, rated for nobody."""
    results: dict[tuple, set] = {}
    for key, players, second, winner, _, _, _ in records:
        when = None if _UUID_TEXT.match(key) else second
        results.setdefault((key, frozenset(players), when), set()).add(winner)
    want = sorted(
        (key, tuple(sorted(players)), next(iter(w)) or "draw")
        for (key, players, _), w in results.items() if len(w) == 1
    )  # fmt: skip
    conflicts = sum(len(w) > 1 for w in results.values())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        paths = _write_forms(directory, records)
        tables = set()
        for n, order in enumerate([paths, seed.sample(paths, len(paths))]):
            fleet_db = directory / f"fleet{n}.db"
            stats = _union(fleet_db, order)
            dumped = m.dump_config(str(fleet_db), CONFIG)
            got = sorted((r[0].split("~")[0], tuple(sorted(r[1])), r[2] or "draw") for r in dumped)
            assert got == want
            assert stats["conflicts"] == conflicts and stats["rows"] == len(want)
            tables.add(repr(_tables(fleet_db)))
        assert len(tables) == 1


def test_a_ratings_file_lost_on_the_primary_is_copied_back_not_rewritten_from_empty(env) -> None:
    """Two configs rated; the primary's fleet_ratings.db vanishes behind the catalog's
    back; rating one config again must keep the other config's rows everywhere."""
    a = _simulated(200, seed=1)
    sim = simulate(anchored_strengths("square8_2p", 6, seed=4), 200, seed=5)
    write_elo_db(env.root / "gpu-1" / ELO_DB, a + match_rows(sim, "square8_2p", id_prefix="sq"))
    _collect_all(env)
    for config in ("hex8_2p", "square8_2p"):
        assert _materialize(elo_ratings, config, env.resources, env.instance).success
    (env.root / "coord-1" / RATINGS_DB).unlink()

    assert _materialize(elo_ratings, "hex8_2p", env.resources, env.instance).success

    for node in ("coord-1", "store-1"):
        con = sqlite3.connect(f"file:{env.root / node / RATINGS_DB}?mode=ro", uri=True)
        configs = {
            f"{b}_{n}p" for b, n in con.execute("SELECT board_type, num_players FROM ratings")
        }
        con.close()
        assert configs == {"hex8_2p", "square8_2p"}, node


@pytest.mark.parametrize(
    ("real_time", "iso_time"),
    [
        (1704067200.9996, "2024-01-01T00:00:00+00:00"),  # truncated by one writer only
        (1704067201.2, "2024-01-01T00:00:00+00:00"),  # two clocks a second apart
        (1704067200.3, "2024-01-01T00:00:00+00:00"),
    ],
)
def test_one_uuid_game_from_two_writers_is_one_match_whatever_their_clocks(
    tmp_path: Path, real_time: float, iso_time: str
) -> None:
    p, q = "ringrift_best_hex8_2p:gumbel_mcts:b800", "none:heuristic:d2"
    game = "6f1c2a9e-0000-4000-8000-000000000001"
    a = _canonical_db(tmp_path / "c.db", [("t-1", [p, q], p, real_time, game)])
    row = {"participant_ids": [p, q], "winner_id": p, "id": game, "game_length": 40,
           "timestamp": 0}  # fmt: skip
    b = _harness_db(tmp_path / "h.db", [row], lambda _t: iso_time)
    _union(tmp_path / "fleet.db", [a, b])
    con = sqlite3.connect(tmp_path / "fleet.db")
    assert con.execute("SELECT count(*) FROM matches").fetchone()[0] == 1
    con.close()
    # The same game recorded with the other winner by a clock a second off: a conflict.
    other = {**row, "winner_id": q}
    c = _harness_db(tmp_path / "h2.db", [other], lambda _t: "2024-01-01T00:00:01+00:00")
    stats = _union(tmp_path / "fleet2.db", [a, b, c])
    assert stats["conflicts"] == 1 and stats["rows"] == 0
