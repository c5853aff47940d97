"""SshTransport: nodes reached over SSH.

Control (exec, listing, hashing, snapshots, probes) goes through paramiko, one
connection per node kept alive for the run. Bulk bytes go through OpenSSH: the
receiver pulls with `rsync` straight from the source node when it holds a key
for its peers (`pull_key`), otherwise the orchestrator streams between two `ssh`
processes in bounded chunks (never a whole file in memory). Either way the
bytes land under a staging name in the target directory, the SHA-256 is
computed on the target, and only a match is renamed into place.

Host keys are pinned from the inventory; an unknown or changed key is refused.
Every remote argument is quoted with `shlex.quote`; paths are validated by
`safe_relpath` first and always passed as absolute paths after `--`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import paramiko

from resources.transport import node_agent, node_probe
from resources.transport.base import (
    CHUNK_BYTES,
    SHA256_HEX,
    Argv,
    ChecksumMismatch,
    CopyBatch,
    CopyOutcomes,
    CopyResult,
    ExecResult,
    Listing,
    Node,
    NodeProbe,
    NodeUnreachable,
    RemoteFile,
    TransferError,
    Transport,
    expected_sha256,
    link_rate,
)
from resources.transport.paths import (
    STAGING_PREFIX,
    UnsafePathError,
    is_ignored,
    is_plain_relpath,
    safe_relpath,
    staging_name,
)
from resources.transport.programs import (
    SQLITE_SNAPSHOT,
    Program,
    RemoteProgramFailed,
    run_program,
)

# The agent runs on the system interpreter when there is one: `python3` on PATH may be
# a pyenv or conda shim costing ~0.2 s per start; -I: no PYTHON* variables, no user site.
AGENT_COMMAND = 'py=/usr/bin/python3; [ -x "$py" ] || py=python3; exec "$py" -I -c ' + shlex.quote(
    Path(node_agent.__file__).read_text()
)
NODE_PROBE = Program("node_probe.py", node_probe)
# AES-GCM first: hardware-accelerated on every x86/ARM server; chacha20 as fallback.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
# curve25519: the post-quantum hybrid OpenSSH 9 prefers costs ~0.1 s per connection
# on a 2-core box, and the paramiko control channel to the same nodes is curve25519
# anyway. Only names every OpenSSH since 6.5 knows: an older client on a node (the
# pull runs `ssh` there) refuses to start on a KexAlgorithms name it does not know.
KEX = "curve25519-sha256,curve25519-sha256@libssh.org"
Files = list[RemoteFile]


class HostKeyRefused(NodeUnreachable):
    """The node presented an unknown or different host key."""


def _known_hosts_name(node: Node) -> str:
    return f"{node.host}" if node.port == 22 else f"[{node.host}]:{node.port}"


def _pinned_key(node: Node) -> paramiko.PKey:
    kind, b64 = (node.host_key or "").split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


class SshTransport(Transport):
    """Transport for `transport: ssh` nodes. Holds its connections; `close()` ends them."""

    def __init__(
        self, connect_timeout: float = 15, keepalive_s: int = 15, workdir: Path | None = None
    ) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._connecting: dict[str, threading.Lock] = {}  # one handshake per node at a time
        self._lock = threading.Lock()
        # Pinned host keys for the OpenSSH bulk processes; removed by close() if ours.
        self._own_workdir = workdir is None
        self._workdir = Path(workdir or tempfile.mkdtemp(prefix="fleetsync-ssh-"))
        self._workdir.mkdir(parents=True, exist_ok=True)

    # ---- connections -----------------------------------------------------------

    def _client(self, node: Node) -> paramiko.SSHClient:
        """The node's live connection, made on first use. Handshakes with different
        nodes run at once (a fleet-wide audit must not queue 100 of them); two threads
        wanting the same node share one."""
        with self._lock:
            client = self._live(node)
            if client is not None:
                return client
            connecting = self._connecting.setdefault(node.name, threading.Lock())
        with connecting:
            with self._lock:
                client = self._live(node)
            if client is None:
                client = self._connect(node)
                with self._lock:
                    self._clients[node.name] = client
            return client

    def _live(self, node: Node) -> paramiko.SSHClient | None:
        client = self._clients.get(node.name)
        transport = client.get_transport() if client else None
        return client if transport is not None and transport.is_active() else None

    def _connect(self, node: Node) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())  # never auto-add
        if node.host_key:
            client.get_host_keys().add(
                _known_hosts_name(node), node.host_key.split()[0], _pinned_key(node)
            )
        elif node.known_hosts:
            client.load_host_keys(os.path.expanduser(node.known_hosts))
        try:
            client.connect(
                node.host or "",
                port=node.port,
                username=node.user,
                key_filename=os.path.expanduser(node.key or ""),
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=False,  # IdentitiesOnly: one key per node (LESSONS 11)
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyRefused(
                node.name,
                f"node {node.name}: host key of {node.host}:{node.port} does not match the "
                f"pinned key ({exc.key.get_name()} {exc.key.get_base64()[:24]}… presented); "
                "refusing to connect",
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyRefused(
                    node.name,
                    f"node {node.name}: host key of {node.host}:{node.port} is not pinned "
                    "(unknown host keys are never accepted)",
                ) from None
            raise NodeUnreachable(node.name, f"node {node.name}: ssh: {exc}") from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise NodeUnreachable(
                node.name, f"node {node.name}: cannot connect to {node.host}:{node.port}: {exc}"
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(self.keepalive_s)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # ---- remote commands -------------------------------------------------------

    def _run(
        self, node: Node, command: str, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:
        """Run a shell command line (already quoted) on the node."""
        client = self._client(node)
        try:
            transport = client.get_transport()
            if transport is None:
                raise paramiko.SSHException("no transport")
            channel = transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            stdout, stderr = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            # Drain stdout and stderr alike: an unread stderr would stall the channel window.
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(CHUNK_BYTES)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(CHUNK_BYTES)
                # The exit status can arrive before the command's last output: stop only
                # once the channel has also seen EOF (or died with its connection), or
                # stdout comes back truncated.
                if (
                    channel.exit_status_ready()
                    and (channel.eof_received or channel.closed)
                    and not (channel.recv_ready() or channel.recv_stderr_ready())
                ):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    channel.close()
                    raise TimeoutError
                select.select([channel], [], [], min(remaining, 1.0))
            code = channel.recv_exit_status()
            channel.close()
            if code == -1:  # no exit status: the connection went away mid-command
                raise paramiko.SSHException("connection lost before the command finished")
        except TimeoutError as exc:
            self._drop(node)
            raise TransferError(f"node {node.name}: command timed out after {timeout:g} s") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop(node)
            raise NodeUnreachable(
                node.name, f"node {node.name}: ssh session failed: {exc}"
            ) from exc
        return ExecResult(code, bytes(stdout), bytes(stderr))

    def _drop(self, node: Node) -> None:
        with self._lock:
            client = self._clients.pop(node.name, None)
        if client is not None:
            client.close()

    def _abs(self, node: Node, path: str, step: str) -> tuple[str, str]:
        """(validated relative path, absolute path on the node)."""
        try:
            rel = safe_relpath(path)
        except UnsafePathError as exc:
            raise UnsafePathError(f"node {node.name}: {path!r}: {step}: {exc}") from None
        return rel, posixpath.join(node.data_root, rel)

    def _check(self, node: Node, done: ExecResult, what: str) -> str:
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-1000:]
            raise TransferError(f"node {node.name}: {what}: exit {done.returncode}: {err}")
        return done.stdout.decode(errors="surrogateescape")

    def exec(
        self, node: Node, argv: Argv, stdin: bytes | None = None, timeout: float = 600
    ) -> ExecResult:
        if not argv:
            raise ValueError(f"node {node.name}: exec: empty argv")
        command = f"cd -- {shlex.quote(node.data_root)} && {shlex.join(argv)}"
        return self._run(node, command, stdin, timeout)

    # ---- reading ---------------------------------------------------------------

    def list(self, node: Node, subdir: str) -> Listing:
        """One round trip: `find -printf` with NUL-separated fields (names may hold
        anything), followed by the size and mtime of what relative symlinks point at, so
        a link reports its target's, as LocalTransport does.

        The output must end with a sentinel: a listing cut short is an error, never a
        node with fewer files. Files vanishing while `find` walks are not an error."""
        if subdir in ("", "."):
            rel_dir, start = "", node.data_root
        else:
            rel_dir, start = self._abs(node, subdir, "list")
        q = shlex.quote(start)
        # One walk: records for everything, and the relative symlinks to a file noted
        # aside (`-fprintf`), then, after a `-` record, their targets' size and mtime.
        command = (
            f"[ -d {q} ] || {{ printf -- '-\\0'; echo {_END}; exit 0; }}; t=$(mktemp) || exit 1; "
            f"find {q} -mindepth 1 -ignore_readdir_race \\( -type l -xtype f ! -lname '/*' "
            f"-fprintf \"$t\" './%P\\0' -false \\) -o -printf {shlex.quote(FIND_FORMAT)}; "
            f"rc=$?; if [ $rc -eq 0 ]; then printf -- '-\\0'; "
            f'( cd {q} && xargs -0 -r -a "$t" sh -c {shlex.quote(_FOLLOW_LINKS)} sh ) 2>/dev/null; '
            f'fi; rm -f -- "$t"; [ $rc -eq 0 ] && echo {_END}'
        )
        what = f"list {rel_dir or '.'}"
        body = _ended(node, self._check(node, self._run(node, command), what), what)
        try:
            files, rejected = parse_find_listing(body, rel_dir)
        except ValueError as exc:
            raise TransferError(f"node {node.name}: {what}: {exc}") from None
        files.sort(key=lambda f: f.path)
        return Listing(files=files, rejected=sorted(rejected))

    def stat(self, node: Node, path: str) -> RemoteFile | None:
        rel, absolute = self._abs(node, path, "stat")
        q = shlex.quote(absolute)
        command = f"[ -e {q} ] || exit 0; find -L {q} -maxdepth 0 -printf '%y\\0%s\\0%T@\\0'"
        out = self._check(node, self._run(node, command), f"stat {rel}")
        if not out:
            return None
        kind, size, mtime = out.split("\0")[:3]
        if kind != "f":
            raise TransferError(f"node {node.name}: stat {rel}: not a regular file")
        return RemoteFile(rel, int(size), _mtime_ns(mtime))

    def sha256(self, node: Node, path: str) -> str:
        rel, absolute = self._abs(node, path, "sha256")
        out = self._check(
            node, self._run(node, f"sha256sum -- {shlex.quote(absolute)}"), f"sha256 {rel}"
        )
        digest = out[:64]
        if not SHA256_HEX.match(digest):
            raise TransferError(f"node {node.name}: sha256 {rel}: unexpected output {out[:80]!r}")
        return digest

    # ---- writing ---------------------------------------------------------------

    def snapshot_sqlite(self, node: Node, path: str, dest: str) -> RemoteFile:
        """Run `sqlite_snapshot.py` on the node itself: the live DB never leaves unsnapshotted."""
        rel, source = self._abs(node, path, "snapshot")
        dest_rel, final = self._abs(node, dest, "snapshot")
        staging = posixpath.join(node.data_root, staging_name(dest_rel))
        try:
            run_program(self, node, SQLITE_SNAPSHOT, [source, staging, final], None, 600)
        except RemoteProgramFailed as exc:
            raise TransferError(
                f"node {node.name}: {rel!r}: snapshot: {exc.why} (to {dest_rel!r})"
            ) from exc
        found = self.stat(node, dest_rel)
        if found is None:
            raise TransferError(f"node {node.name}: snapshot {dest_rel!r} vanished after publish")
        return found

    def publish_symlink(self, node: Node, link_path: str, target_name: str) -> None:
        rel, link = self._abs(node, link_path, "symlink")
        if "/" in target_name or safe_relpath(target_name) != target_name:
            raise UnsafePathError(f"node {node.name}: {rel!r}: symlink: target must be a sibling")
        staging = posixpath.join(node.data_root, staging_name(rel))
        make = f"ln -s -- {shlex.quote(target_name)} {shlex.quote(staging)} && "
        self._move(node, staging, link, f"symlink {rel}", make)

    def make_dirs(self, node: Node, directory: str) -> None:
        rel, absolute = self._abs(node, directory, "mkdir")
        self._check(node, self._run(node, f"mkdir -p -- {shlex.quote(absolute)}"), f"mkdir {rel}")

    def rename(self, node: Node, src: str, dst: str) -> None:
        rel, source = self._abs(node, src, "rename")
        dst_rel, target = self._abs(node, dst, "rename")
        self._move(node, source, target, f"rename {rel} -> {dst_rel}")

    def _move(self, node: Node, source: str, target: str, what: str, make: str = "") -> None:
        """Rename `source` over `target` with rename(2), creating target's directory; `make`
        runs before it. Not `mv`: across filesystems it copies into the final name."""
        mkdir = f"mkdir -p -- {shlex.quote(posixpath.dirname(target))} && {make}"
        replace = "python3 -c 'import os, sys; os.replace(*sys.argv[1:])'"
        command = f"{mkdir}{replace} {shlex.quote(source)} {shlex.quote(target)}"
        self._check(node, self._run(node, command), what)

    def remove(self, node: Node, path: str) -> None:
        rel, absolute = self._abs(node, path, "remove")
        self._check(node, self._run(node, f"rm -f -- {shlex.quote(absolute)}"), f"remove {rel}")

    def probe(self, node: Node) -> NodeProbe:
        """Everything a probe sees (`node_probe.py`: disk, GPUs, jobs, sessions, live DBs),
        from one command on the node; any failure to run it is an unreachable node."""
        try:
            facts = run_program(self, node, NODE_PROBE, [], None, timeout=60)
        except TransferError as exc:
            return NodeProbe(reachable=False, error=str(exc))
        return NodeProbe.answered(node.name, facts)

    # ---- copies ----------------------------------------------------------------

    def copy_between(
        self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str
    ) -> CopyResult:
        """Verified, atomic copy between two SSH nodes (direct pull, or streamed relay)."""
        expected = expected_sha256(sha256, f"node {src.name}: {src_path!r}")
        started = time.monotonic()
        src_rel, source = self._abs(src, src_path, "copy: source")
        dst_rel, final = self._abs(dst, dst_path, "copy: target")
        what = f"copy {src.name}:{src_rel!r} -> {dst.name}:{dst_rel!r}"
        # The same staging name on every attempt: rsync resumes from its partial file.
        staging = posixpath.join(dst.data_root, staging_name(dst_rel, token=expected[:16]))
        if dst.pull_key:
            # No stat of the source first (one more login shell): the hash decides, and
            # the agent reports the size it verified.
            rsync = [
                "rsync", "--secluded-args", "--times", "--partial-dir=.rsync-partial",
                "-e", self._peer_ssh(src, dst), *_bwlimit(src, dst),
                "--", f"{src.user}@{src.host}:{source}", staging,
            ]  # fmt: skip
            job = {"mode": "pull", "final": final, "staging": staging, "sha256": expected,
                   "rsync": rsync, **self._pin_job(src, dst)}  # fmt: skip
            reply = self._agent(dst, job, what, src)
            seconds = time.monotonic() - started
            return CopyResult(dst_rel, expected, reply["size"], reply["moved"], seconds)
        found = self.stat(src, src_rel)
        if found is None:
            raise TransferError(f"{what}: source file is missing")
        size = found.size
        if self._has_copy(dst, dst_rel, size, expected):
            return CopyResult(dst_rel, expected, size, 0, time.monotonic() - started)
        self._relay(src, source, dst, staging, what)
        job = {"mode": "publish", "staging": staging, "final": final, "sha256": expected}
        self._agent(dst, job, what, src)
        return CopyResult(dst_rel, expected, size, size, time.monotonic() - started)

    def copy_many(self, src: Node, dst: Node, items: CopyBatch) -> CopyOutcomes:
        """A batch in one stream (rsync --files-from, or a relayed tar), verified and
        published by the node agent in the same remote command as the pull."""
        if len(items) <= 1:
            return super().copy_many(src, dst, items)
        started = time.monotonic()
        rels = [
            (self._abs(src, i.src_path, "copy: source")[0],
             *self._abs(dst, i.dst_path, "copy: target"), i.sha256.lower())
            for i in items
        ]  # fmt: skip
        # Deterministic batch directory: a retried batch resumes into the same place.
        token = hashlib.sha256("".join(sorted(r[3] for r in rels)).encode()).hexdigest()[:16]
        batch = posixpath.join(dst.data_root, f"{STAGING_PREFIX}batch.{token}")
        what = f"copy {len(items)} files {src.name} -> {dst.name}"
        plan = [[posixpath.join(batch, r[0]), r[2], r[3]] for r in rels]
        if dst.pull_key:
            rsync = [
                "rsync", "--secluded-args", "--times", "--from0", "--files-from=-",
                "--partial-dir=.rsync-partial", "-e", self._peer_ssh(src, dst),
                *_bwlimit(src, dst), "--", f"{src.user}@{src.host}:{src.data_root}/",
                batch + "/",
            ]  # fmt: skip
            job = {"mode": "batch", "plan": plan, "batch": batch, "rsync": rsync,
                   "names": [r[0] for r in rels], **self._pin_job(src, dst)}  # fmt: skip
            outcomes = self._agent(dst, job, what, src)["results"]
        else:
            names = "\0".join(r[0] for r in rels).encode() + b"\0"
            self._relay_batch(src, dst, batch, names, what)
            job = {"mode": "batch-publish", "plan": plan}
            outcomes = self._agent(dst, job, what, src)["results"]
            self._run(dst, f"rm -rf -- {shlex.quote(batch)}")
        seconds = time.monotonic() - started
        results: CopyOutcomes = []
        for (_src_rel, dst_rel, _abs, sha), outcome in zip(rels, outcomes, strict=True):
            if "size" in outcome:
                size = int(outcome["size"])
                results.append(CopyResult(dst_rel, sha, size, size, seconds / len(rels)))
            else:
                error = ChecksumMismatch if outcome.get("mismatch") else TransferError
                results.append(error(f"{what}: {dst_rel!r}: {outcome['error']}"))
        return results

    def _agent(self, dst: Node, job: dict[str, Any], what: str, src: Node) -> dict[str, Any]:
        """Run one node-agent job on the target; its reply, or the failure it reports
        (a lost link to the source counts toward the source's breaker)."""
        done = self._run(dst, AGENT_COMMAND, json.dumps(job).encode(), timeout=24 * 3600)
        reply: dict[str, Any] = json.loads(self._check(dst, done, what))
        if "error" not in reply:
            return reply
        message = f"{what}: {reply['error']}"
        if reply.get("mismatch"):
            raise ChecksumMismatch(message)
        if reply.get("rc") in _RSYNC_LINK_EXITS:
            raise NodeUnreachable(src.name, message)
        raise TransferError(message)

    def _pin_job(self, src: Node, dst: Node) -> dict[str, str]:
        """Where dst's ssh finds src's pinned host key, and the line to write there."""
        return {
            "known_hosts": self._peer_known_hosts(src, dst),
            "pin": f"{_known_hosts_name(src)} {src.host_key}\n",
        }

    def _relay_batch(self, src: Node, dst: Node, batch: str, names: bytes, what: str) -> None:
        send = f"cd -- {shlex.quote(src.data_root)} && tar -cf - --null -T -"
        receive = f"mkdir -p -- {shlex.quote(batch)} && tar -xf - -C {shlex.quote(batch)}"
        self._pump(src, send, names, dst, receive, what)

    def _has_copy(self, node: Node, rel: str, size: int, expected: str) -> bool:
        found = self.stat(node, rel)
        return found is not None and found.size == size and self.sha256(node, rel) == expected

    def _peer_known_hosts(self, src: Node, dst: Node) -> str:
        return posixpath.join(dst.data_root, ".fleetsync", f"known_hosts.{src.name}")

    def _peer_ssh(self, src: Node, dst: Node) -> str:
        """The `-e` command dst's rsync uses to reach src: dst's own key, src's pinned key."""
        known_hosts = self._peer_known_hosts(src, dst)
        return shlex.join(self._openssh(dst.pull_key or "", src.port, known_hosts))

    def _relay(self, src: Node, source: str, dst: Node, staging: str, what: str) -> None:
        receive = (
            f"mkdir -p -- {shlex.quote(posixpath.dirname(staging))} && cat > {shlex.quote(staging)}"
        )
        self._pump(src, f"cat -- {shlex.quote(source)}", None, dst, receive, what)

    def _pump(
        self, src: Node, send: str, send_input: bytes | None, dst: Node, receive: str, what: str
    ) -> None:
        """Stream `send` on src into `receive` on dst through this host, chunk by chunk,
        paced to the link's bandwidth cap: two OpenSSH processes, bounded memory."""
        reader = subprocess.Popen(
            [*self._ssh_argv(src), send],
            stdin=subprocess.PIPE if send_input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        writer = subprocess.Popen(
            [*self._ssh_argv(dst), receive], stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert reader.stdout is not None and writer.stdin is not None
        if send_input is not None and reader.stdin is not None:
            reader.stdin.write(send_input)
            reader.stdin.close()
        rate = link_rate(src, dst)
        sent, t0 = 0, time.monotonic()
        try:
            while block := reader.stdout.read(CHUNK_BYTES):
                writer.stdin.write(block)
                sent += len(block)
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            writer.stdin.close()
        except BrokenPipeError:
            reader.kill()  # the receiver is gone: nothing would ever drain the sender
        finally:
            reader_rc, writer_rc = reader.wait(), writer.wait()
        if reader_rc or writer_rc:
            errs = b" ".join(p.stderr.read() for p in (reader, writer) if p.stderr)
            message = (
                f"{what}: relay failed (read exit {reader_rc}, write exit {writer_rc}): "
                f"{errs.decode(errors='replace').strip()[-800:]}"
            )
            if writer_rc == SSH_FAILED or (writer_rc and reader_rc < 0):
                raise NodeUnreachable(dst.name, message)
            if reader_rc == SSH_FAILED:
                raise NodeUnreachable(src.name, message)
            raise TransferError(message)

    def _ssh_argv(self, node: Node) -> Argv:
        """OpenSSH client for bulk streams: same pinned host key and key as paramiko."""
        known_hosts = self._workdir / f"known_hosts.{node.name}"
        if node.host_key:  # written aside, then renamed: a concurrent stream never reads half
            staged = known_hosts.with_name(f"{known_hosts.name}.{threading.get_ident()}")
            staged.write_text(f"{_known_hosts_name(node)} {node.host_key}\n")
            os.replace(staged, known_hosts)
        else:
            known_hosts = Path(os.path.expanduser(node.known_hosts or "/nonexistent"))
        key = os.path.expanduser(node.key or "")
        return [*self._openssh(key, node.port, str(known_hosts)), f"{node.user}@{node.host}"]

    def _openssh(self, key: str, port: int, known_hosts: str) -> Argv:
        """An OpenSSH client for bulk bytes: one key, one pinned host key, no prompts."""
        return [
            "ssh", "-i", key, "-p", str(port), "-c", CIPHERS, "-o", f"KexAlgorithms={KEX}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "GSSAPIAuthentication=no",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
        ]  # fmt: skip


# rsync exits that mean the link to the *source* failed, not the transfer itself:
# 255 ssh could not connect, 12 stream broke, 10 socket I/O, 35 timeout.
_RSYNC_LINK_EXITS = frozenset({255, 12, 10, 35})
SSH_FAILED = 255  # OpenSSH's own exit code for connection and auth failures


_END = "FLEETSYNC-END"  # last line of a listing: anything shorter was cut off
# Run by xargs on `./`-relative symlinks: their targets' size, mtime and the link path.
_FOLLOW_LINKS = 'find -L "$@" -maxdepth 0 -type f -printf "%s\\0%T@\\0%p\\0"'


def _ended(node: Node, out: str, what: str) -> str:
    """The output without its sentinel line, which it must end with."""
    if not out.endswith(f"{_END}\n"):
        raise TransferError(
            f"node {node.name}: {what}: output ended early ({len(out)} bytes, no end marker)"
        )
    return out[: -len(_END) - 1]


# Per entry: type, type of the link's target, link text | size | mtime | path below the
# start (4 NUL-terminated fields; only a path or a link text could hold anything else).
FIND_FORMAT = "%y%Y%l\\0%s\\0%T@\\0%P\\0"


def parse_find_listing(body: str, rel_dir: str) -> tuple[Files, list[str]]:
    """(files, rejected names) from the listing command's output for `rel_dir`: one
    record per entry (`FIND_FORMAT`), a `-` record (never a type), then size, mtime and
    `./path` of each relative symlink's target. Pure: a node's names are data, and this
    decides what they are.

    A regular file with a plain name (nearly all of them) takes the short path; anything
    else gets the full checks: unsafe names are rejected (and everything below a rejected
    directory skipped), temp files ignored, only relative links to a regular file below
    their own directory accepted (listed with their target's size and mtime), FIFOs,
    sockets and devices rejected."""
    fields = body.split("\0")
    try:
        end = 4 * fields[0::4].index("-")
    except ValueError:
        raise ValueError("listing without its end-of-records field") from None
    files, links, rejected = _records(fields[:end], rel_dir)
    if links:  # a link whose target vanished meanwhile is no file
        targets = _link_targets(fields[end + 1 :], rel_dir)
        linked = frozenset(links)
        files = [targets[f.path] if f.path in linked else f for f in files
                 if f.path not in linked or f.path in targets]  # fmt: skip
    return files, rejected


def _link_targets(fields: list[str], rel_dir: str) -> dict[str, RemoteFile]:
    """Triples (size, mtime, `./path`), NUL-terminated, by link path below the data root."""
    if len(fields) % 3 != 1 or fields[-1]:
        raise ValueError(f"malformed link targets ({len(fields) - 1} fields)")
    prefix = f"{rel_dir}/" if rel_dir else ""
    targets: dict[str, RemoteFile] = {}
    for size, mtime, path in zip(fields[0:-1:3], fields[1:-1:3], fields[2:-1:3], strict=True):
        if not path.startswith("./"):
            raise ValueError(f"malformed link target path {path[:80]!r}")
        rel = prefix + path[2:]
        targets[rel] = RemoteFile(rel, int(size), _mtime_ns(mtime))
    return targets


def _records(fields: list[str], rel_dir: str) -> tuple[Files, list[str], list[str]]:
    """(files, symlinks among them, rejected) from whole `FIND_FORMAT` records."""
    n = len(fields)
    if n % 4:
        raise ValueError(f"malformed listing ({n} fields)")
    prefix = f"{rel_dir}/" if rel_dir else ""
    files: Files = []
    links: list[str] = []
    rejected: list[str] = []
    bad_dirs: list[str] = []
    entries = zip(fields[0:n:4], fields[1:n:4], fields[2:n:4], fields[3:n:4], strict=True)
    for kinds, size, mtime, name in entries:
        rel = prefix + name
        if kinds == "ff" and is_plain_relpath(rel):  # below a rejected dir is never plain
            if not is_ignored(rel):
                files.append(RemoteFile(rel, int(size), _mtime_ns(mtime)))
            continue
        kind, target_kind, link = kinds[:1], kinds[1:2], kinds[2:]
        if bad_dirs and any(rel.startswith(d + "/") for d in bad_dirs):
            continue
        try:
            safe_relpath(rel)
        except UnsafePathError:
            rejected.append(rel)
            if kind == "d":
                bad_dirs.append(rel)
            continue
        if kind == "d" or is_ignored(rel):
            continue
        if kind == "l":
            try:
                ok = target_kind == "f" and not link.startswith("/") and safe_relpath(link)
            except UnsafePathError:
                ok = False
            if not ok:
                rejected.append(rel)
                continue
            links.append(rel)
        elif kind != "f":
            rejected.append(rel)  # FIFO, socket, device
            continue
        files.append(RemoteFile(rel, int(size), _mtime_ns(mtime)))
    return files, links, rejected


def _mtime_ns(value: str) -> int:
    """`find`'s `%T@` (seconds.fraction) as integer nanoseconds, without float rounding."""
    seconds, _, fraction = value.partition(".")
    if len(fraction) >= 9 and seconds.isdigit():  # GNU find prints 10 digits
        return int(seconds + fraction[:9])
    try:
        return int(Decimal(value) * 1_000_000_000)  # before 1970, or a short fraction
    except ArithmeticError:
        raise ValueError(f"unreadable mtime {value[:40]!r}") from None


def _bwlimit(src: Node, dst: Node) -> list[str]:
    rate = link_rate(src, dst)
    return [f"--bwlimit={max(1, int(rate / 1024))}"] if rate else []
