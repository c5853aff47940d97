"""Audit a node against the catalog: one listing, no hashing, catalog corrected.

A re-sync that finds nothing to do must cost about one directory walk, like `rsync --dry-run`,
not a re-hash of every byte (LESSONS 2: `--checksum` over multi-GB files took the coordinator
down). The catalog already holds each replica's verified SHA-256 and size, so one
`transport.list` of the node is enough to find files that vanished or changed size since they
were verified; those replicas are dropped from the catalog and the planner repairs them on its
next pass. A file whose size is unchanged but that was modified after its verification is only
reported as *suspect* (hashing it is the caller's choice): mtimes lie (clock skew, `touch`),
sizes of a vanished file do not.

Before a replica is dropped, the paths the listing says are gone or resized are looked at once
more, directly (one command per 1,000 paths, output closed by a sentinel): a listing that came
back short — a transport bug, a directory being rewritten while `find` walked it — must never
cost the catalog a good replica. Nothing extra is run when the listing matches the catalog.

A data root whose disk is not mounted (an empty mount point after a reboot, an NFS or fsck
hiccup) looks exactly like a node whose files were all deleted: nothing is dropped on a node
whose data root holds no entry but hidden ones (fleetsync's own `.fleetsync`, `.quarantine`,
which a run may have made on the bare mount point). The same look that confirms the paths
tells (`replicas_to_drop`), so the guard costs no extra round trip; `DataRootEmpty` is raised
instead, naming the node: the last copy of an artifact must never be dropped because a disk
was late to mount.

Plain functions, no Dagster.
"""

from __future__ import annotations

import gc
import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resources.catalog import Catalog, ReplicaState
from resources.transport.base import TransferError

if TYPE_CHECKING:
    from resources.transport.base import Transport
    from sync_assets.fleet.inventory import Node

AUDITED_STATES: tuple[str, ...] = tuple(ReplicaState)
"""Replica states that claim a file exists: both are used as copy sources."""

SUSPECT_SLACK_S = 2.0
"""mtime may trail verified_at by this much (clock skew, coarse timestamps)."""

CONFIRM_BATCH = 1000
"""Paths per confirmation command (keeps the command line far below ARG_MAX)."""

# First line: "x" when the data root (the working directory) holds a visible entry; then
# NUL-terminated path, size pairs of the given paths that are regular files.
_CONFIRM_SCRIPT = (
    'find . -mindepth 1 -maxdepth 1 ! -name ".*" -printf x -quit 2>/dev/null; echo; '
    'find -L "$@" -maxdepth 0 -type f -printf "%p\\0%s\\0" 2>/dev/null; echo END'
)
_SENTINEL = "END\n"


class DataRootEmpty(TransferError):
    """Replicas would be dropped on a node whose data root holds nothing of ours: an
    unmounted disk, not a loss. Nothing was dropped."""

    def __init__(self, node: str, wrong: int) -> None:
        super().__init__(
            f"node {node}: {wrong} recorded replicas not on disk and its data root is empty "
            "(hidden entries aside); nothing dropped: data root empty or unmounted?"
        )

    def finding(self) -> tuple[str, str, str, str]:
        """The `check_findings` entry (about the data root, no one artifact)."""
        return "", ".", "unmounted", str(self)


@dataclass(frozen=True)
class OnDisk:
    """What one look at given paths on a node found."""

    sizes: dict[str, int]  # path: size, of those that are regular files (links followed)
    root_populated: bool  # the data root holds an entry that is not hidden


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


def listing_root(lowest: str, highest: str) -> str:
    """The deepest directory holding every path that sorts between `lowest` and
    `highest` ("" = the data root): one listing covers them all. Paths between two
    strings share those two's common prefix, so the catalog's min and max suffice."""
    if lowest == highest:
        return posixpath.dirname(lowest)
    common = posixpath.commonprefix([lowest, highest])
    return common[: common.rfind("/")] if "/" in common else ""


def audit_node(node: Node, catalog: Catalog, transport: Transport) -> AuditResult:
    """Compare one listing of `node` with the catalog's replicas on it; drop the wrong ones.

    Costs two catalog queries (the path span, then the rows, read while the node
    lists), one `transport.list` (one round trip over SSH) and, only
    when something looks wrong, one confirming `transport.exec` per 1,000 such paths
    and one catalog transaction. Never reads file contents. An unreachable node, or a
    confirmation that comes back incomplete, raises (TransferError) before the catalog
    is touched: a node we could not see is not a node that lost its files; so does a
    data root that looks unmounted (DataRootEmpty)."""
    with _gc_paused():
        return _audit(node, catalog, transport)


def _audit(node: Node, catalog: Catalog, transport: Transport) -> AuditResult:
    started = time.monotonic()
    result = AuditResult(node=node.name)
    span = catalog.replica_path_span(node.name, AUDITED_STATES)
    if span is None:
        result.seconds = time.monotonic() - started
        return result
    result.listed_dir = listing_root(*span)
    # The listing is mostly a wait on the node: read the catalog's side meanwhile.
    with ThreadPoolExecutor(1) as pool:
        listing_job = pool.submit(transport.list, node, result.listed_dir)
        recorded = catalog.replicas_on_node(node.name, AUDITED_STATES)
        listing = listing_job.result()
    result.files_listed = len(listing.files)
    found = {f.path: f for f in listing.files}
    for sha256, path, size, verified_at in recorded:  # unpacked: Row attributes are slow
        file = found.get(path)
        if file is None:  # gone, or no longer a regular file (listed as rejected)
            result.missing.append(AuditedReplica(sha256, path, size, None))
        elif file.size != size:
            result.changed.append(AuditedReplica(sha256, path, size, file.size))
        else:
            result.ok.append(path)
            if file.mtime_ns > (verified_at + SUSPECT_SLACK_S) * 1e9:
                result.suspect.append(AuditedReplica(sha256, path, size, file.size))
    result.untracked = len(found.keys() - {row[1] for row in recorded})
    if result.missing or result.changed:
        _confirm(node, transport, result)
    wrong = [*result.missing, *result.changed]
    result.dropped = catalog.drop_replicas(node.name, [(r.sha256, r.path) for r in wrong])
    result.seconds = time.monotonic() - started
    return result


