"""The one interface every way of moving bytes implements.

Paths are always relative to a node's `data_root`, POSIX-style (`games/selfplay.db`).
Nothing half-copied is ever visible under its final name: every write goes to a
temporary name in the target directory, is verified (size + SHA-256 at the target),
then renamed atomically.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol

from resources.transport.paths import UnsafePathError, safe_relpath

CHUNK_BYTES = 1 << 20  # streams and hashes move bounded blocks, never a whole file
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Node(Protocol):
    """A node as the transports read it: who it is, how it is reached, where its data
    lives, its link limit. The fleet's `Node` model is one (read-only: nodes are frozen)."""

    @property
    def name(self) -> str: ...
    @property
    def transport(self) -> str: ...  # "local" | "ssh"
    @property
    def host(self) -> str | None: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def host_key(self) -> str | None: ...
    @property
    def known_hosts(self) -> str | None: ...
    @property
    def data_root(self) -> str: ...
    @property
    def bandwidth_mbps(self) -> float | None: ...
    @property
    def pull_key(self) -> str | None: ...  # a key on the node that its SSH peers accept


class TransferError(RuntimeError):
    """A transfer or remote operation failed; the message names node, file and step."""


class NodeUnreachable(TransferError):
    """Reaching the node failed (network, auth, host key): counts toward its breaker."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class ChecksumMismatch(TransferError):
    """The bytes at the target do not hash to what the source promised."""


@dataclass(frozen=True)
class RemoteFile:
    """One file on a node: path relative to the data root."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Listing:
    """A directory listing: the files, and names refused as unsafe (never acted upon)."""

    files: list[RemoteFile]
    rejected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CopyResult:
    """What one verified copy moved; bytes_moved is 0 when the target already had it."""

    path: str
    sha256: str
    size: int
    bytes_moved: int
    seconds: float


class CopyItem(NamedTuple):
    """One file of a batch copy between two nodes."""

    src_path: str
    dst_path: str
    sha256: str


@dataclass(frozen=True)
class LiveDb:
    """A game or Elo DB as a probe saw it: the DB file and its WAL (None: no WAL file)."""

    db: RemoteFile
    wal: RemoteFile | None


@dataclass(frozen=True)
class NodeProbe:
    """What a probe saw; None means unknown (and unknown is never idle). `jobs` and
    `sessions` follow the rules in `node_probe.py`; `databases` is every games/*.db and
    elo/*.db under the data root (empty when unreachable: nothing was seen); `rejected`
    the DB names refused as unsafe (never recorded, never acted upon)."""

    reachable: bool
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    gpu_util_percent: float | None = None
    error: str | None = None
    jobs: int | None = None
    sessions: int | None = None
    databases: tuple[LiveDb, ...] = ()
    rejected: tuple[str, ...] = ()
    _FACTS: ClassVar[frozenset[str]] = frozenset(
        {"disk_total_bytes", "disk_free_bytes", "gpu_util_percent", "jobs", "sessions", "databases"}
    )

    @classmethod
    def seen(cls, facts: object) -> NodeProbe:
        """A reachable node's probe from what `node_probe.probe` reported. The reply comes
        from the node, so it is data: a DB name that is not a safe path (`safe_relpath`:
        not UTF-8, control characters, ...) goes to `rejected`; a reply of the wrong shape
        or types raises ValueError (the catalog never stores what it cannot hold)."""
        if not isinstance(facts, dict) or not facts.keys() >= cls._FACTS:
            raise ValueError(f"probe reply is not an object with {sorted(cls._FACTS)}")
        rows = facts["databases"]
        if not isinstance(rows, list):
            raise ValueError(f"databases: {type(rows).__name__}, not a list")
        live, rejected = [], []
        for row in rows:
            if not isinstance(row, list | tuple) or len(row) != 5:
                raise ValueError(
                    f"databases: {row!r} is not [path, size, mtime, wal size, wal mtime]"
                )
            path, size, mtime_ns, wal_size, wal_mtime_ns = row
            if not isinstance(path, str):
                raise ValueError(f"databases: path {path!r} is not a string")
            if not cls._is_database_path(path):
                rejected.append(path)
                continue
            if (wal_size is None) != (wal_mtime_ns is None):
                raise ValueError(f"databases: {path}: WAL size and mtime not both known")
            db = RemoteFile(path, cls._count(size, "size"), cls._integer(mtime_ns, "mtime_ns"))
            wal = (
                None
                if wal_size is None
                else RemoteFile(
                    f"{path}-wal",
                    cls._count(wal_size, "wal_size"),
                    cls._integer(wal_mtime_ns, "wal_mtime_ns"),
                )
            )
            live.append(LiveDb(db, wal))
        gpu = facts["gpu_util_percent"]
        if gpu is not None and (
            isinstance(gpu, bool) or not isinstance(gpu, int | float) or not 0 <= gpu <= 100
        ):
            raise ValueError(f"gpu_util_percent: {gpu!r} is not a percentage")
        return cls(
            reachable=True,
            disk_total_bytes=cls._known_count(facts["disk_total_bytes"], "disk_total_bytes"),
            disk_free_bytes=cls._known_count(facts["disk_free_bytes"], "disk_free_bytes"),
            gpu_util_percent=None if gpu is None else float(gpu),
            jobs=cls._known_count(facts["jobs"], "jobs"),
            sessions=cls._known_count(facts["sessions"], "sessions"),
            databases=tuple(live),
            rejected=tuple(rejected),
        )

    @classmethod
    def answered(cls, node: str, facts: object) -> NodeProbe:
        """What a node that answered reported (`seen`); a reply that cannot be read is an
        answer with an error (the catalog then keeps the DBs seen before)."""
        try:
            return cls.seen(facts)
        except ValueError as exc:
            return cls(reachable=True, error=f"node {node}: probe: unreadable {exc!r}")

    @staticmethod
    def _is_database_path(path: str) -> bool:
        """`games/NAME.db` or `elo/NAME.db`, exactly as `safe_relpath` would keep it."""
        try:
            if safe_relpath(path) != path:
                return False
        except UnsafePathError:
            return False
        directory, _, name = path.partition("/")
        return directory in ("games", "elo") and "/" not in name and name.endswith(".db")

    @staticmethod
    def _integer(value: object, what: str) -> int:
        # Not bool, not float: JSON numbers of the wrong kind; 64 bits: what the catalog holds.
        if type(value) is not int or not -(2**63) <= value < 2**63:
            raise ValueError(f"{what}: {value!r} is not a 64-bit integer")
        return value

    @classmethod
    def _count(cls, value: object, what: str) -> int:
        count = cls._integer(value, what)
        if count < 0:
            raise ValueError(f"{what}: {count} is negative")
        return count

    @classmethod
    def _known_count(cls, value: object, what: str) -> int | None:
        return None if value is None else cls._count(value, what)


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


