"""`ephemeral_sync`: fresh game or match data on an ephemeral node → collect it now.

An ephemeral node can vanish any minute, with whatever it wrote since its last
collection. The `fleet_probe` run records the size and mtime of every game and Elo DB
(and its WAL) on every node; when one on an ephemeral node differs from the last snapshot
taken of it (the catalog's `sources`), this sensor requests an urgent `collect_games` /
`collect_matches` run for that node (`dagster/priority` 10: the run queue starts it ahead
of routine work). Catalog and run-storage queries only, no SSH. On by default: a
collection only snapshots, copies and verifies.

Not more often than URGENT_EVERY_S (15 ticks) per DB: a self-play node writes all the time, and each
collection snapshots and copies its changed DBs. A DB snapshotted within URGENT_EVERY_S is
not fresh; and a run key names the URGENT_EVERY_S-long time slot of the request (not the
newest change, which moves at every tick on a busy node), so a (job, node) is asked for at
most once per slot, whether its runs succeed or keep failing. The key also names the DBs
never collected: a DB seen for the first time is asked for at once, even in a slot that
already had its run.

`routine_sync` makes the same decision for every other node at normal priority, at most
once per ROUTINE_EVERY_S (30 ticks): games and matches on CPU boxes and other nodes
that do not vanish reach the canonical DBs and the ratings with no person in the chain.
"""

import hashlib
import time
from collections.abc import Collection, Iterable
from typing import NamedTuple

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor, partitions_in_flight, sensor_interval
from sync_assets.elo.collect import ELO_DB
from sync_assets.engine.freshness import is_fresh, seen_fingerprint
from sync_assets.fleet.inventory import Fleet
from sync_assets.games.collect import GAME_DB_RE
from sync_assets.jobs import COLLECT_GAMES, COLLECT_MATCHES
from sync_assets.partitions import NODES

URGENT_TAGS = {"dagster/priority": "10", "fleetsync/urgent": "ephemeral_sync"}
ROUTINE_TAGS = {"fleetsync/routine": "routine_sync"}
INTERVAL_S = 60
# At most one urgent collection of a DB per 15 ticks: 15 minutes at the default interval,
# seconds under FLEETSYNC_SENSOR_INTERVAL_S (a test's daemon).
URGENT_EVERY_S = 15.0 * sensor_interval(INTERVAL_S)
ROUTINE_EVERY_S = 30.0 * sensor_interval(INTERVAL_S)  # nodes that do not vanish


class SeenDb(NamedTuple):
    """A DB the last probe of a node saw, beside the last snapshot taken of it."""

    node: str
    path: str
    reachable: bool  # the node's latest probe answered
    fingerprint: str  # as the probe saw it (`freshness.seen_fingerprint`)
    seen_at: float
    collected_fingerprint: str | None  # None: never snapshotted
    collected_at: float | None


class UrgentCollection(NamedTuple):
    job: str
    node: str
    slot: int  # the request's URGENT_EVERY_S-long time slot: one run key per slot
    paths: tuple[str, ...]  # the fresh DBs, for the run's tags
    never_collected: tuple[str, ...]  # those of `paths` never snapshotted: in the run key


def collection_job(path: str) -> str | None:
    """The job that collects the DB at `path`, or None for one no job collects."""
    if GAME_DB_RE.match(path):
        return COLLECT_GAMES.name
    return COLLECT_MATCHES.name if path == ELO_DB else None


