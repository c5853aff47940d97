"""The fleet inventory resource: where fleet.yaml is. Its model, validation and loading
are the fleet domain's (`sync_assets.fleet.inventory.load_fleet`)."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field


class FleetInventory(dg.ConfigurableResource):
    """The fleet inventory as a Dagster resource: the path of its file."""

    path: str = Field(
        default_factory=lambda: os.environ.get("FLEETSYNC_FLEET") or "./fleet.yaml",
        description="Path of fleet.yaml (default: $FLEETSYNC_FLEET, else ./fleet.yaml).",
    )
