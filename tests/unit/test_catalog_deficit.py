"""`Catalog.copies_at_risk` against plain SQL on the same SQLite file."""

from __future__ import annotations

import random
import sqlite3

import pytest

from resources.catalog import Catalog, ReplicaState

NODES = [f"n{i}" for i in range(8)]
DURABLE = {"n0", "n1", "n2"}
HOLDERS = set(NODES) - {"n7"}  # n7 left the inventory: its copies serve nothing
AT_RISK = {"n2", "n5", "n6"}  # a suspect durable node and two ephemeral ones

PLAIN_SQL = """
SELECT a.sha256, a.kind, a.config, a.size,
  (SELECT count(DISTINCT node) FROM replicas WHERE sha256 = a.sha256
     AND state = 'verified' AND node IN ({durable})),
  (SELECT count(DISTINCT node) FROM replicas WHERE sha256 = a.sha256
     AND node IN ({holders})),
  (SELECT count(DISTINCT node) FROM replicas WHERE sha256 = a.sha256
     AND node IN ({holders}) AND node NOT IN ({at_risk}))
FROM artifacts a WHERE a.sha256 IN ({shas})
"""


def _quoted(names: set[str]) -> str:
    return ",".join(f"'{n}'" for n in sorted(names))


@pytest.mark.parametrize("seed", range(5))
def test_copies_at_risk_matches_plain_sql(tmp_path, seed):
    rng = random.Random(seed)
    db = tmp_path / "catalog.db"
    catalog = Catalog(url=f"sqlite:///{db}")
    shas = [f"{seed:02x}{i:062x}" for i in range(60)]
    for sha in shas:
        catalog.add_artifact(
            sha, kind=rng.choice(["games_snapshot", "npz"]), config=rng.choice([None, "hex8_2p"]),
            name="x.db", size=rng.randrange(10**6), origin_node=rng.choice(NODES),
        )  # fmt: skip
        for node in rng.sample(NODES, rng.randrange(5)):
            for copy in range(rng.choice([1, 1, 2])):  # sometimes two paths on one node
                state = rng.choice(list(ReplicaState))
                catalog.record_replica(sha, node, f"d/{sha}.{copy}", 10, state)
    asked = set(rng.sample(shas, 40)) | {"f" * 64}  # one sha the catalog does not know

    got = catalog.copies_at_risk(asked, DURABLE, HOLDERS, AT_RISK)

    with sqlite3.connect(db) as conn:
        query = PLAIN_SQL.format(
            durable=_quoted(DURABLE),
            holders=_quoted(HOLDERS),
            at_risk=_quoted(AT_RISK),
            shas=_quoted(asked),
        )
        expected = sorted(conn.execute(query).fetchall())
    assert sorted(tuple(row) for row in got) == expected
    assert len(expected) == 40
    assert any(row[5] > 0 and row[6] == 0 for row in expected)  # a last copy at risk


def test_copies_at_risk_chunks_long_lists(tmp_path):
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.add_artifact(
        "a" * 64, kind="npz", config="hex8_2p", name="s.npz", size=5, origin_node="n0"
    )
    catalog.record_replica("a" * 64, "n0", "s.npz", 5)
    asked = [f"{i:064x}" for i in range(25_000)] + ["a" * 64]
    [row] = catalog.copies_at_risk(asked, DURABLE, HOLDERS, AT_RISK)
    assert tuple(row) == ("a" * 64, "npz", "hex8_2p", 5, 1, 1, 1)
