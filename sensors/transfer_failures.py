"""`transfer_failures`: every failed fleetsync run, recorded where an operator looks.

A run failure sensor: the daemon calls it once per failed run of this code location's
jobs. For each failed step it finds the node (the one the error names, else the node a
node-partitioned run is for; a repair run may have none), the file the error names, the
error, and whether it was transient (retried with backoff until the policy gave up) or
permanent (failed at once: `sync_assets.retries`). It records them in the catalog's
`run_failures` (shown by `fleetsync status`), counts a failure on the circuit breaker
of the node the error names, and tags the run (`fleetsync/failed_node`,
`fleetsync/failure`) so that the UI's run list shows and filters them; the tick's log
says the same. No SSH: catalog writes only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from resources.catalog import Catalog
from sensors._common import sensor_interval
from sync_assets.engine import breaker
from sync_assets.partitions import NODES
from sync_assets.retries import FAILED_NODE, TRANSIENT

NAME = "transfer_failures"
PARTITION_TAG = "dagster/partition"
NODE_TAG = "fleetsync/failed_node"
FAILURE_TAG = "fleetsync/failure"  # transient | permanent
ERROR_CHARS = 4000  # of an error kept in the catalog
# Files the fleet moves, as errors name them (relative to a data root, or absolute).
_FILE = re.compile(r"(?<![\w./-])(/?(?:[\w.-]+/)*[\w-][\w.-]*\.(?:db|npz|pth))(?![\w-])")


@dataclass(frozen=True)
class StepError:
    """What a failed step said: its message, its failure's metadata, and whether the
    retry policy gave up on it (it was retried) rather than failing it at once."""

    step: str
    message: str
    metadata: Mapping[str, Any]
    retried: bool


@dataclass(frozen=True)
class RunFailure:
    """One row of the catalog's `run_failures`."""

    run_id: str
    step: str
    job: str
    node: str
    file: str
    error: str
    transient: bool
    failed_at: float


def file_named(message: str) -> str:
    """The first file (.db, .npz, .pth) the message names, else ''."""
    found = _FILE.search(message)
    return found.group(1) if found else ""


def failure_rows(
    run_id: str,
    job: str,
    node_partition: str | None,
    errors: Sequence[StepError],
    run_message: str,
    now: float,
) -> list[RunFailure]:
    """One row per failed step (one for the run when no step failed): the node is the
    one the error names, else the run's node partition, else ''; a classified error
    says whether it was transient, any other was transient if it was retried."""
    steps = errors or [StepError("", run_message, {}, retried=False)]
    return [
        RunFailure(
            run_id=run_id,
            step=error.step,
            job=job,
            node=str(error.metadata.get(FAILED_NODE) or node_partition or ""),
            file=file_named(error.message),
            error=error.message[:ERROR_CHARS],
            transient=bool(error.metadata.get(TRANSIENT, error.retried)),
            failed_at=now,
        )
        for error in steps
    ]


def breaker_failures(errors: Sequence[StepError]) -> dict[str, str]:
    """The breakers this run's failure counts on: node -> the first line of its error,
    for the nodes the errors themselves name. A run's partition node is not blamed for
    an error it did not cause (a durable target refusing a copy: copy failures already
    fed the breaker of the node that failed)."""
    named: dict[str, str] = {}
    for error in errors:
        if node := str(error.metadata.get(FAILED_NODE) or ""):
            named.setdefault(node, first_line(error.message))
    return named


def run_tags(rows: Sequence[RunFailure]) -> dict[str, str]:
    """Tags for the failed run in the UI: its nodes, and transient unless any was not."""
    nodes = sorted({r.node for r in rows if r.node})
    tags = {FAILURE_TAG: "transient" if all(r.transient for r in rows) else "permanent"}
    return tags | ({NODE_TAG: ",".join(nodes)} if nodes else {})


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# ---- reading Dagster's events -------------------------------------------------------------


def step_error(event: dg.DagsterEvent) -> StepError:
    """A step failure event as a StepError: a `dg.Failure`'s description and metadata
    (every classified error is one), else the innermost error of the chain."""
    data = event.step_failure_data
    error: SerializableErrorInfo | None = data.error if data else None
    user = data.user_failure_data if data else None
    if user is not None and user.description:
        message = user.description
    else:
        innermost = error
        while innermost is not None and innermost.cause is not None:
            innermost = innermost.cause
        message = innermost.message.strip() if innermost else "the step failed"
    metadata = {k: v.value for k, v in user.metadata.items()} if user else {}
    retried = error is not None and error.cls_name == "RetryRequestedFromPolicy"
    return StepError(event.step_key or "", message, metadata, retried)


@dg.run_failure_sensor(
    name=NAME,
    minimum_interval_seconds=sensor_interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run: node, file and error in the catalog (fleetsync status), "
    "a failure on the breaker of the node the error names, run tags for the UI.",
)
def transfer_failures(context: dg.RunFailureSensorContext, catalog: Catalog) -> None:
    run = context.dagster_run
    key = run.tags.get(PARTITION_TAG)
    node_partition = key if key and context.instance.has_dynamic_partition(NODES, key) else None
    errors = [step_error(event) for event in context.get_step_failure_events()]
    rows = failure_rows(
        run.run_id,
        run.job_name,
        node_partition,
        errors,
        context.failure_event.message or "the run failed",
        time.time(),
    )
    catalog.record_run_failures([asdict(row) for row in rows])
    for node, error in breaker_failures(errors).items():
        breaker.record(catalog, node, error)
    context.instance.add_run_tags(run.run_id, run_tags(rows))
    for row in rows:
        context.log.warning(
            f"run {row.run_id} ({row.job}) failed, {'transient' if row.transient else 'permanent'}"
            f": node {row.node or '-'}, file {row.file or '-'}: {first_line(row.error)}"
        )
