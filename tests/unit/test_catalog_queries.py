"""Typed catalog queries against plain SQL on a real SQLite catalog."""

from __future__ import annotations

import sqlite3

import pytest

from resources.catalog import Artifact, Catalog


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    for i, (kind, config) in enumerate(
        [("model", "hex8_2p"), ("model", "sq8_2p"), ("model", None), ("npz", "hex8_2p")]
    ):
        catalog.add_artifact(
            f"{i:064x}", kind=kind, config=config, name=f"f{i}", size=10 + i, origin_node=f"n{i}"
        )
    return catalog


def _plain_sql(tmp_path, where: str, params: tuple) -> dict[str, Artifact]:
    db = sqlite3.connect(tmp_path / "catalog.db")
    rows = db.execute(
        "SELECT sha256, kind, config, name, size, origin_node FROM artifacts "
        f"WHERE {where} ORDER BY sha256",
        params,
    ).fetchall()
    return {row[0]: Artifact(*row) for row in rows}


def test_artifacts_of_matches_plain_sql(catalog, tmp_path):
    assert catalog.artifacts_of() == _plain_sql(tmp_path, "1", ())
    assert catalog.artifacts_of("model") == _plain_sql(tmp_path, "kind = ?", ("model",))
    assert catalog.artifacts_of("model", config="hex8_2p") == _plain_sql(
        tmp_path, "kind = ? AND config = ?", ("model", "hex8_2p")
    )
    shas = [f"{1:064x}", f"{3:064x}", "missing"]
    assert catalog.artifacts_of(shas=shas) == _plain_sql(
        tmp_path, "sha256 IN (?, ?, ?)", tuple(shas)
    )
    assert len(catalog.artifacts_of("model")) == 3
