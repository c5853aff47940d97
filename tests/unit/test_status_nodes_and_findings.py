"""`fleetsync status` lists every inventory node (a new catalog too: state unknown until
probed) and what audits and scrubs found (`node_checks`, the newest `check_findings`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from resources.catalog import Catalog, NodeState
from sync_assets.cli.status import NEVER_PROBED, RECENT_FINDINGS, fleet_status
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.fleet.inventory import Fleet, load_inventory


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return load_inventory(build_demo_fleet(tmp_path / "demo", 4, 5))


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def test_a_new_catalog_lists_every_inventory_node_as_never_probed(fleet, catalog):
    nodes = fleet_status(catalog, fleet).nodes
    assert list(nodes["name"]) == [n.name for n in fleet.nodes]
    assert set(nodes["state"]) == {NEVER_PROBED}
    for node, row in zip(fleet.nodes, nodes.itertuples(), strict=True):
        assert row.roles == ",".join(node.roles)
        assert (row.durable, row.ephemeral) == (node.durable, node.ephemeral)
        assert row.copies_held == 0


def test_recorded_nodes_keep_their_catalog_row_the_others_are_added(fleet, catalog):
    recorded = fleet.nodes[:2]
    catalog.sync_nodes(recorded)
    catalog.set_node_states({recorded[0].name: (NodeState.LOST, "test")})
    nodes = fleet_status(catalog, fleet).nodes.set_index("name")
    assert sorted(nodes.index) == sorted(n.name for n in fleet.nodes)
    for node in fleet.nodes:
        state = nodes.loc[node.name, "state"]
        assert (state == NEVER_PROBED) == (node not in recorded)
    assert nodes.loc[recorded[0].name, "state"] == NodeState.LOST
    assert nodes.loc[recorded[1].name, "state"] == NodeState.ACTIVE


def test_audit_and_scrub_findings_newest_first_with_the_quarantine_path(fleet, catalog):
    sha = "ab" * 32
    catalog.record_audit("store-1", "audit: 10 listed, 1 missing", at=1_700_000_000.0)
    catalog.record_scrub("store-1", 3_000_000, "scrub: 1 corrupt", at=1_700_000_500.0)
    catalog.record_audit("coord-1", "audit: ok", at=1_700_000_100.0)
    catalog.record_check_findings(
        "store-1", [(sha, "games/a.db", "missing", "recorded 10 bytes, found None")]
    )
    aside = ".quarantine/games/b.db.cdcdcdcdcdcdcdcd"
    catalog.record_check_findings(
        "store-1", [(sha, "games/b.db", "corrupt", f"found {'cd' * 32}; moved aside to {aside}")]
    )
    status = fleet_status(catalog, fleet)

    checks = status.node_checks
    assert list(checks["node"]) == ["coord-1", "store-1"]
    coord, store = checks.to_dict("records")
    assert coord["last_audited"] == utc(1_700_000_100)
    assert coord["last_scrubbed"] == "never" and coord["last_finding"] == "audit: ok"
    assert store["last_audited"] == utc(1_700_000_000)
    assert store["last_scrubbed"] == utc(1_700_000_500)
    assert store["scrub_mb"] == 3.0 and store["last_finding"] == "scrub: 1 corrupt"

    findings = status.recent_findings.to_dict("records")
    assert [(f["node"], f["finding"], f["path"], f["quarantined"]) for f in findings] == [
        ("store-1", "corrupt", "games/b.db", aside),
        ("store-1", "missing", "games/a.db", "-"),
    ]


def test_only_the_newest_findings_are_shown(fleet, catalog):
    paths = [f"games/{i}.db" for i in range(RECENT_FINDINGS + 5)]
    for path in paths:
        catalog.record_check_findings("store-1", [("ab" * 32, path, "resized", "r")])
    shown = fleet_status(catalog, fleet).recent_findings
    assert list(shown["path"]) == paths[::-1][:RECENT_FINDINGS]


def test_nothing_checked_yet_is_empty(fleet, catalog):
    status = fleet_status(catalog, fleet)
    assert status.node_checks.empty and status.recent_findings.empty
