"""The chain sensors (item 7) tick by tick on a local demo fleet: each asks for the next
link exactly where the catalog says it is missing, and for nothing once it is done."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from resources.catalog import Catalog, NodeState
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors._common import VERSION_TAG
from sensors.merge_trigger import merge_trigger
from sensors.ratings_chain import ratings_distribution, ratings_trigger
from sensors.shard_distribution import shard_distribution
from sync_assets.demo.pipeline import DEMO_CONFIGS, build_demo_fleet
from sync_assets.elo.collect import collect_node_matches
from sync_assets.elo.publish import publish_on_node, recompute_ratings
from sync_assets.fleet.inventory import load_inventory
from sync_assets.games.canonical import merge_canonical
from sync_assets.games.collect import collect_node_games
from sync_assets.partitions import NODES
from sync_assets.training.shards import export_npz, place_on_node


def test_each_chain_sensor_asks_for_the_missing_link_then_nothing(tmp_path: Path) -> None:
    fleet_file = build_demo_fleet(tmp_path / "fleet", node_count=4, games_per_node=20)
    fleet = load_inventory(fleet_file)
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    transports = Transports()
    # The sensors read the catalog only: no transports among their resources.
    reads = {"inventory": FleetInventory(path=str(fleet_file)), "catalog": catalog}

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(NODES, [n.name for n in fleet.nodes])

        def asked(sensor: dg.SensorDefinition) -> dict[str, str]:
            """Partition → run key of what one tick requests ({} for a skip)."""
            result = sensor(dg.build_sensor_context(instance=instance, resources=reads))
            if isinstance(result, dg.SkipReason):
                return {}
            return {str(r.partition_key): str(r.run_key) for r in result.run_requests or []}

        # Games: collected snapshots -> a merge per config; a merged config asks no more.
        assert asked(merge_trigger) == {}
        for node in fleet.nodes:
            collect_node_games(node, fleet, catalog, transports)
        assert set(asked(merge_trigger)) == set(DEMO_CONFIGS)
        config = DEMO_CONFIGS[0]
        merge_canonical(config, fleet, catalog, transports)
        assert set(asked(merge_trigger)) == set(DEMO_CONFIGS) - {config}

        # A published shard -> the training node only, its version in the key; then nothing.
        assert asked(shard_distribution) == {}
        shard = export_npz(config, fleet, catalog, transports, Exporter()).current
        assert shard is not None
        catalog.sync_nodes(fleet.nodes)
        catalog.set_node_states({"train-1": (NodeState.SUSPECT, "test: a probe missed")})
        assert asked(shard_distribution) == {}  # the planner copies to no suspect node
        catalog.set_node_states({"train-1": (NodeState.ACTIVE, "test: audited")})
        requested = asked(shard_distribution)
        assert list(requested) == ["train-1"]
        assert f"{config}={shard[:12]}" in requested["train-1"]
        place_on_node(fleet.node("train-1"), fleet, catalog, transports)
        assert asked(shard_distribution) == {}

        # Collected matches -> every config rated; published ratings -> the eval node.
        assert asked(ratings_trigger) == {}
        collect_node_matches(fleet.node("gpu-1"), fleet, catalog, transports)
        first = asked(ratings_trigger)
        assert set(first) == set(DEMO_CONFIGS)
        # A config whose rating is still running gets no second run beside it.
        running = instance.add_run(
            dg.DagsterRun(
                job_name="rate_models",
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/partition": DEMO_CONFIGS[1]},
            )
        )
        assert set(asked(ratings_trigger)) == set(DEMO_CONFIGS) - {DEMO_CONFIGS[1]}
        instance.report_run_canceled(running)
        assert asked(ratings_trigger) == first
        assert asked(ratings_distribution) == {}
        recompute_ratings(config, fleet, catalog, transports)
        assert list(asked(ratings_distribution)) == ["gpu-1"]
        publish_on_node(fleet.node("gpu-1"), fleet, catalog, transports)
        assert asked(ratings_distribution) == {}
        assert asked(ratings_trigger) == first  # the same set of matches: the same keys

        # A failed rating of a set is asked again under the retry hour's key; once a run
        # for that set succeeds, its key comes back (Dagster runs a key once): no more.
        config = DEMO_CONFIGS[2]

        def attempt(run_key: str, status: dg.DagsterRunStatus) -> None:
            tags = {VERSION_TAG: first[config], "dagster/run_key": run_key}
            instance.add_run(dg.DagsterRun(job_name="rate_models", status=status, tags=tags))

        attempt(first[config], dg.DagsterRunStatus.FAILURE)
        retry = asked(ratings_trigger)[config]
        assert retry.startswith(f"{first[config]}:retry")
        attempt(retry, dg.DagsterRunStatus.SUCCESS)
        assert asked(ratings_trigger)[config] == retry
        assert asked(ratings_trigger)[DEMO_CONFIGS[0]] == first[DEMO_CONFIGS[0]]
