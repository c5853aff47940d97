"""Differential property test of the game merge (merge.py) against an independent oracle.

Hypothesis draws a small fleet: node DBs with schema drift (columns missing or extra,
tables absent, an older schema without primary keys or NOT NULL), games shared between
nodes (duplicates), one id for different games (collisions), NULLs in optional and in
required columns, repeated child rows (identical or not), incomplete games, several
spellings of one config, and unreadable files. The snapshots are merged in order into
a fresh canonical DB; the oracle replays the same merge in plain Python over the rows
it reads back from the files with sqlite3, from the rules written in DATA.md and
merge.py's docstring (not from merge.py's SQL or helpers). Canonical must equal the
oracle's, table by table and row by row, with the same per-snapshot counts, and every
game of the config must be merged, a duplicate, or rejected with a reason.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sync_assets.games import merge

# ---- the v18 schema, as DATA.md gives it ----------------------------------------------

# table → [(column, type, constraint of the v18 schema)]
V18: dict[str, list[tuple[str, str, str]]] = {
    "games": [
        ("game_id", "TEXT", "PRIMARY KEY"),
        ("board_type", "TEXT", "NOT NULL"),
        ("num_players", "INTEGER", "NOT NULL"),
        ("rng_seed", "INTEGER", ""),
        ("created_at", "TEXT", ""),
        ("completed_at", "TEXT", ""),
        ("game_status", "TEXT", "NOT NULL"),
        ("winner", "INTEGER", ""),
        ("termination_reason", "TEXT", ""),
        ("total_moves", "INTEGER", ""),
        ("total_turns", "INTEGER", ""),
        ("duration_ms", "INTEGER", ""),
        ("source", "TEXT", ""),
        ("schema_version", "INTEGER", ""),
        ("metadata_json", "TEXT", ""),
        ("quality_score", "REAL", ""),
        ("engine_mode", "TEXT", ""),
        ("opponent_type", "TEXT", ""),
        ("opponent_model_id", "TEXT", ""),
    ],
    "game_players": [
        ("game_id", "TEXT", "NOT NULL"),
        ("player_number", "INTEGER", "NOT NULL"),
        ("player_type", "TEXT", ""),
        ("ai_type", "TEXT", ""),
        ("ai_difficulty", "INTEGER", ""),
        ("final_eliminated_rings", "INTEGER", ""),
        ("final_territory_spaces", "INTEGER", ""),
        ("final_rings_in_hand", "INTEGER", ""),
    ],
    "game_initial_state": [
        ("game_id", "TEXT", "PRIMARY KEY"),
        ("initial_state_json", "TEXT", "NOT NULL"),
        ("compressed", "INTEGER", "NOT NULL DEFAULT 0"),
    ],
    "game_moves": [
        ("game_id", "TEXT", "NOT NULL"),
        ("move_number", "INTEGER", "NOT NULL"),
        ("turn_number", "INTEGER", ""),
        ("player", "INTEGER", ""),
        ("phase", "TEXT", ""),
        ("move_type", "TEXT", ""),
        ("move_json", "TEXT", "NOT NULL"),
        ("move_probs", "TEXT", ""),
        ("search_stats_json", "TEXT", ""),
    ],
    "game_state_snapshots": [
        ("game_id", "TEXT", "NOT NULL"),
        ("move_number", "INTEGER", "NOT NULL"),
        ("state_json", "TEXT", "NOT NULL"),
        ("compressed", "INTEGER", "NOT NULL DEFAULT 0"),
        ("state_hash", "TEXT", ""),
    ],
}
TABLE_KEYS = {
    "games": "PRIMARY KEY",  # declared on the column
    "game_players": "PRIMARY KEY (game_id, player_number)",
    "game_initial_state": "PRIMARY KEY",
    "game_moves": "PRIMARY KEY (game_id, move_number)",
    "game_state_snapshots": "PRIMARY KEY (game_id, move_number)",
}
COLUMNS = {t: [c for c, _, _ in cols] for t, cols in V18.items()}
# Key after game_id; what a child row must hold (NOT NULL); defaults of the schema.
SUB_KEY = {
    "game_players": "player_number",
    "game_moves": "move_number",
    "game_state_snapshots": "move_number",
    "game_initial_state": None,
}
MUST_HOLD = {
    "game_players": ("player_number",),
    "game_initial_state": ("initial_state_json", "compressed"),
    "game_moves": ("move_number", "move_json"),
    "game_state_snapshots": ("move_number", "state_json", "compressed"),
}
DEFAULTS = {"compressed": 0}
OPTIONAL_TABLES = ("game_players", "game_initial_state", "game_state_snapshots")
REASONS = (
    "null_game_id",
    "conflicting_game_rows",
    "unfinished",
    "bad_moves",
    "too_few_moves",
)

# Board spellings in the wild (DATA.md "Config keys") and what they mean, for the oracle.
BOARD_NAMES = {
    "hex8": "hex8",
    "square8": "square8",
    "sq8": "square8",
    "square19": "square19",
    "sq19": "square19",
    "hexagonal": "hexagonal",
    "hex": "hexagonal",
}


def oracle_config(board: Any, players: Any) -> str | None:
    """A game row's config key: board alias, case and blanks ignored; 2..4 players as a
    number or text (a trailing p allowed)."""
    if not isinstance(board, str) or board.strip().lower() not in BOARD_NAMES:
        return None
    if isinstance(players, str):
        text = players.strip().lower()
        text = text[:-1] if text.endswith("p") else text
    elif isinstance(players, int) or (isinstance(players, float) and players.is_integer()):
        text = str(int(players))
    else:
        return None
    if text not in ("2", "3", "4"):
        return None
    return f"{BOARD_NAMES[board.strip().lower()]}_{text}p"


# ---- drawing a fleet ------------------------------------------------------------------

# The two configs merged (in two spellings of their keys), then others and unparsable ones.
CONFIGS = ("hex8_2p", "sq8_4P")
SPELLINGS = [
    ("hex8", 2),
    ("hex8", 2),
    ("HEX8 ", 2),
    ("hex8", "2"),
    ("Hex8", "2p"),
    ("sq8", 4),
    ("square8", 4),
    ("square8", 4),
    ("SQUARE8", "4"),
    ("hex8", 3),
    ("chess", 2),
    ("hex8", 5),
    (None, 2),
]
# Weighted by repetition: most games are complete and valid.
STATUSES = ["completed"] * 6 + ["finished", "active", "abandoned", None]
# Defects a node's copy of a game may carry, one draw per table ("" = none; weighted by
# repetition). Those of the optional tables leave the game acceptable, so they are common.
DEFECTS = {
    "games": ["", "", "", "", "dup_game", "conflict_game"],
    "game_moves": [
        "",
        "",
        "",
        "",
        "dup_move",
        "dup_move",
        "conflict_move",
        "null_move_json",
        "null_move_number",
        "mutate_move",
        "drop_moves",
    ],
    "game_initial_state": [
        "",
        "",
        "",
        "",
        "dup_initial",
        "conflict_initial",
        "null_initial",
        "no_initial",
    ],
    "game_players": ["", "dup_player", "conflict_player", "null_player_number"],
    "game_state_snapshots": ["", "dup_snapshot", "conflict_snapshot", "null_state_json"],
}
OMITTABLE = {
    "games": ["rng_seed", "winner", "quality_score", "engine_mode", "metadata_json"],
    "game_players": ["player_type", "ai_type", "ai_difficulty"],
    "game_initial_state": ["compressed", "compressed", "compressed", "initial_state_json"],
    "game_moves": ["player", "move_type", "turn_number", "phase", "move_probs"],
    "game_state_snapshots": ["state_json", "compressed", "state_hash"],
}


@dataclass
class Schema:
    keyed: bool  # v18 constraints, or an older schema without keys and NOT NULL
    omit: dict[str, list[str]]
    absent: list[str]  # tables the node lacks
    extra: list[str]  # tables with a column canonical does not know
    config_index: bool


@dataclass
class Node:
    schema: Schema
    games: list[tuple[bool, frozenset[str]]]  # per game of the pool: held? with what defects


@dataclass
class Fleet:
    pool: list[dict]
    nodes: list[Node]
    garbage_at: list[int]  # positions of unreadable files among the snapshots


moves_st = st.lists(
    st.tuples(
        st.sampled_from([1, 2, None]),
        st.sampled_from(["place", "move"]),
        st.sampled_from(['{"to":1}', '{"to":2}', '{"to":3}']),
    ),
    min_size=5,
    max_size=8,
)
pool_game_st = st.fixed_dictionaries(
    {
        # Own id mostly; a non-unique generator id (a collision when the games differ) or none.
        "game_id": st.sampled_from(["own", "own", "own", "gpu_mcts_1_0", None]),
        "spelling": st.sampled_from(SPELLINGS),
        "status": st.sampled_from(STATUSES),
        "moves": moves_st,
        "quality": st.sampled_from([0.5, 0.75, None]),
    }
)
schema_st = st.builds(
    Schema,
    keyed=st.booleans(),
    omit=st.fixed_dictionaries(
        {
            t: st.just([]) | st.lists(st.sampled_from(cols), unique=True, max_size=2)
            for t, cols in OMITTABLE.items()
        }
    ),
    absent=st.just([])
    | st.lists(
        st.sampled_from(["game_players", "game_state_snapshots", "game_initial_state"]),
        min_size=1,
        max_size=1,
    ),
    extra=st.lists(st.sampled_from(list(V18)), unique=True, max_size=2),
    config_index=st.booleans(),
)


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    pool = draw(st.lists(pool_game_st, min_size=3, max_size=8))
    for i, game in enumerate(pool):
        game["game_id"] = f"g{i}" if game["game_id"] == "own" else game["game_id"]
    defects = st.tuples(*(st.sampled_from(d) for d in DEFECTS.values())).map(
        lambda drawn: frozenset(drawn) - {""}
    )
    picks = st.lists(st.tuples(st.booleans(), defects), min_size=len(pool), max_size=len(pool))
    nodes = draw(st.lists(st.builds(Node, schema=schema_st, games=picks), min_size=2, max_size=4))
    garbage = draw(st.just([]) | st.lists(st.integers(0, len(nodes)), min_size=1, max_size=1))
    return Fleet(pool, nodes, garbage)


def node_rows(node: Node, pool: list[dict]) -> dict[str, list[dict]]:
    """The rows a node would write for its games, defects included."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for game, (held, defects) in zip(pool, node.games, strict=True):
        if not held:
            continue
        gid = game["game_id"]
        board, players = game["spelling"]
        row = {
            "game_id": gid,
            "board_type": board,
            "num_players": players,
            "game_status": game["status"],
            "winner": 1,
            "quality_score": game["quality"],
            "engine_mode": "mcts",
            "source": "self_play",
        }
        rows["games"].append(row)
        if "dup_game" in defects:
            rows["games"].append(dict(row))
        if "conflict_game" in defects:
            rows["games"].append({**row, "quality_score": 0.125})
        moves = [
            {
                "game_id": gid,
                "move_number": k,
                "turn_number": k // 2,
                "player": p,
                "phase": "play",
                "move_type": t,
                "move_json": j,
                "move_probs": "{}",
            }
            for k, (p, t, j) in enumerate(game["moves"])
        ]
        if "mutate_move" in defects:
            moves[0]["move_json"] = '{"to":9}'
        if "drop_moves" in defects:
            moves = moves[:3]
        if "null_move_json" in defects:
            moves[1]["move_json"] = None
        if "null_move_number" in defects:
            moves[2]["move_number"] = None
        if "dup_move" in defects:
            moves.append(dict(moves[0]))
        if "conflict_move" in defects:
            moves.append({**moves[1], "move_json": '{"to":7}'})
        rows["game_moves"] += moves
        initial = {"game_id": gid, "initial_state_json": f'{{"board":"{board}"}}', "compressed": 0}
        if "null_initial" in defects:
            initial["initial_state_json"] = None
        if "no_initial" not in defects:
            rows["game_initial_state"].append(initial)
        if "dup_initial" in defects:
            rows["game_initial_state"].append(dict(initial))
        if "conflict_initial" in defects:
            rows["game_initial_state"].append({**initial, "compressed": 1})
        seats = [
            {
                "game_id": gid,
                "player_number": n,
                "player_type": "ai",
                "ai_type": "mcts",
                "ai_difficulty": 5,
            }
            for n in (1, 2)
        ]
        if "null_player_number" in defects:
            seats[1]["player_number"] = None
        if "dup_player" in defects:
            seats.append(dict(seats[0]))
        if "conflict_player" in defects:
            seats.append({**seats[0], "ai_difficulty": 9})
        rows["game_players"] += seats
        snap = {
            "game_id": gid,
            "move_number": 2,
            "state_json": '{"s":2}',
            "compressed": 0,
            "state_hash": "h2",
        }
        snaps = [snap, {**snap, "move_number": 3, "state_json": '{"s":3}'}]
        if "null_state_json" in defects:
            snaps[0]["state_json"] = None
        if "dup_snapshot" in defects:
            snaps.append(dict(snaps[1]))
        if "conflict_snapshot" in defects:
            snaps.append({**snaps[1], "state_hash": "other"})
        rows["game_state_snapshots"] += snaps
    return rows


