"""The fleetsync code location: assets, jobs, sensors and resources, nothing else."""

import dagster as dg

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors.ephemeral_sync import COLLECT_GAMES, COLLECT_MATCHES, ephemeral_sync, routine_sync
from sensors.fleet_audit import fleet_audit
from sensors.fleet_probe import fleet_probe
from sensors.merge_trigger import merge_trigger
from sensors.model_promotion import model_promotion
from sensors.node_discovery import node_discovery
from sensors.ratings_chain import ratings_distribution, ratings_trigger
from sensors.replication_deficit import replication_deficit
from sensors.shard_distribution import shard_distribution
from sensors.training_trigger import training_trigger
from sensors.transfer_failures import transfer_failures
from sync_assets.elo.assets import elo_matches, elo_on_node, elo_ratings
from sync_assets.fleet.assets import node_status
from sync_assets.fleet.checks import audit_fleet
from sync_assets.fleet.repair import repair_replicas
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.models.assets import candidate_spec, models_on_node, models_promoted
from sync_assets.training.assets import training_npz, training_npz_on_node

# One job per asset: sensors, backfills and `fleetsync sync` target them by name.
JOBS = [
    dg.define_asset_job("probe_nodes", selection=[node_status]),
    COLLECT_GAMES,
    dg.define_asset_job("merge_games", selection=[games_canonical]),
    dg.define_asset_job("export_npz", selection=[training_npz]),
    dg.define_asset_job("npz_to_nodes", selection=[training_npz_on_node]),
    COLLECT_MATCHES,
    dg.define_asset_job("rate_models", selection=[elo_ratings]),
    dg.define_asset_job("ratings_to_nodes", selection=[elo_on_node]),
    dg.define_asset_job("promote_models", selection=[models_promoted]),
    dg.define_asset_job("models_to_nodes", selection=[models_on_node]),
]

defs = dg.Definitions(
    assets=[
        node_status,
        games_selfplay,
        games_canonical,
        training_npz,
        training_npz_on_node,
        candidate_spec,
        models_promoted,
        models_on_node,
        elo_matches,
        elo_ratings,
        elo_on_node,
    ],
    # repair_replicas is op-based: it re-replicates artifacts, materializing no asset.
    jobs=[*JOBS, repair_replicas, audit_fleet],
    sensors=[
        # The fleet: nodes, probes, audits, failed runs.
        node_discovery,
        fleet_probe,
        fleet_audit,
        transfer_failures,
        # Copies: collected, repaired, placed.
        ephemeral_sync,
        routine_sync,
        replication_deficit,
        # The chains: games -> canonical -> shards; matches -> ratings; promoted models.
        merge_trigger,
        training_trigger,
        shard_distribution,
        ratings_trigger,
        ratings_distribution,
        model_promotion,
    ],
    resources={
        "inventory": FleetInventory(),
        "catalog": Catalog(),
        "transports": Transports(),
        "exporter": Exporter(),
    },
)
