"""Merge collected snapshots into `games/canonical_{config}.db` on a durable node.

The merge itself (`merge.py`, standard library only) runs *on* the durable node that
holds the canonical DB — shipped over the transport as `python3 - ARGS` — so bytes
never travel through the orchestrator. One writer per config: a catalog lease.

What to merge is decided by content, never by names:
- a snapshot is merged into `config` when its census counted games of that config
  (every game is routed by its own board and player count; a file's name is a hint);
- the catalog records which snapshots each canonical *version* (its SHA-256) holds.
  The primary's canonical file is hashed (or its recorded hash confirmed by size and
  mtime) and merged with exactly the snapshots that version lacks. So a partial merge
  on one node, followed by a change of primary, merges again into the new primary's
  version whatever it never received; an unknown version (a merge that died) gets
  everything again, which the idempotent merge makes safe;
- a snapshot merge.py cannot read at all is quarantined (recorded, never retried, the
  file kept); the other snapshots are merged.
The result is hashed, registered as the config's canonical alias and replicated to the
other durable nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resources.catalog import Catalog, Replica, ReplicaState
from resources.transport import Transports
from resources.transport.base import TransferError
from resources.transport.programs import SQLITE_SNAPSHOT, RemoteProgramFailed
from sync_assets.engine.audit import SUSPECT_SLACK_S
from sync_assets.engine.consolidate import StagedCopy, choose_primary, stage
from sync_assets.engine.replication import (
    ReplicationResult,
    confirm_holders,
    counted_durable_nodes,
    node_names,
    replicate,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games.collect import (
    MERGE_PY,
    SNAPSHOT_KIND,
    NotAGameDb,
    collected_path,
    record_census,
)
from sync_assets.kinds import GAMES_CANONICAL

CANONICAL_KIND = GAMES_CANONICAL.name


def canonical_path(config: str) -> str:
    return f"games/canonical_{config}.db"


@dataclass
class CanonicalResult:
    primary: str | None = None
    base_sha256: str | None = None  # the canonical version merged into (None: new file)
    snapshots_merged: int = 0
    totals: dict[str, Any] = field(default_factory=dict)  # merge.py's totals
    quarantined: dict[str, str] = field(default_factory=dict)  # snapshot label → why
    sha256: str | None = None
    size: int = 0
    moved: ReplicationResult = field(default_factory=ReplicationResult)
    integrity_problems: list[str] = field(default_factory=list)
    durable_copies: int = 0


def _holder_or_busiest(reachable: list[Node], current: str | None, catalog: Catalog) -> Node | None:
    """Games' primary: the reachable durable node holding the current canonical DB;
    else the one holding most verified copies."""
    by_name = {n.name: n for n in reachable}
    if current is not None and (holders := catalog.replicas_of([current], nodes=by_name)):
        return by_name[holders[0].node]
    counts = {n: c for n, c in catalog.verified_copies_per_node().items() if n in by_name}
    return by_name[min(counts, key=lambda n: (-counts[n], n))] if counts else None


def merge_canonical(
    config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> CanonicalResult:
    """Merge into the primary's canonical DB every collected snapshot holding games of
    `config` that its version lacks, then register and replicate the result."""
    result = CanonicalResult()
    with catalog.lease(f"games/canonical/{config}"):
        _count_uncounted(fleet, catalog, transports, result.moved)
        current = catalog.alias(CANONICAL_KIND, config)
        down = unavailable_nodes(catalog)
        primary = choose_primary(
            fleet, catalog, lambda up: _holder_or_busiest(up, current, catalog)
        )
        result.primary = primary.name
        target = canonical_path(config)
        known = set(catalog.artifacts_of(CANONICAL_KIND, config=config))
        versions = {  # before anything may be written over them
            node.name: _adopt_if_foreign(node, config, known, catalog, transports, result)
            for node in fleet.durable_nodes
            if node.name not in down
        }
        base = versions[primary.name]
        if current is not None and base != current:
            # The current version, wherever a copy is left, is the base: never rebuild
            # from snapshots what a copy still holds.
            staged = stage(primary, [current], lambda _art: target, fleet, catalog, transports)
            result.moved.add(staged.moved)
            base = _version_on(primary, target, catalog, transports)
        result.base_sha256 = base
        holds = catalog.canonical_contents(base) if base else set()
        durable = counted_durable_nodes(fleet, catalog)
        todo = catalog.snapshots_to_merge(config, durable) - holds
        merged: dict[str, dict[str, Any]] = {}
        failure: TransferError | None = None
        if todo:
            staged = stage(primary, todo, collected_path, fleet, catalog, transports)
            result.moved.add(staged.moved)
            merged, failure = _merge_on(primary, config, staged.held, catalog, transports, result)

        found = transports.for_node(primary).stat(primary, target)
        if found is not None:
            if todo or base is None:
                result.integrity_problems = _check_integrity(primary, target, transports)
            if result.integrity_problems:
                # A damaged corpus must not replace good copies elsewhere.
                catalog.record_merges(config, None, merged)
                return result
            # Unchanged unless merge.py ran; it only ever adds, so what the base version
            # held plus what committed now is what the new version holds, at least.
            if todo or base is None:
                sha = transports.for_node(primary).sha256(primary, target)
            else:
                sha = base
            catalog.record_canonical_contents(config, sha, holds | set(merged))
            catalog.record_merges(config, sha, merged)
            catalog.add_artifact(
                sha, kind=CANONICAL_KIND, config=config, name=target, size=found.size,
                origin_node=primary.name,
            )  # fmt: skip
            catalog.record_replica(sha, primary.name, target, found.size)
            catalog.set_alias(CANONICAL_KIND, config, sha)
            result.sha256, result.size = sha, found.size
            result.moved.add(confirm_holders([sha], fleet, catalog, transports))
            result.moved.add(replicate([sha], fleet, catalog, transports, lambda _art: target))
            result.durable_copies = catalog.durable_copy_counts(durable, shas=[sha]).get(sha, 0)
        if failure is not None:
            raise failure
    return result


def _adopt_if_foreign(
    node: Node,
    config: str,
    known: set[str],
    catalog: Catalog,
    transports: Transports,
    result: CanonicalResult,
) -> str | None:
    """The version (SHA-256) of the canonical DB file on `node`, None when there is none.
    A file fleetsync never made (from before fleetsync, or written by a tool) holds
    games no snapshot may hold: it is copied aside as a collected snapshot, counted and
    merged like any other, before a new version is written over it (LESSONS 3: a
    consolidation that replaced a canonical DB lost 235 k games)."""
    transport = transports.for_node(node)
    target = canonical_path(config)
    sha = _version_on(node, target, catalog, transports)
    if sha is None or sha in known:
        return sha
    aside = f"games/collected/{node.name}/canonical_{config}.{sha[:16]}.db"
    copied = transport.copy_between(node, target, node, aside, sha)
    catalog.add_artifact(
        sha, kind=SNAPSHOT_KIND, config=config, name=target, size=copied.size,
        origin_node=node.name,
    )  # fmt: skip
    catalog.record_replica(sha, node.name, aside, copied.size)
    result.moved.findings.append(
        f"node {node.name}: {target}: a canonical DB fleetsync did not make; kept as "
        f"{aside} and merged like a snapshot"
    )
    try:
        record_census(node, aside, sha, catalog, transports)
    except TransferError as exc:  # counted again before the next merge, or quarantined
        result.moved.failures.append(f"counting the games of {aside}: {exc}")
    return sha


def _count_uncounted(
    fleet: Fleet, catalog: Catalog, transports: Transports, moved: ReplicationResult
) -> None:
    """Count the games of snapshots collected before censuses existed (or whose count
    failed at collection), on a durable node holding them."""
    uncounted = catalog.uncounted_snapshots(SNAPSHOT_KIND) - set(catalog.quarantined())
    if not uncounted:
        return
    copies: dict[str, list[Replica]] = {}
    for copy in catalog.replicas_of(uncounted, nodes=node_names(fleet.durable_nodes)):
        copies.setdefault(copy.sha256, []).append(copy)
    for sha in sorted(copies):
        errors = []
        for _, node_name, path, _ in copies[sha]:
            try:  # one copy's trouble is not the snapshot's: the next copy is tried
                record_census(fleet.node(node_name), path, sha, catalog, transports)
            except NotAGameDb:
                break  # its verified bytes: quarantined, never merged, its copies kept
            except TransferError as exc:
                errors.append(str(exc))
                continue
            break
        else:
            moved.failures.append(f"counting the games of {sha[:16]}: {'; '.join(errors)}")


def _version_on(node: Node, path: str, catalog: Catalog, transports: Transports) -> str | None:
    """SHA-256 of the canonical file on `node` (None: there is none). The recorded hash
    is taken when the file still has the recorded size and was not modified after it
    was verified; otherwise the file is hashed on the node and stale records dropped."""
    transport = transports.for_node(node)
    found = transport.stat(node, path)
    recorded = catalog.replicas_on_node(node.name, [ReplicaState.VERIFIED], [path])
    if found is None:
        catalog.drop_replicas(node.name, [(sha, path) for sha, *_ in recorded])
        return None
    for sha, _, size, verified_at in recorded:
        if size == found.size and found.mtime_ns <= (verified_at + SUSPECT_SLACK_S) * 1e9:
            return str(sha)
    return transport.sha256(node, path)


def _merge_on(
    primary: Node,
    config: str,
    held: list[StagedCopy],
    catalog: Catalog,
    transports: Transports,
    result: CanonicalResult,
) -> tuple[dict[str, dict[str, Any]], TransferError | None]:
    """Run merge.py on the primary over the snapshots staged there.

    Returns ({snapshot sha → its stats} of the snapshots merged, the failure if the
    merge stopped: what it committed before is kept). Unreadable snapshots are
    quarantined."""
    if not held:
        return {}, None
    labels = {f"{c.origin_node}:{c.name}@{c.sha256[:12]}": (c.sha256, c.path) for c in held}
    args = [f"{path}={label}" for label, (_, path) in labels.items()]
    try:
        args = [canonical_path(config), config, *args]
        stats = transports.run_program(primary, MERGE_PY, args, timeout=6 * 3600)
        failure = None
    except RemoteProgramFailed as exc:  # its JSON names the snapshots committed before
        stats, failure = {"snapshots": (exc.result or {}).get("snapshots", []), "totals": {}}, exc
    except TransferError as exc:  # it died without saying what committed: assume nothing
        return {}, exc
    merged: dict[str, dict[str, Any]] = {}
    transport = transports.for_node(primary)
    for per in stats["snapshots"]:
        sha, path = labels[per["label"]]
        if per.get("status") != "unreadable":
            merged[sha] = per
        elif transport.stat(primary, path) is None or transport.sha256(primary, path) != sha:
            # This copy is damaged or gone, not the snapshot: forget the copy, and the
            # next merge gathers a good one.
            catalog.drop_replicas(primary.name, [(sha, path)])
            result.moved.findings.append(
                f"node {primary.name}: {path}: copy of {sha[:16]} is not those bytes; "
                "dropped from the catalog, to be copied again"
            )
        else:  # the verified bytes themselves cannot be read: no copy will do better
            why = str(per.get("error", "unreadable"))
            catalog.quarantine(sha, why)
            result.quarantined[per["label"]] = why
    result.snapshots_merged = len(merged)
    result.totals = stats["totals"]
    return merged, failure


def _check_integrity(node: Node, path: str, transports: Transports) -> list[str]:
    """SQLite integrity of a DB on its node, checked there (the file never travels)."""
    try:
        done = transports.run_program(node, SQLITE_SNAPSHOT, ["check", path], timeout=6 * 3600)
    except RemoteProgramFailed as exc:  # exit 1 with the problems found, or no output
        done = exc.result or {"problems": [f"check failed: {exc.why}"]}
    problems: list[str] = done["problems"]
    return problems
