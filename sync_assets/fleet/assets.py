"""`fleet/node_status` [node]: probe nodes and record what was seen in the catalog.

One run probes any set of node partitions at once (single-run backfill policy): the
`fleet_probe` sensor asks for the whole `nodes` range each minute, one run, every node
probed concurrently, and each node partition gets its own materialization with its own
metadata, so the UI keeps per-node history."""

import warnings
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import NodeProbe
from sync_assets import metadata as meta
from sync_assets.engine.probe import probe_fleet, sync_inventory
from sync_assets.fleet.inventory import load_fleet

GIB = 1024**3
NODE_STATUS = dg.AssetKey(["fleet", "node_status"])
UNKNOWN = "unknown"  # what the UI shows for a fact the probe could not see (never 0)
# A single-run backfill policy is what Dagster documents for one run over many partitions;
# its "beta" notice would print at every load of the code location.
warnings.filterwarnings("ignore", "Parameter `backfill_policy`", dg.BetaWarning)


def _known(value: float | None) -> float | str:
    return UNKNOWN if value is None else value


def _iso(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat(timespec="seconds")


def probe_metadata(probe: NodeProbe) -> "dict[str, dg.RawMetadataValue]":
    """What one node's partition shows: reachability, disk, GPU, jobs, sessions, and each
    game and Elo DB with its size and newest change (DB or WAL)."""
    metadata: dict[str, dg.RawMetadataValue] = {
        "reachable": probe.reachable,
        "gpu_util_percent": _known(probe.gpu_util_percent),
        "jobs": _known(probe.jobs),
        "ssh_sessions": _known(probe.sessions),
    }
    if probe.disk_total_bytes and probe.disk_free_bytes is not None:
        used = probe.disk_total_bytes - probe.disk_free_bytes
        metadata["disk_used_fraction"] = round(used / probe.disk_total_bytes, 4)
        metadata["disk_free_gb"] = round(probe.disk_free_bytes / GIB, 2)
    if probe.reachable:
        rows = [
            {
                "path": live.db.path,
                "bytes": live.db.size,
                "wal_bytes": live.wal.size if live.wal else 0,
                "modified": _iso(max(live.db.mtime_ns, live.wal.mtime_ns if live.wal else 0)),
            }
            for live in probe.databases
        ]
        columns = ["path", "bytes", "wal_bytes", "modified"]
        metadata["databases"] = meta.table(pd.DataFrame(rows, columns=columns))
    if probe.error:
        metadata["error"] = probe.error
    if probe.rejected:  # DB names refused as unsafe (not UTF-8, ...): never recorded
        metadata["rejected_db_names"] = [ascii(name) for name in probe.rejected]
    return metadata


@meta.fleet_asset(
    key=NODE_STATUS,
    per="node",
    group="fleet",
    kind="ssh",
    description=(
        "Probe: reachable, disk, GPU utilisation, running jobs, SSH sessions, and the size "
        "and newest change of every game and Elo DB, from one command per node. Unknown is "
        "recorded as unknown. One run probes every node of its partition range at once."
    ),
    checks=["reachable"],
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def node_status(
    context: dg.AssetExecutionContext,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> dg.MaterializeResult:
    fleet = load_fleet(inventory)
    sync_inventory(fleet, catalog)
    listed = {n.name: n for n in fleet.nodes}
    keys = context.partition_keys
    probes = probe_fleet([listed[k] for k in keys if k in listed], fleet, catalog, transports)
    for key in keys:
        # A departed node keeps its partition while it holds a last copy: not probed.
        seen = probe_metadata(probes[key]) if key in probes else {"probed": "not in the inventory"}
        context.add_asset_metadata(seen, partition_key=key)
    missed = [
        p.error or f"node {name}: unreachable" for name, p in probes.items() if not p.reachable
    ]
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name="reachable",
                passed=not missed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"error": missed},
            )
        ],
    )
