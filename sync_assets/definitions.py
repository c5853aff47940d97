"""The fleetsync code location: assets, jobs, sensors and resources, nothing else."""

import dagster as dg

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sensors.node_discovery import node_discovery
from sync_assets.fleet.assets import node_status
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.partitions import configs_partitions, nodes_partitions

probe_nodes = dg.define_asset_job(
    "probe_nodes", selection=[node_status], partitions_def=nodes_partitions
)
collect_games = dg.define_asset_job(
    "collect_games", selection=[games_selfplay], partitions_def=nodes_partitions
)
merge_games = dg.define_asset_job(
    "merge_games", selection=[games_canonical], partitions_def=configs_partitions
)

defs = dg.Definitions(
    assets=[node_status, games_selfplay, games_canonical],
    jobs=[probe_nodes, collect_games, merge_games],
    sensors=[node_discovery],
    resources={
        "inventory": FleetInventory(),
        "catalog": Catalog(),
        "transports": Transports(),
    },
)
