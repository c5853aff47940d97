"""The fleetsync code location: assets, jobs, sensors and resources, nothing else."""

import dagster as dg

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors.ephemeral_sync import ephemeral_sync, routine_sync
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
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.jobs import ASSET_JOBS, OP_JOBS
from sync_assets.models.assets import candidate_spec, models_on_node, models_promoted
from sync_assets.training.assets import training_npz, training_npz_on_node

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
    jobs=[*ASSET_JOBS, *OP_JOBS],
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
