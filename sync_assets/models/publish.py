"""Promote a verified candidate and keep the promoted models on every GPU node.

No Dagster here: the assets call these functions and report what they return.
A node keeps its previous model until the new bytes are verified there: the
copy lands under a staging name, is hashed, renamed over `canonical_{config}.pth`,
and only then is the `ringrift_best_{config}.pth` symlink switched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resources.catalog import Catalog
from resources.inventory import Fleet, Node
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets.replication import ReplicationResult, distribute

MODEL_KIND = "model"
PROMOTED_ALIAS = "model_promoted"
QUARANTINE_DIR = "quarantine"


def canonical_model_path(config: str) -> str:
    return f"models/canonical_{config}.pth"


def best_link_path(config: str) -> str:
    return f"models/ringrift_best_{config}.pth"


class CandidateRejected(TransferError):
    """The reported candidate does not match the file on its node."""


def register_candidate(
    node: Node, path: str, sha256: str, config: str, catalog: Catalog, transports: Transports
) -> int:
    """Check the reported file on its node (size, SHA-256 computed there) and record it.

    A file that does not hash to what was reported (truncated upload, wrong report)
    is moved to `quarantine/` on its node and recorded nowhere: never distributed."""
    transport = transports.for_node(node)
    found = transport.stat(node, path)
    if found is None:
        raise CandidateRejected(f"node {node.name}: {path}: reported candidate does not exist")
    got = transport.sha256(node, path)
    if got != sha256:
        quarantined = f"{QUARANTINE_DIR}/{path.replace('/', '_')}.{got[:12]}"
        transport.copy_between(node, path, node, quarantined, got)
        transport.remove(node, path)
        raise CandidateRejected(
            f"node {node.name}: {path}: sha256 on the node is {got}, the report said "
            f"{sha256}; moved to {quarantined}, not promoted"
        )
    catalog.add_artifact(
        sha256, kind=MODEL_KIND, config=config, name=path, size=found.size,
        origin_node=node.name,
    )  # fmt: skip
    catalog.record_replica(sha256, node.name, path, found.size)
    return found.size


@dataclass
class Placement:
    """Where a config's promoted model now is, and what it took."""

    moved: ReplicationResult = field(default_factory=ReplicationResult)
    holders: list[str] = field(default_factory=list)


def place_promoted(
    config: str,
    sha256: str,
    targets: list[Node],
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> Placement:
    """`canonical_{config}.pth` = these bytes on every target, then the symlink switch."""
    path = canonical_model_path(config)
    placement = Placement()
    placement.moved = distribute(
        sha256, path, [n.name for n in targets], fleet, catalog, transports
    )
    replicas = catalog.replicas_frame([MODEL_KIND])
    here = set(
        replicas.loc[
            (replicas["sha256"] == sha256)
            & (replicas["path"] == path)
            & (replicas["state"] == "verified"),
            "node",
        ]
    )
    for node in targets:
        if node.name not in here:
            continue
        transports.for_node(node).publish_symlink(
            node, best_link_path(config), f"canonical_{config}.pth"
        )
        placement.holders.append(node.name)
    return placement
