"""Promote a verified candidate and keep the promoted models on every GPU node.

`promote` is the workflow of `models/promoted`: check the reported candidate on its
node, ask the gate (`promotion.py`), place the winner on the durable nodes and only then
flip the alias. No Dagster here: the assets report what these functions return.
A node keeps its previous model until the new bytes are verified there: the
copy lands under a staging name, is hashed, renamed over `canonical_{config}.pth`,
and only then is the `ringrift_best_{config}.pth` symlink switched.

A candidate report is a claim from outside: it never moves or deletes a file. A report
whose SHA-256 does not match the file is refused and the file left as it is; a catalog
row at that path that no longer matches the bytes there is forgotten, never acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resources.catalog import Catalog, ReplicaState
from resources.transport import Transports
from resources.transport.base import NodeUnreachable, TransferError, Transport
from resources.transport.paths import safe_relpath
from sync_assets.elo.standings import standings_for
from sync_assets.engine.replication import ReplicationResult, distribute, node_names
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.kinds import MODEL
from sync_assets.models.promotion import (
    MODELS_DIR,
    Decision,
    Standing,
    candidate_path_problem,
    decide_promotion,
)
from sync_assets.reports import Candidate, Rejected

PROMOTED_ALIAS = MODEL.alias


def canonical_model_path(config: str) -> str:
    return f"{MODELS_DIR}/canonical_{config}.pth"


def best_link_path(config: str) -> str:
    return f"{MODELS_DIR}/ringrift_best_{config}.pth"


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
        sha256, kind=MODEL.name, config=config, name=path, size=size, origin_node=node.name
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
    recorded = catalog.replicas_on_node(node, list(ReplicaState), [path])
    return catalog.drop_replicas(node, [(sha, path) for sha, *_ in recorded if sha != sha256])


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
    if node_names(targets) - _verified_at(catalog, sha256, path):
        placement.changed_sources = drop_changed_candidate_copies(
            sha256, config, fleet, catalog, transports
        )
    placement.moved = distribute(
        sha256, path, [n.name for n in targets], fleet, catalog, transports
    )
    here = _verified_at(catalog, sha256, path)
    for node in targets:
        if node.name not in here:
            continue
        transports.for_node(node).publish_symlink(
            node, best_link_path(config), f"canonical_{config}.pth"
        )
        placement.holders.append(node.name)
    return placement


def _verified_at(catalog: Catalog, sha256: str, path: str) -> set[str]:
    return {r.node for r in catalog.replicas_of([sha256]) if r.path == path}


def drop_changed_candidate_copies(
    sha256: str, config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> list[str]:
    """Re-hash, on their nodes, the recorded copies of `sha256` outside
    `canonical_{config}.pth` — the candidate file as reported, which training may have
    overwritten since — and drop the rows whose bytes changed, before anything copies
    from them. A node that cannot be reached proves nothing: its row stays. Returns one
    line per dropped row."""
    others = catalog.replicas_of([sha256], list(ReplicaState), node_names(fleet.nodes))
    dropped: list[str] = []
    for _, name, path, _ in others:
        if path == canonical_model_path(config):
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


@dataclass
class Promotion:
    """What `promote` decided and did. `holders`: the durable nodes holding the promoted
    model (None: no model is promoted for the config)."""

    decision: Decision
    promoted_sha256: str | None
    report_rejected: bool = False
    candidate_sha256: str | None = None  # set once the candidate's rating was looked up
    candidate: Standing | None = None
    holders: list[str] | None = None
    changed_sources: list[str] = field(default_factory=list)
    moved: ReplicationResult = field(default_factory=ReplicationResult)


def promote(
    config: str,
    candidate: Candidate | Rejected | None,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> Promotion:
    """Decide the newest candidate report of `config` and act on the decision.

    The alias flips only once the candidate is on a durable node with no failed copy;
    a result with failures in `moved`, or a promotion that reached no durable node,
    left the alias as it was (the caller fails the step)."""
    promoted_sha = catalog.alias(PROMOTED_ALIAS, config)

    def keep(result: Promotion) -> Promotion:
        """No promotion: the promoted model stays on the durable nodes, and is copied
        again where a node lost it (the catalog's word is checked on disk)."""
        if promoted_sha is not None:
            kept = place_promoted(config, promoted_sha, fleet.durable_nodes, fleet, catalog,
                                  transports)  # fmt: skip
            result.moved, result.holders = kept.moved, kept.holders
        return result

    if candidate is None:
        return keep(
            Promotion(Decision(False, "no candidate reported for this config"), promoted_sha)
        )
    if isinstance(candidate, Rejected):
        reason = f"candidate report rejected: {candidate.reason}"
        return keep(Promotion(Decision(False, reason), promoted_sha, report_rejected=True))
    node = fleet.node(candidate.node)
    try:
        register_candidate(node, candidate.path, candidate.sha256, config, catalog, transports)
    except CandidateRejected as exc:
        return keep(Promotion(Decision(False, str(exc)), promoted_sha, report_rejected=True))
    except NodeUnreachable as exc:  # decided when the node answers; the promoted one stays
        reason = f"candidate not checked, its node is unreachable: {exc}"
        return keep(Promotion(Decision(False, reason), promoted_sha))
    mine, theirs = standings_for(config, candidate.sha256, promoted_sha, fleet, catalog, transports)
    decision = decide_promotion(
        candidate.sha256, promoted_sha, mine, theirs, explicit=candidate.promote
    )
    result = Promotion(decision, promoted_sha, candidate_sha256=candidate.sha256, candidate=mine)
    if not decision.promote:
        return keep(result)
    placement = place_promoted(
        config, candidate.sha256, fleet.durable_nodes, fleet, catalog, transports
    )
    result.changed_sources = placement.changed_sources
    if not placement.holders and placement.changed_sources:
        changed = "; ".join(placement.changed_sources)
        reason = f"the candidate changed on its node since it was checked: {changed}"
        result.decision, result.report_rejected = Decision(False, reason), True
        return keep(result)
    result.moved, result.holders = placement.moved, placement.holders
    if not placement.moved.failures and placement.holders:
        catalog.set_alias(PROMOTED_ALIAS, config, candidate.sha256)
        result.promoted_sha256 = candidate.sha256
    return result
