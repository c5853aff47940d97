"""What every fleetsync sensor does first: read the inventory, or skip the tick saying why.

`FLEETSYNC_SENSOR_INTERVAL_S`, when set, is every fleet sensor's minimum interval (read
when the code location loads): tests and benchmarks under a real `dagster-daemon` tick
in seconds instead of minutes. Unset in production.
"""

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dagster as dg

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from sync_assets.fleet.inventory import Fleet, InventoryError, load_fleet

Tick = dg.SensorResult | dg.SkipReason
Decide = Callable[[dg.SensorEvaluationContext, Fleet, Catalog], Tick]
INTERVAL_ENV = "FLEETSYNC_SENSOR_INTERVAL_S"
# Run config of the chain sensors' runs: their jobs have one step each, so the step runs in
# the run's own process instead of a second interpreter (one start-up per run, not two).
IN_PROCESS: dict[str, object] = {"execution": {"config": {"in_process": {}}}}
# Runs not finished yet: a chain sensor requests no second run beside one of these.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


RETRY_AFTER_S = 3600  # a chain's run key names the hour: what is still missing is asked again


def retry_hour(now: float) -> int:
    """The retry bucket a run key names (`now` in epoch seconds)."""
    return int(now // RETRY_AFTER_S)


def set_digest(shas: Iterable[str]) -> str:
    """One name for a set of artifacts, whatever their order or repeats (for run keys):
    the first 16 hex digits of the SHA-256 of their distinct SHA-256s, sorted."""
    return hashlib.sha256("\n".join(sorted(set(shas))).encode()).hexdigest()[:16]


def sensor_interval(default_s: int) -> int:
    """`default_s`, or the whole positive number of seconds in FLEETSYNC_SENSOR_INTERVAL_S."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return default_s
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{INTERVAL_ENV}={text!r}: expected a whole number of seconds, >= 1")
    return int(text)


def fleet_sensor(
    name: str,
    interval_s: int,
    job_name: str | None = None,
    jobs: Sequence[Any] | None = None,  # several targets: `dg.define_asset_job` results
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> Callable[[Decide], dg.SensorDefinition]:
    """A sensor deciding from the fleet and the catalog; an invalid inventory skips the tick."""

    def wrap(decide: Decide) -> dg.SensorDefinition:
        @dg.sensor(
            name=name,
            minimum_interval_seconds=sensor_interval(interval_s),
            job_name=job_name,
            jobs=jobs,
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


VERSION_TAG = "fleetsync/version_key"  # the version a chain run is for, on every attempt
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def version_run_key(context: dg.SensorEvaluationContext, version_key: str, now: float) -> str:
    """The run key for the run that makes `version_key` (a config's export of one canonical
    DB, its rating of one set of matches): the key itself on the first attempt, so Dagster
    asks once per version; after that version's newest run failed or was cancelled, the
    key and the retry hour, so it is asked again once an hour until a run succeeds.
    Requests carry `{VERSION_TAG: version_key}` (one bounded run-storage query)."""
    runs = context.instance.get_runs(dg.RunsFilter(tags={VERSION_TAG: version_key}), limit=1)
    if not runs:
        return version_key
    latest = runs[0]
    if latest.status in _ENDED_BADLY:
        return f"{version_key}:retry{retry_hour(now)}"
    return latest.tags.get("dagster/run_key", version_key)


def run_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> str | None:
    """The id of a run of `job_name` queued or running, or None (one bounded query)."""
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1
    )
    return records[0].dagster_run.run_id if records else None


def partitions_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> set[str]:
    """Partitions of `job_name` with a run queued or running (Dagster's run storage, one
    bounded query): a chain waits for it instead of queueing a second run behind it."""
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1000
    )
    return {
        key for r in records if (key := r.dagster_run.tags.get("dagster/partition")) is not None
    }
