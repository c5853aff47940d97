"""Issue 8, items 1, 2, 5, 6 and 8: the replication engine and the canonical merge on a
real local fleet (directories, real SQLite files, the shipped merge program).

Every expectation is computed here from the node files themselves, with plain SQL or
hashlib, never with the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import ExecResult, NodeProbe
from resources.transport.local import LocalTransport
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.engine.audit import audit_nodes
from sync_assets.engine.replication import distribute
from sync_assets.fleet.inventory import Fleet, load_inventory
from sync_assets.games.canonical import CANONICAL_KIND, canonical_path, merge_canonical
from sync_assets.games.collect import collect_node_games
from sync_assets.games.merge import create_game_db

FLEETSYNC = str(Path(sys.executable).parent / "fleetsync")


def local_fleet(tmp_path: Path, nodes: int = 5, **policy: object) -> tuple[Fleet, Catalog]:
    """A demo fleet of local directories (seeded game DBs), its policy overridden."""
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=nodes, games_per_node=12)
    if policy:
        doc = yaml.safe_load(fleet_file.read_text())
        doc["policy"].update(policy)
        fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_inventory(fleet_file), Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


def root_of(fleet: Fleet, node: str) -> Path:
    return Path(fleet.node(node).data_root)


def write_games(path: Path, games: list[tuple[str, str, int]], moves: int = 6) -> None:
    """A game DB (DATA.md schema) holding complete games (game_id, board_type, players)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    create_game_db(conn)
    for game_id, board, players in games:
        conn.execute(
            "INSERT INTO games (game_id, board_type, num_players, game_status, total_moves)"
            " VALUES (?, ?, ?, 'completed', ?)",
            (game_id, board, players, moves),
        )
        conn.execute(
            "INSERT INTO game_initial_state (game_id, initial_state_json) VALUES (?, '{}')",
            (game_id,),
        )
        conn.executemany(
            "INSERT INTO game_moves (game_id, move_number, player, move_type, move_json)"
            " VALUES (?, ?, ?, 'place', ?)",
            [
                (game_id, i, i % players + 1, json.dumps({"at": i, "g": game_id}))
                for i in range(moves)
            ],
        )
    conn.commit()
    conn.close()


def complete_games(db: Path, board: str, players: int) -> set[str]:
    """Ids of the complete games of one config in a node DB (DATA.md: finished, >= 5
    moves present), by independent plain SQL."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT g.game_id FROM games g WHERE g.board_type = ? AND g.num_players = ?"
            " AND g.game_status IN ('completed', 'finished')"
            " AND (SELECT count(*) FROM game_moves m WHERE m.game_id = g.game_id) >= 5",
            (board, players),
        )
        return {r[0] for r in rows}
    finally:
        conn.close()


def canonical_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT game_id FROM games")}
    finally:
        conn.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 1 ---------------------------------------------------------------------------------


def test_snapshot_whose_copies_are_all_gone_is_taken_again(tmp_path: Path) -> None:
    """An ephemeral node's unchanged DBs, whose every durable copy was lost (disk wiped,
    audit dropped them), are snapshotted and collected again, not reported as held."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    node = fleet.node("gpu-2")
    assert node.ephemeral
    collect_node_games(node, fleet, catalog, transports)
    durable = [n.name for n in fleet.durable_nodes]
    for name in durable:
        shutil.rmtree(root_of(fleet, name) / "games" / "collected" / "gpu-2")
    audited = audit_nodes(fleet.durable_nodes, catalog, transports.for_node)
    assert all(r.dropped for r in audited.values())  # type: ignore[union-attr]

    again = collect_node_games(node, fleet, catalog, transports)

    sources = sorted((root_of(fleet, "gpu-2") / "games").glob("*.db"))
    assert sources and again.snapshots_taken == len(sources)
    for source in sources:
        want = sqlite3.connect(source).execute("SELECT * FROM games ORDER BY game_id").fetchall()
        for name in durable:
            copies = list((root_of(fleet, name) / "games/collected/gpu-2").glob(f"{source.stem}.*"))
            assert len(copies) == 1, (name, source.name)
            got = sqlite3.connect(copies[0]).execute("SELECT * FROM games ORDER BY game_id")
            assert got.fetchall() == want


