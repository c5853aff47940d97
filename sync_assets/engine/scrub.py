"""Audit and scrub on rotation: which nodes to check next, which files to re-hash, and
the scrub itself, the way a ZFS scrub finds bit rot.

An audit (`engine.audit`) compares one listing with the catalog: it finds files gone or
resized, never a flipped bit. A scrub re-hashes, on the node, a bounded byte budget of a
node's verified replicas, least recently verified first, and compares each SHA-256 with
the catalog's for that replica:
- it matches: the replica's `verified_at` moves up, so the next scrub takes older ones;
- it differs at a path a newer version may be written over (`replaced_in_place`: a
  canonical DB mid-merge, a promoted model, a training node's current shard), or the
  bytes found are a version the catalog knows (of any kind): a writer's file, landed
  before its row was written, never moved; the stale replica is dropped and logged (the
  placement sensors put the current version back; a node agent's pull re-copies a file
  whose hash differs). The mtime cannot tell: `rsync --times` keeps the source's;
- it differs otherwise (a content-named file with unknown bytes: bit rot): the file is
  corrupt. It is moved aside on the node to `.quarantine/<path>.<found sha16>` (never
  deleted, never left under its final name, where a repair would copy over it), the
  replica is dropped and the finding logged, so the planner repairs it from another copy;
- the file is gone or resized: left to the audit's own look (`confirm_replicas`), which
  drops it; nothing is quarantined, and nothing dropped when the data root looks
  unmounted (`DataRootEmpty`: logged, and named in `ScrubResult.refused`);
- it changed while being read, or could not be read (timeout, I/O error): nothing is
  decided, and its verified_at stays, so it comes first again.
A node that cannot be reached changes nothing. Staging copies are never scrubbed: they
are not counted and are released (removed) as soon as their snapshot is collected.

The decisions (`nodes_to_check`, `scrub_selection`) are pure; `scrub_node` does the I/O.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resources.catalog import Catalog, ReplicaState
from resources.transport.base import TransferError
from resources.transport.programs import Program
from sync_assets.engine import scrub_hash
from sync_assets.engine.audit import AuditedReplica, DataRootEmpty, confirm_replicas
from sync_assets.fleet import node_program

if TYPE_CHECKING:
    from resources.transport import Transports
    from resources.transport.base import Transport
    from sync_assets.fleet.inventory import Node

SCRUB_HASH_PY = Program("scrub_hash.py", scrub_hash, (node_program,))
QUARANTINE_DIR = ".quarantine"


# ---- pure decisions ---------------------------------------------------------------------


def nodes_to_check(
    eligible: Iterable[str],
    last_checked: Mapping[str, float | None],
    k: int,
    *,
    due_before: float | None = None,
) -> list[str]:
    """The next (at most) `k` of the `eligible` nodes to audit or scrub: those never
    checked first (by name), then the longest since their last check (then by name);
    with `due_before`, only nodes never checked or last checked at or before it.

    Which nodes are eligible is the caller's: for audits and scrubs, the inventory's
    nodes that are active (not suspect, lost or retired), last probed reachable, with a
    closed breaker. A node that cannot answer would only cost the rotation a timeout;
    a returning node is audited by its probe before its copies count again."""
    due = [
        name
        for name in set(eligible)
        if (at := last_checked.get(name)) is None or due_before is None or at <= due_before
    ]
    due.sort(key=lambda name: (last_checked.get(name) is not None, last_checked.get(name), name))
    return due[: max(k, 0)]


@dataclass(frozen=True)
class ScrubCandidate:
    """A verified replica on the node being scrubbed, as the catalog records it."""

    sha256: str
    path: str
    size: int
    verified_at: float
    kind: str


def scrub_selection(candidates: Iterable[ScrubCandidate], budget: int) -> list[ScrubCandidate]:
    """The replicas one scrub re-hashes: least recently verified first (then by path),
    as long as their sizes fit in `budget` bytes, stopping at the first that does not
    (no smaller, younger file jumps the queue, so an old large file is never starved);
    always at least one file when there is any, however large."""
    chosen: list[ScrubCandidate] = []
    total = 0
    for candidate in sorted(candidates, key=lambda c: (c.verified_at, c.path, c.sha256)):
        if chosen and total + candidate.size > budget:
            break
        chosen.append(candidate)
        total += candidate.size
    return chosen


def gone_finding(replica: AuditedReplica) -> tuple[str, str, str, str]:
    """The `check_findings` entry of a replica found missing or resized."""
    what = "missing" if replica.found_size is None else "resized"
    found = f"recorded {replica.recorded_size} bytes, found {replica.found_size}"
    return replica.sha256, replica.path, what, found


def quarantine_path(path: str, found_sha256: str) -> str:
    """Where a corrupt file is moved aside on its node (its bytes named by their hash)."""
    return posixpath.join(QUARANTINE_DIR, f"{path}.{found_sha256[:16]}")


# ---- the scrub of one node ---------------------------------------------------------------


@dataclass
class ScrubResult:
    """What one scrub of one node did."""

    node: str
    files: int = 0
    bytes_hashed: int = 0
    matched: int = 0
    corrupt: list[str] = field(default_factory=list)  # paths moved aside to quarantine
    rewritten: list[str] = field(default_factory=list)  # written since verified: dropped
    gone: list[str] = field(default_factory=list)  # missing or resized: dropped by the audit
    skipped: list[str] = field(default_factory=list)  # changed while read, or re-recorded
    errors: list[str] = field(default_factory=list)  # not hashed: nothing decided
    failures: list[str] = field(default_factory=list)  # a corrupt file that was not moved
    refused: str = ""  # why the gone ones were not dropped (a data root that looks unmounted)

    def summary(self) -> str:
        """One line for the catalog's `node_checks.last_finding`."""
        parts = [f"scrub: {self.matched}/{self.files} matched"]
        for name, items in (
            ("corrupt", self.corrupt),
            ("rewritten", self.rewritten),
            ("gone", self.gone),
            ("skipped", self.skipped),
            ("hash errors", self.errors),
            ("not moved aside", self.failures),
        ):
            if items:
                parts.append(f"{len(items)} {name}")
        if self.refused:
            parts.append(self.refused)
        return ", ".join(parts)

    def metadata(self) -> dict[str, object]:
        return {
            "files": self.files,
            "bytes_hashed": self.bytes_hashed,
            "matched": self.matched,
            "corrupt": self.corrupt,
            "rewritten": self.rewritten,
            "gone": self.gone,
            "skipped": self.skipped,
            "errors": self.errors,
            "failures": self.failures,
            "refused": self.refused,
        }


