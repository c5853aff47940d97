"""EXAMPLE code location of a training repo: it materialises `models/candidate` itself.

This is a second code location in the same workspace as fleetsync. It owns
`models/candidate` (fleetsync only declares it as an external `AssetSpec`: Dagster
allows at most one *materializable* definition of a key across a workspace) and
depends on fleetsync's `training/npz`, so lineage crosses the two locations in the UI.

Its materialisation carries exactly the metadata a `fleetsync report` carries
(config, node, path, sha256, size, promote), validated by fleetsync's own
`validate_report` before it is returned: the promotion asset reads it back with
`candidate_from_event` and re-hashes the file on its node before using it.
"""

from pathlib import Path

import dagster as dg

from resources.inventory import FleetInventory
from sync_assets.fleet.inventory import load_fleet
from sync_assets.partitions import configs_partitions
from sync_assets.reports import validate_report
from training_repo.train import ShardError, inputs_of, publish, train

CANDIDATE = dg.AssetKey(["models", "candidate"])
NPZ = dg.AssetKey(["training", "npz"])


class TrainConfig(dg.Config):
    """Run config: `promote` records an explicit promotion decision with the candidate."""

    promote: bool = False


@dg.asset(
    key=CANDIDATE,
    partitions_def=configs_partitions,
    deps=[NPZ],
    group_name="models",
    kinds={"numpy"},
    description="EXAMPLE: trains a tiny numpy model on the current shard training/{config}.npz "
    "of a local training node and publishes models/candidate_{config}.pth + .sha256 there.",
)
def candidate(
    context: dg.AssetExecutionContext, config: TrainConfig, inventory: FleetInventory
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    key = context.partition_key
    shard_rel = f"training/{key}.npz"
    skipped: list[str] = []
    for node in fleet.nodes_with_role("training"):
        if node.transport != "local":
            # A real training repo runs *on* its training node; this example only reads
            # shards it can open directly.
            skipped.append(f"{node.name}: {node.transport} node (the example reads local ones)")
            continue
        root = Path(node.data_root)
        shard = root / shard_rel
        if not shard.is_file():
            skipped.append(f"{node.name}: no {shard_rel}")
            continue
        try:
            x, y = inputs_of(shard)
        except (ShardError, OSError, ValueError) as exc:
            skipped.append(f"{node.name}: {exc}")
            continue
        trained = train(x, y, key)
        name = f"candidate_{key}.pth"
        digest = publish(root / "models", name, trained.model_bytes)
        payload, problems = validate_report(
            {
                "kind": "candidate",
                "config": key,
                "node": node.name,
                "path": f"models/{name}",
                "sha256": digest,
                "size": len(trained.model_bytes),
                "promote": config.promote,
            },
            fleet,
        )
        if payload is None:
            raise dg.Failure(f"the candidate's report would be rejected: {'; '.join(problems)}")
        context.log.info(
            f"{payload.description()}: loss {trained.loss_before:.4f} → "
            f"{trained.loss_after:.4f} over {trained.samples} samples"
        )
        return dg.MaterializeResult(
            metadata={
                **payload.metadata(),
                "trained_on": shard_rel,
                "samples": trained.samples,
                "inputs": trained.inputs,
                "loss_before": trained.loss_before,
                "loss_after": trained.loss_after,
            },
            data_version=dg.DataVersion(digest),
        )
    raise dg.Failure(
        description=f"no local training node holds a usable {shard_rel}",
        metadata={"skipped": dg.MetadataValue.json(skipped)},
    )


defs = dg.Definitions(assets=[candidate], resources={"inventory": FleetInventory()})