# Module-level names: inside Transport, `list` is the listing method.
Argv = list[str]
CopyBatch = list[CopyItem]
CopyOutcomes = list[CopyResult | TransferError]


class Transport(abc.ABC):
    """Operations on nodes; every path argument is relative to the node's data root."""

    @abc.abstractmethod
    def list(self, node: Node, subdir: str) -> Listing:
        """Files below `subdir` (recursive), temp/partial files left out, in one round trip."""

    @abc.abstractmethod
    def stat(self, node: Node, path: str) -> RemoteFile | None:
        """The file, or None when absent."""

    @abc.abstractmethod
    def sha256(self, node: Node, path: str) -> str:
        """SHA-256 of the file, computed on the node itself."""

    @abc.abstractmethod
    def snapshot_sqlite(self, node: Node, path: str, dest: str) -> RemoteFile:
        """Consistent snapshot of a (possibly live, WAL) SQLite DB to `dest` on the same node."""

    @abc.abstractmethod
    def copy_between(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        """Copy src_path on src to dst_path on dst: temp name, verify sha256 at dst, rename."""

    def copy_many(self, src: Node, dst: Node, items: CopyBatch) -> CopyOutcomes:
        """Copy a batch between two nodes; one result (or the file's error) per item.

        Transports that can move a batch in one stream override this; a node that
        cannot be reached fails the whole batch (NodeUnreachable is raised)."""
        return copy_each(self.copy_between, src, dst, items)

    @abc.abstractmethod
    def publish_symlink(self, node: Node, link_path: str, target_name: str) -> None:
        """Point `link_path` at `target_name` (a file in the same directory) atomically:
        readers see the old target or the new one, never a missing link."""

    @abc.abstractmethod
    def make_dirs(self, node: Node, directory: str) -> None:
        """Create `directory` (and its parents) if it is missing."""

    @abc.abstractmethod
    def rename(self, node: Node, src: str, dst: str) -> None:
        """Rename `src` to `dst` atomically, creating dst's directory: a published or
        quarantined multi-GB file is never copied, only renamed."""

    @abc.abstractmethod
    def remove(self, node: Node, path: str) -> None:
        """Remove one file (used for fleetsync's own staging files only)."""

    @abc.abstractmethod
    def probe(self, node: Node) -> NodeProbe:
        """Reachability, disk and GPU use of the node."""

    @abc.abstractmethod
    def exec(
        self, node: Node, argv: Argv, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:
        """Run argv on the node with the data root as working directory."""


def copy_each(
    copy_between: Callable[[Node, str, Node, str, str], CopyResult],
    src: Node,
    dst: Node,
    items: CopyBatch,
) -> CopyOutcomes:
    """A batch as one `copy_between` per item: each file's error in its place, but a node
    that cannot be reached fails the whole batch (NodeUnreachable is raised)."""
    results: CopyOutcomes = []
    for item in items:
        try:
            results.append(copy_between(src, item.src_path, dst, item.dst_path, item.sha256))
        except NodeUnreachable:
            raise
        except TransferError as exc:
            results.append(exc)
    return results


def expected_sha256(sha256: str, where: str) -> str:
    """The digest a copy must arrive with (lower case); ValueError naming `where` if none."""
    expected = sha256.lower()
    if not SHA256_HEX.match(expected):
        raise ValueError(f"{where}: copy: not a SHA-256 hex digest")
    return expected


def link_rate(src: Node, dst: Node) -> float | None:
    """Bytes/s allowed between two nodes: the slower configured link, or unlimited."""
    limits = [n.bandwidth_mbps for n in (src, dst) if n.bandwidth_mbps is not None]
    return min(limits) * 1e6 / 8 if limits else None
