"""Synthetic node game DBs in the shapes of DATA.md, for tests, the demo and benchmarks.

Every game is a pure function of its `GameSpec` (id, config, seed, kind,
source), computed vectorised with a counter-based hash (splitmix64): the same
spec written on two nodes gives byte-identical rows, which is how cross-node
duplicates are made, and two specs with one id but different seeds are the
"non-unique `gpu_mcts_{ts}_{i}` ids" collision. 200 k games x ~20 moves write
in seconds: one transaction, executemany, synchronous OFF, then WAL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sync_assets.fleet.configs import split_config
from sync_assets.games.schema import SCHEMA_VERSION, create_game_db

# What older nodes in the fleet lack (the "older-schema node" of fixtures).
OLD_SCHEMA_OMIT: dict[str, set[str]] = {
    "games": {"quality_score", "engine_mode"},
    "game_moves": {"search_stats_json"},
}
KINDS = ("complete", "active", "abandoned", "truncated")  # truncated: completed, < 5 moves
_BOARD_SIZE = {"hex8": 9, "square8": 8, "square19": 19, "hexagonal": 25}
_PHASES = np.array(
    ["ring_placement", "movement", "capture", "line_processing", "territory_processing"],
    dtype=object,
)
_MOVE_TYPES = np.array(
    [
        "place_ring",
        "move_stack",
        "move_ring",
        "overtaking_capture",
        "continue_capture_segment",
        "process_line",
        "process_territory_region",
    ],
    dtype=object,
)
_TERMINATIONS = np.array(
    ["ring_elimination", "territory_control", "last_player_standing", "move_limit"], dtype=object
)
_ENGINES = np.array(["gumbel_mcts", "mcts", "descent", "policy_only"], dtype=object)
# String tables indexed by hash bits: far cheaper than formatting millions of rows.
_MAX_SIZE = 25
_NULL_COORD = _MAX_SIZE * _MAX_SIZE
_COORDS = np.array(
    [f'{{"x":{i // _MAX_SIZE},"y":{i % _MAX_SIZE}}}' for i in range(_NULL_COORD)] + ["null"],
    dtype=object,
)
_MOVE_PROBS = np.array(
    [f'{{"{i % 61}":0.{500 + i % 499:03d},"{i % 53}":0.{499 - i % 499:03d}}}' for i in range(4096)],
    dtype=object,
)
_SEARCH_STATS = np.array(
    [f'{{"visits":800,"depth":{i % 30},"value":0.{i * 7 % 1000:03d}}}' for i in range(1024)],
    dtype=object,
)
_EPOCH = 1_735_689_600  # 2025-01-01T00:00:00Z


class GameSpec(NamedTuple):
    """Everything that determines a game's rows."""

    game_id: str
    config: str
    seed: int
    kind: str
    source: str


@dataclass(frozen=True)
class GeneratedDb:
    """One written DB: its path, the games in it and the columns its schema lacks."""

    path: Path
    games: tuple[GameSpec, ...]
    omit_columns: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSeed:
    """What `seed_fleet_games` wrote, per node (data root → its game DBs)."""

    roots: dict[str, Path]
    dbs: dict[str, list[GeneratedDb]]
    old_schema_node: str
    shared_ids: frozenset[str]  # same game (id and moves) on two nodes
    colliding_ids: frozenset[str]  # one id, different games, on two nodes

    def snapshots(self) -> list[tuple[str, str]]:
        """(path, label) of every DB, labelled `node:relative/path` for provenance."""
        return [
            (str(db.path), f"{node}:{db.path.relative_to(self.roots[node]).as_posix()}")
            for node, dbs in self.dbs.items()
            for db in dbs
        ]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread uint64 per input, no state."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _bits(h: np.ndarray, shift: int, modulo: np.ndarray | int) -> np.ndarray:
    """Bits of `h` from `shift` up, reduced modulo `modulo` (scalar or per element)."""
    return ((h >> np.uint64(shift)) % np.asarray(modulo, dtype=np.uint64)).astype(np.int64)


