"""Real OpenSSH `sshd` nodes on loopback addresses, for tests and `fleetsync demo --ssh`.

Each node gets its own address (127.0.0.11, .12, …), host key, data root and
`sshd` process; one client key is authorised on all of them. Nothing here is a mock:
fleetsync talks to these nodes exactly as to cloud boxes.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
_SSHD_OPTIONS = """\
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
LogLevel ERROR
"""


@dataclass
class SshdNode:
    name: str
    host: str
    port: int
    data_root: Path
    host_key: str  # "ssh-ed25519 AAAA…", pinned in the inventory
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def inventory_entry(self, key: Path, user: str) -> dict[str, object]:
        return {
            "name": self.name,
            "transport": "ssh",
            "host": self.host,
            "port": self.port,
            "user": user,
            "key": str(key),
            "host_key": self.host_key,
            "data_root": str(self.data_root),
        }


@dataclass
class SshdFleet:
    """N sshd processes under `root`; use as a context manager to stop them all."""

    root: Path
    names: list[str]
    first_octet: int = 11
    user: str = field(default_factory=getpass.getuser)
    nodes: dict[str, SshdNode] = field(default_factory=dict)
    # node name -> (network namespace, its address there): that node's sshd runs in the
    # namespace (made by the caller) on port 22 of that address, not on loopback.
    netns: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    def start(self) -> SshdFleet:
        self.root.mkdir(parents=True, exist_ok=True)
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.client_key.exists():
            _keygen(self.client_key)
        authorized = self.root / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        for i, name in enumerate(self.names):
            host = self.netns[name][1] if name in self.netns else f"127.0.0.{self.first_octet + i}"
            node = self._configure(name, host, authorized)
            self.nodes[name] = node
            self._launch(node)
        return self

    def _configure(self, name: str, host: str, authorized: Path) -> SshdNode:
        home = self.root / "sshd" / name
        home.mkdir(parents=True, exist_ok=True)
        host_key_file = home / "ssh_host_ed25519_key"
        if not host_key_file.exists():
            _keygen(host_key_file)
        public = host_key_file.with_suffix(".pub").read_text().split()
        data_root = self.root / "nodes" / name
        data_root.mkdir(parents=True, exist_ok=True)
        port = 22 if name in self.netns else _free_port(host)
        config = home / "sshd_config"
        config.write_text(
            f"ListenAddress {host}:{port}\nHostKey {host_key_file}\n"
            f"PidFile {home / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n{_SSHD_OPTIONS}"
        )
        return SshdNode(name, host, port, data_root, f"{public[0]} {public[1]}", config)

    def _launch(self, node: SshdNode) -> None:
        netns = ["ip", "netns", "exec", self.netns[node.name][0]] if node.name in self.netns else []
        node.process = subprocess.Popen(
            [*netns, SSHD, "-D", "-e", "-f", str(node.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((node.host, node.port), timeout=1):
                    return
            except OSError:
                if node.process.poll() is not None:
                    err = node.process.stderr.read().decode() if node.process.stderr else ""
                    raise RuntimeError(f"sshd for {node.name} exited: {err.strip()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd for {node.name} did not listen on {node.host}:{node.port}"
                    ) from None
                time.sleep(0.05)

    def kill(self, name: str) -> None:
        """SIGKILL a node's sshd, every session it forked and what they run (a box
        vanishing). Sessions call setsid, so the listener's process group alone would
        leave established connections working: kill its descendants first."""
        self._signal(self.nodes[name], signal.SIGKILL)

    def restart(self, name: str) -> None:
        self.kill(name)
        self._launch(self.nodes[name])

    def stop(self) -> None:
        for node in self.nodes.values():
            self._signal(node, signal.SIGTERM)

    @staticmethod
    def _signal(node: SshdNode, sig: signal.Signals) -> None:
        proc = node.process
        if proc is None or proc.poll() is not None:
            return
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def inventory_nodes(self) -> list[dict[str, object]]:
        return [n.inventory_entry(self.client_key, self.user) for n in self.nodes.values()]

    def __enter__(self) -> SshdFleet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _descendants(root: int) -> list[int]:
    """Every live process below `root`, children before their parents' siblings."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
