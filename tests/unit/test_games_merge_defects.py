"""Issue 8, items 6 and 7, in the game merge (sync_assets/games/merge.py), on real files.

6. A game is routed by its file's name, not by its own config.
7. One bad snapshot blocks a config's merges for good.

Fixtures are synth.py node DBs, edited with plain SQL into the shapes that stalled the
fleet; every expectation is computed here with plain SQL over the fixture files.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from sync_assets.demo.synth_games import make_specs, strip_keys, write_game_db
from sync_assets.games import merge
from sync_assets.games.collect import MERGE_PY
from sync_assets.games.merge import MergeError, merge_snapshots


def node_db(path: Path, configs: list[str], n_games: int, seed: int) -> Path:
    """A node DB of complete games only (synth), so every game is mergeable."""
    specs = make_specs(configs=configs, n_games=n_games, seed=seed, incomplete_fraction=0)
    return write_game_db(path, specs).path


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def edit(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    try:
        for sql in statements:
            con.execute(sql)
        con.commit()
    finally:
        con.close()


def ids(path: Path, where: str = "1") -> set[str]:
    return {r[0] for r in query(path, f"SELECT game_id FROM games WHERE {where}")}


def first_ids(path: Path, n: int) -> list[str]:
    return [r[0] for r in query(path, "SELECT game_id FROM games ORDER BY game_id LIMIT ?", (n,))]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """merge.py as shipped: source on stdin, isolated interpreter."""
    return subprocess.run(
        [sys.executable, "-I", "-", *args],
        input=MERGE_PY.bundle.decode(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---- 6. routed by the game's own config --------------------------------------------------


def test_game_of_another_config_in_a_file_reaches_its_own_canonical(tmp_path: Path) -> None:
    """A `tournament_hex8_2p.db` holding square8_4p games (some spelled `sq8`, `Square8 `,
    players as text) feeds canonical_square8_4p; the census shows both configs."""
    snapshot = tmp_path / "node" / "games" / "tournament_hex8_2p.db"
    specs = [
        *make_specs(configs=["hex8_2p"], n_games=30, seed=1, incomplete_fraction=0),
        *make_specs(configs=["square8_4p"], n_games=20, seed=2, incomplete_fraction=0),
    ]
    write_game_db(snapshot, specs)
    square = ids(snapshot, "board_type = 'square8' AND num_players = 4")
    hexes = ids(snapshot, "board_type = 'hex8' AND num_players = 2")
    assert len(square) == 20 and len(hexes) == 30
    edit(
        snapshot,
        "UPDATE games SET board_type = 'sq8' WHERE board_type = 'square8' AND rowid % 2 = 0",
        "UPDATE games SET board_type = 'Square8 ' WHERE board_type = 'square8' AND rowid % 3 = 0",
        "UPDATE games SET board_type = 'HEX8' WHERE board_type = 'hex8' AND rowid % 5 = 0",
        "INSERT INTO games (game_id, board_type, num_players, game_status)"
        " VALUES ('odd-1', 'chess', 2, 'completed'), ('odd-2', 'hex8', 7, 'completed')",
    )
    respelled = query(
        snapshot, "SELECT count(*) FROM games WHERE board_type IN ('sq8', 'Square8 ')"
    )[0][0]
    assert respelled > 0
    label = "node:games/tournament_hex8_2p.db"

    canonical = tmp_path / "canonical_square8_4p.db"
    stats = merge_snapshots(canonical, "square8_4p", [(str(snapshot), label)])
    assert ids(canonical) == square
    (per,) = stats["snapshots"]
    assert (per["seen"], per["added"], per["config_respelled"]) == (20, 20, respelled)
    # One config, one spelling in canonical.
    assert query(
        canonical, "SELECT DISTINCT board_type, typeof(num_players), num_players FROM games"
    ) == [("square8", "integer", 4)]
    hex_canonical = tmp_path / "canonical_hex8_2p.db"
    merge_snapshots(hex_canonical, "hex8_2p", [(str(snapshot), label)])
    assert ids(hex_canonical) == hexes

    want = {
        "path": str(snapshot),
        "status": "ok",
        "games": 52,
        "configs": {"hex8_2p": 30, "square8_4p": 20},
        "unparsed": 2,
    }
    assert merge.census(snapshot) == want
    assert per["census"] == {"configs": want["configs"], "unparsed": 2}
    run = run_cli("--census", str(snapshot))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == want


def test_census_of_a_bad_file_says_unreadable(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite" * 100)
    for path in (garbage, tmp_path / "missing.db"):
        got = merge.census(path)
        assert got["status"] == "unreadable" and got["error"] and got["configs"] == {}
        run = run_cli("--census", str(path))
        assert run.returncode == 0 and json.loads(run.stdout)["status"] == "unreadable"
    # `--census` is an option: no canonical path can be mistaken for it.
    assert run_cli("--census", str(garbage), "canonical.db").returncode == 2


# ---- 7. one bad snapshot blocks a config's merges ------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> list[Path]:
    """Two good single-config node DBs."""
    return [node_db(tmp_path / f"good{i}.db", ["hex8_2p"], 25, seed=10 + i) for i in range(2)]


def merge_all(canonical: Path, snapshots: Sequence[Path | str]) -> dict:
    return merge_snapshots(canonical, "hex8_2p", [(str(p), Path(p).stem) for p in snapshots])


def test_null_initial_state_drops_the_row_not_the_game_nor_the_snapshot(
    tmp_path: Path, good: list[Path]
) -> None:
    """DATA.md: complete = finished with >= 5 moves. A NULL or missing initial state is
    a bad child row (dropped and counted), never a reason to lose the game."""
    bad = node_db(tmp_path / "bad.db", ["hex8_2p"], 25, seed=3)
    strip_keys(bad, ["game_initial_state"])
    null_state, no_state = first_ids(bad, 3)[:2], first_ids(bad, 3)[2]
    edit(
        bad,
        "UPDATE game_initial_state SET initial_state_json = NULL"
        f" WHERE game_id IN ('{null_state[0]}', '{null_state[1]}')",
        f"DELETE FROM game_initial_state WHERE game_id = '{no_state}'",
    )
    complete = {
        row[0]
        for row in query(
            bad,
            "SELECT g.game_id FROM games g WHERE g.game_status IN ('completed', 'finished')"
            " AND (SELECT count(*) FROM game_moves m WHERE m.game_id = g.game_id) >= 5",
        )
    }
    canonical = tmp_path / "canonical.db"
    stats = merge_all(canonical, [bad, *good])  # the bad one first, as it stalled every run

    assert [s["status"] for s in stats["snapshots"]] == ["merged"] * 3
    first = stats["snapshots"][0]
    assert first["added"] == len(complete) and {*null_state, no_state} <= complete
    assert first["rows_dropped"]["game_initial_state"] == {"null_required_field": 2}
    assert ids(canonical) == complete | ids(good[0]) | ids(good[1])
    held = {r[0] for r in query(canonical, "SELECT game_id FROM game_initial_state")}
    assert not held & {*null_state, no_state}


def test_duplicate_move_rows_of_a_keyless_schema_do_not_stall_the_merge(
    tmp_path: Path, good: list[Path]
) -> None:
    bad = node_db(tmp_path / "bad.db", ["hex8_2p"], 25, seed=4)
    strip_keys(bad, ["game_moves"])
    *doubled, conflicting = first_ids(bad, 4)
    edit(
        bad,
        "INSERT INTO game_moves SELECT * FROM game_moves"
        f" WHERE game_id IN ('{doubled[0]}', '{doubled[1]}', '{doubled[2]}')",
        "INSERT INTO game_moves (game_id, move_number, player, move_type, move_json)"
        f" SELECT game_id, move_number, player, move_type, 'another move' FROM game_moves"
        f" WHERE game_id = '{conflicting}' AND move_number = 2",
    )
    copies = query(
        bad, "SELECT count(*) FROM game_moves WHERE game_id IN (?, ?, ?)", tuple(doubled)
    )[0][0]
    canonical = tmp_path / "canonical.db"
    stats = merge_all(canonical, [bad, *good])

    first = stats["snapshots"][0]
    assert first["status"] == "merged" and first["rejected"]["bad_moves"] == 1
    assert first["rows_dropped"]["game_moves"] == {"identical_copy": copies // 2}
    assert ids(canonical) == (ids(bad) - {conflicting}) | ids(good[0]) | ids(good[1])
    for game_id in doubled:  # each move once, as the node meant it
        want = query(
            bad,
            "SELECT DISTINCT move_number, move_json FROM game_moves"
            " WHERE game_id = ? ORDER BY move_number",
            (game_id,),
        )
        got = query(
            canonical,
            "SELECT move_number, move_json FROM game_moves WHERE game_id = ? ORDER BY move_number",
            (game_id,),
        )
        assert got == want


def test_state_snapshots_without_state_json_are_schema_drift(
    tmp_path: Path, good: list[Path]
) -> None:
    bad = node_db(tmp_path / "bad.db", ["hex8_2p"], 60, seed=5)
    rows = query(bad, "SELECT count(*) FROM game_state_snapshots")[0][0]
    assert rows > 0
    edit(bad, "ALTER TABLE game_state_snapshots DROP COLUMN state_json")
    canonical = tmp_path / "canonical.db"
    stats = merge_all(canonical, [bad, *good])

    first = stats["snapshots"][0]
    assert first["status"] == "merged" and first["added"] == 60
    assert first["columns_missing"] == {"game_state_snapshots": ["state_json"]}
    assert first["rows_dropped"] == {"game_state_snapshots": {"missing_column": rows}}
    assert ids(canonical) == ids(bad) | ids(good[0]) | ids(good[1])


def test_moves_without_player_and_move_type_are_schema_drift(
    tmp_path: Path, good: list[Path]
) -> None:
    bad = node_db(tmp_path / "bad.db", ["hex8_2p"], 25, seed=6)
    edit(
        bad,
        "ALTER TABLE game_moves DROP COLUMN player",
        "ALTER TABLE game_moves DROP COLUMN move_type",
    )
    canonical = tmp_path / "canonical.db"
    stats = merge_all(canonical, [bad, *good])

    first = stats["snapshots"][0]
    assert first["status"] == "merged" and first["added"] == 25
    assert first["columns_missing"] == {"game_moves": ["player", "move_type"]}
    assert ids(canonical) == ids(bad) | ids(good[0]) | ids(good[1])
    placeholders = ", ".join("?" * 25)
    assert query(
        canonical,
        "SELECT count(*), count(player), count(move_type) FROM game_moves"
        f" WHERE game_id IN ({placeholders})",
        tuple(ids(bad)),
    )[0] == (query(bad, "SELECT count(*) FROM game_moves")[0][0], 0, 0)


def corrupt_pages(path: Path, table: str) -> None:
    """Overwrite every page of `table` (found with dbstat) with garbage, in place."""
    con = sqlite3.connect(path)
    pages = [r[0] for r in con.execute("SELECT pageno FROM dbstat WHERE name = ?", (table,))]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert pages
    with path.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)


def test_unreadable_snapshot_is_reported_and_the_rest_merged_on_every_run(
    tmp_path: Path, good: list[Path]
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x17not a database at all" * 500)
    corrupt = node_db(tmp_path / "corrupt.db", ["hex8_2p"], 200, seed=7)
    corrupt_pages(corrupt, "game_moves")  # the schema and games read; moves do not
    missing = tmp_path / "missing.db"
    late = node_db(tmp_path / "late.db", ["hex8_2p"], 25, seed=8)
    canonical = tmp_path / "canonical.db"

    first = merge_all(canonical, [garbage, corrupt, good[0], missing, good[1]])
    second = merge_all(canonical, [garbage, corrupt, good[0], missing, good[1], late])

    for stats in (first, second):
        statuses = [s["status"] for s in stats["snapshots"]]
        assert statuses[:5] == ["unreadable", "unreadable", "merged", "unreadable", "merged"]
        assert stats["totals"]["unreadable"] == 3
    errors = [s.get("error", "") for s in first["snapshots"]]
    assert "garbage.db" in errors[0] and "corrupt.db" in errors[1] and "missing" in errors[3]
    assert "malformed" in errors[1]
    assert second["totals"]["added"] == 25 and second["totals"]["duplicates"] == 50
    assert ids(canonical) == ids(good[0]) | ids(good[1]) | ids(late)
    assert merge.census(corrupt)["status"] == "ok"  # its games table still reads


def test_canonical_write_failure_is_canonicals_not_the_snapshots(
    tmp_path: Path, good: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing canonical: MergeError naming canonical, with the snapshots
    committed before; the snapshot being merged is not blamed, canonical keeps its state."""
    canonical = tmp_path / "canonical.db"
    merge_all(canonical, [good[0]])
    pages = query(canonical, "PRAGMA page_count")[0][0]
    big = node_db(tmp_path / "big.db", ["hex8_2p"], 300, seed=9)
    opened = merge.open_game_db

    def small_disk(path: str | Path) -> sqlite3.Connection:
        conn = opened(path)
        conn.execute(f"PRAGMA max_page_count = {pages + 4}")
        return conn

    monkeypatch.setattr(merge, "open_game_db", small_disk)
    with pytest.raises(MergeError, match=r"^canonical .*full") as failed:
        merge_all(canonical, [good[0], big, good[1]])
    assert [(s["label"], s["status"]) for s in failed.value.completed] == [("good0", "merged")]
    assert ids(canonical) == ids(good[0])


def test_corrupt_canonical_is_canonicals_failure_not_the_snapshots(
    tmp_path: Path, good: list[Path]
) -> None:
    canonical = tmp_path / "canonical.db"
    merge_all(canonical, [node_db(tmp_path / "first.db", ["hex8_2p"], 300, seed=12)])
    corrupt_pages(canonical, "sqlite_autoindex_games_1")
    with pytest.raises(MergeError, match=r"^canonical .*malformed") as failed:
        merge_all(canonical, good)
    assert failed.value.completed == []
    run = run_cli(str(canonical), "hex8_2p", *(f"{p}={p.stem}" for p in good))
    assert run.returncode == 1
    assert json.loads(run.stdout)["error"].startswith("canonical")
