"""Config keys (`{board}_{n}p`) and the aliases older file names use.

Shipped to nodes with the programs that read game and Elo DBs (`games/merge.py`,
`elo/matches.py`): standard library only, Python >= 3.8.
"""

from __future__ import annotations

import functools
import re

BOARDS: tuple[str, ...] = ("hex8", "square8", "square19", "hexagonal")
PLAYER_COUNTS: tuple[int, ...] = (2, 3, 4)
STANDARD_CONFIGS: tuple[str, ...] = tuple(f"{b}_{n}p" for b in BOARDS for n in PLAYER_COUNTS)

# Board names seen in older files, mapped to the canonical board.
BOARD_ALIASES = {
    "hex8": "hex8",
    "square8": "square8",
    "sq8": "square8",
    "square19": "square19",
    "sq19": "square19",
    "hexagonal": "hexagonal",
    "hex": "hexagonal",
}
_CONFIG_RE = re.compile(r"^(?P<board>[a-z0-9]+)_(?P<n>[234])p?$")


class ConfigKeyError(ValueError):
    """A config key that cannot be parsed into `{board}_{n}p`."""


@functools.lru_cache(maxsize=1024)  # matches.py normalises every row of an Elo DB
def normalize_config(key: str) -> str:
    """`sq8_2p`, `hex_2P`, `hex8_2` → `square8_2p`, `hexagonal_2p`, `hex8_2p`."""
    m = _CONFIG_RE.match(key.strip().lower())
    board = BOARD_ALIASES.get(m.group("board")) if m else None
    if m is None or board is None:
        raise ConfigKeyError(
            f"unknown config key {key!r}: expected {{board}}_{{n}}p with board in "
            f"{', '.join(BOARDS)} and n in 2..4"
        )
    return f"{board}_{m.group('n')}p"


def split_config(config: str) -> tuple[str, int]:
    """`hex8_2p` → (`hex8`, 2); the key must already be normalised."""
    board, n = config.rsplit("_", 1)
    return board, int(n.rstrip("p"))
