"""Probe a node and record what was seen in the catalog; unknown stays unknown."""

from __future__ import annotations

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import NodeProbe
from sync_assets.engine import breaker
from sync_assets.fleet.inventory import Node


def probe_and_record(node: Node, catalog: Catalog, transports: Transports) -> NodeProbe:
    """One probe of `node` (reachability, disk, GPU), fed to its breaker and recorded."""
    probe = transports.for_node(node).probe(node)
    breaker.record(catalog, node.name, None if probe.reachable else probe.error or "unreachable")
    catalog.record_probe(
        node.name,
        reachable=probe.reachable,
        disk_total_bytes=probe.disk_total_bytes,
        disk_free_bytes=probe.disk_free_bytes,
        gpu_util_percent=probe.gpu_util_percent,
        error=probe.error,
    )
    return probe
