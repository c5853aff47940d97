"""`repair_replicas`: re-replicate named artifacts through the planner (a domain job).

Requested by the `replication_deficit` sensor, one run per artifact; the planner
(`engine.placement`, through `engine.replication.replicate`) chooses sources and durable
targets within disk floors, around open breakers and unreachable nodes.
"""

from collections.abc import Callable

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from sync_assets.elo.collect import collected_path as elo_collected_path
from sync_assets.engine.replication import replicate
from sync_assets.fleet.inventory import load_fleet
from sync_assets.games.collect import collected_path as games_collected_path
from sync_assets.kinds import ELO_SNAPSHOT, GAMES_SNAPSHOT, NPZ
from sync_assets.training.shards import shard_path

# Where a repaired copy goes: the durable home each kind's domain gives it, a path named
# by the content. Files rewritten in place (canonical DB, promoted model, ratings) are
# not repaired here: a queued copy of one version could land over a newer one, or over a
# file fleetsync did not make. Their own assets bring the current version back, under
# their writer's lease (merge, promote, publish).
REPAIR_PATHS: dict[str, Callable[[pd.Series], str]] = {
    GAMES_SNAPSHOT.name: games_collected_path,
    ELO_SNAPSHOT.name: elo_collected_path,
    NPZ.name: lambda art: shard_path(str(art["config"]), str(art.name)),
}


class RepairConfig(dg.Config):
    shas: list[str]


def repair_run_config(shas: list[str]) -> dict[str, object]:
    return {"ops": {"repair": {"config": RepairConfig(shas=shas).model_dump()}}}


def repair_target_path(artifact: pd.Series) -> str:
    return REPAIR_PATHS[str(artifact["kind"])](artifact)


@dg.op
def repair(
    context: dg.OpExecutionContext,
    config: RepairConfig,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> None:
    """Bring these artifacts back to policy; fails, naming why, when a copy failed or
    one could not be planned (the sensor asks again in its next retry bucket)."""
    fleet = load_fleet(inventory)
    kinds = {sha: art.kind for sha, art in catalog.artifacts_of(shas=config.shas).items()}
    shas = [sha for sha in config.shas if kinds.get(sha) in REPAIR_PATHS]  # never in place
    result = replicate(shas, fleet, catalog, transports, repair_target_path)
    context.add_output_metadata(
        {"copies": result.copies, "bytes_moved": result.bytes_moved, "findings": result.findings}
    )
    problems = result.failures + [
        f"{row.sha256[:16]}: {row.reason}" for row in result.blocked.itertuples()
    ]
    if problems:
        raise dg.Failure("repair incomplete:\n" + "\n".join(problems))


@dg.job
def repair_replicas() -> None:
    repair()
