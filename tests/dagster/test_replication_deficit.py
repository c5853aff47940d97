"""replication_deficit + repair_replicas on a local demo fleet: a durable copy deleted
behind fleetsync's back (and dropped from the catalog, as an audit would) comes back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg

from resources.catalog import Catalog, NodeState
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors.replication_deficit import replication_deficit
from sync_assets.definitions import defs
from sync_assets.demo.pipeline import build_demo_fleet
from sync_assets.fleet.inventory import load_inventory
from sync_assets.fleet.repair import repair_replicas
from sync_assets.games.collect import SNAPSHOT_KIND, collect_node_games


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _collected_fleet(tmp_path: Path) -> tuple[Any, Catalog, Transports, dict[str, Any]]:
    """A 4-node local demo fleet whose game DBs are all collected, and its resources."""
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=20)
    fleet = load_inventory(fleet_file)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    transports = Transports()
    for node in fleet.nodes:
        assert not collect_node_games(node, fleet, catalog, transports).replication.failures
    inventory = FleetInventory(path=str(fleet_file))
    resources = {"inventory": inventory, "catalog": catalog, "transports": transports}
    return fleet, catalog, transports, resources


def test_deleted_durable_copy_is_requested_and_repaired(tmp_path):
    fleet, catalog, transports, resources = _collected_fleet(tmp_path)

    snapshots = catalog.artifacts_of(SNAPSHOT_KIND)
    on_store = [r for r in catalog.replicas_of(snapshots) if r.node == "store-1"]
    assert len(on_store) == len(snapshots) >= 2
    victim = on_store[0]
    victim_file = Path(fleet.node("store-1").data_root) / victim.path

    with dg.instance_for_test() as instance:

        def tick(cursor: str | None = None) -> dg.SensorResult | dg.SkipReason:
            # No transports: the sensor reads the catalog only.
            reads = {key: resources[key] for key in ("inventory", "catalog")}
            ctx = dg.build_sensor_context(instance=instance, resources=reads, cursor=cursor)
            return replication_deficit(ctx)

        assert isinstance(tick(), dg.SkipReason)  # a fleet in order requests nothing

        victim_file.unlink()
        assert catalog.drop_replicas("store-1", [(victim.sha256, victim.path)]) == 1

        requested = tick()
        assert isinstance(requested, dg.SensorResult)
        [run] = requested.run_requests
        assert run.run_config == {"ops": {"repair": {"config": {"shas": [victim.sha256]}}}}
        assert victim.sha256 in run.run_key
        assert run.tags["fleetsync/risk"] == "single copy"

        done = repair_replicas.execute_in_process(
            run_config=run.run_config, instance=instance, resources=resources
        )
        assert done.success

        assert _sha256(victim_file) == victim.sha256
        holders = {r.node for r in catalog.replicas_of([victim.sha256])}
        assert holders == {"coord-1", "store-1"}
        assert isinstance(tick(requested.cursor), dg.SkipReason)
        assert isinstance(tick(), dg.SkipReason)  # nothing left, with or without a cursor


def test_copies_on_a_lost_node_stop_counting_and_suspect_ones_serve_nothing(tmp_path):
    """The sensor counts as the lifecycle says: a lost durable node leaves every snapshot
    short (single copies); with the other durable node suspect too, nothing can serve."""
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=10)
    fleet = load_inventory(fleet_file)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    for node in fleet.nodes:
        collect_node_games(node, fleet, catalog, Transports())
    catalog.sync_nodes(fleet.nodes)
    snapshots = set(catalog.artifacts_of(SNAPSHOT_KIND))
    reads = {"inventory": FleetInventory(path=str(fleet_file)), "catalog": catalog}

    with dg.instance_for_test() as instance:

        def tick() -> dg.SensorResult | dg.SkipReason:
            return replication_deficit(dg.build_sensor_context(instance=instance, resources=reads))

        assert isinstance(tick(), dg.SkipReason)
        catalog.set_node_states({"store-1": (NodeState.LOST, "test: silent too long")})
        requested = tick()
        assert isinstance(requested, dg.SensorResult)
        shas = [
            sha
            for run in requested.run_requests
            for sha in run.run_config["ops"]["repair"]["config"]["shas"]
        ]
        assert sorted(shas) == sorted(snapshots)
        assert {run.tags["fleetsync/risk"] for run in requested.run_requests} == {"single copy"}

        catalog.set_node_states({"coord-1": (NodeState.SUSPECT, "test: a probe missed")})
        skipped = tick()
        assert isinstance(skipped, dg.SkipReason)
        assert f"{len(snapshots)} artifact(s) below policy, none to request now" in str(
            skipped.skip_message
        )


def test_sensor_is_on_by_default_and_targets_the_repair_job():
    sensor = defs.resolve_sensor_def("replication_deficit")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "repair_replicas"


def test_a_file_rewritten_in_place_is_never_repaired_by_the_repair_job(tmp_path):
    """A canonical DB below policy is left to its own asset (the merge replicates the
    current version under its lease): a queued repair of one version could land over a
    newer one, or over a canonical DB fleetsync did not make. Even a request naming it
    copies nothing, and the file on the other durable node stays as it was."""
    from sync_assets.games.canonical import CANONICAL_KIND, merge_canonical

    fleet, catalog, transports, resources = _collected_fleet(tmp_path)
    config = next(iter(catalog.artifacts_of(SNAPSHOT_KIND).values())).config
    merged = merge_canonical(config, fleet, catalog, transports)
    canonical = catalog.alias(CANONICAL_KIND, config)
    assert canonical and merged.durable_copies == 2
    [gone, kept] = sorted(catalog.replicas_of([canonical]), key=lambda r: r.node)
    (Path(fleet.node(gone.node).data_root) / gone.path).unlink()
    catalog.drop_replicas(gone.node, [(canonical, gone.path)])
    foreign = Path(fleet.node(gone.node).data_root) / gone.path
    foreign.write_bytes(b"a canonical DB fleetsync did not make")

    with dg.instance_for_test() as instance:
        reads = {key: resources[key] for key in ("inventory", "catalog")}
        tick = replication_deficit(dg.build_sensor_context(instance=instance, resources=reads))
        requested = [] if isinstance(tick, dg.SkipReason) else tick.run_requests
        assert all(canonical not in str(r.run_config) for r in requested)

        run_config = {"ops": {"repair": {"config": {"shas": [canonical]}}}}
        done = repair_replicas.execute_in_process(
            run_config=run_config, instance=instance, resources=resources
        )
        assert done.success

    assert foreign.read_bytes() == b"a canonical DB fleetsync did not make"
    assert {r.node for r in catalog.replicas_of([canonical])} == {kept.node}


def test_a_repair_still_queued_or_running_is_not_requested_again_when_the_hour_rolls(tmp_path):
    """The retry bucket rolls every hour; a repair run that has not finished by then (a
    slow copy, a long queue) must not be raced by a second run for the same artifacts."""
    fleet, catalog, _, resources = _collected_fleet(tmp_path)
    victim = next(r for r in catalog.replicas_of(catalog.artifacts_of(SNAPSHOT_KIND)))
    (Path(fleet.node(victim.node).data_root) / victim.path).unlink()
    catalog.drop_replicas(victim.node, [(victim.sha256, victim.path)])
    reads = {key: resources[key] for key in ("inventory", "catalog")}

    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
            ctx = dg.build_sensor_context(instance=instance, resources=reads, cursor=cursor)
            return replication_deficit(ctx)

        first = tick(None)
        assert isinstance(first, dg.SensorResult)
        [run] = first.run_requests
        pending = instance.create_run_for_job(
            repair_replicas, run_config=run.run_config, status=dg.DagsterRunStatus.STARTED
        )
        last_hour = json.dumps({"bucket": json.loads(first.cursor)["bucket"] - 1, "requested": []})
        assert isinstance(tick(last_hour), dg.SkipReason)  # still running: not again

        instance.report_run_failed(pending)  # ended without repairing: ask again
        again = tick(last_hour)
        assert isinstance(again, dg.SensorResult)
        assert [r.run_config for r in again.run_requests] == [run.run_config]