def _iso(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds → ISO-8601 strings (object array), vectorised."""
    return np.asarray(seconds, dtype="datetime64[s]").astype(str).astype(object)


def _where(mask: np.ndarray, values: np.ndarray) -> list:
    """values where mask, else None (SQL NULL), as Python objects."""
    out = np.asarray(values).astype(object)
    out[~mask] = None
    return out.tolist()


def make_specs(
    *,
    configs: Sequence[str],
    n_games: int,
    seed: int,
    id_style: str = "uuid",
    incomplete_fraction: float = 0.05,
    source: str = "self_play",
    id_epoch: int | None = None,
) -> list[GameSpec]:
    """Game specs of one DB; `gpu_mcts` ids from the same `id_epoch` collide across DBs."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**63, size=n_games, dtype=np.uint64).tolist()
    config_idx = rng.integers(0, len(configs), size=n_games).tolist()
    u = rng.random(n_games)
    kind_idx = np.where(
        u < incomplete_fraction,
        1 + np.minimum((u / max(incomplete_fraction, 1e-12) * 3).astype(int), 2),
        0,
    ).tolist()
    if id_style == "uuid":
        hx = rng.bytes(16 * n_games).hex()
        ids = [
            f"{hx[i : i + 8]}-{hx[i + 8 : i + 12]}-4{hx[i + 13 : i + 16]}-"
            f"{'89ab'[int(hx[i + 16], 16) & 3]}{hx[i + 17 : i + 20]}-{hx[i + 20 : i + 32]}"
            for i in range(0, 32 * n_games, 32)
        ]
    elif id_style == "gpu_mcts":
        epoch = _EPOCH + seed % 1_000_000 if id_epoch is None else id_epoch
        ids = [f"gpu_mcts_{epoch + k // 64}_{k % 64}" for k in range(n_games)]
    else:
        raise ValueError(f"id_style must be 'uuid' or 'gpu_mcts', not {id_style!r}")
    return [
        GameSpec(gid, configs[c], s, KINDS[k], source)
        for gid, c, s, k in zip(ids, config_idx, seeds, kind_idx, strict=True)
    ]


def _rows(specs: Sequence[GameSpec]) -> dict[str, dict[str, list]]:
    """Column-wise rows of every table for `specs` (vectorised; pure in the specs)."""
    g = len(specs)
    seeds = np.array([s.seed for s in specs], dtype=np.uint64)
    boards, players = zip(*(split_config(s.config) for s in specs), strict=True) if g else ((), ())
    n = np.array(players, dtype=np.int64)
    size = np.array([_BOARD_SIZE[b] for b in boards], dtype=np.int64)
    kind = np.array([KINDS.index(s.kind) for s in specs], dtype=np.int64)
    h1 = _mix(seeds)
    h2 = _mix(h1 ^ np.uint64(0x5851F42D4C957F2D))
    h3 = _mix(h2)
    full = 8 + _bits(h1, 0, 25)
    present = np.select([kind == 0, kind == 3], [full, _bits(h2, 0, 5)], 1 + _bits(h2, 0, full))
    ended = (kind == 0) | (kind == 3)
    total = np.where(ended, full, present)
    status = np.select(
        [kind == 0, kind == 1, kind == 2],
        [np.where(_bits(h3, 0, 10) == 0, "finished", "completed"), "active", "abandoned"],
        "completed",
    )
    created = _EPOCH + _bits(h1, 8, 90 * 86_400)
    duration = total * (200 + _bits(h2, 8, 800))
    engine = _ENGINES[_bits(h3, 16, 4)].tolist()
    termination = _TERMINATIONS[_bits(h3, 20, 4)]
    termination[kind == 2] = "abandoned"
    n_l = n.tolist()
    games = {
        "game_id": [s.game_id for s in specs],
        "board_type": list(boards),
        "num_players": n_l,
        "rng_seed": (seeds & np.uint64(0x7FFFFFFF)).astype(np.int64).tolist(),
        "created_at": _iso(created).tolist(),
        "completed_at": _where(ended, _iso(created + duration // 1000)),
        "game_status": status.tolist(),
        "winner": _where(ended, 1 + _bits(h3, 24, n)),
        "termination_reason": _where(ended | (kind == 2), termination),
        "total_moves": total.tolist(),
        "total_turns": ((total - 1) // n + 1).tolist(),
        "duration_ms": duration.tolist(),
        "source": [s.source for s in specs],
        "schema_version": [SCHEMA_VERSION] * g,
        "metadata_json": [
            f'{{"generator":"gpu_selfplay","engine_version":"2.3.{v}","temperature":1.{t}}}'
            for v, t in zip(_bits(h1, 32, 9).tolist(), _bits(h1, 40, 10).tolist(), strict=True)
        ],
        "quality_score": ((300 + _bits(h2, 32, 700)) / 1000).tolist(),
        "engine_mode": engine,
        "opponent_type": [
            {"tournament": "model", "gauntlet": "heuristic"}.get(s.source, "self") for s in specs
        ],
        "opponent_model_id": [
            f"canonical_{s.config}:v{v}" if s.source == "tournament" else None
            for s, v in zip(specs, _bits(h2, 40, 20).tolist(), strict=True)
        ],
    }

    # Players: num_players rows per game.
    pg = np.repeat(np.arange(g), n)
    pnum = np.arange(len(pg)) - np.repeat(np.cumsum(n) - n, n) + 1
    ph = _mix(seeds[pg] ^ _mix(pnum.astype(np.uint64)))
    game_players = {
        "game_id": [games["game_id"][i] for i in pg.tolist()],
        "player_number": pnum.tolist(),
        "player_type": ["ai"] * len(pg),
        "ai_type": [engine[i] for i in pg.tolist()],
        "ai_difficulty": (1 + _bits(ph, 0, 10)).tolist(),
        "final_eliminated_rings": _bits(ph, 8, 20).tolist(),
        "final_territory_spaces": _bits(ph, 16, 30).tolist(),
        "final_rings_in_hand": _bits(ph, 24, 6).tolist(),
    }

    initial = {
        "game_id": games["game_id"],
        "initial_state_json": [
            f'{{"boardType":"{b}","boardSize":{sz},"numPlayers":{k},"rngSeed":{r},'
            f'"ringsPerPlayer":{18 if sz < 19 else 36},"currentPlayer":1,'
            f'"currentPhase":"ring_placement","stacks":{{}},"markers":{{}}}}'
            for b, sz, k, r in zip(boards, size.tolist(), n_l, games["rng_seed"], strict=True)
        ],
        "compressed": [0] * g,
    }

    # Moves: `present` rows per game, numbered 0..present-1.
    mg = np.repeat(np.arange(g), present)
    mn = np.arange(len(mg)) - np.repeat(np.cumsum(present) - present, present)
    hm = _mix(seeds[mg] ^ _mix(mn.astype(np.uint64) + np.uint64(0x2545F4914F6CDD1D)))
    mn_players = n[mg]
    msize = size[mg]
    roll = _bits(hm, 0, 10)
    phase = np.where(
        mn < 2 * mn_players, 0, np.select([roll < 6, roll < 8, roll < 9], [1, 2, 3], 4)
    )
    alt = _bits(hm, 4, 2)
    move_type = np.choose(phase, [0, 1 + alt, 3 + alt, 5, 6])
    x, y, fx, fy = (_bits(hm, shift, msize) for shift in (8, 16, 24, 32))
    from_xy = _COORDS[np.where(phase == 0, _NULL_COORD, fx * _MAX_SIZE + fy)].tolist()
    to_xy = _COORDS[x * _MAX_SIZE + y].tolist()
    mn_l = mn.tolist()
    player = (mn % mn_players + 1).tolist()
    types = _MOVE_TYPES[move_type].tolist()
    move_json = [
        f'{{"type":"{t}","player":{p},"from":{f},"to":{o},"moveNumber":{k},"thinkTime":{tt}}}'
        for t, p, f, o, k, tt in zip(
            types, player, from_xy, to_xy, mn_l, _bits(hm, 40, 3000).tolist(), strict=True
        )
    ]
    game_moves = {
        "game_id": [games["game_id"][i] for i in mg.tolist()],
        "move_number": mn_l,
        "turn_number": (mn // mn_players + 1).tolist(),
        "player": player,
        "phase": _PHASES[phase].tolist(),
        "move_type": types,
        "move_json": move_json,
        "move_probs": _MOVE_PROBS[_bits(hm, 44, len(_MOVE_PROBS))].tolist(),
        "search_stats_json": _SEARCH_STATS[_bits(hm, 54, len(_SEARCH_STATS))].tolist(),
    }

    # One mid-game snapshot for about a quarter of the games long enough.
    snap = np.flatnonzero((present >= 10) & (_bits(h3, 32, 4) == 0)).tolist()
    snapshots = {
        "game_id": [games["game_id"][i] for i in snap],
        "move_number": [9] * len(snap),
        "state_json": [
            f'{{"moveNumber":9,"currentPlayer":{9 % n_l[i] + 1},"stacks":{{}},"rngSeed":'
            f"{games['rng_seed'][i]}}}"
            for i in snap
        ],
        "compressed": [0] * len(snap),
        "state_hash": [f"{v:016x}" for v in h3[snap].tolist()],
    }
    return {
        "games": games,
        "game_players": game_players,
        "game_initial_state": initial,
        "game_moves": game_moves,
        "game_state_snapshots": snapshots,
    }


def write_game_db(
    path: Path, specs: Sequence[GameSpec], *, omit_columns: dict[str, set[str]] | None = None
) -> GeneratedDb:
    """Write `specs` into a new WAL-mode game DB at `path` (never overwrites a file)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"refusing to overwrite {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    omit = omit_columns or {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        conn.execute("BEGIN")
        create_game_db(conn, omit_columns=omit)
        for table, columns in _rows(specs).items():
            names = [c for c in columns if c not in omit.get(table, ())]
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                zip(*(columns[c] for c in names), strict=True),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return GeneratedDb(path, tuple(specs), {t: set(c) for t, c in omit.items()})


def strip_keys(path: Path, tables: Iterable[str]) -> None:
    """Rewrite `tables` of the game DB at `path` as an older schema holds them: same columns
    and rows, no primary key, no NOT NULL, no index, so repeated keys and NULLs fit in."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for table in tables:
            conn.execute(f"CREATE TABLE {table}_keyless AS SELECT * FROM {table}")
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"ALTER TABLE {table}_keyless RENAME TO {table}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def generate_game_db(
    path: Path,
    *,
    configs: Sequence[str],
    n_games: int,
    seed: int,
    id_style: str = "uuid",
    incomplete_fraction: float = 0.05,
    omit_columns: dict[str, set[str]] | None = None,
    shared_games: Iterable[GameSpec] = (),
    source: str = "self_play",
    id_epoch: int | None = None,
) -> GeneratedDb:
    """A node DB of `n_games` own games plus `shared_games` (copies of another node's)."""
    specs = make_specs(
        configs=configs,
        n_games=n_games,
        seed=seed,
        id_style=id_style,
        incomplete_fraction=incomplete_fraction,
        source=source,
        id_epoch=id_epoch,
    )
    return write_game_db(path, [*specs, *shared_games], omit_columns=omit_columns)


def seed_fleet_games(
    node_roots: Mapping[str, Path],
    configs: Sequence[str],
    games_per_node: int,
    seed: int,
    *,
    incomplete_fraction: float = 0.08,
    shared_fraction: float = 0.1,
) -> FleetSeed:
    """Lay out game DBs per DATA.md on every node (sorted by name) and say what they hold.

    Node 0 has the older schema (`OLD_SCHEMA_OMIT`). Node i's `selfplay.db` (mixed
    configs) also holds `shared_fraction` of node i-1's games, verbatim. The last
    two nodes write `selfplay_{configs[0]}.db` with `gpu_mcts` ids from the same
    epoch: same ids, different games. Each node also has one per-config
    selfplay, tournament and gauntlet DB.
    """
    nodes = sorted(node_roots)
    k = len(configs)
    pair = set(nodes[-2:]) if len(nodes) >= 2 else set()
    rng = np.random.default_rng(seed)
    epoch = _EPOCH + int(rng.integers(0, 1_000_000))
    dbs: dict[str, list[GeneratedDb]] = {}
    shared_ids: set[str] = set()
    previous: list[GameSpec] = []
    for i, node in enumerate(nodes):
        games_dir = Path(node_roots[node]) / "games"
        omit = OLD_SCHEMA_OMIT if i == 0 else None
        selfplay_config = configs[0] if node in pair else configs[i % k]
        n_mixed = int(games_per_node * 0.4)
        n_each = int(games_per_node * 0.2)
        tournament, gauntlet = configs[(i + 1) % k], configs[(i + 2) % k]
        plan = [  # file, configs, games, source, id style
            ("selfplay.db", configs, n_mixed, "self_play", "uuid"),
            (
                f"selfplay_{selfplay_config}.db",
                [selfplay_config],
                games_per_node - n_mixed - 2 * n_each,
                "self_play",
                "gpu_mcts" if node in pair else "uuid",
            ),
            (f"tournament_{tournament}.db", [tournament], n_each, "tournament", "uuid"),
            (f"gauntlet_{gauntlet}.db", [gauntlet], n_each, "gauntlet", "uuid"),
        ]
        picked = rng.choice(len(previous), int(len(previous) * shared_fraction), replace=False)
        shared = [previous[j] for j in picked.tolist()]
        shared_ids.update(s.game_id for s in shared)
        written = []
        for j, (name, cfgs, n, source, id_style) in enumerate(plan):
            written.append(
                generate_game_db(
                    games_dir / name,
                    configs=cfgs,
                    n_games=n,
                    seed=seed * 1000 + i * 10 + j,
                    id_style=id_style,
                    incomplete_fraction=incomplete_fraction,
                    omit_columns=omit,
                    shared_games=shared if j == 0 else (),
                    source=source,
                    id_epoch=epoch,
                )
            )
        dbs[node] = written
        # One spec per id: a node may hold two different games under one id.
        previous = list({s.game_id: s for db in written for s in db.games}.values())
    colliding: frozenset[str] = frozenset()
    if pair:
        a, b = ({s.game_id for s in dbs[node][1].games} for node in sorted(pair))
        colliding = frozenset(a & b)
    return FleetSeed(
        roots={node: Path(node_roots[node]) for node in nodes},
        dbs=dbs,
        old_schema_node=nodes[0],
        shared_ids=frozenset(shared_ids),
        colliding_ids=colliding,
    )
