"""What every fleetsync sensor does first: read the inventory, or skip the tick saying why."""

from collections.abc import Callable

import dagster as dg

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from sync_assets.fleet.inventory import Fleet, InventoryError, load_fleet

Tick = dg.SensorResult | dg.SkipReason
Decide = Callable[[dg.SensorEvaluationContext, Fleet, Catalog], Tick]


def fleet_sensor(
    name: str,
    interval_s: int,
    job_name: str | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> Callable[[Decide], dg.SensorDefinition]:
    """A sensor deciding from the fleet and the catalog; an invalid inventory skips the tick."""

    def wrap(decide: Decide) -> dg.SensorDefinition:
        @dg.sensor(
            name=name,
            minimum_interval_seconds=interval_s,
            job_name=job_name,
            default_status=default_status,
        )
        def tick(
            ctx: dg.SensorEvaluationContext, inventory: FleetInventory, catalog: Catalog
        ) -> Tick:
            try:
                fleet = load_fleet(inventory)
            except InventoryError as exc:
                return dg.SkipReason(f"inventory {inventory.path} is invalid:\n{exc}")
            return decide(ctx, fleet, catalog)

        return tick

    return wrap