def write_node(path: Path, node: Node, pool: list[dict]) -> None:
    """A real node DB: the node's schema, its rows inserted as that schema accepts them
    (a v18 table keeps the first row of a key and refuses NULLs where it requires values)."""
    schema = node.schema
    con = sqlite3.connect(path)
    for table, cols in V18.items():
        if table in schema.absent:
            continue
        parts = [
            f"{name} {kind} {constraint if schema.keyed else ''}".strip()
            for name, kind, constraint in cols
            if name not in schema.omit[table]
        ]
        if table in schema.extra:
            parts.append("generator_note TEXT")
        if schema.keyed and TABLE_KEYS[table] != "PRIMARY KEY":
            parts.append(TABLE_KEYS[table])
        con.execute(f"CREATE TABLE {table} ({', '.join(parts)})")
    if schema.config_index:
        con.execute("CREATE INDEX idx_games_config ON games(board_type, num_players)")
    for table, table_rows in node_rows(node, pool).items():
        if table in schema.absent:
            continue
        names = [c for c in COLUMNS[table] if c not in schema.omit[table]]
        extra = ["generator_note"] if table in schema.extra else []
        for row in table_rows:
            values = [row.get(c, DEFAULTS.get(c)) for c in names] + ["x"] * len(extra)
            con.execute(
                f"INSERT OR IGNORE INTO {table} ({', '.join(names + extra)})"
                f" VALUES ({', '.join('?' * len(values))})",
                values,
            )
    con.commit()
    con.close()


