"""Transports: one interface, chosen per node (`transport: local | ssh` in the inventory)."""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from resources.transport.base import CopyBatch, CopyOutcomes, Node, Transport
from resources.transport.local import LocalTransport
from resources.transport.programs import Program, run_program
from resources.transport.relay import MixedRelay
from resources.transport.ssh import SshTransport

_SSH_MADE = threading.Lock()


class Transports(dg.ConfigurableResource):
    """Picks the transport for a node, and routes a node-to-node copy (between a local
    and an SSH node: relayed through this host, `relay.MixedRelay`).

    SSH connections are opened on first use and kept for the run (one per node)."""

    connect_timeout_s: float = 15

    _local: LocalTransport = PrivateAttr(default_factory=LocalTransport)
    _ssh: SshTransport | None = PrivateAttr(default=None)

    def for_node(self, node: Node) -> Transport:
        return self._local if node.transport == "local" else self._ssh_transport()

    def _ssh_transport(self) -> SshTransport:
        with _SSH_MADE:  # copies running at once (distribute) share one SshTransport
            if self._ssh is None:
                self._ssh = SshTransport(connect_timeout=self.connect_timeout_s)
        return self._ssh

    def copy_many(self, src: Node, dst: Node, items: CopyBatch) -> CopyOutcomes:
        """Copy a batch between two nodes: directly between nodes of one transport, through
        this host between a local and an SSH node."""
        if src.transport != dst.transport:
            return MixedRelay(self._local, self._ssh_transport()).copy_many(src, dst, items)
        return self.for_node(src).copy_many(src, dst, items)

    def run_program(
        self, node: Node, program: Program, args: list[str], payload: Any = None, *, timeout: float
    ) -> dict[str, Any]:
        """Run a shipped program on the node (`programs.run_program`); its JSON object."""
        return run_program(self.for_node(node), node, program, args, payload, timeout)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._ssh is not None:
            self._ssh.close()
