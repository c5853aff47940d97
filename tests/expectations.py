"""Independent expectations shared by the Dagster and cluster tests: counted straight
from the nodes' files with plain SQL, never through fleetsync's own merge code."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games.canonical import canonical_path


def expected_games(fleet: Fleet, config: str) -> int:
    """Distinct complete games of `config` on the nodes, counted without merge.py:
    a game is its id plus its whole move sequence (so colliding ids count twice)."""
    board, players = config.rsplit("_", 1)
    seen = set()
    for n in fleet.nodes:
        for db in sorted(Path(n.data_root, "games").glob("*.db")):
            if db.name.startswith("canonical_"):
                continue
            con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
            rows = con.execute(
                """SELECT g.game_id, m.move_number, m.player, m.move_type, m.move_json
                   FROM games g JOIN game_moves m USING (game_id)
                   WHERE g.board_type = ? AND g.num_players = ?
                     AND g.game_status IN ('completed', 'finished')
                     AND (SELECT COUNT(*) FROM game_moves c WHERE c.game_id = g.game_id) >= 5
                   ORDER BY g.game_id, m.move_number""",
                (board, int(players.rstrip("p"))),
            ).fetchall()
            con.close()
            games: dict[str, list] = {}
            for game_id, *move in rows:
                games.setdefault(game_id, []).append(tuple(move))
            seen.update((gid, tuple(moves)) for gid, moves in games.items())
    return len(seen)


def canonical_count(node: Node, config: str) -> int:
    db = Path(node.data_root) / canonical_path(config)
    con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM games").fetchone()[0]
    finally:
        con.close()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file as this test process reads it (never the transport's answer)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