# ---- the oracle -------------------------------------------------------------------------


def read_db(path: Path) -> dict[str, tuple[list[str], list[dict]]] | None:
    """Every table's columns and rows, or None when the file is no game DB."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            if "games" not in tables or "game_moves" not in tables:
                return None
            out: dict[str, tuple[list[str], list[dict]]] = {}
            for table in V18:
                if table not in tables:
                    out[table] = ([], [])
                    continue
                cur = con.execute(f"SELECT * FROM {table}")
                names = [d[0] for d in cur.description]
                out[table] = (names, [dict(zip(names, r, strict=True)) for r in cur])
            return out
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


def fingerprint(moves: list[tuple]) -> str:
    digest = hashlib.sha256()
    for number, player, move_type, move_json in moves:
        digest.update(f"{number}\x1f{player}\x1f{move_type}\x1f{move_json}\x1e".encode())
    return digest.hexdigest()


@dataclass
class Canonical:
    """The oracle's canonical DB: table → {game_id → rows (column tuples)}, provenance."""

    rows: dict[str, dict[str, list[tuple]]] = field(default_factory=lambda: {t: {} for t in V18})
    provenance: dict[str, str] = field(default_factory=dict)

    def moves_of(self, game_id: str) -> list[tuple]:
        index = [
            COLUMNS["game_moves"].index(c)
            for c in ("move_number", "player", "move_type", "move_json")
        ]
        rows = self.rows["game_moves"][game_id]
        return sorted((tuple(r[i] for i in index) for r in rows), key=lambda m: m[0])


