"""Copies between a local node and an SSH node (a mixed fleet), relayed through this host.

The orchestrator is the one machine that reaches both: it streams the bytes between a
file on its own disk and one OpenSSH process, in bounded chunks paced to the link's
bandwidth cap, never holding a file in memory. Each direction lands the way its target's
transport lands everything:

- local → SSH: into the target's hash-derived staging name (`cat >` on the node, as the
  SSH↔SSH relay does), then the node agent's `publish` hashes it there and renames it only
  on a match (a mismatch deletes it);
- SSH → local: `cat` on the node into `LocalTransport.receive`, which stages, fsyncs,
  hashes and renames only on a match.

Paths are validated by each transport's own resolution before any byte moves. Both
transports live in this package; the relay uses their package-level helpers.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import time
from typing import IO, BinaryIO

from resources.transport.base import (
    CopyBatch,
    CopyOutcomes,
    CopyResult,
    Node,
    NodeUnreachable,
    TransferError,
    copy_each,
    expected_sha256,
    link_rate,
)
from resources.transport.local import LocalTransport, stream_paced
from resources.transport.paths import staging_name
from resources.transport.ssh import SSH_FAILED, SshTransport


class MixedRelay:
    """Copies between a `local` node and an `ssh` node, in either direction."""

    def __init__(self, local: LocalTransport, ssh: SshTransport) -> None:
        self.local = local
        self.ssh = ssh

    def copy_many(self, src: Node, dst: Node, items: CopyBatch) -> CopyOutcomes:
        """One relayed copy per item; an unreachable SSH node fails the whole batch."""
        return copy_each(self.copy_between, src, dst, items)

    def copy_between(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        """Verified, atomic copy of src_path on src to dst_path on dst (one local, one SSH)."""
        kinds = (src.transport, dst.transport)
        if kinds == ("local", "ssh"):
            return self._upload(src, src_path, dst, dst_path, sha256)
        if kinds == ("ssh", "local"):
            return self._download(src, src_path, dst, dst_path, sha256)
        raise ValueError(f"copy {src.name} -> {dst.name}: not a local/ssh pair ({kinds})")

    def _upload(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        expected = expected_sha256(sha256, f"node {src.name}: {src_path!r}")
        started = time.monotonic()
        src_rel, source, size = self.local.source_file(src, src_path)
        dst_rel, final = self.ssh._abs(dst, dst_path, "copy: target")
        what = f"copy {src.name}:{src_rel!r} -> {dst.name}:{dst_rel!r}"
        if self.ssh._has_copy(dst, dst_rel, size, expected):
            return CopyResult(dst_rel, expected, size, 0, time.monotonic() - started)
        # The SSH relay's staging name: a retry overwrites the same partial file.
        staging = posixpath.join(dst.data_root, staging_name(dst_rel, token=expected[:16]))
        receive = (
            f"mkdir -p -- {shlex.quote(posixpath.dirname(staging))} && cat > {shlex.quote(staging)}"
        )
        writer = subprocess.Popen(
            [*self.ssh._ssh_argv(dst), receive], stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert writer.stdin is not None
        try:
            with open(source, "rb") as reader:
                stream_paced(reader, writer.stdin, link_rate(src, dst))
            writer.stdin.close()
        except BrokenPipeError:
            pass  # the receiver is gone: its exit status says why
        except OSError as exc:  # reading the local file failed: never publish a short one
            writer.kill()
            writer.wait()
            raise TransferError(f"{what}: copy: read source: {exc}") from exc
        _check_exit(writer, dst, f"{what}: relay to the node")
        job = {"mode": "publish", "staging": staging, "final": final, "sha256": expected}
        self.ssh._agent(dst, job, what, src)
        return CopyResult(dst_rel, expected, size, size, time.monotonic() - started)

    def _download(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        expected = expected_sha256(sha256, f"node {src.name}: {src_path!r}")
        src_rel, source = self.ssh._abs(src, src_path, "copy: source")
        found = self.ssh.stat(src, src_rel)
        if found is None:
            what = f"copy {src.name}:{src_rel!r} -> {dst.name}:{dst_path!r}"
            raise TransferError(f"{what}: source file is missing")
        source_name = f"{src.name}:{src_rel!r}"

        def fill(writer: BinaryIO) -> None:
            reader = subprocess.Popen(
                [*self.ssh._ssh_argv(src), f"cat -- {shlex.quote(source)}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert reader.stdout is not None
            try:
                stream_paced(reader.stdout, writer, link_rate(src, dst))
            except BaseException:
                reader.kill()  # the local write failed: stop the sender
                reader.wait()
                raise
            _check_exit(reader, src, f"copy {source_name}: relay from the node")

        return self.local.receive(dst, dst_path, expected, found.size, fill, source_name)


def _check_exit(proc: subprocess.Popen[bytes], node: Node, what: str) -> None:
    """Wait for a bulk `ssh` process; its failure as an error (OpenSSH's own exit 255:
    the node could not be reached, which fails the batch and feeds its breaker)."""
    rc = proc.wait()
    if rc == 0:
        return
    err: IO[bytes] | None = proc.stderr
    said = err.read().decode(errors="replace").strip()[-800:] if err is not None else ""
    message = f"{what} failed (exit {rc}): {said}"
    if rc == SSH_FAILED:
        raise NodeUnreachable(node.name, message)
    raise TransferError(message)
