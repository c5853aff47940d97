"""Promote a verified candidate and keep the promoted models on every GPU node.

No Dagster here: the assets call these functions and report what they return.
A node keeps its previous model until the new bytes are verified there: the
copy lands under a staging name, is hashed, renamed over `canonical_{config}.pth`,
and only then is the `ringrift_best_{config}.pth` symlink switched.

A candidate report is a claim from outside: it never moves or deletes a file. A report
whose SHA-256 does not match the file is refused and the file left as it is; a catalog
row at that path that no longer matches the bytes there is forgotten, never acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import NodeUnreachable, TransferError, Transport
from resources.transport.paths import UnsafePathError, safe_relpath
from sync_assets.engine.replication import ReplicationResult, distribute
from sync_assets.fleet.inventory import Fleet, Node

MODEL_KIND = "model"
PROMOTED_ALIAS = "model_promoted"
MODELS_DIR = "models"
# Names fleetsync publishes under models/: never a candidate, whatever a report says.
PUBLISHED_PREFIXES = ("canonical_", "ringrift_best_")


def canonical_model_path(config: str) -> str:
    return f"{MODELS_DIR}/canonical_{config}.pth"


def best_link_path(config: str) -> str:
    return f"{MODELS_DIR}/ringrift_best_{config}.pth"


def candidate_path_problem(path: str) -> str | None:
    """Why `path` cannot name a reported candidate model, or None when it can. Pure.

    It must be a safe relative path under `models/` naming a file training wrote, never
    one fleetsync publishes (the promoted `canonical_*` model, the `ringrift_best_*`
    symlink). Checked after normalisation, so `models/./canonical_x.pth` is refused like
    `models/canonical_x.pth`; a `..` never passes (`models/sub/../canonical_x.pth`)."""
    try:
        rel = safe_relpath(path)
    except UnsafePathError as exc:
        return str(exc)
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] != MODELS_DIR:
        return f"{rel!r}: a candidate model is a file under {MODELS_DIR}/"
    if parts[-1].lower().startswith(PUBLISHED_PREFIXES):
        published = " and ".join(f"{prefix}*" for prefix in PUBLISHED_PREFIXES)
        return f"{rel!r}: {published} are fleetsync's promoted models, never a candidate"
    return None


class CandidateRejected(TransferError):
    """The report does not match the file on its node: the report is refused, the file
    is left exactly as it is."""


def register_candidate(
    node: Node, path: str, sha256: str, config: str, catalog: Catalog, transports: Transports
) -> int:
    """Check the reported file on its node (size, SHA-256 computed there) and record it.

    A file that does not hash to what was reported (a stale report: training wrote a
    newer model there since; a truncated upload; a forged report) rejects the *report*.
    Catalog rows at that path that do not match the bytes there are dropped: they would
    otherwise be counted as copies and used as copy sources."""
    problem = candidate_path_problem(path)
    if problem is not None:
        raise CandidateRejected(f"node {node.name}: {problem}")
    path = safe_relpath(path)
    try:
        now = hash_on_node(transports.for_node(node), node, path)
    except NodeUnreachable:
        raise  # says nothing about the report: the run retries
    except TransferError as exc:  # not a regular file, unreadable: not a candidate
        raise CandidateRejected(f"{exc}: report rejected, file left untouched") from exc
    stale = _drop_rows_not_matching(catalog, node.name, path, now[1] if now else None)
    if now is None or now[1] != sha256:
        seen = "is missing or was being written" if now is None else f"hashes to {now[1]}"
        forgotten = f"; {stale} stale catalog row(s) for it dropped" if stale else ""
        raise CandidateRejected(
            f"node {node.name}: {path} {seen}, the report said {sha256}: report rejected, "
            f"file left untouched{forgotten}"
        )
    size = now[0]
    catalog.add_artifact(
        sha256, kind=MODEL_KIND, config=config, name=path, size=size, origin_node=node.name
    )
    catalog.record_replica(sha256, node.name, path, size)
    return size


def hash_on_node(transport: Transport, node: Node, path: str) -> tuple[int, str] | None:
    """(size, SHA-256) of the file as it is now, computed on its node; None when it is
    absent or changed while being hashed (a file being written has no digest to trust)."""
    before = transport.stat(node, path)
    if before is None:
        return None
    digest = transport.sha256(node, path)
    after = transport.stat(node, path)
    if after is None or (after.size, after.mtime_ns) != (before.size, before.mtime_ns):
        return None
    return after.size, digest


def _drop_rows_not_matching(catalog: Catalog, node: str, path: str, sha256: str | None) -> int:
    """Forget every replica recorded at `path` on `node` other than `sha256` (None: none
    is there): the file was just hashed, so those rows are wrong."""
    replicas = catalog.replicas_frame()
    wrong = replicas[
        (replicas["node"] == node) & (replicas["path"] == path) & (replicas["sha256"] != sha256)
    ]
    return catalog.drop_replicas(node, [(sha, path) for sha in wrong["sha256"]])


@dataclass
class Placement:
    """Where a config's promoted model now is, and what it took."""

    moved: ReplicationResult = field(default_factory=ReplicationResult)
    holders: list[str] = field(default_factory=list)
    # Copies outside canonical_{config}.pth (the reported candidate file) whose bytes
    # changed since they were recorded: dropped from the catalog, not used as a source.
    changed_sources: list[str] = field(default_factory=list)


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
    replicas = catalog.replicas_frame([MODEL_KIND])
    mine = replicas[(replicas["sha256"] == sha256) & (replicas["state"] == "verified")]
    if {n.name for n in targets} - set(mine.loc[mine["path"] == path, "node"]):
        placement.changed_sources = drop_changed_candidate_copies(
            sha256, config, fleet, catalog, transports
        )
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


def drop_changed_candidate_copies(
    sha256: str, config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> list[str]:
    """Re-hash, on their nodes, the recorded copies of `sha256` outside
    `canonical_{config}.pth` — the candidate file as reported, which training may have
    overwritten since — and drop the rows whose bytes changed, before anything copies
    from them. A node that cannot be reached proves nothing: its row stays. Returns one
    line per dropped row."""
    replicas = catalog.replicas_frame([MODEL_KIND])
    others = replicas[
        (replicas["sha256"] == sha256) & (replicas["path"] != canonical_model_path(config))
    ]
    dropped: list[str] = []
    names = {n.name for n in fleet.nodes}
    for name, path in zip(others["node"], others["path"], strict=True):
        if name not in names:
            continue
        node = fleet.node(name)
        try:
            now = hash_on_node(transports.for_node(node), node, path)
        except NodeUnreachable:
            continue
        except TransferError:  # no longer a readable regular file: not these bytes
            now = None
        if now is None or now[1] != sha256:
            catalog.drop_replicas(name, [(sha256, path)])
            seen = "is gone or being written" if now is None else f"now hashes to {now[1][:12]}"
            dropped.append(f"node {name}: {path} {seen}, not {sha256[:12]}: row dropped")
    return dropped
