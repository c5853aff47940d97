"""audit_fleet on a node whose data disk is not mounted (the data root there, empty): the
audit and the scrub drop none of its replicas, the run fails naming the node, the finding
is logged for the operator, and the node's lifecycle state is left as it was."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.dagster.test_fleet_audit import _check
from tests.dagster.test_replication_deficit import _collected_fleet


def test_audit_fleet_keeps_every_replica_of_an_unmounted_node_and_says_so(tmp_path):
    fleet, catalog, _transports, resources = _collected_fleet(tmp_path)
    catalog.sync_nodes(fleet.nodes)
    lifecycle = catalog.node_lifecycle()
    held = sorted((r.sha256, r.path) for r in catalog.replicas_frame().itertuples()
                  if r.node == "store-1")  # fmt: skip
    assert held
    root = Path(fleet.node("store-1").data_root)
    root.rename(root.with_name("store-1.disk"))
    root.mkdir()  # the mount point, its disk not mounted

    with dg.instance_for_test() as instance:
        done = _check(instance, resources, ["store-1"], ["store-1"])

    assert not done.success
    errors = " ".join(str(e.step_failure_data.error) for e in done.get_step_failure_events())
    assert errors.count("store-1") >= 2 and "unmounted" in errors  # audit and scrub
    kept = sorted((r.sha256, r.path) for r in catalog.replicas_frame().itertuples()
                  if r.node == "store-1")  # fmt: skip
    assert kept == held
    findings = catalog.check_findings_frame("store-1")
    assert list(findings["finding"]) == ["unmounted", "unmounted"]
    assert "nothing dropped" in catalog.node_checks()["store-1"].last_finding
    assert catalog.node_lifecycle() == lifecycle
