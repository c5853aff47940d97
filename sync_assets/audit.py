"""Audit a node against the catalog: one listing, no hashing, catalog corrected.

A re-sync that finds nothing to do must cost about one directory walk, like
`rsync --dry-run`, not a re-hash of every byte (LESSONS 2: `--checksum` over
multi-GB files took the coordinator down). The catalog already holds each
replica's verified SHA-256 and size, so one `transport.list` of the node is enough
to find files that vanished or changed size since they were verified; those
replicas are dropped from the catalog and the planner repairs them on its next
pass. A file whose size is unchanged but that was modified after its
verification is only reported as *suspect* (hashing it is the caller's choice):
mtimes lie (clock skew, `touch`), sizes of a vanished file do not.

Before a replica is dropped, the paths the listing says are gone or resized are
looked at once more, directly (one command per 1,000 paths, output closed by a
sentinel): a listing that came back short — a transport bug, a directory being
rewritten while `find` walked it — must never cost the catalog a good replica.
Nothing extra is run when the listing matches the catalog.

Plain functions, no Dagster: assets, sensors and the CLI call `audit_node`.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from resources.catalog import Catalog
from resources.catalog import replicas as replicas_table
from resources.transport.base import TransferError

if TYPE_CHECKING:
    from resources.inventory import Node
    from resources.transport.base import Transport

AUDITED_STATES: tuple[str, ...] = ("verified", "staging")
"""Replica states that claim a file exists: both are used as copy sources."""

SUSPECT_SLACK_S = 2.0
"""mtime may trail verified_at by this much (clock skew, coarse timestamps)."""

CONFIRM_BATCH = 1000
"""Paths per confirmation command (keeps the command line far below ARG_MAX)."""

_CONFIRM_SCRIPT = 'find -L "$@" -maxdepth 0 -type f -printf "%p\\0%s\\0" 2>/dev/null; echo END'
_SENTINEL = "END\n"


@dataclass(frozen=True)
class AuditedReplica:
    """One catalog replica as the audit found it; found_size None = no such file."""

    sha256: str
    path: str
    recorded_size: int
    found_size: int | None


@dataclass
class AuditResult:
    """What one audit of one node saw and did; `dropped` replicas left the catalog."""

    node: str
    listed_dir: str | None = None  # None: nothing recorded on the node, nothing listed
    files_listed: int = 0
    ok: list[str] = field(default_factory=list)
    missing: list[AuditedReplica] = field(default_factory=list)
    changed: list[AuditedReplica] = field(default_factory=list)
    suspect: list[AuditedReplica] = field(default_factory=list)  # same size, modified later
    untracked: int = 0  # files below listed_dir that the catalog does not know on this node
    recovered: list[str] = field(default_factory=list)  # the listing missed them; they are fine
    dropped: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing missing or changed: the catalog was already right about this node."""
        return not (self.missing or self.changed)

    def metadata(self) -> dict[str, object]:
        """Numbers an operator reads in the UI."""
        return {
            "listed_dir": self.listed_dir or "",
            "files_listed": self.files_listed,
            "ok": len(self.ok),
            "missing": len(self.missing),
            "changed": len(self.changed),
            "suspect": len(self.suspect),
            "untracked": self.untracked,
            "recovered": len(self.recovered),
            "replicas_dropped": self.dropped,
            "seconds": round(self.seconds, 3),
        }


def listing_root(paths: Iterable[str]) -> str:
    """The deepest directory holding every path ("" = the data root): one listing covers all."""
    dirs = {posixpath.dirname(p) for p in paths}
    if not dirs or "" in dirs:
        return ""
    return posixpath.commonpath(sorted(dirs))