def distinct(rows: list[dict], columns: list[str]) -> list[tuple]:
    seen: list[tuple] = []
    for row in rows:
        values = tuple(row.get(c) for c in columns)
        if values not in seen:
            seen.append(values)
    return seen


def oracle_merge(canon: Canonical, db: dict, label: str, config: str) -> dict:
    """Merge one readable snapshot into `canon`; the snapshot's expected counts."""
    shared = {t: [c for c in COLUMNS[t] if c in db[t][0]] for t in V18}
    by_id: dict[str, dict[str, list[dict]]] = {t: defaultdict(list) for t in V18}
    for table in V18:
        for row in db[table][1]:
            if row.get("game_id") is not None:
                by_id[table][row["game_id"]].append(row)

    def lacks_value(table: str, row: dict) -> bool:
        return any(c in db[table][0] and row.get(c) is None for c in MUST_HOLD[table])

    def conflicting_keys(table: str, rows: list[dict]) -> set:
        """Sub-keys under which rows holding every required value differ."""
        versions: dict[Any, set] = defaultdict(set)
        for row in rows:
            if not lacks_value(table, row):
                versions[row.get(SUB_KEY[table])].add(tuple(row.get(c) for c in shared[table]))
        return {key for key, v in versions.items() if len(v) > 1}

    def reason(game_id: str) -> str | None:
        if len(distinct(by_id["games"][game_id], shared["games"])) > 1:
            return "conflicting_game_rows"
        if by_id["games"][game_id][0]["game_status"] not in ("completed", "finished"):
            return "unfinished"
        moves = by_id["game_moves"][game_id]
        if any(lacks_value("game_moves", m) for m in moves) or conflicting_keys(
            "game_moves", moves
        ):
            return "bad_moves"
        if len({m["move_number"] for m in moves}) < 5:
            return "too_few_moves"
        return None

    board, players = config.split("_")
    mine = [g for g in db["games"][1] if oracle_config(g["board_type"], g["num_players"]) == config]
    rejected: Counter = Counter()
    accepted_rows = 0
    accepted: set[str] = set()
    for row in mine:
        why = "null_game_id" if row["game_id"] is None else reason(row["game_id"])
        if why is None:
            accepted_rows += 1
            accepted.add(row["game_id"])
        else:
            rejected[why] += 1

    def game_moves(game_id: str) -> list[tuple]:
        fields = ("move_number", "player", "move_type", "move_json")
        return sorted(distinct(by_id["game_moves"][game_id], list(fields)), key=lambda m: m[0])

    incoming, collisions = [], 0
    for game_id in sorted(accepted):
        moves = game_moves(game_id)
        if game_id not in canon.rows["games"]:
            incoming.append((game_id, game_id))
        elif canon.moves_of(game_id) != moves:
            renamed = f"{game_id}~{fingerprint(moves)[:12]}"
            if renamed not in canon.rows["games"] and renamed not in accepted:
                incoming.append((game_id, renamed))
                collisions += 1

    rows_added: Counter = Counter()
    rows_dropped: dict[str, Counter] = defaultdict(Counter)
    for src_id, dst_id in incoming:
        for table in V18:
            if table in db and not db[table][0] and table != "games":
                continue  # the node lacks the table
            rows = by_id[table][src_id]
            if table == "games":
                keep = rows[:1]
            elif table in OPTIONAL_TABLES:
                if any(c not in db[table][0] for c in MUST_HOLD[table] if c not in DEFAULTS):
                    rows_dropped[table]["missing_column"] += len(rows)
                    continue
                twins = conflicting_keys(table, rows)
                keep = []
                for row in rows:
                    if lacks_value(table, row):
                        rows_dropped[table]["null_required_field"] += 1
                    elif row.get(SUB_KEY[table]) in twins:
                        rows_dropped[table]["conflicting_rows"] += 1
                    else:
                        keep.append(row)
            else:
                keep = rows
            copies = distinct(keep, shared[table])
            if table != "games" and len(keep) > len(copies):
                rows_dropped[table]["identical_copy"] += len(keep) - len(copies)
            stored = []
            for values in copies:
                row = dict(zip(shared[table], values, strict=True))
                row["game_id"] = dst_id
                if table == "games":
                    row["board_type"], row["num_players"] = board, int(players[0])
                stored.append(tuple(row.get(c, DEFAULTS.get(c)) for c in COLUMNS[table]))
            canon.rows[table][dst_id] = stored
            rows_added[table] += len(stored)
        canon.provenance[dst_id] = label
    added = len(incoming)
    return {
        "seen": len(mine),
        "added": added,
        "duplicates": accepted_rows - added,
        "collisions_kept": collisions,
        "rejected": {r: rejected[r] for r in REASONS},
        "rows_added": {t: rows_added[t] for t in V18},
        "rows_dropped": {t: dict(c) for t, c in rows_dropped.items() if +c},
    }