def audit_nodes(
    nodes: Sequence[Node],
    catalog: Catalog,
    transport_for: Callable[[Node], Transport],
    *,
    max_workers: int = 8,
) -> dict[str, AuditResult | TransferError]:
    """Audit several nodes at once: a listing is mostly waiting on the node (and its
    login shell), so the waits overlap. One result per node name; a node that could not
    be listed maps to its error and the others are still audited and corrected."""

    def one(node: Node) -> AuditResult | TransferError:
        try:
            return audit_node(node, catalog, transport_for(node))
        except TransferError as exc:
            return exc

    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(nodes))) as pool:
        return dict(zip([n.name for n in nodes], pool.map(one, nodes), strict=True))


def look_on_disk(node: Node, transport: Transport, paths: Sequence[str]) -> OnDisk:
    """The sizes of the given paths that are regular files on the node (links followed),
    looked at directly, and whether its data root holds anything visible: one command per
    1,000 paths, output closed by a sentinel. Raises TransferError when the answer is
    incomplete: a node we could not see is not a node that lost its files."""
    sizes: dict[str, int] = {}
    root_populated = True
    for i in range(0, len(paths), CONFIRM_BATCH):
        batch = [f"./{p}" for p in paths[i : i + CONFIRM_BATCH]]  # never an option
        done = transport.exec(node, ["sh", "-c", _CONFIRM_SCRIPT, "sh", *batch], timeout=300)
        out = done.stdout.decode("utf-8", "surrogateescape")
        if not out.endswith(_SENTINEL):
            raise TransferError(
                f"node {node.name}: confirming {len(batch)} paths returned incomplete "
                f"output (exit {done.returncode}); nothing dropped"
            )
        root_line, _, listed = out[: -len(_SENTINEL)].partition("\n")
        root_populated = root_populated and root_line == "x"  # every look must say so
        fields = listed.split("\0")[:-1]  # NUL-terminated: path, size, …
        pairs = zip(fields[::2], fields[1::2], strict=True)
        sizes.update((path.removeprefix("./"), int(size)) for path, size in pairs)
    return OnDisk(sizes, root_populated)


def replicas_to_drop(
    node: str, recorded: Sequence[AuditedReplica], sizes: Mapping[str, int], *, root_populated: bool
) -> list[AuditedReplica]:
    """The `recorded` replicas whose file is gone or resized (`sizes`: what is on disk),
    with the size found. Raises DataRootEmpty, so that none is dropped, when there is one
    and the data root holds nothing visible: that is an unmounted disk, not a loss."""
    wrong = [
        AuditedReplica(r.sha256, r.path, r.recorded_size, sizes.get(r.path))
        for r in recorded
        if sizes.get(r.path) != r.recorded_size
    ]
    if wrong and not root_populated:
        raise DataRootEmpty(node, len(wrong))
    return wrong


def confirm_replicas(
    node: Node, catalog: Catalog, transport: Transport, recorded: Sequence[AuditedReplica]
) -> list[AuditedReplica]:
    """Check catalog replicas on `node` against its disk (no hashing) and drop the ones
    that are gone or resized, in one transaction; returns those. The check the engine
    makes before it trusts a "nothing to do" or uses a copy as a source: the disk's word
    beats the catalog's. `recorded` rows carry the catalog's size (found_size unused).
    Raises DataRootEmpty, dropping nothing, when the node's data root looks unmounted."""
    if not recorded:
        return []
    seen = look_on_disk(node, transport, [r.path for r in recorded])
    wrong = replicas_to_drop(node.name, recorded, seen.sizes, root_populated=seen.root_populated)
    catalog.drop_replicas(node.name, [(r.sha256, r.path) for r in wrong])
    return wrong


def _confirm(node: Node, transport: Transport, result: AuditResult) -> None:
    """Look at the missing and resized paths directly; keep only what that confirms.
    Raises DataRootEmpty when the data root looks unmounted."""
    listed_wrong = [*result.missing, *result.changed]
    seen = look_on_disk(node, transport, [r.path for r in listed_wrong])
    wrong = replicas_to_drop(
        node.name, listed_wrong, seen.sizes, root_populated=seen.root_populated
    )
    result.missing = [r for r in wrong if r.found_size is None]
    result.changed = [r for r in wrong if r.found_size is not None]
    confirmed = {(r.sha256, r.path) for r in wrong}
    result.recovered = [r.path for r in listed_wrong if (r.sha256, r.path) not in confirmed]
    result.ok.extend(result.recovered)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while audits run. An audit makes 10,000s of acyclic
    objects per node (names, sizes, catalog rows) that live until it ends; they trigger
    full collections of the whole heap (Dagster's included: ~0.1 s each here), which
    would cost more than the audit. Nested and concurrent audits share one pause."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
