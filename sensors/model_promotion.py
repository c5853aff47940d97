"""`model_promotion`: a promoted model reaches every GPU node, fanned out across runs.

Each tick asks the catalog which GPU nodes lack a config's promoted model and
requests `models/on_node` runs for at most (holders × transfers_per_node) of them:
nodes that received it become sources for the next tick, so the push is a tree,
never 100 copies from the coordinator at once (LESSONS 2).
"""

import dagster as dg
import pandas as pd

from resources.catalog import Catalog, ReplicaState
from sensors._common import Tick, fleet_sensor
from sync_assets.fleet.inventory import Fleet
from sync_assets.models.publish import PROMOTED_ALIAS, canonical_model_path


def nodes_to_serve(
    promoted: dict[str, str], replicas: pd.DataFrame, gpu_nodes: list[str], per_source: int
) -> list[tuple[str, str, str]]:
    """(node, config, sha256) runs to request now: lacking nodes, capped by the holders."""
    verified = replicas[replicas["state"] == ReplicaState.VERIFIED]
    todo: list[tuple[str, str, str]] = []
    for config, sha in sorted(promoted.items()):
        mine = verified[verified["sha256"] == sha]
        placed = set(mine.loc[mine["path"] == canonical_model_path(config), "node"])
        capacity = max(1, len(set(mine["node"])) * per_source)
        lacking = [n for n in gpu_nodes if n not in placed]
        todo += [(n, config, sha) for n in lacking[:capacity]]
    return todo


@fleet_sensor("model_promotion", 30, job_name="models_to_nodes")
def model_promotion(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    promoted = catalog.aliases(PROMOTED_ALIAS)
    todo = nodes_to_serve(
        promoted,
        catalog.replicas_frame(shas=promoted.values()),
        [n.name for n in fleet.gpu_nodes],
        fleet.policy.transfers_per_node,
    )
    if not todo:
        return dg.SkipReason("every GPU node holds every promoted model")
    # One run per node (it places every promoted config); the key names the versions.
    by_node: dict[str, list[str]] = {}
    for node, config, sha in todo:
        by_node.setdefault(node, []).append(f"{config}={sha[:12]}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"models:{node}:{','.join(sorted(v))}", partition_key=node)
            for node, v in sorted(by_node.items())
        ]
    )
