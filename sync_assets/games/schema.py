"""The game-DB schema (v18, DATA.md "Game databases") for the rest of fleetsync.

The DDL is defined once, in `merge.py`, because that file is shipped to remote
nodes and must carry it; this module re-exports it so callers never import the
remote script's internals by name.
"""

from sync_assets.games.merge import (
    GAME_TABLES,
    SCHEMA_VERSION,
    create_game_db,
    open_game_db,
)

__all__ = ["GAME_TABLES", "SCHEMA_VERSION", "create_game_db", "open_game_db"]
