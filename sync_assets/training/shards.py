"""Export, publish and place NPZ shards: the logic behind `training/npz` and
`training/npz_on_node`. No Dagster here: the assets call these and report the result.

Where shards live (paths relative to a node's data root):

- `training/shards/{config}.{sha16}.npz` on the export node and on durable nodes:
  content-addressed, never overwritten with other bytes, replicated to
  `policy.min_replicas.npz` durable nodes;
- `training/{config}.npz` on training nodes (CONTRACT.md): the config's current shard,
  replaced only by an atomic rename of verified bytes;
- `quarantine/training/{config}.{sha16}.npz` on the export node: shards that failed
  validation, kept for inspection, recorded nowhere as a replica, never copied.

Catalog: artifact kind "npz" (name `training/{config}.npz`); alias ("npz", config) = the
current shard, set only once it validated and has a durable copy; alias
("npz_source", config) = the canonical DB version it was exported from, which is how an
unchanged corpus is recognised without exporting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from resources.catalog import Catalog
from resources.exporter import Exporter
from resources.transport import Transports
from sync_assets.engine.replication import (
    ReplicationResult,
    confirm_holders,
    counted_durable_nodes,
    distribute,
    node_names,
    replicate,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games.canonical import CANONICAL_KIND
from sync_assets.kinds import NPZ
from sync_assets.training.export import ExportResult, export_canonical

NPZ_KIND = NPZ.name
NPZ_ALIAS = NPZ.alias  # the current shard of a config (read by the training_trigger sensor)
NPZ_SOURCE_ALIAS = "npz_source"  # the canonical DB version the current shard came from
QUARANTINE_DIR = "quarantine/training"


def shard_path(config: str, sha256: str) -> str:
    """Content-addressed home of a shard on export and durable nodes."""
    return f"training/shards/{config}.{sha256[:16]}.npz"


def node_shard_path(config: str) -> str:
    """Where training code reads the config's current shard (CONTRACT.md)."""
    return f"training/{config}.npz"


def quarantine_path(config: str, sha256: str) -> str:
    return f"{QUARANTINE_DIR}/{config}.{sha256[:16]}.npz"


@dataclass
class NpzExport:
    """What one `training/npz` pass did for a config."""

    skipped: str | None = None  # why nothing was exported (unchanged corpus, no corpus)
    exported: ExportResult | None = None
    quarantined: str | None = None  # path on the export node of a shard that failed
    current: str | None = None  # sha256 of the config's current shard after this pass
    moved: ReplicationResult = field(default_factory=ReplicationResult)
    durable_copies: int = 0

    @property
    def valid(self) -> bool:
        """False only when this pass produced a shard that failed validation."""
        return self.quarantined is None


def export_npz(
    config: str, fleet: Fleet, catalog: Catalog, transports: Transports, exporter: Exporter
) -> NpzExport:
    """Export `config` if its canonical DB changed since the last export, publish the shard
    if it validates (quarantine it if not), and keep the current shard at policy.

    One writer per config: a catalog lease (concurrent exports once corrupted shards)."""
    result = NpzExport()
    with catalog.lease(f"training/npz/{config}"):
        canonical = catalog.alias(CANONICAL_KIND, config)
        result.current = catalog.alias(NPZ_ALIAS, config)
        if result.current is not None:  # "unchanged" must not rest on copies the disk lost
            result.moved.add(confirm_holders([result.current], fleet, catalog, transports))
        if canonical is None:
            result.skipped = "no canonical DB for this config yet"
        elif (
            result.current is not None
            and catalog.alias(NPZ_SOURCE_ALIAS, config) == canonical
            and _has_verified_copy(catalog, result.current, fleet)
        ):
            result.skipped = f"canonical DB {canonical[:12]} unchanged since the last export"
        else:
            exported = export_canonical(exporter, fleet, catalog, transports, config)
            result.exported = exported
            result.moved.add(exported.canonical_moved)
            node = fleet.node(exported.node)
            if exported.ok:
                _publish(exported, node, catalog, transports)
            else:
                result.quarantined = quarantine_path(config, exported.sha256)
                transports.for_node(node).rename(node, exported.path, result.quarantined)
        if result.exported is not None and result.exported.ok:
            result.current = result.exported.sha256
        if result.current is not None:
            sha = result.current
            result.moved.add(
                replicate([sha], fleet, catalog, transports, lambda _row: shard_path(config, sha))
            )
            durable = counted_durable_nodes(fleet, catalog)
            result.durable_copies = catalog.durable_copy_counts(durable, shas=[sha]).get(sha, 0)
        if result.exported is not None and result.exported.ok and result.durable_copies:
            catalog.set_alias(NPZ_ALIAS, config, result.exported.sha256)
            catalog.set_alias(NPZ_SOURCE_ALIAS, config, result.exported.canonical_sha256)
    return result