def request_slot(now: float, every_s: float) -> int:
    """The `every_s`-long time slot `now` falls in (`every_s` 0: no limit, every
    microsecond its own slot)."""
    return int(now // every_s) if every_s > 0 else int(now * 1e6)


def urgent_collections(
    seen: Iterable[SeenDb],
    nodes: Collection[str],
    busy: Collection[tuple[str, str]],
    now: float,
    every_s: float = URGENT_EVERY_S,
) -> list[UrgentCollection]:
    """Which (job, node) to collect now: a node among `nodes` (the ephemeral ones for
    `ephemeral_sync`, the others for `routine_sync`) that answered its last probe, holding
    a DB its job collects that is fresh (`freshness.is_fresh`) and was not snapshotted in
    the last `every_s`; none while a run of that job for that node is queued or running
    (`busy`). Each in `now`'s request slot (`request_slot`). Sorted by job, then node."""
    fresh: dict[tuple[str, str], list[SeenDb]] = {}
    for db in seen:
        job = collection_job(db.path)
        if job is None or db.node not in nodes or not db.reachable or (job, db.node) in busy:
            continue
        if db.collected_at is not None and now - db.collected_at < every_s:
            continue
        if is_fresh(db.fingerprint, db.seen_at, db.collected_fingerprint, db.collected_at):
            fresh.setdefault((job, db.node), []).append(db)
    slot = request_slot(now, every_s)
    return [
        UrgentCollection(
            job,
            node,
            slot,
            tuple(sorted(d.path for d in dbs)),
            tuple(sorted(d.path for d in dbs if d.collected_at is None)),
        )
        for (job, node), dbs in sorted(fresh.items())
    ]


def urgent_run(urgent: UrgentCollection, routine: bool = False) -> dg.RunRequest:
    # One run per (job, node) per slot (Dagster requests a run key once), however often
    # the node writes or the run fails; a DB seen for the first time makes a new key.
    new = hashlib.sha256("\0".join(urgent.never_collected).encode()).hexdigest()[:16]
    sensor, tags = ("routine_sync", ROUTINE_TAGS) if routine else ("ephemeral_sync", URGENT_TAGS)
    return dg.RunRequest(
        run_key=f"{sensor}:{urgent.job}:{urgent.node}:{urgent.slot}:{new}",
        job_name=urgent.job,
        partition_key=urgent.node,
        tags={**tags, "fleetsync/fresh": ",".join(urgent.paths)[:200]},
    )


def _due(
    context: dg.SensorEvaluationContext, catalog: Catalog, nodes: set[str], every_s: float
) -> list[UrgentCollection]:
    """Catalog and run-storage reads only: the collections of `nodes` due now."""
    seen = [
        SeenDb(
            r.node,
            r.path,
            bool(r.reachable),
            seen_fingerprint(r.size, r.mtime_ns, r.wal_size, r.wal_mtime_ns),
            r.seen_at,
            r.collected_fingerprint,
            r.collected_at,
        )
        for r in catalog.probed_databases(nodes)
    ]
    busy = {
        (job.name, node)
        for job in (COLLECT_GAMES, COLLECT_MATCHES)
        for node in partitions_in_flight(context, job.name)
    }
    return urgent_collections(seen, nodes, busy, time.time(), every_s)


@fleet_sensor(
    "ephemeral_sync",
    INTERVAL_S,
    jobs=[COLLECT_GAMES, COLLECT_MATCHES],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def ephemeral_sync(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    partitions = set(context.instance.get_dynamic_partitions(NODES))
    ephemeral = {n.name for n in fleet.nodes if n.ephemeral and n.name in partitions}
    if not ephemeral:
        return dg.SkipReason("no ephemeral node in the node partitions")
    urgent = _due(context, catalog, ephemeral, URGENT_EVERY_S)
    if not urgent:
        return dg.SkipReason(f"no fresh data on {len(ephemeral)} ephemeral node(s)")
    return dg.SensorResult(run_requests=[urgent_run(u) for u in urgent])


@fleet_sensor(
    "routine_sync",
    INTERVAL_S,
    jobs=[COLLECT_GAMES, COLLECT_MATCHES],
    default_status=dg.DefaultSensorStatus.RUNNING,  # it only snapshots, copies and verifies
)
def routine_sync(context: dg.SensorEvaluationContext, fleet: Fleet, catalog: Catalog) -> Tick:
    partitions = set(context.instance.get_dynamic_partitions(NODES))
    others = {n.name for n in fleet.nodes if not n.ephemeral and n.name in partitions}
    if not others:
        return dg.SkipReason("no node that is not ephemeral in the node partitions")
    due = _due(context, catalog, others, ROUTINE_EVERY_S)
    if not due:
        return dg.SkipReason(f"nothing to collect from {len(others)} node(s) yet")
    return dg.SensorResult(run_requests=[urgent_run(u, routine=True) for u in due])
