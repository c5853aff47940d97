"""LocalTransport: nodes that are directories on this machine (demo, tests, NFS storage).

Same guarantees as the remote transports: names are validated before use,
nothing is followed out of the data root, every write is staged under a temp
name in the target directory, verified by SHA-256 and renamed atomically, and
nothing is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat as stat_mod
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from resources.transport import node_probe
from resources.transport.base import (
    CHUNK_BYTES,
    Argv,
    ChecksumMismatch,
    CopyResult,
    ExecResult,
    Listing,
    Node,
    NodeProbe,
    RemoteFile,
    TransferError,
    Transport,
    expected_sha256,
    link_rate,
)
from resources.transport.paths import UnsafePathError, is_ignored, safe_relpath, staging_name
from resources.transport.sqlite_snapshot import SnapshotError, snapshot


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a local file, streamed in 1 MiB blocks (multi-GB files, bounded RSS)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _where(node: Node, path: str, step: str) -> str:
    """The `node:file: step` prefix every error message starts with."""
    return f"node {node.name!r}: {path!r}: {step}"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry, not just the file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Remove a staging file on the way out of a failed step; absence is fine."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _Throttle:
    """Pace a byte stream to `bytes_per_s` (a token bucket holding one chunk)."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.rate = bytes_per_s
        self.start = time.monotonic()
        self.sent = 0

    @property
    def chunk(self) -> int:
        """Chunk size: 1 MiB, smaller for slow links so pacing stays smooth."""
        if self.rate is None:
            return CHUNK_BYTES
        return max(4096, min(CHUNK_BYTES, int(self.rate / 10)))

    def account(self, n: int) -> None:
        self.sent += n
        if self.rate is not None:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def stream_paced(reader: IO[bytes], writer: IO[bytes], bytes_per_s: float | None) -> None:
    """Copy in bounded chunks, paced to `bytes_per_s` (None: unlimited)."""
    throttle = _Throttle(bytes_per_s)
    while block := reader.read(throttle.chunk):
        writer.write(block)
        throttle.account(len(block))


