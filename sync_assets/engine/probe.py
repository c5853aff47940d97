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
    catalog.record_probe(node.name, probe)
    return probe