def oracle_census(db: dict) -> dict:
    keys = Counter(oracle_config(g["board_type"], g["num_players"]) for g in db["games"][1])
    unparsed = keys.pop(None, 0)
    return {"configs": dict(sorted(keys.items())), "unparsed": unparsed}


def canonical_rows(path: Path) -> tuple[dict[str, list[tuple]], dict[str, str]]:
    con = sqlite3.connect(path)
    try:
        tables = {
            t: sorted(con.execute(f"SELECT {', '.join(COLUMNS[t])} FROM {t}"), key=repr)
            for t in V18
        }
        provenance = dict(con.execute("SELECT game_id, source_label FROM fleetsync_provenance"))
    finally:
        con.close()
    return tables, provenance


# ---- the property ------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets())
def test_merge_equals_oracle_and_loses_no_game(fleet: Fleet) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        snapshots: list[tuple[str, str]] = []
        for i, node in enumerate(fleet.nodes):
            if i in fleet.garbage_at:
                junk = root / f"junk{i}.db"
                junk.write_bytes(b"SQLite format 3\x00" + b"\xff" * 3000)
                snapshots.append((str(junk), f"junk{i}"))
            path = root / f"node{i}.db"
            write_node(path, node, fleet.pool)
            snapshots.append((str(path), f"node{i}:games/selfplay.db"))
        if len(fleet.nodes) in fleet.garbage_at:
            snapshots.append((str(root / "gone.db"), "gone"))  # a file that does not exist
        dbs = [read_db(Path(p)) if Path(p).is_file() else None for p, _ in snapshots]
        for config in CONFIGS:
            check_merge(root / f"canonical_{config}.db", config, snapshots, dbs)
        for (snapshot, _), db in zip(snapshots, dbs, strict=True):
            got = merge.census(snapshot)
            if db is None:
                assert got["status"] == "unreadable"
            else:
                assert {k: got[k] for k in ("configs", "unparsed")} == oracle_census(db)