def scrub_node(
    node: Node,
    catalog: Catalog,
    transports: Transports,
    *,
    replaced_in_place: Callable[[str, str], bool],
    budget: int,
    hash_timeout_s: float,
) -> ScrubResult:
    """Scrub `node` (see the module's docstring): up to `budget` bytes, each file within
    `hash_timeout_s` (a hung disk must not hold the scrub), recorded in `node_checks`.
    `replaced_in_place(kind, path)`: a newer version may be written over that file.
    Raises TransferError, having changed nothing, when the node cannot hash its files."""
    started = time.time()
    result = ScrubResult(node.name)
    rows = catalog.scrub_candidates(node.name)
    chosen = scrub_selection(
        (ScrubCandidate(r.sha256, r.path, r.size, r.verified_at, r.kind) for r in rows), budget
    )
    if chosen:
        answer = transports.run_program(
            node,
            SCRUB_HASH_PY,
            [],
            {"paths": [c.path for c in chosen], "timeout_s": hash_timeout_s},
            timeout=hash_timeout_s * len(chosen) + 60,
        )
        _decide(
            node, catalog, transports, chosen, answer["files"], started, replaced_in_place, result
        )
    catalog.record_scrub(node.name, result.bytes_hashed, result.summary(), at=started)
    return result


def _decide(
    node: Node,
    catalog: Catalog,
    transports: Transports,
    chosen: Sequence[ScrubCandidate],
    replies: Sequence[dict[str, object]],
    started: float,
    replaced_in_place: Callable[[str, str], bool],
    result: ScrubResult,
) -> None:
    transport = transports.for_node(node)
    matched, gone, dropped = [], [], []
    findings: list[tuple[str, str, str, str]] = []
    for candidate, reply in zip(chosen, replies, strict=True):
        result.files += 1
        if "error" in reply:
            result.errors.append(f"{candidate.path}: {reply['error']}")
        elif reply.get("changed"):
            result.skipped.append(f"{candidate.path}: changed while read")
        elif reply.get("missing") or reply["size"] != candidate.size:
            gone.append(AuditedReplica(candidate.sha256, candidate.path, candidate.size, None))
        else:
            result.bytes_hashed += int(str(reply["size"]))
            found = str(reply["sha256"])
            if found == candidate.sha256:
                matched.append((candidate.sha256, candidate.path))
                continue
            if not _still_recorded(catalog, node.name, candidate):
                result.skipped.append(f"{candidate.path}: recorded again while hashed")
            elif why := _landed_version(catalog, candidate, found, replaced_in_place):
                result.rewritten.append(candidate.path)
                dropped.append((candidate.sha256, candidate.path))
                detail = f"found {found}, {why}; row dropped, file left in place"
                findings.append((candidate.sha256, candidate.path, "rewritten", detail))
            else:
                aside = quarantine_path(candidate.path, found)
                try:
                    moved = _move_aside(node, transport, candidate.path, aside, reply)
                except TransferError as exc:
                    result.failures.append(f"{candidate.path}: {exc}")
                    continue
                if not moved:
                    result.skipped.append(f"{candidate.path}: changed since hashed")
                    continue
                result.corrupt.append(candidate.path)
                dropped.append((candidate.sha256, candidate.path))
                detail = f"found {found}; moved aside to {aside}"
                findings.append((candidate.sha256, candidate.path, "corrupt", detail))
    result.matched = len(matched)
    catalog.refresh_verified(node.name, matched, started)
    catalog.drop_replicas(node.name, dropped)
    try:
        for wrong in confirm_replicas(node, catalog, transport, gone):
            result.gone.append(wrong.path)
            findings.append(gone_finding(wrong))
    except DataRootEmpty as exc:  # an unmounted disk: its last copies must stay recorded
        result.refused = str(exc)
        findings.append(exc.finding())
    catalog.record_check_findings(node.name, findings)


