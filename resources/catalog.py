"""The catalog: fleetsync's own record of artifacts, replicas, nodes, transfers, leases.

Every mover writes it; every decision (replica counts, what is at risk, what may be
deleted, is a node idle) reads only it. Artifacts are keyed by content SHA-256, never
by path. SQLAlchemy Core, so the same code runs on the default SQLite file and on
PostgreSQL (`FLEETSYNC_CATALOG_URL`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from sync_assets.engine.breaker import BreakerState, after_failure, after_success
from sync_assets.engine.breaker import status as breaker_status

SCHEMA_VERSION = 2

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("roles", sa.String(256), nullable=False),  # comma-separated
    sa.Column("durable", sa.Boolean, nullable=False),
    sa.Column("ephemeral", sa.Boolean, nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active | retired
    sa.Column("reachable", sa.Boolean),
    sa.Column("last_probe_at", sa.Float),
    sa.Column("disk_total_bytes", sa.BigInteger),
    sa.Column("disk_free_bytes", sa.BigInteger),
    sa.Column("gpu_util_percent", sa.Float),
    sa.Column("probe_error", sa.Text),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("config", sa.String(32), index=True),  # None: mixed-config (selfplay.db)
    sa.Column("name", sa.String(512), nullable=False),  # logical name, e.g. selfplay.db
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("origin_node", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("sha256", sa.String(64), sa.ForeignKey("artifacts.sha256"), primary_key=True),
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("verified_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # verified | staging
    # The primary key leads with sha256; audits and placement ask per node.
    sa.Index("ix_replicas_node_path", "node", "path"),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ok | failed
    sa.Column("error", sa.Text),
    sa.Column("finished_at", sa.Float, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# The last consistent snapshot taken of a live DB on a node, and the file state it saw.
sources = sa.Table(
    "sources",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("fingerprint", sa.String(256), nullable=False),
    sa.Column("snapshot_sha256", sa.String(64), nullable=False),
    sa.Column("snapshotted_at", sa.Float, nullable=False),
)

# The merge log: one row per snapshot merged into a config's canonical DB, and the
# canonical version (sha256) that merge produced (None: the merge failed after this
# snapshot committed, before the result could be hashed).
merges = sa.Table(
    "merges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("config", sa.String(32), nullable=False, index=True),
    sa.Column("snapshot_sha256", sa.String(64), nullable=False),
    sa.Column("canonical_sha256", sa.String(64)),
    sa.Column("merged_at", sa.Float, nullable=False),
    sa.Column("stats_json", sa.Text, nullable=False),
)

# Which snapshots a canonical DB version holds. A version with no rows here (unknown,
# e.g. left behind by a merge that died) holds nothing as far as merging goes: every
# collected snapshot is merged into it again, which the idempotent merge makes safe.
canonical_contents = sa.Table(
    "canonical_contents",
    metadata,
    sa.Column("canonical_sha256", sa.String(64), primary_key=True),
    sa.Column("snapshot_sha256", sa.String(64), primary_key=True),
    sa.Column("config", sa.String(32), nullable=False),
)

# Which configs a game snapshot holds games of, counted from the games themselves (a
# file's name is only a hint). `snapshot_census` says a snapshot was counted at all.
snapshot_census = sa.Table(
    "snapshot_census",
    metadata,
    sa.Column("snapshot_sha256", sa.String(64), primary_key=True),
    sa.Column("unparsed_games", sa.Integer, nullable=False),  # board/players not a config
    sa.Column("counted_at", sa.Float, nullable=False),
)
snapshot_configs = sa.Table(
    "snapshot_configs",
    metadata,
    sa.Column("snapshot_sha256", sa.String(64), primary_key=True),
    sa.Column("config", sa.String(32), primary_key=True, index=True),
    sa.Column("games", sa.Integer, nullable=False),
)

# Artifacts whose content cannot be used (an unreadable snapshot): never merged or
# copied again. The files stay where they are; nothing is deleted for being here.
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("quarantined_at", sa.Float, nullable=False),
)

# Named pointers at an artifact: the current canonical DB of a config, the promoted model.
aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("config", sa.String(32), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# Per-node circuit breakers: they must outlive runs, so they live here (sync_assets.engine.breaker).
breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("failures", sa.Float, nullable=False),
    sa.Column("last_failure_at", sa.Float),
    sa.Column("opened_at", sa.Float),
    sa.Column("last_error", sa.Text),
)


class LeaseHeld(RuntimeError):
    """Another holder owns the lease; the message names it."""


def default_catalog_url() -> str:
    """`FLEETSYNC_CATALOG_URL`, else a SQLite file under `$DAGSTER_HOME/fleetsync/`."""
    if url := os.environ.get("FLEETSYNC_CATALOG_URL"):
        return url
    home = Path(os.environ.get("DAGSTER_HOME", "./dagster_home")).expanduser().resolve()
    (home / "fleetsync").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'fleetsync' / 'catalog.db'}"


@cache
def _engine(url: str) -> sa.Engine:
    """One engine (pool) per URL per process; resources are rebuilt every run."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL: sensors read while runs write; busy_timeout: writers queue, never fail fast.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def _now() -> float:
    return time.time()


