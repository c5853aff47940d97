"""Elo: reading match rows, the union DB, identity, the fit, the ratings file, the assets.

Fixtures are simulated from known true strengths (`sync_assets/elo/synth.py`);
expectations come from the simulation itself (truth, draws, which matches exist),
never from what fleetsync reports it did.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets.demo.synth_elo import anchored_strengths, match_rows, simulate, write_elo_db
from sync_assets.elo import matches as m
from sync_assets.elo import ratings as ratings_module
from sync_assets.elo import ratings_db
from sync_assets.elo.assets import elo_matches, elo_on_node, elo_ratings
from sync_assets.elo.collect import (
    ELO_DB,
    MATCHES_DB,
    SNAPSHOT_KIND,
    EloDbUnreadable,
    collect_node_matches,
)
from sync_assets.elo.identity import (
    Identity,
    canonical_participant,
    config_in_name,
    select_matches,
)
from sync_assets.elo.publish import (
    RATINGS_ALIAS,
    RATINGS_DB,
    publish_on_node,
    recompute_ratings,
)
from sync_assets.elo.ratings import DEFAULT_ANCHORS, decompose, fit_ratings, rating_of
from sync_assets.elo.standings import standings_for
from sync_assets.fleet.inventory import load_inventory, parse_inventory

SHA_A = "a" * 64
SHA_B = "b" * 64


def fit_union(fleet_db: Path, config: str, identity: Identity | None = None) -> pd.DataFrame:
    """The production path from a union DB to ratings: dump, select, decompose, fit."""
    selection = select_matches(m.dump_config(str(fleet_db), config), config, identity or Identity())
    return fit_ratings(decompose(selection.matches))


def union(fleet_db: Path, paths: list[Path]) -> dict:
    return m.union_snapshots(
        str(fleet_db),
        [{"path": str(p), "sha256": _sha(p), "label": p.name} for p in paths],
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_rows(fleet_db: Path) -> list[tuple]:
    con = sqlite3.connect(fleet_db)
    try:
        return con.execute("SELECT * FROM matches ORDER BY match_key, fingerprint").fetchall()
    finally:
        con.close()


# ---- recovering known strengths -------------------------------------------------------------

CONFIGS = {"hex8_2p": 2, "hex8_3p": 3, "hex8_4p": 4}
PER_CONFIG = 7_000  # 21,000 games in all
PARTICIPANTS = 45  # + 2 anchors, per config


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three node Elo DBs holding 2-, 3- and 4-player matches of known strengths, with
    overlapping rows (the same match recorded on two nodes) and draws."""
    root = tmp_path_factory.mktemp("elo")
    truth: dict[str, dict[str, float]] = {}
    rows: dict[str, list[dict]] = {}
    for i, (config, k) in enumerate(CONFIGS.items()):
        truth[config] = anchored_strengths(config, PARTICIPANTS, seed=10 + i)
        sim = simulate(truth[config], PER_CONFIG, sizes=(k,), draw_rate=0.15, seed=20 + i)
        rows[config] = match_rows(sim, config, id_prefix=f"{config}-m")
    every = [r for config in CONFIGS for r in rows[config]]
    n = len(every)
    # Node a: the first 60 %, node b: the last 60 %, node c: every 7th row again.
    parts = {"a": every[: n * 6 // 10], "b": every[n * 4 // 10 :], "c": every[::7]}
    paths = {}
    for node, part in parts.items():
        paths[node] = write_elo_db(root / node / "unified_elo.db", part)
    return {"root": root, "truth": truth, "rows": rows, "paths": paths}


def test_ratings_recover_true_strengths_through_the_union(simulated: dict[str, Any]) -> None:
    fleet_db = simulated["root"] / "fleet_matches.db"
    stats = union(fleet_db, list(simulated["paths"].values()))
    total = sum(len(r) for r in simulated["rows"].values())
    assert total >= 20_000
    assert stats["rows"] == total
    assert stats["totals"]["added"] == total
    assert stats["totals"]["duplicates"] == stats["totals"]["seen"] - total
    for config, truth in simulated["truth"].items():
        fitted = fit_union(fleet_db, config).set_index("participant_id")
        assert len(fitted) == PARTICIPANTS + 2 >= 40
        true = pd.Series(truth)[fitted.index]
        assert np.corrcoef(true, fitted["rating"])[0, 1] >= 0.98, config
        for anchor, pinned in DEFAULT_ANCHORS.items():
            assert fitted.at[anchor, "rating"] == pinned
            assert fitted.at[anchor, "uncertainty"] == 0.0
        # Draws: every participant of a drawn match, counted from the simulation.
        draws: dict[str, int] = {}
        games: dict[str, int] = {}
        for row in simulated["rows"][config]:
            for pid in row["participant_ids"]:
                games[pid] = games.get(pid, 0) + 1
                if row["winner_id"] is None:
                    draws[pid] = draws.get(pid, 0) + 1
        assert sum(draws.values()) > 0
        assert fitted["draws"].to_dict() == {p: draws.get(p, 0) for p in fitted.index}
        assert fitted["games"].to_dict() == {p: games[p] for p in fitted.index}
        assert (fitted["wins"] + fitted["losses"] + fitted["draws"] == fitted["games"]).all()


def test_union_is_the_same_whatever_the_order_and_with_every_match_twice(
    simulated: dict[str, Any], tmp_path: Path
) -> None:
    paths = simulated["paths"]
    every = [r for config in CONFIGS for r in simulated["rows"][config]]
    # The same matches once more, as other files (other bytes, so not skipped by hash):
    # node c's rows in another column variant, node a's with ISO timestamps and a
    # shuffled insertion order, plus rows that reuse ids for different matches.
    again_c = write_elo_db(tmp_path / "c2.db", every[::7][::-1], iso_timestamps=True)
    again_a = write_elo_db(tmp_path / "a2.db", every[: len(every) * 6 // 10][::-1])
    colliding = [dict(r, timestamp=r["timestamp"] + 1.0) for r in every[::500]]
    clash = write_elo_db(tmp_path / "clash.db", colliding)

    files = [paths["a"], paths["b"], paths["c"], clash, again_a, again_c]
    first = tmp_path / "first.db"
    union(first, files)
    second = tmp_path / "second.db"
    union(second, files[::-1])
    union(second, [paths["b"], again_c, clash, paths["a"], paths["c"], again_a])

    assert table_rows(first) == table_rows(second)
    assert len(table_rows(first)) == len(every) + len(colliding)
    for config in CONFIGS:
        pd.testing.assert_frame_equal(fit_union(first, config), fit_union(second, config))


def test_a_snapshot_unioned_before_is_skipped(simulated: dict[str, Any], tmp_path: Path) -> None:
    fleet_db = tmp_path / "fleet.db"
    union(fleet_db, [simulated["paths"]["c"]])
    again = union(fleet_db, [simulated["paths"]["c"]])
    assert again["unioned"] == 0 and again["snapshots"][0]["skipped"]
    assert again["totals"]["seen"] == 0


# ---- reading the variants --------------------------------------------------------------------


def _variant_db(path: Path, ddl: str, rows: list[tuple]) -> Path:
    con = sqlite3.connect(path)
    con.execute(ddl)
    con.executemany(f"INSERT INTO match_history VALUES ({', '.join('?' * len(rows[0]))})", rows)
    con.commit()
    con.close()
    return path


def _read(path: Path) -> list[m.Match]:
    return [match for match, _ in m.read_elo_db(str(path)) if match is not None]


def test_every_column_variant_reads_to_one_shape(tmp_path: Path) -> None:
    t = 1_700_000_000.0
    standard = _variant_db(
        tmp_path / "standard.db",
        "CREATE TABLE match_history (id TEXT PRIMARY KEY, participant_ids TEXT, winner_id TEXT,"
        " board_type TEXT, num_players INTEGER, game_length INTEGER, duration_sec REAL,"
        " timestamp REAL, tournament_id TEXT, metadata TEXT)",
        [("x1", json.dumps(["p:a:1", "q:a:1"]), "q:a:1", "hex8", 2, 30, 1.0, t, "T1", "{}")],
    )
    pair = _variant_db(
        tmp_path / "pair.db",
        "CREATE TABLE match_history (id TEXT PRIMARY KEY, participant_a TEXT, participant_b TEXT,"
        " winner_id TEXT, board_type TEXT, num_players INTEGER, game_length INTEGER,"
        " timestamp TEXT, tournament_id TEXT)",
        [
            ("x1", "p:a:1", "q:a:1", "q:a:1", "hex8", 2, 30, "2023-11-14T22:13:20Z", "T1"),
            ("x2", "p:a:1", "q:a:1", "a", "sq8", 2, 30, "2023-11-14 22:13:20", None),
        ],
    )
    model = _variant_db(
        tmp_path / "model.db",
        "CREATE TABLE match_history (id INTEGER PRIMARY KEY AUTOINCREMENT, model_a TEXT,"
        " model_b TEXT, winner TEXT, board_type TEXT, game_length INTEGER, timestamp REAL)",
        [(1, "p:a:1", "q:a:1", "model_b", "hex8_2P", 30, t * 1000), (2, "p:a:1", "q:a:1", "B",
          "hex_2", 12, t)],
    )  # fmt: skip
    [s] = _read(standard)
    [p1, p2] = _read(pair)
    [m1, m2] = _read(model)
    for match in (s, p1, m1):
        assert (match.config, match.participants, match.winner) == (
            "hex8_2p",
            ("p:a:1", "q:a:1"),
            "q:a:1",
        )
        assert match.timestamp == pytest.approx(t)
    assert s.match_key == p1.match_key == "x1" and s.fingerprint == p1.fingerprint
    assert (p2.config, p2.winner, p2.tournament_id) == ("square8_2p", "p:a:1", None)
    assert (m2.config, m2.winner) == ("hexagonal_2p", "q:a:1")
    # Integer ids are node-local: the identity becomes a hash of the row.
    assert m1.match_key.startswith("row:") and m1.match_key != m2.match_key


def test_draws_need_a_finished_game_and_are_counted(tmp_path: Path) -> None:
    ddl = (
        "CREATE TABLE match_history (id TEXT PRIMARY KEY, participant_ids TEXT, winner_id TEXT,"
        " board_type TEXT, num_players INTEGER, game_length INTEGER, timestamp REAL,"
        " metadata TEXT)"
    )
    ab = json.dumps(["p:a:1", "q:a:1"])
    db = _variant_db(
        tmp_path / "draws.db",
        ddl,
        [
            ("d1", ab, None, "hex8", 2, 80, 1.0, "{}"),  # played out, no winner: a draw
            ("d2", ab, None, "hex8", 2, 0, 2.0, json.dumps({"result": "draw"})),
            ("d3", ab, "draw", "hex8", 2, None, 3.0, None),
            ("u1", ab, None, "hex8", 2, 0, 4.0, None),  # nothing shows it finished
            ("u2", ab, None, "hex8", 2, 55, 5.0, json.dumps({"status": "aborted"})),
            ("w1", ab, "p:a:1", "hex8", 2, 40, 6.0, None),
            ("x1", ab, "z:a:1", "hex8", 2, 40, 7.0, None),  # winner not a participant
            ("c1", ab, "p:a:1", "chess", 2, 40, 8.0, None),  # config does not parse
        ],
    )
    stats = m.check_elo_db(str(db))
    assert stats["seen"] == 8 and stats["valid"] == 4
    assert stats["rejected"] == {
        "unparseable_config": 1,
        "malformed_participants": 0,
        "unknown_winner": 1,
        "unfinished": 2,
    }
    fleet_db = tmp_path / "fleet.db"
    union(fleet_db, [db])
    fitted = fit_union(fleet_db, "hex8_2p", Identity()).set_index("participant_id")
    assert fitted.loc["p:a:1", ["games", "wins", "losses", "draws"]].tolist() == [4, 1, 0, 3]
    assert fitted.loc["q:a:1", ["games", "wins", "losses", "draws"]].tolist() == [4, 0, 1, 3]


# ---- identity and cross-config matches ----------------------------------------------------------


def test_same_model_under_two_names_is_one_participant(tmp_path: Path) -> None:
    shas = {"alias_a": SHA_A, "models/alias_b.pth": SHA_A}
    assert canonical_participant("alias_a:gumbel_mcts:b800", shas) == f"{SHA_A}:gumbel_mcts:b800"
    assert canonical_participant("alias_b:gumbel_mcts:b800", shas) == f"{SHA_A}:gumbel_mcts:b800"
    assert canonical_participant("none:random:d1", shas) == "none:random:d1"
    assert canonical_participant("other:gumbel_mcts:b800", shas) == "other:gumbel_mcts:b800"
    # The node's participants table records the hash of a third name: same weights.
    rows = [
        {"id": f"g{i}", "participant_ids": [a, "none:heuristic:d2"], "winner_id": a,
         "board_type": "hex8", "num_players": 2, "game_length": 30, "timestamp": float(i),
         "tournament_id": None, "metadata": "{}"}
        for i, a in enumerate(
            ["alias_a:gumbel_mcts:b800", "alias_b:gumbel_mcts:b800", "v3:gumbel_mcts:b800"]
        )
    ]  # fmt: skip
    db = write_elo_db(
        tmp_path / "elo.db", rows, participants={"v3:gumbel_mcts:b800": {"model_version": SHA_A}}
    )
    fleet_db = tmp_path / "fleet.db"
    union(fleet_db, [db])
    identity = Identity(model_shas={"alias_a": SHA_A, "alias_b": SHA_A})
    fitted = fit_union(fleet_db, "hex8_2p", identity).set_index("participant_id")
    assert sorted(fitted.index) == sorted([f"{SHA_A}:gumbel_mcts:b800", "none:heuristic:d2"])
    assert fitted.at[f"{SHA_A}:gumbel_mcts:b800", "games"] == 3
    assert rating_of(fitted.reset_index(), SHA_A)[2] == 3


def test_cross_config_matches_are_rejected_and_counted() -> None:
    assert config_in_name("ringrift_best_sq8_4p") == "square8_4p"
    assert config_in_name("models/canonical_hexagonal_3p.pth") == "hexagonal_3p"
    assert config_in_name("none") is None
    good = ["ringrift_best_hex8_2p:gumbel_mcts:b800", "none:random:d1"]
    rows: list[list[object]] = [
        ["m1", good, good[0], {}],
        ["m2", ["ringrift_best_hex8_4p:gumbel_mcts:b800", "none:random:d1"], None, {}],
        ["m3", [*good, "none:heuristic:d2"], None, {}],  # 3 players in a 2-player config
        ["m4", ["net_v7:gumbel_mcts:b800", "none:random:d1"], "none:random:d1", {}],
        ["m5", ["x:mcts:1", "y:mcts:1"], "x:mcts:1", {"x:mcts:1": SHA_B, "y:mcts:1": SHA_B}],
    ]
    identity = Identity(model_shas={"net_v7": SHA_A}, model_configs={SHA_A: "hex8_4p"})
    selection = select_matches(rows, "hex8_2p", identity)
    assert list(selection.matches["match_id"]) == ["m1"]
    assert selection.rejected == {
        "model_of_other_config": 2,
        "player_count_mismatch": 1,
        "one_participant": 1,
    }
    assert selection.cross_config == 3
    assert set(selection.participant_configs) == set(good)


def test_rating_of_answers_by_id_and_by_model() -> None:
    frame = pd.DataFrame(
        {
            "participant_id": [f"{SHA_A}:mcts:b800", f"{SHA_A}:mcts:b200", "none:random:d1"],
            "rating": [1700.0, 1600.0, 400.0],
            "uncertainty": [20.0, 30.0, 0.0],
            "games": [300, 50, 900],
            "anchored": [1, 1, 1],
        }
    )
    assert rating_of(frame, f"{SHA_A}:mcts:b200") == (1600.0, 30.0, 50, True)
    assert rating_of(frame, SHA_A) == (1700.0, 20.0, 300, True)  # the best-evidenced setting
    assert rating_of(frame, SHA_B) == (None, None, 0, False)


def test_decompose_equals_the_per_match_definition() -> None:
    frame = pd.DataFrame(
        {
            "participants": [["a", "b"], ["a", "b", "c"], ["c", "a", "a"], ["a"], ["b", "c"],
                             ["a", "d"], ["b", "c", "d", "a"]],
            "winner": ["b", None, "c", None, "z", np.nan, "d"],
        }
    )  # fmt: skip
    pairs = decompose(frame)
    names = list(pairs.names)
    got = sorted(
        (names[a], names[b], s) for a, b, s in zip(pairs.a, pairs.b, pairs.score, strict=True)
    )
    want = sorted(
        [("b", "a", 1.0), ("a", "b", 0.5), ("a", "c", 0.5), ("b", "c", 0.5), ("c", "a", 1.0),
         ("a", "d", 0.5), ("d", "b", 1.0), ("d", "c", 1.0), ("d", "a", 1.0)]
    )  # fmt: skip
    assert got == want
    counts = dict(zip(names, zip(pairs.games, pairs.wins, pairs.draws, strict=True), strict=True))
    assert counts == {"a": (5, 0, 2), "b": (3, 1, 1), "c": (3, 1, 1), "d": (2, 1, 1)}


def test_dense_and_sorted_pair_counting_fit_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulate(anchored_strengths("hex8_3p", 30, seed=3), 3000, sizes=(3,), seed=4)
    pairs = decompose(sim.frame())
    dense = fit_ratings(pairs)
    monkeypatch.setattr(ratings_module, "DENSE_PAIR_LIMIT", 0)
    pd.testing.assert_frame_equal(fit_ratings(pairs), dense)


# ---- the ratings file --------------------------------------------------------------------------


def test_ratings_file_rewrites_only_its_config_and_only_on_change(tmp_path: Path) -> None:
    path = str(tmp_path / "fleet_ratings.db")
    row = {"participant_id": "p:a:1", "rating": 1510.5, "uncertainty": 30.0, "games": 10,
           "wins": 6, "losses": 3, "draws": 1, "anchored": True}  # fmt: skip
    assert ratings_db.write_config(path, "hex8_2p", [row], now=100.0)["changed"]
    assert ratings_db.write_config(path, "square8_3p", [dict(row, rating=1400.0)], now=200.0)[
        "changed"
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    before = Path(path).read_bytes()
    assert not ratings_db.write_config(path, "hex8_2p", [row], now=300.0)["changed"]
    assert Path(path).read_bytes() == before
    other = dict(row, participant_id="q:a:1", rating=1490.0)
    assert ratings_db.write_config(path, "hex8_2p", [row, other], now=400.0)["changed"]
    got = {(r["participant_id"], r["board_type"], r["num_players"]): r for r in
           ratings_db.read_rows(path)}  # fmt: skip
    assert set(got) == {("p:a:1", "hex8", 2), ("q:a:1", "hex8", 2), ("p:a:1", "square8", 3)}
    assert got[("p:a:1", "hex8", 2)]["updated_at"] == 100.0  # unchanged row keeps its stamp
    assert got[("q:a:1", "hex8", 2)]["updated_at"] == 400.0
    assert got[("p:a:1", "square8", 3)]["rating"] == 1400.0
    assert not list(tmp_path.glob(".fleetsync-tmp-*"))


# ---- the assets on a local fleet ------------------------------------------------------------

E2E_CONFIGS = ["hex8_2p", "square8_3p"]


def _fleet_yaml(root: Path) -> Path:
    nodes = [
        ("coord-1", ["coordinator", "storage"], False),
        ("store-1", ["storage"], False),
        ("gpu-1", ["selfplay", "eval"], True),
        ("train-1", ["training"], False),
    ]
    doc = {
        "fleet": "elo-test",
        "configs": E2E_CONFIGS,
        "policy": {
            "min_replicas": {"elo": 2}, "disk": {"max_target_use": 0.99, "min_free_gb": 0.1}
        },
        "nodes": [
            {"name": n, "transport": "local", "data_root": str(root / n), "roles": roles,
             "ephemeral": eph, "provider": {"kind": "none"}}
            for n, roles, eph in nodes
        ],
    }  # fmt: skip
    for n, _, _ in nodes:
        (root / n).mkdir(parents=True)
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def elo_fleet(tmp_path: Path):
    root = tmp_path / "fleet"
    fleet_file = _fleet_yaml(root)
    rows: dict[str, list[dict]] = {}
    for i, (config, k) in enumerate([("hex8_2p", 2), ("square8_3p", 3)]):
        sim = simulate(anchored_strengths(config, 12, seed=i), 600, sizes=(k,), seed=30 + i)
        rows[config] = match_rows(sim, config, id_prefix=f"{config}-e2e")
    two, three = rows["hex8_2p"], rows["square8_3p"]
    write_elo_db(root / "gpu-1" / ELO_DB, two[:400] + three[:300])
    write_elo_db(root / "train-1" / ELO_DB, two[300:] + three[200:])
    write_elo_db(root / "coord-1" / ELO_DB, two[::10], variant="participant_ab")
    resources = {
        "inventory": FleetInventory(path=str(fleet_file)),
        "catalog": Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        "transports": Transports(),
    }
    with dg.instance_for_test() as instance:
        fleet = load_inventory(fleet_file)
        instance.add_dynamic_partitions("nodes", [n.name for n in fleet.nodes])
        yield fleet, resources, instance, rows


def _materialize(asset: Any, key: str, resources: dict, instance: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset], partition_key=key, instance=instance, resources=resources, raise_on_error=False
    )


def _run(fleet, resources, instance) -> list[dg.ExecuteInProcessResult]:
    results = []
    for n in fleet.nodes:
        results.append(_materialize(elo_matches, n.name, resources, instance))
    for config in E2E_CONFIGS:
        results.append(_materialize(elo_ratings, config, resources, instance))
    for n in fleet.nodes:
        results.append(_materialize(elo_on_node, n.name, resources, instance))
    for r in results:
        assert r.success, r.all_events
    return results


def _expected(rows: list[dict], rename: dict[str, str]) -> pd.DataFrame:
    """The fit of every distinct match, straight from the simulated rows."""
    unique = {r["id"]: r for r in rows}
    frame = pd.DataFrame(
        {
            "participants": [
                [rename.get(p, p) for p in unique[i]["participant_ids"]] for i in sorted(unique)
            ],
            "winner": [rename.get(unique[i]["winner_id"], unique[i]["winner_id"])
                       for i in sorted(unique)],
        }
    )  # fmt: skip
    return fit_ratings(decompose(frame)).set_index("participant_id").sort_index()


def test_assets_collect_union_rate_and_publish(elo_fleet) -> None:
    fleet, resources, instance, rows = elo_fleet
    catalog: Catalog = resources["catalog"]
    # A checkpoint the catalog knows: its matches are rated under its SHA-256.
    catalog.add_artifact(
        SHA_A, kind="model", config="hex8_2p", name="models/m000_hex8_2p.pth", size=1,
        origin_node="train-1",
    )  # fmt: skip
    model = "m000_hex8_2p:gumbel_mcts:b800"
    rename = {model: f"{SHA_A}:gumbel_mcts:b800"}
    results = _run(fleet, resources, instance)
    for r in results:
        for check in r.get_asset_check_evaluations():
            assert check.passed, (check.check_name, check.metadata)

    alias = catalog.alias(*RATINGS_ALIAS)
    durable = {n.name for n in fleet.durable_nodes}
    for name in durable | {"gpu-1"}:
        path = Path(fleet.node(name).data_root) / RATINGS_DB
        assert _sha(path) == alias
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert not (Path(fleet.node("train-1").data_root) / RATINGS_DB).exists()  # not eval
    snaps = catalog.replicas_frame([SNAPSHOT_KIND])
    verified = snaps[(snaps["state"] == "verified") & snaps["node"].isin(durable)]
    assert (verified.groupby("sha256")["node"].nunique() == 2).all()
    assert len(verified["sha256"].unique()) == 3  # coord-1, gpu-1, train-1

    published = ratings_db.read_rows(str(Path(fleet.node("store-1").data_root) / RATINGS_DB))
    got = pd.DataFrame(published)
    for config in E2E_CONFIGS:
        board, players = config.rsplit("_", 1)
        mine = got[(got["board_type"] == board) & (got["num_players"] == int(players[0]))]
        mine = mine.set_index("participant_id").sort_index()
        want = _expected(rows[config], rename)
        assert list(mine.index) == list(want.index)
        np.testing.assert_allclose(mine["rating"], want["rating"], rtol=0, atol=1e-9)
        assert (mine[["games", "wins", "losses", "draws"]] == want[["games", "wins", "losses",
                "draws"]]).all().all()  # fmt: skip

    mine, theirs = standings_for("hex8_2p", SHA_A, None, fleet, catalog, Transports())
    want_games = sum(model in r["participant_ids"] for r in rows["hex8_2p"])
    assert mine.games == want_games > 0 and mine.rating is not None
    assert (theirs.rating, theirs.games) == (None, 0)

    mat = instance.get_latest_materialization_event(
        dg.AssetKey(["elo", "ratings"])
    ).asset_materialization
    assert {"ratings", "matches_used", "rejected_cross_config"} <= set(mat.metadata)
    assert mat.metadata["ratings"].value.records  # the UI table

    # A second pass over an unchanged fleet moves nothing and keeps the same file.
    transfers = len(catalog.transfers_frame())
    _run(fleet, resources, instance)
    assert len(catalog.transfers_frame()) == transfers
    assert catalog.alias(*RATINGS_ALIAS) == alias


def _union_table(fleet) -> list[tuple]:
    path = Path(fleet.durable_nodes[0].data_root) / MATCHES_DB
    return table_rows(path) if path.exists() else []


@pytest.mark.parametrize("damage", ["garbage", "not_elo"])
def test_a_corrupt_elo_db_is_a_clear_error_and_leaves_no_trace(elo_fleet, damage: str) -> None:
    fleet, resources, instance, _ = elo_fleet
    catalog: Catalog = resources["catalog"]
    assert _materialize(elo_matches, "gpu-1", resources, instance).success
    before = (
        catalog.artifacts_frame(),
        catalog.replicas_frame(),
        catalog.source_state("gpu-1", ELO_DB),
        _union_table(fleet),
    )
    assert not before[0].empty and before[3]

    db = Path(fleet.node("gpu-1").data_root) / ELO_DB
    db.unlink()
    if damage == "garbage":
        db.write_bytes(b"this is not an SQLite database at all " * 200)
    else:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE games (game_id TEXT)")
        con.commit()
        con.close()
    result = _materialize(elo_matches, "gpu-1", resources, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    message = error.message
    assert "gpu-1" in message and ELO_DB in message
    assert ("not a readable SQLite DB" if damage == "garbage" else "no match_history") in message

    pd.testing.assert_frame_equal(catalog.artifacts_frame(), before[0])
    pd.testing.assert_frame_equal(catalog.replicas_frame(), before[1])
    assert catalog.source_state("gpu-1", ELO_DB) == before[2]
    assert _union_table(fleet) == before[3]
    staging = Path(fleet.node("gpu-1").data_root) / ".fleetsync"
    assert not [p for p in staging.rglob("*") if p.is_file()]


# ---- the same over real sshd nodes ------------------------------------------------------------


@pytest.mark.cluster
def test_elo_over_ssh_union_rate_publish_and_refuse_a_corrupt_db(
    tmp_path: Path, sshd_fleet
) -> None:
    """Node scripts shipped over SSH (`python3 -c BOOT` + payload on stdin), snapshots
    collected with rsync/streams, the ratings file published read-only on an eval node;
    every expectation checked by this process on the nodes' files."""
    roles = {
        "coord-1": ["coordinator", "storage"],
        "store-1": ["storage"],
        "gpu-1": ["selfplay", "eval"],
        "gpu-2": ["selfplay"],
    }
    sshd = sshd_fleet(list(roles), root=tmp_path / "ssh")
    entries = []
    for entry in sshd.inventory_nodes():
        entry["roles"] = roles[str(entry["name"])]
        if "storage" in entry["roles"]:
            entry["pull_key"] = str(sshd.client_key)
        entries.append(entry)
    doc = {
        "fleet": "elo-ssh",
        "configs": ["hex8_2p"],
        "policy": {
            "min_replicas": {"elo": 2},
            "disk": {"max_target_use": 0.99, "min_free_gb": 0.1},
        },
        "nodes": entries,
    }
    fleet = parse_inventory(yaml.safe_dump(doc), "fleet.yaml")
    sim = simulate(anchored_strengths("hex8_2p", 10, seed=5), 400, seed=6)
    rows = match_rows(sim, "hex8_2p", id_prefix="ssh")
    root = {n.name: Path(n.data_root) for n in fleet.nodes}
    write_elo_db(root["gpu-1"] / ELO_DB, rows[:250])
    write_elo_db(root["gpu-2"] / ELO_DB, rows[150:], variant="model_ab", iso_timestamps=True)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    transports = Transports()
    try:
        for node in fleet.nodes:
            collected = collect_node_matches(node, fleet, catalog, transports)
            assert not collected.replication.failures and not collected.under_replicated
        result = recompute_ratings("hex8_2p", fleet, catalog, transports)
        assert not result.moved.failures
        placed = publish_on_node(fleet.node("gpu-1"), fleet, catalog, transports)
        assert placed.verified["mode"] == "0444"

        alias = catalog.alias(*RATINGS_ALIAS)
        for name in ("coord-1", "store-1", "gpu-1"):
            path = root[name] / RATINGS_DB
            assert _sha(path) == alias and stat.S_IMODE(path.stat().st_mode) == 0o444
        assert not (root["gpu-2"] / RATINGS_DB).exists()
        got = pd.DataFrame(ratings_db.read_rows(str(root["store-1"] / RATINGS_DB)))
        got = got.set_index("participant_id").sort_index()
        want = _expected(rows, {})
        np.testing.assert_allclose(got["rating"], want["rating"], rtol=0, atol=1e-9)

        before = (catalog.artifacts_frame(), catalog.replicas_frame())
        (root["gpu-2"] / ELO_DB).unlink()
        (root["gpu-2"] / ELO_DB).write_bytes(b"\x00garbage" * 512)
        with pytest.raises(EloDbUnreadable, match="gpu-2: elo/unified_elo.db"):
            collect_node_matches(fleet.node("gpu-2"), fleet, catalog, transports)
        pd.testing.assert_frame_equal(catalog.artifacts_frame(), before[0])
        pd.testing.assert_frame_equal(catalog.replicas_frame(), before[1])
    finally:
        transports.teardown_after_execution(None)  # type: ignore[arg-type]
