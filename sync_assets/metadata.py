"""What the asset wrappers share: their declaration, the partition's node, the
durable-copies check, and the metadata an operator reads in the Dagster UI."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import dagster as dg
import pandas as pd

from resources.inventory import FleetInventory
from sync_assets.engine.replication import ReplicationResult
from sync_assets.fleet.inventory import Fleet, Node, load_fleet
from sync_assets.partitions import configs_partitions, nodes_partitions
from sync_assets.retries import NETWORK_RETRY, retry_transient_only

_COLUMN_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool"}


def table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    """A DataFrame as a UI table, column types kept."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(str(c), _COLUMN_TYPES.get(frame[c].dtype.kind, "string"))
            for c in frame.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def transfer_metadata(moved: ReplicationResult) -> dict[str, dg.RawMetadataValue]:
    """Bytes, copies, throughput, and what was not planned and why (LESSONS 1)."""
    mb_s = moved.bytes_moved / moved.seconds / 1e6 if moved.seconds > 0 else 0.0
    return {
        "bytes_moved": moved.bytes_moved,
        "copies_made": moved.copies,
        "transfer_seconds": round(moved.seconds, 3),
        "throughput_mb_s": round(mb_s, 2),
        "not_planned": table(moved.blocked),
        # Replicas the catalog had but the disk did not: dropped, and repaired from elsewhere.
        "replicas_found_missing": len(moved.findings),
        "findings": dg.MetadataValue.json(moved.findings[:50]),
    }


def raise_on_failures(moved: ReplicationResult, what: str) -> None:
    """Fail the step (so its retry policy applies) naming every failed transfer."""
    if moved.failures:
        raise dg.Failure(
            description=f"{what}: {len(moved.failures)} transfer(s) failed: "
            + "; ".join(moved.failures[:5]),
            metadata={"failures": dg.MetadataValue.json(moved.failures)},
        )


def partition_node(
    context: dg.AssetExecutionContext, inventory: FleetInventory
) -> tuple[Fleet, Node]:
    """The fleet, and the node a node-partitioned run is for."""
    fleet = load_fleet(inventory)
    return fleet, fleet.node(context.partition_key)


def fleet_asset(
    key: dg.AssetKey,
    *,
    per: Literal["node", "config"],
    group: str,
    kind: str,
    description: str,
    checks: Sequence[str],
    blocking: str | None = None,
    deps: Sequence[dg.AssetKey | dg.AssetDep] | None = None,
    pool: str | None = None,
    backfill_policy: dg.BackfillPolicy | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`@dg.asset` as every fleetsync asset is declared: partitioned per node or per
    config, retried with backoff on transient errors only (`retries.is_transient`: a
    changed host key or a failing exporter fails at once); `blocking` names the check
    that stops downstream runs."""
    declare = dg.asset(
        key=key,
        partitions_def=nodes_partitions if per == "node" else configs_partitions,
        deps=deps,
        group_name=group,
        kinds={kind},
        retry_policy=NETWORK_RETRY,
        pool=pool,
        backfill_policy=backfill_policy,
        description=description,
        check_specs=[dg.AssetCheckSpec(c, asset=key, blocking=c == blocking) for c in checks],
    )
    return lambda compute: declare(retry_transient_only(compute))


def every_partition(key: dg.AssetKey) -> dg.AssetDep:
    """A dependency on all partitions of `key` (a config asset fed by every node, ...)."""
    return dg.AssetDep(key, partition_mapping=dg.AllPartitionMapping())


def durable_copies_check(
    passed: bool, required: int, **seen: dg.RawMetadataValue
) -> dg.AssetCheckResult:
    """Fewer durable copies than policy asks for: a warning, the copies exist elsewhere."""
    return dg.AssetCheckResult(
        check_name="durable_copies",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"required": required, **seen},
    )