# ---- item 5 (unit) ---------------------------------------------------------------------------


def test_missing_source_is_a_finding_and_another_copy_is_used(tmp_path: Path) -> None:
    """The catalog says store-1 holds a verified copy, the disk says otherwise (deleted
    out of band). Replication tries it as a source (the other holder is ephemeral, so
    store-1 comes first), confirms it is gone, drops it, and copies from the other
    holder: both durable nodes end with verified bytes, and the run reports a finding,
    not a failed transfer."""
    from sync_assets.engine.replication import replicate

    fleet, catalog = local_fleet(tmp_path, nodes=5)
    catalog.sync_nodes(fleet.nodes)
    payload = os.urandom(50_000)
    sha = hashlib.sha256(payload).hexdigest()
    for name in ("store-1", "gpu-2"):
        (root_of(fleet, name) / "games" / "x.db").write_bytes(payload)
    catalog.add_artifact(sha, kind="games_snapshot", config="hex8_2p", name="games/x.db",
                         size=len(payload), origin_node="gpu-2")  # fmt: skip
    for name in ("store-1", "gpu-2"):
        catalog.record_replica(sha, name, "games/x.db", len(payload))
    (root_of(fleet, "store-1") / "games" / "x.db").unlink()  # out of band

    moved = replicate([sha], fleet, catalog, Transports(), lambda _row: "games/got/x.db")

    assert moved.failures == []
    assert len(moved.findings) == 1 and "store-1" in moved.findings[0]
    for name in ("coord-1", "store-1"):
        assert sha256_of(root_of(fleet, name) / "games" / "got" / "x.db") == sha
    rows = (
        sqlite3.connect(tmp_path / "catalog.db")
        .execute("SELECT node, path FROM replicas WHERE sha256 = ? ORDER BY node, path", (sha,))
        .fetchall()
    )
    assert rows == [("coord-1", "games/got/x.db"), ("gpu-2", "games/x.db"),
                    ("store-1", "games/got/x.db")]  # fmt: skip


# ---- item 8 ---------------------------------------------------------------------------------


def test_failed_copy_in_a_fanout_wave_does_not_crash_later_waves(tmp_path: Path) -> None:
    """One target of the first wave cannot take the file (its models/ is a plain file);
    it never serves a later wave, every other target still gets verified bytes, and the
    failure is reported instead of raised."""
    fleet, catalog = local_fleet(tmp_path, nodes=8, transfers_per_node=1)
    catalog.sync_nodes(fleet.nodes)
    payload = os.urandom(70_000)
    src = root_of(fleet, "coord-1") / "models" / "m.pth"
    src.parent.mkdir(parents=True)
    src.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    catalog.add_artifact(sha, kind="model", config="hex8_2p", name="models/m.pth",
                         size=len(payload), origin_node="coord-1")  # fmt: skip
    catalog.record_replica(sha, "coord-1", "models/m.pth", len(payload))
    targets = [n.name for n in fleet.nodes if n.name.startswith("gpu-")]
    assert len(targets) >= 4
    broken = targets[0]  # served in the first wave: a source of the second, were it fine
    (root_of(fleet, broken) / "models").write_text("not a directory")

    moved = distribute(sha, "models/m.pth", targets, fleet, catalog, Transports())

    assert len(moved.failures) == 1 and broken in moved.failures[0]
    for name in targets[1:]:
        assert sha256_of(root_of(fleet, name) / "models" / "m.pth") == sha
    assert (root_of(fleet, broken) / "models").read_text() == "not a directory"


# ---- item 6 ---------------------------------------------------------------------------------


