"""Game DB merge (sync_assets/games/merge.py) against independently computed expectations.

Fixtures come from synth.py; every expectation is recomputed here with plain
SQL over the fixture DBs, never read from what synth says it wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sync_assets.demo.synth_games import (
    OLD_SCHEMA_OMIT,
    FleetSeed,
    make_specs,
    seed_fleet_games,
    write_game_db,
)
from sync_assets.fleet.configs import STANDARD_CONFIGS, normalize_config, split_config
from sync_assets.games import merge
from sync_assets.games.collect import MERGE_PY
from sync_assets.games.merge import MergeError, merge_snapshots
from sync_assets.games.schema import GAME_TABLES

CONFIGS = ["hex8_2p", "square8_2p", "hexagonal_3p"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetSeed:
    """Three nodes: `a` has the old schema, `b` and `c` emit colliding gpu_mcts ids."""
    root = tmp_path_factory.mktemp("fleet")
    return seed_fleet_games(
        {n: root / n for n in "abc"}, CONFIGS, games_per_node=200, seed=11, incomplete_fraction=0.2
    )


def expected(snapshots: list[tuple[str, str]], config: str) -> dict:
    """What canonical_{config} must hold after merging `snapshots`, by plain SQL.

    A source game is acceptable if completed/finished with >= 5 move rows; two
    acceptable copies with one id are the same game iff their move rows are
    equal as sets (EXCEPT both ways). Representatives = first copy of each game.
    """
    board, players = split_config(config)
    con = sqlite3.connect(":memory:")
    con.executescript(
        """
        CREATE TABLE g (src INT, game_id TEXT, board_type TEXT, num_players INT,
                        game_status TEXT, PRIMARY KEY (src, game_id));
        CREATE TABLE m (src INT, game_id TEXT, move_number INT, player INT, move_type TEXT,
                        move_json TEXT, PRIMARY KEY (src, game_id, move_number));
        CREATE TABLE kids (src INT, game_id TEXT, tbl TEXT, n INT);
        """
    )
    for src, (path, _) in enumerate(snapshots):
        con.execute("ATTACH DATABASE ? AS s", (path,))
        con.execute(
            "INSERT INTO g SELECT ?, game_id, board_type, num_players, game_status FROM s.games",
            (src,),
        )
        con.execute(
            "INSERT INTO m SELECT ?, game_id, move_number, player, move_type, move_json"
            " FROM s.game_moves",
            (src,),
        )
        for table in ("game_players", "game_initial_state", "game_state_snapshots"):
            con.execute(
                f"INSERT INTO kids SELECT ?, game_id, '{table}', count(*) FROM s.{table}"
                " GROUP BY game_id",
                (src,),
            )
        con.commit()
        con.execute("DETACH DATABASE s")
    con.executescript(
        f"""
        CREATE TEMP VIEW cfg AS SELECT g.*,
            (SELECT count(*) FROM m WHERE m.src = g.src AND m.game_id = g.game_id) AS n_moves,
            coalesce(game_status IN ('completed', 'finished'), 0) AS finished
          FROM g WHERE board_type = '{board}' AND num_players = {players};
        CREATE TEMP TABLE ok AS SELECT src, game_id FROM cfg WHERE finished AND n_moves >= 5;
        CREATE TEMP TABLE rep AS SELECT o.src, o.game_id FROM ok o WHERE NOT EXISTS (
            SELECT 1 FROM ok p WHERE p.game_id = o.game_id AND p.src < o.src
            AND NOT EXISTS (
                SELECT move_number, player, move_type, move_json FROM m
                  WHERE m.src = p.src AND m.game_id = p.game_id
                EXCEPT SELECT move_number, player, move_type, move_json FROM m
                  WHERE m.src = o.src AND m.game_id = o.game_id)
            AND NOT EXISTS (
                SELECT move_number, player, move_type, move_json FROM m
                  WHERE m.src = o.src AND m.game_id = o.game_id
                EXCEPT SELECT move_number, player, move_type, move_json FROM m
                  WHERE m.src = p.src AND m.game_id = p.game_id));
        """
    )

    def one(sql: str) -> int:
        return con.execute(sql).fetchone()[0]

    result: dict[str, Any] = {
        "seen": one("SELECT count(*) FROM cfg"),
        "unfinished": one("SELECT count(*) FROM cfg WHERE NOT finished"),
        "too_few_moves": one("SELECT count(*) FROM cfg WHERE finished AND n_moves < 5"),
        "accepted": one("SELECT count(*) FROM ok"),
        "games": one("SELECT count(*) FROM rep"),
        "ids": one("SELECT count(DISTINCT game_id) FROM rep"),
        "rows": {
            "games": one("SELECT count(*) FROM rep"),
            "game_moves": one(
                "SELECT count(*) FROM rep r JOIN m ON m.src = r.src AND m.game_id = r.game_id"
            ),
        },
    }
    for table in ("game_players", "game_initial_state", "game_state_snapshots"):
        result["rows"][table] = one(
            f"SELECT coalesce(sum(k.n), 0) FROM rep r JOIN kids k ON k.src = r.src"
            f" AND k.game_id = r.game_id AND k.tbl = '{table}'"
        )
    result["contents"] = _contents(
        con,
        "SELECT r.src || '/' || r.game_id, r.game_id, m.move_number, m.player, m.move_type,"
        " m.move_json FROM rep r JOIN m ON m.src = r.src AND m.game_id = r.game_id"
        " ORDER BY r.src, r.game_id, m.move_number",
    )
    con.close()
    return result


def _contents(con: sqlite3.Connection, sql: str) -> list[tuple[str, tuple]]:
    """Sorted (base game id, move rows) per game from rows (key, game id, *move): `~suffix`
    ids count under their base id."""
    games: dict[str, tuple[str, list]] = {}
    for key, game_id, *move in con.execute(sql):
        games.setdefault(key, (game_id.split("~")[0], []))[1].append(tuple(move))
    return sorted((base, tuple(moves)) for base, moves in games.values())


def canonical_state(path: Path) -> dict:
    con = sqlite3.connect(path)
    try:
        tables = [*GAME_TABLES, "fleetsync_provenance", "fleetsync_fingerprints"]
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        contents = _contents(
            con,
            "SELECT game_id, game_id, move_number, player, move_type, move_json FROM game_moves"
            " ORDER BY game_id, move_number",
        )
        configs = {r for r in con.execute("SELECT DISTINCT board_type, num_players FROM games")}
        ids = [r[0] for r in con.execute("SELECT game_id FROM games")]
    finally:
        con.close()
    return {"counts": counts, "contents": contents, "configs": configs, "ids": ids}


def _merge_all(fleet: FleetSeed, tmp_path: Path, config: str) -> tuple[Path, dict]:
    canonical = tmp_path / f"canonical_{config}.db"
    return canonical, merge_snapshots(canonical, config, fleet.snapshots())


@pytest.mark.parametrize("config", CONFIGS)
def test_merge_matches_independent_sql(fleet: FleetSeed, tmp_path: Path, config: str) -> None:
    canonical, stats = _merge_all(fleet, tmp_path, config)
    want = expected(fleet.snapshots(), config)
    got = canonical_state(canonical)
    totals = stats["totals"]

    assert totals["seen"] == want["seen"]
    assert totals["rejected"] == {
        **dict.fromkeys(merge.REJECT_REASONS, 0),
        "unfinished": want["unfinished"],
        "too_few_moves": want["too_few_moves"],
    }
    assert totals["added"] == want["games"]
    assert totals["duplicates"] == want["accepted"] - want["games"]
    assert totals["collisions_kept"] == want["games"] - want["ids"]
    for table, n in want["rows"].items():
        assert got["counts"][table] == n, table
    assert got["counts"]["fleetsync_provenance"] == want["games"]
    assert got["contents"] == want["contents"]  # every game, move for move
    assert got["configs"] == {split_config(config)}


def test_fixture_exercises_every_rule(fleet: FleetSeed) -> None:
    """Guard against a fixture too tame to test anything (checked by SQL, not synth)."""
    wants = [expected(fleet.snapshots(), c) for c in CONFIGS]
    assert sum(w["accepted"] - w["games"] for w in wants) > 10  # cross-node duplicates
    assert sum(w["games"] - w["ids"] for w in wants) > 10  # colliding ids, different games
    assert all(w["unfinished"] > 0 and w["too_few_moves"] > 0 for w in wants)
    assert fleet.colliding_ids and fleet.shared_ids


def test_collision_copies_get_fingerprint_ids(fleet: FleetSeed, tmp_path: Path) -> None:
    canonical, _ = _merge_all(fleet, tmp_path, "hex8_2p")
    con = sqlite3.connect(canonical)
    renamed = [r[0] for r in con.execute("SELECT game_id FROM games WHERE game_id LIKE '%~%'")]
    assert renamed
    for game_id in renamed:
        base, suffix = game_id.split("~")
        assert con.execute("SELECT 1 FROM games WHERE game_id = ?", (base,)).fetchone()
        digest = hashlib.sha256()
        for row in con.execute(
            "SELECT move_number, player, move_type, move_json FROM game_moves"
            " WHERE game_id = ? ORDER BY move_number",
            (game_id,),
        ):
            digest.update(("\x1f".join(map(str, row)) + "\x1e").encode())
        assert suffix == digest.hexdigest()[:12]
        fps = dict(
            con.execute(
                "SELECT game_id, fingerprint FROM fleetsync_fingerprints WHERE game_id IN (?, ?)",
                (base, game_id),
            )
        )
        assert fps[game_id] == digest.hexdigest() and fps[base] != fps[game_id]
    con.close()


def test_third_copy_of_a_colliding_game_is_a_duplicate(tmp_path: Path) -> None:
    """`{id}~{fp}` is deterministic: the second game seen again, anywhere, adds nothing."""
    first = make_specs(
        configs=["hex8_2p"],
        n_games=40,
        seed=1,
        id_style="gpu_mcts",
        incomplete_fraction=0,
        id_epoch=1_750_000_000,
    )
    second = [s._replace(seed=s.seed + 1) for s in first]
    dbs = [
        write_game_db(tmp_path / "n1.db", first),
        write_game_db(tmp_path / "n2.db", second),
        write_game_db(tmp_path / "n3.db", second),
    ]
    snaps = [(str(db.path), db.path.stem) for db in dbs]
    stats = merge_snapshots(tmp_path / "c1.db", "hex8_2p", snaps)
    per = [(s["added"], s["duplicates"], s["collisions_kept"]) for s in stats["snapshots"]]
    assert per == [(40, 0, 0), (40, 0, 40), (0, 40, 0)]
    # Another order: the same two games per id, whichever keeps the plain id.
    again = merge_snapshots(tmp_path / "c2.db", "hex8_2p", [snaps[2], snaps[0], snaps[1]])
    assert again["totals"]["added"] == 80 and again["totals"]["duplicates"] == 40
    assert (
        canonical_state(tmp_path / "c1.db")["contents"]
        == canonical_state(tmp_path / "c2.db")["contents"]
    )


def test_any_fingerprinted_move_field_makes_a_different_game(tmp_path: Path) -> None:
    original = write_game_db(
        tmp_path / "n1.db", make_specs(configs=["hex8_2p"], n_games=30, seed=3)
    ).path
    edited = tmp_path / "n2.db"
    shutil.copy(original, edited)
    con = sqlite3.connect(edited)
    victims = [
        r[0]
        for r in con.execute(
            "SELECT game_id FROM games g WHERE game_status IN ('completed', 'finished')"
            " AND (SELECT count(*) FROM game_moves m WHERE m.game_id = g.game_id) >= 6"
            " ORDER BY game_id LIMIT 4"
        )
    ]
    edits = [
        "UPDATE game_moves SET move_json = replace(move_json, '\"to\"', '\"to \"')"
        " WHERE game_id = ? AND move_number = 3",
        "UPDATE game_moves SET player = player + 1 WHERE game_id = ? AND move_number = 2",
        "UPDATE game_moves SET move_type = 'skip' WHERE game_id = ? AND move_number = 4",
        "DELETE FROM game_moves WHERE game_id = ?1 AND move_number ="
        " (SELECT max(move_number) FROM game_moves WHERE game_id = ?1)",
    ]
    for sql, game_id in zip(edits, victims, strict=True):
        assert con.execute(sql, (game_id,)).rowcount == 1
    # Fields outside the fingerprint do not make a different game.
    con.execute("UPDATE game_moves SET move_probs = NULL")
    con.commit()
    con.close()
    stats = merge_snapshots(
        tmp_path / "c.db", "hex8_2p", [(str(original), "n1"), (str(edited), "n2")]
    )
    second = stats["snapshots"][1]
    assert second["collisions_kept"] == second["added"] == 4
    assert second["duplicates"] == stats["snapshots"][0]["added"] - 4


def test_old_schema_node_merges_with_nulls(fleet: FleetSeed, tmp_path: Path) -> None:
    canonical, stats = _merge_all(fleet, tmp_path, "hex8_2p")
    old = fleet.old_schema_node
    for snap in stats["snapshots"]:
        if snap["label"].startswith(f"{old}:"):
            missing = {t: set(cols) for t, cols in snap["columns_missing"].items()}
            assert missing == OLD_SCHEMA_OMIT
        else:
            assert snap["columns_missing"] == {}
    con = sqlite3.connect(canonical)
    by_origin = con.execute(
        "SELECT p.source_label LIKE ? AS from_old, count(*),"
        " sum(g.quality_score IS NULL), sum(g.engine_mode IS NULL)"
        " FROM games g JOIN fleetsync_provenance p USING (game_id) GROUP BY from_old",
        (f"{old}:%",),
    ).fetchall()
    nulls_in_moves = con.execute(
        "SELECT count(*), sum(m.search_stats_json IS NULL) FROM game_moves m"
        " JOIN fleetsync_provenance p USING (game_id) WHERE p.source_label LIKE ?",
        (f"{old}:%",),
    ).fetchone()
    con.close()
    rows = {bool(r[0]): r[1:] for r in by_origin}
    n_old, q_null, e_null = rows[True]
    assert n_old > 0 and q_null == n_old and e_null == n_old
    assert rows[False][1:] == (0, 0)
    assert nulls_in_moves[0] > 0 and nulls_in_moves[1] == nulls_in_moves[0]


def test_extra_snapshot_columns_are_ignored(fleet: FleetSeed, tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    shutil.copy(fleet.dbs["b"][0].path, path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE games ADD COLUMN generator_elo REAL")
    con.commit()
    con.close()
    stats = merge_snapshots(tmp_path / "c.db", "hex8_2p", [(str(path), "newer")])
    assert stats["snapshots"][0]["columns_ignored"] == {"games": ["generator_elo"]}
    assert stats["totals"]["added"] == expected([(str(path), "newer")], "hex8_2p")["games"] > 0


def test_provenance_names_a_source_holding_the_game(fleet: FleetSeed, tmp_path: Path) -> None:
    canonical, _ = _merge_all(fleet, tmp_path, "square8_2p")
    paths = {label: path for path, label in fleet.snapshots()}
    con = sqlite3.connect(canonical)
    rows = con.execute("SELECT game_id, source_label FROM fleetsync_provenance").fetchall()
    con.close()
    assert rows
    for game_id, label in rows:
        src = sqlite3.connect(paths[label])
        found = src.execute(
            "SELECT 1 FROM games WHERE game_id = ?", (game_id.split("~")[0],)
        ).fetchone()
        src.close()
        assert found, (game_id, label)


def test_second_merge_adds_nothing(fleet: FleetSeed, tmp_path: Path) -> None:
    canonical, first = _merge_all(fleet, tmp_path, "hex8_2p")
    before = canonical_state(canonical)
    second = merge_snapshots(canonical, "hex8_2p", fleet.snapshots())
    assert second["totals"]["added"] == 0 and second["totals"]["collisions_kept"] == 0
    assert (
        second["totals"]["duplicates"] == first["totals"]["added"] + first["totals"]["duplicates"]
    )
    assert not second["created"] and first["created"]
    assert canonical_state(canonical) == before


def test_incremental_merge_adds_exactly_the_new_games(fleet: FleetSeed, tmp_path: Path) -> None:
    snaps = fleet.snapshots()
    part_a = [s for s in snaps if not s[1].startswith("c:")]
    canonical = tmp_path / "canonical.db"
    merge_snapshots(canonical, "hex8_2p", part_a)
    stats = merge_snapshots(canonical, "hex8_2p", [s for s in snaps if s[1].startswith("c:")])
    want_new = expected(snaps, "hex8_2p")["games"] - expected(part_a, "hex8_2p")["games"]
    assert want_new > 0
    assert stats["totals"]["added"] == want_new
    assert canonical_state(canonical)["contents"] == expected(snaps, "hex8_2p")["contents"]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unreadable_snapshots_leave_canonical_unchanged(fleet: FleetSeed, tmp_path: Path) -> None:
    """Garbage, an empty DB and a missing file are reported, not merged, and stop nothing."""
    snaps = fleet.snapshots()
    canonical = tmp_path / "canonical.db"
    merge_snapshots(canonical, "hex8_2p", snaps[:2])
    digest = _file_digest(canonical)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x17not a database at all" * 500)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    bad = [
        (str(garbage), "node-x:garbage"),
        (str(empty), "empty"),
        (str(tmp_path / "missing.db"), "missing"),
    ]
    stats = merge_snapshots(canonical, "hex8_2p", bad)
    assert [s["status"] for s in stats["snapshots"]] == ["unreadable"] * 3
    errors = [s["error"] for s in stats["snapshots"]]
    assert re.search(r"garbage\.db.*unreadable SQLite", errors[0])
    assert re.search(r"empty\.db: not a game DB", errors[1])
    assert "no such file" in errors[2]
    assert stats["totals"]["unreadable"] == 3 and stats["totals"]["seen"] == 0
    assert not (tmp_path / "missing.db").exists()
    assert _file_digest(canonical) == digest


def test_cli_from_stdin_prints_json(fleet: FleetSeed, tmp_path: Path) -> None:
    """As shipped: `python3 - CANONICAL CONFIG SNAPSHOT=LABEL...`, isolated (-I), so
    an import of anything outside the standard library would fail here."""
    snaps = fleet.snapshots()
    args = [f"{path}={label}" for path, label in snaps]
    run = subprocess.run(
        [sys.executable, "-I", "-", str(tmp_path / "remote.db"), "hexagonal_3P", *args],
        input=MERGE_PY.bundle.decode(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats["config"] == "hexagonal_3p"
    assert [s["label"] for s in stats["snapshots"]] == [label for _, label in snaps]
    assert stats["totals"]["added"] == expected(snaps, "hexagonal_3p")["games"]

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"garbage" * 100)
    bad = subprocess.run(
        [sys.executable, "-I", "-", str(tmp_path / "remote.db"), "hex8_2p", str(garbage)],
        input=MERGE_PY.bundle.decode(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 0, bad.stderr  # a bad snapshot is reported, not a failure
    (report,) = json.loads(bad.stdout)["snapshots"]
    assert report["status"] == "unreadable" and "garbage.db" in report["error"]


@pytest.mark.parametrize("key", [*STANDARD_CONFIGS, "sq8_2p", "hex_2P", "hex8_2", "SQ19_4p"])
def test_merge_config_parsing_matches_configs_module(key: str) -> None:
    assert merge.parse_config(key) == split_config(normalize_config(key))


@pytest.mark.parametrize("key", ["hex8_5p", "chess_2p", "hex8", ""])
def test_merge_rejects_unknown_configs(key: str, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="unknown config"):
        merge_snapshots(tmp_path / "c.db", key, [])
    assert not (tmp_path / "c.db").exists()


def test_synth_is_deterministic(tmp_path: Path) -> None:
    dumps = []
    for name in ("x.db", "y.db"):
        db = write_game_db(
            tmp_path / name,
            make_specs(configs=CONFIGS, n_games=30, seed=5),
            omit_columns=OLD_SCHEMA_OMIT,
        )
        con = sqlite3.connect(db.path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        dumps.append(list(con.iterdump()))
        con.close()
    assert dumps[0] == dumps[1]
    with pytest.raises(FileExistsError):
        write_game_db(tmp_path / "x.db", [])
