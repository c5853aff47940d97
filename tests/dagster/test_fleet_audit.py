"""fleet_audit + audit_fleet on a local demo fleet: files deleted behind fleetsync's back
are found by the audit, a flipped bit by the scrub (the file moved aside, never deleted),
and replication_deficit + repair_replicas bring each one back from another copy."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from resources.catalog import Catalog, NodeState
from sensors.fleet_audit import AUDIT_NODES_PER_RUN, SCRUB_NODES_PER_RUN, fleet_audit
from sensors.replication_deficit import replication_deficit
from sync_assets.definitions import defs
from sync_assets.engine.scrub import quarantine_path
from sync_assets.fleet.checks import audit_fleet, audit_run_config
from sync_assets.fleet.repair import repair_replicas
from sync_assets.games.canonical import CANONICAL_KIND, merge_canonical
from sync_assets.games.collect import SNAPSHOT_KIND
from tests.dagster.test_replication_deficit import _collected_fleet


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_a_bit(path: Path, mtime_ns: int | None = None) -> None:
    """Bit rot: one bit changes, the size does not, nor (by default) the mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)[0]
        f.seek(st.st_size // 2)
        f.write(bytes([byte ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns if mtime_ns is None else mtime_ns))


def _on_store(catalog: Catalog) -> list[Any]:
    snapshots = catalog.artifacts_of(SNAPSHOT_KIND)
    return sorted(
        (r for r in catalog.replicas_of(snapshots) if r.node == "store-1"), key=lambda r: r.path
    )


def _repair_everything(instance: dg.DagsterInstance, resources: dict[str, Any]) -> int:
    """One replication_deficit tick, and the repair runs it requests; how many."""
    reads = {key: resources[key] for key in ("inventory", "catalog")}
    tick = replication_deficit(dg.build_sensor_context(instance=instance, resources=reads))
    if isinstance(tick, dg.SkipReason):
        return 0
    for run in tick.run_requests:
        done = repair_replicas.execute_in_process(
            run_config=run.run_config, instance=instance, resources=resources
        )
        assert done.success
    return len(tick.run_requests)


def _set_scrub_policy(resources: dict[str, Any], **scrub: float) -> None:
    """Write `policy.scrub` into the fleet's inventory file."""
    path = Path(resources["inventory"].path)
    document = yaml.safe_load(path.read_text())
    document.setdefault("policy", {})["scrub"] = scrub
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _check(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    audit: list[str],
    scrub: list[str],
) -> dg.ExecuteInProcessResult:
    return audit_fleet.execute_in_process(
        run_config=audit_run_config(audit, scrub),
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_files_deleted_behind_fleetsyncs_back_are_audited_and_repaired(tmp_path):
    fleet, catalog, _transports, resources = _collected_fleet(tmp_path)
    victims = _on_store(catalog)[:2]
    root = Path(fleet.node("store-1").data_root)
    for victim in victims:
        (root / victim.path).unlink()
    reads = {key: resources[key] for key in ("inventory", "catalog")}

    with dg.instance_for_test() as instance:
        # The catalog still believes the copies exist: nothing to repair yet.
        assert _repair_everything(instance, resources) == 0
        tick = fleet_audit(dg.build_sensor_context(instance=instance, resources=reads))
        assert isinstance(tick, dg.SensorResult)
        [request] = tick.run_requests
        audit = request.run_config["ops"]["audit"]["config"]["nodes"]
        assert sorted(audit) == sorted(n.name for n in fleet.nodes)  # never audited: all
        assert request.run_key.startswith("fleet_audit:")

        done = _check(instance, resources, audit, [])
        assert done.success
        assert {r.path for r in _on_store(catalog)}.isdisjoint(v.path for v in victims)
        findings = catalog.check_findings_frame("store-1")
        assert sorted(findings["path"]) == sorted(v.path for v in victims)
        assert set(findings["finding"]) == {"missing"}
        checks = catalog.node_checks()
        assert set(checks) == {n.name for n in fleet.nodes}
        assert "2 missing" in checks["store-1"].last_finding

        assert _repair_everything(instance, resources) == 1
        for victim in victims:
            assert _sha256(root / victim.path) == victim.sha256
        assert len(_on_store(catalog)) == len(catalog.artifacts_of(SNAPSHOT_KIND))


def test_a_flipped_bit_is_scrubbed_moved_aside_and_repaired(tmp_path):
    fleet, catalog, _transports, resources = _collected_fleet(tmp_path)
    [victim, *healthy] = _on_store(catalog)
    root = Path(fleet.node("store-1").data_root)
    _flip_a_bit(root / victim.path)
    corrupt = (root / victim.path).read_bytes()
    before = {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")}

    with dg.instance_for_test() as instance:
        # A listing sees nothing wrong: same size, same mtime.
        assert _check(instance, resources, ["store-1"], []).success
        assert len(_on_store(catalog)) == len(healthy) + 1

        assert _check(instance, resources, [], ["store-1"]).success
        aside = root / quarantine_path(victim.path, hashlib.sha256(corrupt).hexdigest())
        assert aside.read_bytes() == corrupt  # kept, never deleted
        assert not (root / victim.path).exists()  # never left under its final name
        assert [r.path for r in _on_store(catalog)] == [r.path for r in healthy]
        [finding] = catalog.check_findings_frame("store-1").itertuples()
        assert (finding.finding, finding.sha256, finding.path) == (
            "corrupt",
            victim.sha256,
            victim.path,
        )
        after = {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")}
        assert all(after[r.path] > before[r.path] for r in healthy)  # matched: re-verified
        row = catalog.node_checks()["store-1"]
        assert row.scrub_bytes == sum(r.size for r in healthy) + len(corrupt)
        assert "1 corrupt" in row.last_finding

        assert _repair_everything(instance, resources) == 1
        assert _sha256(root / victim.path) == victim.sha256
        assert aside.read_bytes() == corrupt


def test_scrub_spares_what_is_not_rot(tmp_path):
    """A resized file is the audit's (dropped, not moved); a canonical DB written after
    its verification is a writer's (dropped, left in place); an unreachable node changes
    nothing; a byte budget stops the scrub after the oldest file."""
    fleet, catalog, transports, resources = _collected_fleet(tmp_path)
    config = next(iter(catalog.artifacts_of(SNAPSHOT_KIND).values())).config
    canonical = merge_canonical(config, fleet, catalog, transports).sha256
    assert canonical and catalog.alias(CANONICAL_KIND, config) == canonical
    [on_coord] = [r for r in catalog.replicas_of([canonical]) if r.node == "coord-1"]
    coord = Path(fleet.node("coord-1").data_root)
    _flip_a_bit(coord / on_coord.path, mtime_ns=time.time_ns() + 10**11)
    [resized, *_] = _on_store(catalog)
    store = Path(fleet.node("store-1").data_root)
    with open(store / resized.path, "r+b") as f:
        f.truncate(10)

    with dg.instance_for_test() as instance:
        assert _check(instance, resources, [], ["coord-1", "store-1"]).success
        assert (coord / on_coord.path).exists()  # left where its writer put it
        assert not (coord / ".quarantine").exists() and not (store / ".quarantine").exists()
        assert "coord-1" not in {r.node for r in catalog.replicas_of([canonical])}
        assert resized.path not in {r.path for r in _on_store(catalog)}
        found = catalog.check_findings_frame()
        assert sorted(zip(found["node"], found["finding"], strict=True)) == [
            ("coord-1", "rewritten"),
            ("store-1", "resized"),
        ]

        # A node that cannot be reached: nothing changes, the run says which node.
        kept = {(r.path, r.verified_at) for r in catalog.scrub_candidates("store-1")}
        store.rename(store.with_name("away"))
        try:
            failed = _check(instance, resources, [], ["store-1"])
        finally:
            store.with_name("away").rename(store)
        assert not failed.success
        assert "store-1" in str(failed.get_step_failure_events()[0].step_failure_data.error)
        assert {(r.path, r.verified_at) for r in catalog.scrub_candidates("store-1")} == kept

        # A budget of one byte (policy.scrub.budget_gib) re-hashes the oldest file only.
        [oldest, *younger] = catalog.scrub_candidates("store-1")
        _set_scrub_policy(resources, budget_gib=2**-30)
        assert _check(instance, resources, [], ["store-1"]).success
        again = {r.path: r.verified_at for r in catalog.scrub_candidates("store-1")}
        assert again[oldest.path] > oldest.verified_at
        assert all(again[r.path] == r.verified_at for r in younger)
        assert catalog.node_checks()["store-1"].scrub_bytes == oldest.size


def test_sensor_rotates_skips_unavailable_nodes_and_waits_for_its_run(tmp_path):
    fleet, catalog, _transports, resources = _collected_fleet(tmp_path)
    reads = {key: resources[key] for key in ("inventory", "catalog")}
    names = sorted(n.name for n in fleet.nodes)
    catalog.sync_nodes(fleet.nodes)
    catalog.set_node_states({names[0]: (NodeState.LOST, "test: silent too long")})

    with dg.instance_for_test() as instance:

        def requested() -> tuple[list[str], list[str]] | None:
            tick = fleet_audit(dg.build_sensor_context(instance=instance, resources=reads))
            if isinstance(tick, dg.SkipReason):
                return None
            [run] = tick.run_requests
            ops = run.run_config["ops"]
            return ops["audit"]["config"]["nodes"], ops["scrub"]["config"]["nodes"]

        assert requested() == (names[1:][:AUDIT_NODES_PER_RUN], names[1:][:SCRUB_NODES_PER_RUN])
        catalog.record_audit(names[1], "test", at=time.time())
        for name in names[2:]:
            catalog.record_audit(name, "test", at=1.0)
            catalog.record_scrub(name, 0, "test", at=time.time())
        # names[1] was audited last and scrubbed never; the others scrubbed just now.
        assert requested() == ([*names[2:], names[1]], [names[1]])
        _set_scrub_policy(resources, every_s=0.001)  # a scrub is due again at once
        time.sleep(0.01)
        assert requested() == ([*names[2:], names[1]], names[1:3])

        run = instance.create_run_for_job(audit_fleet, run_config=audit_run_config([], []))
        assert requested() is None  # one run at a time: that one has not started yet
        instance.report_run_canceled(run)
        assert requested() is not None


def test_sensor_is_on_by_default_and_targets_the_audit_job():
    sensor = defs.resolve_sensor_def("fleet_audit")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "audit_fleet"