def test_game_is_routed_by_its_own_config_not_its_file_name(tmp_path: Path) -> None:
    """A tournament_hex8_2p.db holding square8_4p games (one of them spelled `sq8`):
    those games reach canonical_square8_4p, the hex8_2p ones canonical_hex8_2p, and the
    collection counts the mismatch."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    games = [(f"h-{i}", "hex8", 2) for i in range(4)] + [
        ("s-0", "square8", 4), ("s-1", "square8", 4), ("s-2", "sq8", 4),
    ]  # fmt: skip
    mislabelled = root_of(fleet, "gpu-1") / "games" / "tournament_hex8_2p.db"
    write_games(mislabelled, games)

    collected = collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)
    for config in ("hex8_2p", "square8_4p"):
        merge_canonical(config, fleet, catalog, transports)

    primary = root_of(fleet, "coord-1")
    square = canonical_ids(primary / canonical_path("square8_4p"))
    assert {"s-0", "s-1", "s-2"} <= square
    hexes = canonical_ids(primary / canonical_path("hex8_2p"))
    assert {f"h-{i}" for i in range(4)} <= hexes and not hexes & {"s-0", "s-1", "s-2"}
    # Everything else the node holds for those configs arrived too (plain SQL oracle).
    for db in (root_of(fleet, "gpu-1") / "games").glob("*.db"):
        assert complete_games(db, "hex8", 2) <= hexes
    assert collected.misrouted["games/tournament_hex8_2p.db"] == {"square8_4p": 3}


# ---- item 2 ---------------------------------------------------------------------------------


def _merge_fails_after_first_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection at the transport boundary: the next merge on the node commits its
    first snapshot for real (the real merge.py, alone) and then stops, reporting what it
    committed, as merge.py does when canonical fails mid-way (e.g. a full disk)."""
    real_exec = LocalTransport.exec

    def failing(self, node, argv, stdin=None, timeout=600):  # type: ignore[no-untyped-def]
        at = next((i for i, a in enumerate(argv) if a.startswith("games/canonical_")), None)
        if at is not None and len(argv) > at + 3:  # merge.py CANONICAL CONFIG SNAPSHOT...
            done = real_exec(self, node, argv[: at + 3], stdin=stdin, timeout=timeout)
            stats = json.loads(done.stdout)
            monkeypatch.setattr(LocalTransport, "exec", real_exec)
            out = {"error": "disk I/O error (injected)", "snapshots": stats["snapshots"]}
            return ExecResult(1, json.dumps(out).encode(), b"")
        return real_exec(self, node, argv, stdin=stdin, timeout=timeout)

    monkeypatch.setattr(LocalTransport, "exec", failing)


