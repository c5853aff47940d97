"""Transports: one interface, chosen per node (`transport: local | ssh` in the inventory)."""

from __future__ import annotations

import dagster as dg

from resources.inventory import Node
from resources.transport.base import CopyResult, TransferError, Transport
from resources.transport.local import LocalTransport


class Transports(dg.ConfigurableResource):
    """Picks the transport for a node, and routes a node-to-node copy."""

    def for_node(self, node: Node) -> Transport:
        if node.transport == "local":
            return LocalTransport()
        raise TransferError(
            f"node {node.name}: transport {node.transport!r} is not available in this build"
        )

    def copy(self, src: Node, src_path: str, dst: Node, dst_path: str, sha256: str) -> CopyResult:
        """Copy directly between nodes of the same transport."""
        if src.transport != dst.transport:
            raise TransferError(
                f"copy {src.name}:{src_path} → {dst.name}:{dst_path}: no route between "
                f"{src.transport} and {dst.transport} nodes"
            )
        return self.for_node(src).copy_between(src, src_path, dst, dst_path, sha256)
