"""`ephemeral_sync`: fresh game or match data on an ephemeral node → collect it now.

An ephemeral node can vanish any minute, with whatever it wrote since its last
collection. The `fleet_probe` run records the size and mtime of every game and Elo DB
(and its WAL) on every node; when one on an ephemeral node differs from the last snapshot
taken of it (the catalog's `sources`), this sensor requests an urgent `collect_games` /
`collect_matches` run for that node (`dagster/priority` 10: the run queue starts it ahead
of routine work). Catalog and run-storage queries only, no SSH. On by default: a
collection only snapshots, copies and verifies.

Not more often than URGENT_EVERY_S (15 ticks) per DB: a self-play node writes all the time, and each
collection snapshots and copies its changed DBs. Run keys hold the newest change seen, so
the same state is asked for once and a later change asks again.
"""

import time
from collections.abc import Collection, Iterable
from typing import NamedTuple

import dagster as dg

from resources.catalog import Catalog
from sensors._common import Tick, fleet_sensor, partitions_in_flight, sensor_interval
from sync_assets.elo.assets import MATCHES
from sync_assets.elo.collect import ELO_DB
from sync_assets.engine.freshness import is_fresh, seen_fingerprint
from sync_assets.fleet.inventory import Fleet
from sync_assets.games.assets import SELFPLAY
from sync_assets.games.collect import GAME_DB_RE
from sync_assets.partitions import NODES

# The two collection jobs, declared here so the sensor can target them; the code location
# registers these same objects (sync_assets/definitions.py).
COLLECT_GAMES = dg.define_asset_job("collect_games", selection=[SELFPLAY])
COLLECT_MATCHES = dg.define_asset_job("collect_matches", selection=[MATCHES])
URGENT_TAGS = {"dagster/priority": "10", "fleetsync/urgent": "ephemeral_sync"}
INTERVAL_S = 60
# At most one urgent collection of a DB per 15 ticks: 15 minutes at the default interval,
# seconds under FLEETSYNC_SENSOR_INTERVAL_S (a test's daemon).
URGENT_EVERY_S = 15.0 * sensor_interval(INTERVAL_S)


class SeenDb(NamedTuple):
    """A DB the last probe of a node saw, beside the last snapshot taken of it."""

    node: str
    path: str
    reachable: bool  # the node's latest probe answered
    fingerprint: str  # as the probe saw it (`freshness.seen_fingerprint`)
    newest_mtime_ns: int  # of the DB and its WAL
    seen_at: float
    collected_fingerprint: str | None  # None: never snapshotted
    collected_at: float | None


class UrgentCollection(NamedTuple):
    job: str
    node: str
    newest_mtime_ns: int  # the newest change among `paths`
    paths: tuple[str, ...]  # the fresh DBs, for the run's tags


def collection_job(path: str) -> str | None:
    """The job that collects the DB at `path`, or None for one no job collects."""
    if GAME_DB_RE.match(path):
        return COLLECT_GAMES.name
    return COLLECT_MATCHES.name if path == ELO_DB else None


def urgent_collections(
    seen: Iterable[SeenDb],
    ephemeral: Collection[str],
    busy: Collection[tuple[str, str]],
    now: float,
    every_s: float = URGENT_EVERY_S,
) -> list[UrgentCollection]:
    """Which (job, node) to collect now: a node that is ephemeral and answered its last
    probe, holding a DB its job collects that is fresh (`freshness.is_fresh`) and was not
    snapshotted in the last `every_s`; none while a run of that job for that node is queued
    or running (`busy`). Sorted by job, then node."""
    fresh: dict[tuple[str, str], list[SeenDb]] = {}
    for db in seen:
        job = collection_job(db.path)
        if job is None or db.node not in ephemeral or not db.reachable or (job, db.node) in busy:
            continue
        if db.collected_at is not None and now - db.collected_at < every_s:
            continue
        if is_fresh(db.fingerprint, db.seen_at, db.collected_fingerprint, db.collected_at):
            fresh.setdefault((job, db.node), []).append(db)
    return [
        UrgentCollection(
            job, node, max(d.newest_mtime_ns for d in dbs), tuple(sorted(d.path for d in dbs))
        )
        for (job, node), dbs in sorted(fresh.items())
    ]


def urgent_run(urgent: UrgentCollection) -> dg.RunRequest:
    return dg.RunRequest(
        # The newest change seen: this state is asked for once, a later change again.
        run_key=f"ephemeral_sync:{urgent.job}:{urgent.node}:{urgent.newest_mtime_ns}",
        job_name=urgent.job,
        partition_key=urgent.node,
        tags={**URGENT_TAGS, "fleetsync/fresh": ",".join(urgent.paths)[:200]},
    )


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
    seen = [
        SeenDb(
            r.node,
            r.path,
            bool(r.reachable),
            seen_fingerprint(r.size, r.mtime_ns, r.wal_size, r.wal_mtime_ns),
            max(r.mtime_ns, r.wal_mtime_ns or 0),
            r.seen_at,
            r.collected_fingerprint,
            r.collected_at,
        )
        for r in catalog.probed_databases(ephemeral)
    ]
    busy = {
        (job.name, node)
        for job in (COLLECT_GAMES, COLLECT_MATCHES)
        for node in partitions_in_flight(context, job.name)
    }
    urgent = urgent_collections(seen, ephemeral, busy, time.time(), URGENT_EVERY_S)
    if not urgent:
        return dg.SkipReason(f"no fresh data on {len(ephemeral)} ephemeral node(s)")
    return dg.SensorResult(run_requests=[urgent_run(u) for u in urgent])