class Catalog(dg.ConfigurableResource):
    """The catalog DB; usable as a Dagster resource and as a plain object."""

    url: str = Field(default_factory=default_catalog_url)

    @property
    def engine(self) -> sa.Engine:
        engine = _engine(self.url)
        _migrate(engine)
        return engine

    # --- nodes -------------------------------------------------------------------

    def sync_nodes(self, fleet_nodes: Sequence[Any]) -> None:
        """Upsert inventory nodes as active; nodes no longer listed become retired."""
        names = {n.name for n in fleet_nodes}
        with self.engine.begin() as conn:
            known = {r.name for r in conn.execute(sa.select(nodes.c.name))}
            for n in fleet_nodes:
                values = {
                    "roles": ",".join(n.roles),
                    "durable": n.durable,
                    "ephemeral": n.ephemeral,
                    "provider": n.provider.kind,
                    "state": "active",
                }
                if n.name in known:
                    conn.execute(nodes.update().where(nodes.c.name == n.name).values(values))
                else:
                    conn.execute(nodes.insert().values(name=n.name, **values))
            if known - names:
                conn.execute(
                    nodes.update().where(nodes.c.name.in_(known - names)).values(state="retired")
                )

    def record_probe(
        self,
        node: str,
        *,
        reachable: bool,
        disk_total_bytes: int | None,
        disk_free_bytes: int | None,
        gpu_util_percent: float | None,
        error: str | None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                nodes.update()
                .where(nodes.c.name == node)
                .values(
                    reachable=reachable,
                    last_probe_at=_now(),
                    disk_total_bytes=disk_total_bytes,
                    disk_free_bytes=disk_free_bytes,
                    gpu_util_percent=gpu_util_percent,
                    probe_error=error,
                )
            )

    def nodes_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(nodes), conn)

    # --- artifacts and replicas --------------------------------------------------

    def add_artifact(
        self, sha256: str, *, kind: str, config: str | None, name: str, size: int, origin_node: str
    ) -> None:
        """Idempotent: the same content registered twice is one artifact."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(artifacts.c.sha256).where(artifacts.c.sha256 == sha256)
            ).first()
            if not exists:
                conn.execute(
                    artifacts.insert().values(
                        sha256=sha256,
                        kind=kind,
                        config=config,
                        name=name,
                        size=size,
                        origin_node=origin_node,
                        created_at=_now(),
                    )
                )

    def record_replica(
        self, sha256: str, node: str, path: str, size: int, state: str = "verified"
    ) -> None:
        """Record a copy whose SHA-256 was checked at `node`; replaces any other
        artifact previously recorded at the same (node, path), since the file was replaced."""
        with self.engine.begin() as conn:
            conn.execute(
                replicas.delete().where(
                    (replicas.c.node == node)
                    & (replicas.c.path == path)
                    & (replicas.c.sha256 != sha256)
                )
            )
            conn.execute(
                replicas.delete().where(
                    (replicas.c.sha256 == sha256)
                    & (replicas.c.node == node)
                    & (replicas.c.path == path)
                )
            )
            conn.execute(
                replicas.insert().values(
                    sha256=sha256,
                    node=node,
                    path=path,
                    size=size,
                    verified_at=_now(),
                    state=state,
                )
            )

    def drop_replicas(self, node: str, replicas_at: Sequence[tuple[str, str]]) -> int:
        """Forget the (sha256, path) replicas on `node`, in one transaction (a wiped disk
        can mean 10,000s of rows). Returns how many were asked for."""
        if not replicas_at:
            return 0
        with self.engine.begin() as conn:
            conn.execute(
                replicas.delete().where(
                    (replicas.c.node == node)
                    & (replicas.c.sha256 == sa.bindparam("s"))
                    & (replicas.c.path == sa.bindparam("p"))
                ),
                [{"s": sha256, "p": path} for sha256, path in replicas_at],
            )
        return len(replicas_at)

    def replicas_on_node(
        self, node: str, states: Sequence[str], paths: Sequence[str] | None = None
    ) -> Sequence[sa.Row[str, str, int, float]]:
        """The node's replicas in those states (at those paths, if given; the index on
        (node, path) serves it): (sha256, path, size, verified_at) rows."""
        r = replicas
        query = sa.select(r.c.sha256, r.c.path, r.c.size, r.c.verified_at).where(
            (r.c.node == node) & r.c.state.in_(list(states))
        )
        if paths is not None:
            query = query.where(r.c.path.in_(list(paths)))
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def replica_path_span(self, node: str, states: Sequence[str]) -> tuple[str, str] | None:
        """The lowest and highest replica path on `node` (None: it holds none). Every
        path sorts between them, so they share the prefix all paths share: the
        directory one listing must cover, from the index alone."""
        r = replicas
        query = sa.select(sa.func.min(r.c.path), sa.func.max(r.c.path)).where(
            (r.c.node == node) & r.c.state.in_(list(states))
        )
        with self.engine.connect() as conn:
            lowest, highest = conn.execute(query).one()
        return None if lowest is None else (lowest, highest)

    def has_copy(self, sha256: str) -> bool:
        """Whether any active node holds a copy (verified, or a snapshot still staged)."""
        r, n = replicas, nodes
        query = (
            sa.select(r.c.sha256)
            .join(n, n.c.name == r.c.node)
            .where(
                (r.c.sha256 == sha256)
                & r.c.state.in_(["verified", "staging"])
                & (n.c.state == "active")
            )
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def below_policy(self, min_replicas: dict[str, int]) -> set[str]:
        """Artifacts with fewer verified copies on distinct active durable nodes than
        `min_replicas[kind]`: the planner's own count, done by the database, so a fleet
        in order costs one query instead of three catalog frames."""
        kinds = [kind for kind, wanted in min_replicas.items() if wanted > 0]
        if not kinds:
            return set()
        r, n, a = replicas, nodes, artifacts
        have = (
            sa.select(sa.func.count(sa.distinct(r.c.node)))
            .join(n, n.c.name == r.c.node)
            .where(
                (r.c.sha256 == a.c.sha256)
                & (r.c.state == "verified")
                & n.c.durable
                & (n.c.state == "active")
            )
            .scalar_subquery()
        )
        wanted = sa.case(min_replicas, value=a.c.kind, else_=0)
        query = sa.select(a.c.sha256).where(a.c.kind.in_(kinds) & (have < wanted))
        with self.engine.connect() as conn:
            return set(conn.scalars(query))

    def artifacts_frame(self, kinds: Sequence[str] | None = None) -> pd.DataFrame:
        query = sa.select(artifacts)
        if kinds is not None:
            query = query.where(artifacts.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def replicas_frame(self, kinds: Sequence[str] | None = None) -> pd.DataFrame:
        """Replicas joined with their artifact's kind, config and origin."""
        query = sa.select(
            replicas,
            artifacts.c.kind,
            artifacts.c.config,
            artifacts.c.name,
            artifacts.c.origin_node,
        ).join(artifacts, artifacts.c.sha256 == replicas.c.sha256)
        if kinds is not None:
            query = query.where(artifacts.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def record_transfer(
        self,
        sha256: str,
        source: str,
        target: str,
        path: str,
        *,
        bytes_moved: int,
        seconds: float,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                transfers.insert().values(
                    sha256=sha256,
                    source=source,
                    target=target,
                    path=path,
                    bytes=bytes_moved,
                    seconds=seconds,
                    status="failed" if error else "ok",
                    error=error,
                    finished_at=_now(),
                )
            )

    def transfers_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(transfers), conn)

    # --- live sources, merges, aliases -------------------------------------------

    def source_state(self, node: str, path: str) -> tuple[str, str] | None:
        """(fingerprint, snapshot_sha256) of the last snapshot of a live DB, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(sources.c.fingerprint, sources.c.snapshot_sha256).where(
                    (sources.c.node == node) & (sources.c.path == path)
                )
            ).first()
        return (row.fingerprint, row.snapshot_sha256) if row else None

    def set_source_state(self, node: str, path: str, fingerprint: str, sha256: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sources.delete().where((sources.c.node == node) & (sources.c.path == path))
            )
            conn.execute(
                sources.insert().values(
                    node=node,
                    path=path,
                    fingerprint=fingerprint,
                    snapshot_sha256=sha256,
                    snapshotted_at=_now(),
                )
            )

    def record_merges(
        self, config: str, canonical_sha256: str | None, per_snapshot: dict[str, dict[str, Any]]
    ) -> None:
        """Log the snapshots (sha256 → merge stats) merged into `config`'s canonical DB,
        which became version `canonical_sha256` (None: not known)."""
        if not per_snapshot:
            return
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                merges.insert(),
                [
                    {
                        "config": config,
                        "snapshot_sha256": sha,
                        "canonical_sha256": canonical_sha256,
                        "merged_at": now,
                        "stats_json": json.dumps(stats, sort_keys=True),
                    }
                    for sha, stats in per_snapshot.items()
                ],
            )

    def merge_log(self) -> list[tuple[str, str]]:
        """(config, stats_json) of the newest merge of each (config, snapshot): a snapshot
        merged again into another canonical version is counted once."""
        m = merges
        newest = sa.select(sa.func.max(m.c.id)).group_by(m.c.config, m.c.snapshot_sha256).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.c.config, m.c.stats_json).where(m.c.id.in_(sa.select(newest)))
            )
            return [(r.config, r.stats_json) for r in rows]

    def canonical_contents(self, canonical_sha256: str) -> set[str]:
        """The snapshots a canonical version is known to hold (empty: not known)."""
        c = canonical_contents
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.c.snapshot_sha256).where(c.c.canonical_sha256 == canonical_sha256)
            )
            return {r.snapshot_sha256 for r in rows}

    def record_canonical_contents(
        self, config: str, canonical_sha256: str, snapshots: set[str]
    ) -> None:
        """Record what a canonical version holds (replacing what was recorded for it)."""
        c = canonical_contents
        with self.engine.begin() as conn:
            conn.execute(c.delete().where(c.c.canonical_sha256 == canonical_sha256))
            if snapshots:
                conn.execute(
                    c.insert(),
                    [
                        {
                            "canonical_sha256": canonical_sha256,
                            "snapshot_sha256": s,
                            "config": config,
                        }
                        for s in sorted(snapshots)
                    ],
                )

    def record_census(self, snapshot_sha256: str, configs: dict[str, int], unparsed: int) -> None:
        """Record the games per config counted in a snapshot (replacing an older count)."""
        with self.engine.begin() as conn:
            for table in (snapshot_configs, snapshot_census):
                conn.execute(table.delete().where(table.c.snapshot_sha256 == snapshot_sha256))
            conn.execute(
                snapshot_census.insert().values(
                    snapshot_sha256=snapshot_sha256, unparsed_games=unparsed, counted_at=_now()
                )
            )
            if configs:
                conn.execute(
                    snapshot_configs.insert(),
                    [
                        {"snapshot_sha256": snapshot_sha256, "config": c, "games": n}
                        for c, n in sorted(configs.items())
                    ],
                )

    def uncounted_snapshots(self, kind: str) -> set[str]:
        """Artifacts of `kind` with no census yet."""
        a, c = artifacts, snapshot_census
        query = sa.select(a.c.sha256).where(
            (a.c.kind == kind) & ~sa.exists().where(c.c.snapshot_sha256 == a.c.sha256)
        )
        with self.engine.connect() as conn:
            return set(conn.scalars(query))

    def snapshots_holding(self, config: str) -> set[str]:
        """Snapshots whose census counted games of `config`."""
        c = snapshot_configs
        query = sa.select(c.c.snapshot_sha256).where((c.c.config == config) & (c.c.games > 0))
        with self.engine.connect() as conn:
            return set(conn.scalars(query))

    def quarantine(self, sha256: str, reason: str) -> None:
        """Mark an artifact unusable (idempotent: the first reason stays)."""
        with self.engine.begin() as conn:
            if not conn.execute(
                sa.select(quarantine.c.sha256).where(quarantine.c.sha256 == sha256)
            ).first():
                conn.execute(
                    quarantine.insert().values(sha256=sha256, reason=reason, quarantined_at=_now())
                )

    def quarantined(self) -> dict[str, str]:
        """sha256 → reason of every quarantined artifact."""
        with self.engine.connect() as conn:
            return {r.sha256: r.reason for r in conn.execute(sa.select(quarantine))}

    def alias(self, kind: str, config: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(aliases.c.sha256).where(
                    (aliases.c.kind == kind) & (aliases.c.config == config)
                )
            ).scalar()

    def alias_updated_at(self, kind: str, config: str) -> float | None:
        """When the alias last moved (None: never set)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(aliases.c.updated_at).where(
                    (aliases.c.kind == kind) & (aliases.c.config == config)
                )
            ).scalar()

    def aliases_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(aliases), conn)

    def merges_frame(self) -> pd.DataFrame:
        """config, snapshot_sha256, merged_at, games added (from the stats)."""
        with self.engine.connect() as conn:
            frame = pd.read_sql(sa.select(merges), conn)
        frame["added"] = [json.loads(s).get("added", 0) for s in frame["stats_json"]]
        return frame.drop(columns=["stats_json"])

    def set_alias(self, kind: str, config: str, sha256: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                aliases.delete().where((aliases.c.kind == kind) & (aliases.c.config == config))
            )
            conn.execute(
                aliases.insert().values(kind=kind, config=config, sha256=sha256, updated_at=_now())
            )

    # --- circuit breakers ---------------------------------------------------------

    def breaker(self, node: str) -> BreakerState:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(breakers).where(breakers.c.node == node)).first()
        if row is None:
            return BreakerState()
        return BreakerState(row.failures, row.last_failure_at, row.opened_at)

    def record_node_result(self, node: str, error: str | None) -> BreakerState:
        """Feed one attempt's outcome to the node's breaker; returns the new state."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(breakers).where(breakers.c.node == node)).first()
            state = (
                BreakerState(row.failures, row.last_failure_at, row.opened_at)
                if row
                else (BreakerState())
            )
            new = after_failure(state, _now()) if error else after_success(state)
            if row is not None and error is None and state == new:
                return new
            conn.execute(breakers.delete().where(breakers.c.node == node))
            conn.execute(
                breakers.insert().values(
                    node=node,
                    failures=new.failures,
                    last_failure_at=new.last_failure_at,
                    opened_at=new.opened_at,
                    last_error=error,
                )
            )
        return new

    def open_breakers(self) -> frozenset[str]:
        """Nodes whose breaker is open now (half-open ones may be tried)."""
        now = _now()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(breakers).where(breakers.c.opened_at.is_not(None)))
            return frozenset(
                r.node
                for r in rows
                if breaker_status(BreakerState(r.failures, r.last_failure_at, r.opened_at), now)
                == "open"
            )

    # --- leases ------------------------------------------------------------------

    @contextmanager
    def lease(self, name: str, ttl_seconds: float = 3600) -> Iterator[str]:
        """Exclusive lease on `name` across processes and hosts sharing this catalog.

        Expiry only lets a crashed holder's lease be taken over; it never makes a
        waiter proceed while the holder is alive (LESSONS 8)."""
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                leases.delete().where((leases.c.name == name) & (leases.c.expires_at < now))
            )
            try:
                conn.execute(
                    leases.insert().values(name=name, holder=holder, expires_at=now + ttl_seconds)
                )
            except sa.exc.IntegrityError:
                current = None
            else:
                current = holder
        if current is None:
            with self.engine.connect() as conn:
                owner = conn.execute(
                    sa.select(leases.c.holder).where(leases.c.name == name)
                ).scalar()
            raise LeaseHeld(f"lease {name!r} is held by {owner}")
        try:
            yield holder
        finally:
            with self.engine.begin() as conn:
                conn.execute(
                    leases.delete().where((leases.c.name == name) & (leases.c.holder == holder))
                )


def _v2_merges_by_canonical_version(conn: sa.Connection) -> None:
    """v1 keyed merges by (config, snapshot); v2 logs every merge with the canonical
    version it produced, so a snapshot can be merged again into another version. Rows
    are carried over with that version unknown (None)."""
    old = sa.Table("merges", sa.MetaData(), autoload_with=conn)
    rows = [dict(r._mapping) for r in conn.execute(sa.select(old))]
    old.drop(conn)
    merges.create(conn)
    if rows:
        conn.execute(
            merges.insert(),
            [
                {
                    "config": r["config"],
                    "snapshot_sha256": r["snapshot_sha256"],
                    "canonical_sha256": None,
                    "merged_at": r["merged_at"],
                    "stats_json": r["stats_json"],
                }
                for r in rows
            ],
        )


# version → the step that brings a catalog from version - 1 to it. Tables and indexes
# that are only new are made by `create_all` after the steps run.
_MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {2: _v2_merges_by_canonical_version}


def _migrate(engine: sa.Engine) -> None:
    """Bring the schema to this code's version, one recorded step at a time; refuse a
    catalog newer than this code."""
    if engine.url.render_as_string() in _migrated:
        return
    with engine.begin() as conn:
        if sa.inspect(conn).has_table(schema_version.name):
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
        else:
            current = None
        if current is not None and current > SCHEMA_VERSION:
            raise RuntimeError(
                f"catalog schema version {current} is newer than this fleetsync "
                f"({SCHEMA_VERSION}); upgrade fleetsync"
            )
        for version in range((current or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[version](conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=_now()))
        metadata.create_all(conn)
        for table in metadata.sorted_tables:  # indexes added since a catalog was created
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        if current is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=_now()))
    _migrated.add(engine.url.render_as_string())


_migrated: set[str] = set()
