"""Every job of the code location. Sensors, backfills and `fleetsync sync` target them;
the definitions register these same objects (a sensor aiming at several jobs must hold
the very job definitions the code location has)."""

import dagster as dg

from sync_assets.elo.assets import elo_matches, elo_on_node, elo_ratings
from sync_assets.fleet.assets import node_status
from sync_assets.fleet.checks import audit_fleet
from sync_assets.fleet.repair import repair_replicas
from sync_assets.games.assets import games_canonical, games_selfplay
from sync_assets.models.assets import models_on_node, models_promoted
from sync_assets.training.assets import training_npz, training_npz_on_node

# One job per asset.
PROBE_NODES = dg.define_asset_job("probe_nodes", selection=[node_status])
COLLECT_GAMES = dg.define_asset_job("collect_games", selection=[games_selfplay])
MERGE_GAMES = dg.define_asset_job("merge_games", selection=[games_canonical])
EXPORT_NPZ = dg.define_asset_job("export_npz", selection=[training_npz])
NPZ_TO_NODES = dg.define_asset_job("npz_to_nodes", selection=[training_npz_on_node])
COLLECT_MATCHES = dg.define_asset_job("collect_matches", selection=[elo_matches])
RATE_MODELS = dg.define_asset_job("rate_models", selection=[elo_ratings])
RATINGS_TO_NODES = dg.define_asset_job("ratings_to_nodes", selection=[elo_on_node])
PROMOTE_MODELS = dg.define_asset_job("promote_models", selection=[models_promoted])
MODELS_TO_NODES = dg.define_asset_job("models_to_nodes", selection=[models_on_node])

# Op-based: they re-replicate, audit and scrub, materializing no asset.
REPAIR_REPLICAS = repair_replicas
AUDIT_FLEET = audit_fleet

ASSET_JOBS = [
    PROBE_NODES,
    COLLECT_GAMES,
    MERGE_GAMES,
    EXPORT_NPZ,
    NPZ_TO_NODES,
    COLLECT_MATCHES,
    RATE_MODELS,
    RATINGS_TO_NODES,
    PROMOTE_MODELS,
    MODELS_TO_NODES,
]
OP_JOBS = [REPAIR_REPLICAS, AUDIT_FLEET]
