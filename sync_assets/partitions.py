"""The two partition axes: what lives on node X, and what the fleet has for config C."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from sync_assets.fleet.configs import STANDARD_CONFIGS
from sync_assets.fleet.inventory import load_inventory

# Filled from the inventory by the `node_discovery` sensor (and `fleetsync sync`).
NODES = "nodes"
nodes_partitions = dg.DynamicPartitionsDefinition(name=NODES)


def configured_configs() -> list[str]:
    """The inventory's `configs`, or the 12 standard keys when there is no inventory yet.

    Static partitions are fixed when the code location loads; a broken inventory stops
    the load with its located problems rather than silently using the wrong keys."""
    path = Path(os.environ.get("FLEETSYNC_FLEET", "fleet.yaml"))
    if not path.exists():
        return list(STANDARD_CONFIGS)
    return list(load_inventory(path).configs)


configs_partitions = dg.StaticPartitionsDefinition(configured_configs())