class LocalTransport(Transport):
    """Transport for nodes whose `data_root` is a directory on this machine."""

    # ---- path resolution -------------------------------------------------------

    @staticmethod
    def _root(node: Node, step: str) -> Path:
        """The node's data root, fully resolved; a missing root is an unreachable node."""
        root = Path(os.path.realpath(node.data_root))
        if not root.is_dir():
            raise TransferError(
                f"{_where(node, node.data_root, step)}: data root is not a directory"
            )
        return root

    def _resolve(self, node: Node, path: str, step: str, *, follow: bool) -> tuple[str, Path]:
        """Validate `path` and map it under the data root; refuse anything that escapes.

        follow=True resolves the file itself (reads follow an in-root symlink);
        follow=False resolves only the parent (writes and removals act on the name).
        """
        try:
            rel = safe_relpath(path)
        except UnsafePathError as e:
            raise UnsafePathError(f"{_where(node, path, step)}: {e}") from None
        root = self._root(node, step)
        target = root / rel
        checked = Path(os.path.realpath(target if follow else target.parent))
        if checked != root and root not in checked.parents:
            raise UnsafePathError(f"{_where(node, rel, step)}: resolves outside the data root")
        return rel, checked if follow else target

    # ---- reading ---------------------------------------------------------------

    def list(self, node: Node, subdir: str) -> Listing:
        """Recursive listing; unsafe names and symlinks leaving the root go to `rejected`."""
        root = self._root(node, "list")
        if subdir in ("", "."):
            start_rel, start = "", root
        else:
            start_rel, start = self._resolve(node, subdir, "list", follow=True)
            if not start.exists():
                return Listing(files=[])
            if not start.is_dir():
                raise TransferError(f"{_where(node, start_rel, 'list')}: not a directory")
        files: list[RemoteFile] = []
        rejected: list[str] = []
        pending = [(start_rel, start)]
        while pending:
            rel_dir, directory = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue  # removed while we walked
            except OSError as e:
                raise TransferError(f"{_where(node, rel_dir or '.', 'list')}: {e}") from e
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    safe_relpath(rel)
                except UnsafePathError:
                    rejected.append(rel)
                    continue
                if is_ignored(rel):
                    continue
                try:
                    if entry.is_symlink():
                        found = self._symlinked_file(root, rel, Path(entry.path))
                        if found is None:
                            rejected.append(rel)
                        else:
                            files.append(found)
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append((rel, Path(entry.path)))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        files.append(RemoteFile(rel, st.st_size, st.st_mtime_ns))
                    else:
                        rejected.append(rel)  # FIFO, socket, device: reading could hang
                except FileNotFoundError:
                    continue  # temp files come and go on live nodes
        files.sort(key=lambda f: f.path)
        rejected.sort()
        return Listing(files=files, rejected=rejected)

    @staticmethod
    def _symlinked_file(root: Path, rel: str, link: Path) -> RemoteFile | None:
        """A symlink counts as a file only if it resolves to a regular file inside the root."""
        target = Path(os.path.realpath(link))
        if root not in target.parents:
            return None
        try:
            st = target.stat()
        except FileNotFoundError:
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return RemoteFile(rel, st.st_size, st.st_mtime_ns)

    def stat(self, node: Node, path: str) -> RemoteFile | None:
        """The file (symlinks inside the root followed), or None when absent."""
        rel, target = self._resolve(node, path, "stat", follow=True)
        try:
            st = target.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'stat')}: {e}") from e
        if not stat_mod.S_ISREG(st.st_mode):
            raise TransferError(f"{_where(node, rel, 'stat')}: not a regular file")
        return RemoteFile(rel, st.st_size, st.st_mtime_ns)

    def sha256(self, node: Node, path: str) -> str:
        """SHA-256 of the file, streamed."""
        rel, target = self._resolve(node, path, "sha256", follow=True)
        try:
            return sha256_file(target)
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'sha256')}: {e}") from e

    # ---- writing ---------------------------------------------------------------

    def snapshot_sqlite(self, node: Node, path: str, dest: str) -> RemoteFile:
        """Consistent single-file snapshot of a live (WAL) SQLite DB (`sqlite_snapshot.py`)."""
        rel, source = self._resolve(node, path, "snapshot", follow=True)
        dest_rel, final = self._resolve(node, dest, "snapshot", follow=False)
        if not source.is_file():
            raise TransferError(f"{_where(node, rel, 'snapshot')}: no such database file")
        if Path(os.path.realpath(final)) == source:
            raise TransferError(f"{_where(node, dest_rel, 'snapshot')}: dest is the source")
        staging = final.parent / Path(staging_name(dest_rel)).name
        try:
            snapshot(str(source), str(staging), str(final))
        except SnapshotError as e:
            raise TransferError(
                f"{_where(node, rel, 'snapshot: ' + str(e))} (to {dest_rel!r})"
            ) from e
        st = final.stat()
        return RemoteFile(dest_rel, st.st_size, st.st_mtime_ns)

    def copy_between(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        """Verified, atomic, streaming copy; a no-op when dst already has these bytes."""
        expected = expected_sha256(sha256, f"node {src.name!r}: {src_path!r}")
        src_rel, source, size = self.source_file(src, src_path)

        def fill(writer: BinaryIO) -> None:
            with open(source, "rb") as reader:
                stream_paced(reader, writer, link_rate(src, dst))

        return self.receive(dst, dst_path, expected, size, fill, f"{src.name}:{src_rel!r}")

    def source_file(self, node: Node, path: str) -> tuple[str, Path, int]:
        """(validated relative path, resolved file, size) of a copy's source on the node."""
        rel, source = self._resolve(node, path, "copy: read source", follow=True)
        try:
            return rel, source, source.stat().st_size
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'copy: stat source')}: {e}") from e

    def receive(
        self,
        dst: Node,
        dst_path: str,
        expected: str,
        size: int,
        fill: Callable[[BinaryIO], None],
        source: str,
    ) -> CopyResult:
        """Write dst_path on dst with the bytes `fill` streams into the file it is given
        (`source` names them in messages): under a staging name, fsynced, hashed, renamed
        only on a match; a no-op when dst already holds a file of `size` with that hash.
        Local copies and the relay from an SSH node (`relay.py`) both land through here."""
        started = time.monotonic()
        dst_rel, final = self._resolve(dst, dst_path, "copy: target", follow=False)
        what = f"copy {source} -> {dst.name}:{dst_rel!r}"
        if self._has_copy(dst, dst_rel, final, size, expected):
            return CopyResult(dst_rel, expected, size, 0, time.monotonic() - started)

        staging = final.parent / Path(staging_name(dst_rel)).name
        step = "copy: stream"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(staging, "xb") as writer:
                fill(writer)
                writer.flush()
                os.fsync(writer.fileno())
            step = "copy: verify at target"
            got = sha256_file(staging)
            if got != expected:
                raise ChecksumMismatch(
                    f"{what}: {step}: sha256 at target {got} != expected {expected}"
                )
            step = "copy: publish"
            moved = staging.stat().st_size
            os.replace(staging, final)
            _fsync_dir(final.parent)
        except OSError as e:
            _discard(staging)
            raise TransferError(f"{what}: {step}: {e}") from e
        except BaseException:
            _discard(staging)
            raise
        return CopyResult(dst_rel, expected, moved, moved, time.monotonic() - started)

    @staticmethod
    def _has_copy(node: Node, rel: str, final: Path, size: int, expected: str) -> bool:
        """Cheap idempotency check: compare size first, hash only when sizes agree."""
        try:
            st = final.stat()
            return (
                stat_mod.S_ISREG(st.st_mode)
                and st.st_size == size
                and sha256_file(final) == expected
            )
        except FileNotFoundError:
            return False
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'copy: check target')}: {e}") from e

    def publish_symlink(self, node: Node, link_path: str, target_name: str) -> None:
        rel, link = self._resolve(node, link_path, "symlink", follow=False)
        if "/" in target_name or safe_relpath(target_name) != target_name:
            raise UnsafePathError(f"{_where(node, rel, 'symlink')}: target must be a sibling name")
        staging = link.parent / Path(staging_name(rel)).name
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target_name, staging)
            os.replace(staging, link)
            _fsync_dir(link.parent)
        except OSError as e:
            _discard(staging)
            raise TransferError(f"{_where(node, rel, 'symlink')}: {e}") from e

    def make_dirs(self, node: Node, directory: str) -> None:
        rel, target = self._resolve(node, directory, "mkdir", follow=False)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'mkdir')}: {e}") from e

    def rename(self, node: Node, src: str, dst: str) -> None:
        rel, source = self._resolve(node, src, "rename", follow=False)
        _, target = self._resolve(node, dst, "rename", follow=False)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'rename')} -> {dst!r}: {e}") from e

    def remove(self, node: Node, path: str) -> None:
        """Unlink one file inside the data root (a symlink itself, never its target)."""
        rel, target = self._resolve(node, path, "remove", follow=False)
        try:
            target.unlink()
        except FileNotFoundError:
            return  # already gone: removal is idempotent for retries
        except OSError as e:
            raise TransferError(f"{_where(node, rel, 'remove')}: {e}") from e

    # ---- node ------------------------------------------------------------------

    def probe(self, node: Node) -> NodeProbe:
        """Reachable means the data root exists. The same facts as an SSH node's, seen by
        the same code (`node_probe.probe`), in-process; the host's GPUs and SSH sessions are
        not a directory's: unknown."""
        try:
            facts = node_probe.probe(str(self._root(node, "probe")), host=False)
        except (TransferError, OSError) as e:
            return NodeProbe(reachable=False, error=str(e))
        return NodeProbe.answered(node.name, facts)

    def exec(
        self, node: Node, argv: Argv, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:
        """Run argv (no shell) in the data root; on timeout kill its whole process group."""
        if not argv:
            raise ValueError(f"node {node.name!r}: exec: empty argv")
        root = self._root(node, "exec")
        where = _where(node, argv[0], "exec")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=root,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise TransferError(f"{where}: {e}") from e
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TransferError(f"{where}: timed out after {timeout:g} s") from None
        return ExecResult(proc.returncode, out, err)
