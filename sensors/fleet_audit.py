"""`fleet_audit`: audit and scrub on rotation → at most one `audit_fleet` run per tick.

Every tick, the `AUDIT_NODES_PER_RUN` nodes audited longest ago (never audited first) are
audited (one listing each, no hashing); the `SCRUB_NODES_PER_RUN` nodes not scrubbed for
`policy.scrub.every_s` (a day) are scrubbed in the same run. The decision is
`engine.scrub.nodes_to_check`. Bounded: three small catalog reads (the node lifecycle,
probes and breakers, `node_checks`) and one look at the run queue; no transports. Only
nodes that can answer are checked: active (not suspect, lost or retired), last probed
reachable, breaker not open. While an `audit_fleet` run is queued or running no other is
requested, so a slow fleet never piles up runs that would check the same nodes; the run
key is the time bucket, so one tick evaluated twice requests one run.

On by default: it lists and hashes, drops catalog rows whose files are wrong, and moves
a corrupt file aside on its node (a rename into `.quarantine/`, never a deletion).
"""

import time
from collections.abc import Iterable

import dagster as dg

from resources.catalog import Catalog, NodeState
from sensors._common import Tick, fleet_sensor, run_in_flight, sensor_interval
from sync_assets.engine.replication import unavailable_nodes
from sync_assets.engine.scrub import nodes_to_check
from sync_assets.fleet.checks import audit_run_config
from sync_assets.fleet.inventory import Fleet
from sync_assets.jobs import AUDIT_FLEET

AUDIT_NODES_PER_RUN = 8  # K: with 100 nodes, each is listed every ~13 ticks
SCRUB_NODES_PER_RUN = 2
BUCKET_S = 60  # run keys per bucket (shorter with the sensor's interval in tests)


def checkable(
    inventory: Iterable[str], states: dict[str, NodeState], unavailable: frozenset[str]
) -> list[str]:
    """The inventory's nodes an audit or scrub may ask: active (or not yet recorded,
    as discovery records new nodes active) and available."""
    return [
        name
        for name in inventory
        if states.get(name, NodeState.ACTIVE) == NodeState.ACTIVE and name not in unavailable
    ]


@fleet_sensor(
    "fleet_audit",
    60,
    job_name=AUDIT_FLEET.name,
    default_status=dg.DefaultSensorStatus.RUNNING,  # lists, hashes, moves corrupt files aside
)
def fleet_audit(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    if running := run_in_flight(context, AUDIT_FLEET.name):
        return dg.SkipReason(f"audit_fleet run {running} is not done yet")
    states = {name: state for name, (state, _) in catalog.node_lifecycle().items()}
    eligible = checkable([n.name for n in fleet.nodes], states, unavailable_nodes(catalog))
    checks = catalog.node_checks()
    now = time.time()
    audit = nodes_to_check(
        eligible, {n: row.audited_at for n, row in checks.items()}, AUDIT_NODES_PER_RUN
    )
    scrub = nodes_to_check(
        eligible,
        {n: row.scrubbed_at for n, row in checks.items()},
        SCRUB_NODES_PER_RUN,
        due_before=now - fleet.policy.scrub.every_s,
    )
    if not audit and not scrub:
        return dg.SkipReason(f"no node to check ({len(eligible)} of {len(fleet.nodes)} can answer)")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"fleet_audit:{int(now // sensor_interval(BUCKET_S))}",
                run_config=audit_run_config(audit, scrub),
                tags={"fleetsync/audit": ",".join(audit), "fleetsync/scrub": ",".join(scrub)},
            )
        ]
    )