def _landed_version(
    catalog: Catalog,
    candidate: ScrubCandidate,
    found: str,
    replaced_in_place: Callable[[str, str], bool],
) -> str:
    """Why bytes that differ from the catalog's may be a newer version a writer put there
    (never moved aside), or "" for rot. Asks the catalog only for a content-named file."""
    if replaced_in_place(candidate.kind, candidate.path):
        return "at a path a newer version is written over"
    if catalog.artifacts_of(shas=[found]):
        return "a version the catalog knows"
    return ""


def _still_recorded(catalog: Catalog, node: str, candidate: ScrubCandidate) -> bool:
    """The catalog still holds this replica as it was read: no writer recorded another
    version at the path (or re-verified it) while the scrub hashed."""
    rows = catalog.replicas_on_node(node, [ReplicaState.VERIFIED], paths=[candidate.path])
    return any(
        row.sha256 == candidate.sha256 and row.verified_at == candidate.verified_at for row in rows
    )


def _move_aside(
    node: Node, transport: Transport, path: str, aside: str, hashed: Mapping[str, object]
) -> bool:
    """Rename the corrupt file to its quarantine name; False, leaving it, when it
    changed since it was hashed (a writer got there first: it is not ours to move)."""
    now = transport.stat(node, path)
    if now is None or (now.size, now.mtime_ns) != (hashed["size"], hashed["mtime_ns"]):
        return False
    transport.rename(node, path, aside)
    return True