def check_merge(
    canonical: Path, config_arg: str, snapshots: list[tuple[str, str]], dbs: list[dict | None]
) -> None:
    """Merge `snapshots` into a fresh canonical and compare with the oracle's replay."""
    config = oracle_config(*config_arg.split("_"))
    assert config is not None
    canon = Canonical()
    expected = [
        None if db is None else oracle_merge(canon, db, label, config)
        for (_, label), db in zip(snapshots, dbs, strict=True)
    ]

    stats = merge.merge_snapshots(canonical, config_arg, snapshots)

    assert stats["config"] == config
    for (path, label), want, got, db in zip(
        snapshots, expected, stats["snapshots"], dbs, strict=True
    ):
        assert (got["path"], got["label"]) == (path, label)
        if want is None or db is None:
            assert got["status"] == "unreadable" and got["error"], got
            event("unreadable")
            continue
        assert got["status"] == "merged", got
        assert {k: got[k] for k in want} == want, label
        # Nothing silently lost: every game of the config is accounted for.
        assert got["seen"] == got["added"] + got["duplicates"] + sum(got["rejected"].values())
        assert got["census"] == oracle_census(db)
        for what, n in [
            *got["rejected"].items(),
            ("collisions_kept", got["collisions_kept"]),
            ("duplicates", got["duplicates"]),
            ("added", got["added"]),
        ]:
            if n:
                event(what)
        for table, dropped in got["rows_dropped"].items():
            for why in dropped:
                event(f"{table}: {why}")
    assert stats["totals"]["unreadable"] == sum(w is None for w in expected)
    assert stats["totals"]["seen"] == sum(w["seen"] for w in expected if w)

    tables, provenance = canonical_rows(canonical)
    for table in V18:
        want_rows = sorted((r for rows in canon.rows[table].values() for r in rows), key=repr)
        assert tables[table] == want_rows, table
    assert provenance == canon.provenance