def _publish(exported: ExportResult, node: Node, catalog: Catalog, transports: Transports) -> None:
    """Rename the validated staging file to its content-addressed name; record it."""
    final = shard_path(exported.config, exported.sha256)
    transports.for_node(node).rename(node, exported.path, final)
    catalog.add_artifact(
        exported.sha256,
        kind=NPZ_KIND,
        config=exported.config,
        name=node_shard_path(exported.config),
        size=exported.size,
        origin_node=node.name,
    )
    catalog.record_replica(exported.sha256, node.name, final, exported.size)


def _has_verified_copy(catalog: Catalog, sha256: str, fleet: Fleet) -> bool:
    """A shard with no copy left that can serve (verified, on an inventory node that
    answers) is exported again, even from an unchanged DB."""
    serving = node_names(fleet.nodes) - unavailable_nodes(catalog)
    return bool(catalog.replicas_of([sha256], nodes=serving))


@dataclass
class NodeShards:
    """What `training/npz_on_node` found and did on one node."""

    training_node: bool
    shards: pd.DataFrame  # config, sha256, bytes, verified
    moved: ReplicationResult = field(default_factory=ReplicationResult)

    @property
    def all_verified(self) -> bool:
        return bool(self.shards["verified"].all()) if not self.shards.empty else True


def place_on_node(node: Node, fleet: Fleet, catalog: Catalog, transports: Transports) -> NodeShards:
    """Every config's current shard at `training/{config}.npz` on a training node.

    A copy is verified by SHA-256 at the node before it replaces the previous shard (the
    transport's staging + rename). A copy the catalog already records is checked by
    stat: missing or resized means it was touched outside fleetsync, so its record is
    dropped and it is copied again. Other nodes: nothing to do."""
    columns = ["config", "sha256", "bytes", "verified"]
    if node.name not in {n.name for n in fleet.nodes_with_role("training")}:
        return NodeShards(training_node=False, shards=pd.DataFrame(columns=columns))
    transport = transports.for_node(node)
    moved = ReplicationResult()
    rows = []
    for config in fleet.configs:
        sha = catalog.alias(NPZ_ALIAS, config)
        if sha is None:
            continue
        path = node_shard_path(config)
        size = catalog.artifacts_of(shas=[sha])[sha].size
        if _recorded(catalog, sha, node.name, path):
            found = transport.stat(node, path)
            if found is None or found.size != size:
                catalog.drop_replicas(node.name, [(sha, path)])
        moved.add(distribute(sha, path, [node.name], fleet, catalog, transports))
        rows.append(
            {
                "config": config,
                "sha256": sha[:16],
                "bytes": size,
                "verified": _recorded(catalog, sha, node.name, path),
            }
        )
    return NodeShards(training_node=True, shards=pd.DataFrame(rows, columns=columns), moved=moved)


def _recorded(catalog: Catalog, sha256: str, node: str, path: str) -> bool:
    return any(r.path == path for r in catalog.replicas_of([sha256], nodes=[node]))