def audit_node(
    node: Node,
    catalog: Catalog,
    transport: Transport,
    *,
    states: Sequence[str] = AUDITED_STATES,
    drop: bool = True,
) -> AuditResult:
    """Compare one listing of `node` with the catalog's replicas on it; drop the wrong ones.

    Costs one catalog query, one `transport.list` (one round trip over SSH) and, only
    when something looks wrong, one confirming `transport.exec` per 1,000 such paths
    and one catalog transaction. Never reads file contents. An unreachable node, or a
    confirmation that comes back incomplete, raises (TransferError) before the catalog
    is touched: a node we could not see is not a node that lost its files."""
    started = time.monotonic()
    result = AuditResult(node=node.name)
    recorded = _replicas_on(catalog, node.name, states)
    if not recorded:
        result.seconds = time.monotonic() - started
        return result
    result.listed_dir = listing_root(row.path for row in recorded)
    listing = transport.list(node, result.listed_dir)
    result.files_listed = len(listing.files)
    found = {f.path: f for f in listing.files}
    known: set[str] = set()
    for row in recorded:
        known.add(row.path)
        file = found.get(row.path)
        if file is None:  # gone, or no longer a regular file (listed as rejected)
            result.missing.append(AuditedReplica(row.sha256, row.path, row.size, None))
        elif file.size != row.size:
            result.changed.append(AuditedReplica(row.sha256, row.path, row.size, file.size))
        else:
            result.ok.append(row.path)
            if file.mtime_ns / 1e9 > row.verified_at + SUSPECT_SLACK_S:
                result.suspect.append(AuditedReplica(row.sha256, row.path, row.size, file.size))
    result.untracked = len(found.keys() - known)
    if result.missing or result.changed:
        _confirm(node, transport, result)
    if drop:
        result.dropped = _drop(catalog, node.name, [*result.missing, *result.changed])
    result.seconds = time.monotonic() - started
    return result


def audit_nodes(
    nodes: Sequence[Node],
    catalog: Catalog,
    transport_for: Callable[[Node], Transport],
    *,
    max_workers: int = 8,
    drop: bool = True,
) -> dict[str, AuditResult | TransferError]:
    """Audit several nodes at once: a listing is mostly waiting on the node (and its
    login shell), so the waits overlap. One result per node name; a node that could not
    be listed maps to its error and the others are still audited and corrected."""

    def one(node: Node) -> AuditResult | TransferError:
        try:
            return audit_node(node, catalog, transport_for(node), drop=drop)
        except TransferError as exc:
            return exc

    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(nodes))) as pool:
        return dict(zip([n.name for n in nodes], pool.map(one, nodes), strict=True))


def _confirm(node: Node, transport: Transport, result: AuditResult) -> None:
    """Look at the missing and resized paths directly; keep only what that confirms."""
    wrong = [*result.missing, *result.changed]
    sizes: dict[str, int] = {}
    for i in range(0, len(wrong), CONFIRM_BATCH):
        paths = [f"./{r.path}" for r in wrong[i : i + CONFIRM_BATCH]]  # never an option
        done = transport.exec(node, ["sh", "-c", _CONFIRM_SCRIPT, "sh", *paths], timeout=300)
        out = done.stdout.decode("utf-8", "surrogateescape")
        if not out.endswith(_SENTINEL):
            raise TransferError(
                f"node {node.name}: audit: confirming {len(paths)} paths returned incomplete "
                f"output (exit {done.returncode}); nothing dropped"
            )
        fields = out[: -len(_SENTINEL)].split("\0")[:-1]  # NUL-terminated: path, size, …
        pairs = zip(fields[::2], fields[1::2], strict=True)
        sizes.update((path.removeprefix("./"), int(size)) for path, size in pairs)
    result.missing, result.changed = [], []
    for r in wrong:
        size = sizes.get(r.path)
        if size is None:
            result.missing.append(AuditedReplica(r.sha256, r.path, r.recorded_size, None))
        elif size != r.recorded_size:
            result.changed.append(AuditedReplica(r.sha256, r.path, r.recorded_size, size))
        else:
            result.recovered.append(r.path)
            result.ok.append(r.path)


def _replicas_on(catalog: Catalog, node: str, states: Sequence[str]) -> list[sa.Row[tuple]]:
    """The node's replicas in one query, not the fleet-wide replicas frame. (The table's
    primary key starts with sha256: an index on `node` would spare a scan.)"""
    t = replicas_table
    query = sa.select(t.c.sha256, t.c.path, t.c.size, t.c.verified_at).where(
        (t.c.node == node) & t.c.state.in_(list(states))
    )
    with catalog.engine.connect() as conn:
        return list(conn.execute(query))


def _drop(catalog: Catalog, node: str, wrong: Sequence[AuditedReplica]) -> int:
    """Drop the replicas in one transaction (a wiped disk can mean 10,000s of rows)."""
    if not wrong:
        return 0
    t = replicas_table
    with catalog.engine.begin() as conn:
        conn.execute(
            t.delete().where(
                (t.c.node == node)
                & (t.c.sha256 == sa.bindparam("s"))
                & (t.c.path == sa.bindparam("p"))
            ),
            [{"s": r.sha256, "p": r.path} for r in wrong],
        )
    return len(wrong)