def test_partial_merge_then_change_of_primary_merges_what_the_new_primary_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, catalog = local_fleet(tmp_path, nodes=4)
    transports = Transports()
    gpu = fleet.node("gpu-1")
    for node in fleet.nodes:  # only our own DBs, so the snapshots are known
        shutil.rmtree(root_of(fleet, node.name) / "games", ignore_errors=True)
    games_dir = root_of(fleet, "gpu-1") / "games"
    write_games(games_dir / "selfplay_hex8_2p.db", [(f"a-{i}", "hex8", 2) for i in range(5)])
    collect_node_games(gpu, fleet, catalog, transports)
    first = merge_canonical("hex8_2p", fleet, catalog, transports)
    assert first.primary == "coord-1" and first.durable_copies == 2  # v0 on both

    write_games(games_dir / "tournament_hex8_2p.db", [(f"b-{i}", "hex8", 2) for i in range(5)])
    write_games(games_dir / "gauntlet_hex8_2p.db", [(f"c-{i}", "hex8", 2) for i in range(5)])
    collect_node_games(gpu, fleet, catalog, transports)
    _merge_fails_after_first_snapshot(monkeypatch)
    with pytest.raises(Exception, match="injected"):
        merge_canonical("hex8_2p", fleet, catalog, transports)

    # coord-1 (the primary that merged one snapshot) leaves the fleet for good.
    doc = yaml.safe_load((tmp_path / "fleet" / "fleet.yaml").read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "coord-1"]
    doc["policy"]["min_replicas"] = dict.fromkeys(["games", "npz", "models", "elo"], 1)
    (tmp_path / "fleet" / "fleet.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet = load_inventory(tmp_path / "fleet" / "fleet.yaml")
    second = merge_canonical("hex8_2p", fleet, catalog, transports)

    assert second.primary == "store-1"
    expected = set()
    for db in games_dir.glob("*.db"):
        expected |= complete_games(db, "hex8", 2)
    assert len(expected) == 15
    assert canonical_ids(root_of(fleet, "store-1") / canonical_path("hex8_2p")) == expected
    assert catalog.alias(CANONICAL_KIND, "hex8_2p") == sha256_of(
        root_of(fleet, "store-1") / canonical_path("hex8_2p")
    )


# ---- item 5 ---------------------------------------------------------------------------------


def _demo(tmp_path: Path, home: Path, demo_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("FLEETSYNC_CATALOG_URL", None)
    argv = [FLEETSYNC, "demo", "--dir", str(demo_dir), "--nodes", "4", "--games", "30"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def _canonical_tables(demo_dir: Path) -> dict[str, dict[str, list[tuple]]]:
    """node → config → (game_id, move count) rows of every canonical DB, sorted."""
    out: dict[str, dict[str, list[tuple]]] = {}
    for db in sorted(demo_dir.glob("nodes/*/games/canonical_*.db")):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT g.game_id, (SELECT count(*) FROM game_moves m WHERE m.game_id = g.game_id)"
            " FROM games g ORDER BY g.game_id"
        ).fetchall()
        conn.close()
        config = re.sub(r"^canonical_|\.db$", "", db.name)
        out.setdefault(db.parts[-3], {})[config] = rows
    return out


@pytest.mark.slow
def test_catalog_word_is_not_taken_over_the_disk_rm_demo_then_demo(tmp_path: Path) -> None:
    """`rm -rf demo && make demo` with the same DAGSTER_HOME succeeds, and every durable
    node ends with exactly the canonical DBs a fresh instance builds from the same
    files; each holds exactly the complete games of its config found in the node DBs."""

    def home(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        shutil.copy(Path(__file__).resolve().parents[2] / "dagster_home" / "dagster.yaml", path)
        return path

    stale, fresh = home("stale-home"), home("fresh-home")
    demo_dir = tmp_path / "demo"
    assert _demo(tmp_path, stale, demo_dir).returncode == 0
    shutil.rmtree(demo_dir)
    again = _demo(tmp_path, stale, demo_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stdout
    assert "Data at risk (no durable copy): 0.0 MB" in again.stdout, again.stdout[-1500:]
    rebuilt = _canonical_tables(demo_dir)

    reference_dir = tmp_path / "reference"
    assert _demo(tmp_path, fresh, reference_dir).returncode == 0
    assert rebuilt == _canonical_tables(reference_dir)
    assert set(rebuilt) == {"coord-1", "store-1"}

    def ratings(root: Path) -> list[tuple]:
        conn = sqlite3.connect(
            f"file:{root / 'nodes/coord-1/elo/fleet_ratings.db'}?mode=ro", uri=True
        )
        rows = conn.execute(
            "SELECT participant_id, board_type, num_players, round(rating, 6), games"
            " FROM ratings ORDER BY 1, 2, 3"
        ).fetchall()
        conn.close()
        return rows

    assert ratings(demo_dir) == ratings(reference_dir) != []
    for config, rows in rebuilt["coord-1"].items():
        board, players = config.rsplit("_", 1)
        want: set[str] = set()
        for db in demo_dir.glob("nodes/*/games/*.db"):
            if not db.name.startswith("canonical_"):
                want |= complete_games(db, board, int(players.rstrip("p")))
        assert {game_id.split("~")[0] for game_id, _ in rows} == want, config


# ---- decided: copies on unreachable durable nodes, and unknown disk -------------------------


def test_copies_on_an_unreachable_durable_node_count_but_show_at_risk(tmp_path: Path) -> None:
    """A snapshot with its 2 durable copies meets policy while one holder does not
    answer probes (it is not lost yet), and `status` shows its bytes as at risk."""
    from sync_assets.cli.status import fleet_status

    fleet, catalog = local_fleet(tmp_path, nodes=4)
    transports = Transports()
    collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)
    before = fleet_status(catalog, fleet)
    assert before.bytes_below_policy == 0 and before.bytes_relying_on_unreachable == 0
    catalog.record_probe("store-1", NodeProbe(reachable=False, error="timed out"))
    after = fleet_status(catalog, fleet)
    snapshots = sum(p.stat().st_size for p in (root_of(fleet, "store-1") / "games").rglob("*.db"))
    assert after.bytes_below_policy == 0
    assert after.bytes_relying_on_unreachable == snapshots > 0


# ---- found in review: the same classes of defect, other paths --------------------------------


def test_a_db_whose_games_cannot_be_counted_is_still_collected_durably(tmp_path: Path) -> None:
    """An older generator's DB without `num_players`: its snapshot is collected to both
    durable nodes (its bytes safe, once), quarantined from merging, and the collection
    says why; the next pass takes no new snapshot of the unchanged DB."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    db = root_of(fleet, "gpu-2") / "games" / "selfplay_hex8_2p.db"
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE games (game_id TEXT PRIMARY KEY, board_type TEXT,"
                 " game_status TEXT, players TEXT)")  # fmt: skip
    conn.execute("CREATE TABLE game_moves (game_id TEXT, move_number INTEGER, move_json TEXT)")
    conn.execute("INSERT INTO games VALUES ('g1', 'hex8', 'completed', '2')")
    conn.commit()
    conn.close()
    first = collect_node_games(fleet.node("gpu-2"), fleet, catalog, transports)
    assert any("selfplay_hex8_2p.db" in s and "num_players" in s for s in first.skipped)
    for name in ("coord-1", "store-1"):
        [copy] = (root_of(fleet, name) / "games/collected/gpu-2").glob("selfplay_hex8_2p.*.db")
        got = sqlite3.connect(copy).execute("SELECT game_id, players FROM games").fetchall()
        assert got == [("g1", "2")]
    assert len(catalog.quarantined()) == 1
    again = collect_node_games(fleet.node("gpu-2"), fleet, catalog, transports)
    assert again.snapshots_taken == 0 and not again.skipped


def test_a_damaged_snapshot_copy_on_the_primary_never_shrinks_the_canonical_db(
    tmp_path: Path,
) -> None:
    """The primary loses its canonical DB and one collected snapshot copy is damaged
    (same size). The merge builds on the current version copied from store-1, never
    quarantines a snapshot whose good bytes exist, and no durable node loses a game;
    a damaged copy met while merging new games is dropped and copied again."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    for node in fleet.nodes:
        collect_node_games(node, fleet, catalog, transports)
    first = merge_canonical("hex8_2p", fleet, catalog, transports)
    primary = root_of(fleet, str(first.primary))
    held = canonical_ids(primary / canonical_path("hex8_2p"))
    (primary / canonical_path("hex8_2p")).unlink()
    for copy in sorted((primary / "games" / "collected").rglob("*.db")):
        if complete_games(copy, "hex8", 2):
            data = bytearray(copy.read_bytes())
            data[:16] = b"X" * 16
            copy.write_bytes(bytes(data))
    write_games(root_of(fleet, "gpu-1") / "games" / "gauntlet_hex8_2p.db",
                [(f"new-{i}", "hex8", 2) for i in range(3)])  # fmt: skip
    collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)

    for _ in range(2):  # the second pass merges what the first found damaged
        merge_canonical("hex8_2p", fleet, catalog, transports)

    assert catalog.quarantined() == {}
    want = held | {f"new-{i}" for i in range(3)}
    for name in ("coord-1", "store-1"):
        assert canonical_ids(root_of(fleet, name) / canonical_path("hex8_2p")) == want


def test_an_unreachable_primary_does_not_stall_the_merge(tmp_path: Path) -> None:
    from sync_assets.engine.probe import probe_and_record

    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    for node in fleet.nodes:
        collect_node_games(node, fleet, catalog, transports)
    first = merge_canonical("hex8_2p", fleet, catalog, transports)
    gone = root_of(fleet, str(first.primary))
    gone.rename(gone.with_name(gone.name + ".away"))  # the primary stops answering
    probe_and_record(fleet.node(str(first.primary)), fleet, catalog, transports)
    write_games(root_of(fleet, "gpu-1") / "games" / "gauntlet_hex8_2p.db", [("late", "hex8", 2)])
    collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)

    second = merge_canonical("hex8_2p", fleet, catalog, transports)

    assert second.primary != first.primary
    assert "late" in canonical_ids(root_of(fleet, str(second.primary)) / canonical_path("hex8_2p"))


def test_snapshot_copies_lost_behind_the_catalogs_back_are_taken_again_in_one_pass(
    tmp_path: Path,
) -> None:
    """No audit ran: the collection itself looks at the durable copies first, so the
    unchanged DBs are snapshotted and collected again in the same pass."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    node = fleet.node("gpu-2")
    collect_node_games(node, fleet, catalog, transports)
    for name in ("coord-1", "store-1"):
        shutil.rmtree(root_of(fleet, name) / "games" / "collected" / "gpu-2")
    again = collect_node_games(node, fleet, catalog, transports)
    sources = sorted((root_of(fleet, "gpu-2") / "games").glob("*.db"))
    assert again.snapshots_taken == len(sources) > 0
    for name in ("coord-1", "store-1"):
        assert len(list((root_of(fleet, name) / "games/collected/gpu-2").glob("*.db"))) == len(
            sources
        )


def test_a_staging_copy_is_kept_while_a_durable_copy_cannot_be_looked_at(tmp_path: Path) -> None:
    """store-1's disk is away (the node still looks reachable): pass 1 copies to coord-1
    only and keeps the staging copies. Then the catalog is told (a stale row) that
    store-1 holds them too. Pass 2 cannot look at store-1, so that row never counts
    toward deleting the node's own staging copies."""
    fleet, catalog = local_fleet(tmp_path)
    transports = Transports()
    node = fleet.node("gpu-2")
    store = root_of(fleet, "store-1")
    store.rename(store.with_name("store-1.away"))
    collect_node_games(node, fleet, catalog, transports)
    staging = sorted((root_of(fleet, "gpu-2") / ".fleetsync").rglob("*.db.*"))
    assert staging
    for sha, _path, size, _ in catalog.replicas_on_node("gpu-2", ["staging"]):
        catalog.record_replica(sha, "store-1", f"games/collected/gpu-2/{sha}.db", size)

    again = collect_node_games(node, fleet, catalog, transports)

    assert sorted((root_of(fleet, "gpu-2") / ".fleetsync").rglob("*.db.*")) == staging
    assert again.under_replicated


def test_a_canonical_db_fleetsync_did_not_make_is_merged_not_written_over(tmp_path: Path) -> None:
    """store-1 holds a canonical DB from before fleetsync with games no snapshot has: it
    is kept aside as a collected snapshot and merged, and no durable node loses them."""
    fleet, catalog = local_fleet(tmp_path, nodes=4)
    transports = Transports()
    legacy = [(f"legacy-{i}", "hex8", 2) for i in range(6)]
    write_games(root_of(fleet, "store-1") / canonical_path("hex8_2p"), legacy)
    for node in fleet.nodes:
        collect_node_games(node, fleet, catalog, transports)

    merged = merge_canonical("hex8_2p", fleet, catalog, transports)

    assert any("did not make" in f for f in merged.moved.findings)
    want = {g for g, _, _ in legacy}
    for name in ("coord-1", "store-1"):
        assert want <= canonical_ids(root_of(fleet, name) / canonical_path("hex8_2p")), name
    kept = list((root_of(fleet, "store-1") / "games/collected/store-1").glob("canonical_*.db"))
    assert len(kept) == 1 and canonical_ids(kept[0]) == want


def test_a_census_failing_on_one_missing_copy_never_quarantines_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count failed at collection (the node killed it); later one durable copy is
    gone. The count is made from the other copy, nothing is quarantined, and the games
    reach canonical."""
    from sync_assets.games import collect as collect_module

    fleet, catalog = local_fleet(tmp_path, nodes=4)
    transports = Transports()
    for node in fleet.nodes:
        shutil.rmtree(root_of(fleet, node.name) / "games", ignore_errors=True)
    db = root_of(fleet, "gpu-1") / "games" / "selfplay_hex8_2p.db"
    write_games(db, [(f"k-{i}", "hex8", 2) for i in range(7)])
    real = collect_module.count_configs

    def killed(node, path, transports):  # type: ignore[no-untyped-def]
        raise collect_module.TransferError(f"node {node.name}: {path}: exit 137: Killed")

    monkeypatch.setattr(collect_module, "count_configs", killed)
    collect_node_games(fleet.node("gpu-1"), fleet, catalog, transports)
    monkeypatch.setattr(collect_module, "count_configs", real)
    for copy in (root_of(fleet, "coord-1") / "games" / "collected").rglob("*.db"):
        copy.unlink()

    merge_canonical("hex8_2p", fleet, catalog, transports)

    assert catalog.quarantined() == {}
    primary_db = root_of(fleet, "store-1") / canonical_path("hex8_2p")
    if not primary_db.exists():
        primary_db = root_of(fleet, "coord-1") / canonical_path("hex8_2p")
    assert canonical_ids(primary_db) == complete_games(db, "hex8", 2)


# ---- issue 9 review: node sync left to discovery ------------------------------------------


def test_a_copy_on_a_node_gone_from_the_inventory_never_stands_for_a_snapshot(
    tmp_path: Path,
) -> None:
    """gpu-2's DBs are collected to coord-1 and store-1. store-1's disk is wiped, and
    coord-1 leaves the inventory (discovery has not run since, so the catalog still lists
    it). The next pass must snapshot the unchanged DBs again: their only copies are on a
    node that is no longer in the fleet."""
    fleet, catalog = local_fleet(
        tmp_path, min_replicas={"games": 1, "npz": 1, "models": 1, "elo": 1}
    )
    catalog.sync_nodes(fleet.nodes)  # discovery ran once
    transports = Transports()
    collect_node_games(fleet.node("gpu-2"), fleet, catalog, transports)
    sources = sorted((root_of(fleet, "gpu-2") / "games").glob("*.db"))
    shutil.rmtree(root_of(fleet, "store-1") / "games" / "collected")
    fleet_file = tmp_path / "fleet" / "fleet.yaml"
    doc = yaml.safe_load(fleet_file.read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "coord-1"]
    fleet_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet = load_inventory(fleet_file)

    again = collect_node_games(fleet.node("gpu-2"), fleet, catalog, transports)

    assert sources and again.snapshots_taken == len(sources)
    collected = root_of(fleet, "store-1") / "games" / "collected" / "gpu-2"
    for source in sources:
        want = sqlite3.connect(source).execute("SELECT * FROM games ORDER BY game_id").fetchall()
        copies = list(collected.glob(f"{source.stem}.*"))
        assert len(copies) == 1, source.name
        assert (
            sqlite3.connect(copies[0]).execute("SELECT * FROM games ORDER BY game_id").fetchall()
            == want
        )


def test_a_node_skipped_while_looking_never_counts_toward_releasing_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog says coord-1 and store-1 hold gpu-2's snapshots, but store-1's files are
    gone. store-1 is unavailable while the copies are looked at (its breaker open) and
    available again a moment later: its rows must not count toward deleting gpu-2's
    staging copies, which are then the only copy besides coord-1's."""
    import sync_assets.engine.live_db as live_db
    import sync_assets.engine.replication as replication

    fleet, catalog = local_fleet(tmp_path)  # min_replicas.games = 2
    transports = Transports()
    node = fleet.node("gpu-2")
    monkeypatch.setattr(live_db, "_release_staging", lambda *args: None)  # a pass cut short
    collect_node_games(node, fleet, catalog, transports)
    monkeypatch.undo()
    staging = sorted((root_of(fleet, "gpu-2") / ".fleetsync").rglob("*.db.*"))
    assert staging
    shutil.rmtree(root_of(fleet, "store-1") / "games" / "collected")
    real = replication.unavailable_nodes
    monkeypatch.setattr(replication, "unavailable_nodes", lambda c: real(c) | {"store-1"})

    again = collect_node_games(node, fleet, catalog, transports)

    assert sorted((root_of(fleet, "gpu-2") / ".fleetsync").rglob("*.db.*")) == staging
    assert again.under_replicated
