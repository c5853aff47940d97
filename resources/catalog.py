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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, TypeVarTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from resources.transport.base import NodeProbe

SCHEMA_VERSION = 4
_Columns = TypeVarTuple("_Columns")


class ReplicaState(StrEnum):
    VERIFIED = "verified"  # SHA-256 checked where it lies: counts toward policy
    STAGING = "staging"  # a snapshot on its origin node: a copy source, never counted


class NodeState(StrEnum):
    """A node's lifecycle state (decided by `sync_assets.fleet.lifecycle`)."""

    ACTIVE = "active"
    SUSPECT = "suspect"  # a probe missed: its copies count, but are at risk
    LOST = "lost"  # no answer for policy.lost_after_s: its copies no longer count
    RETIRED = "retired"  # gone from the inventory, holds no last copy


# THE states whose nodes' verified replicas count toward min_replicas.
COUNTED_NODE_STATES = (NodeState.ACTIVE, NodeState.SUSPECT)


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
    sa.Column("state", sa.String(16), nullable=False),  # NodeState
)

# What the last probe of a node saw. Apart from `nodes` (node discovery's record of the
# inventory) so that a probe is recorded whether or not discovery has run yet.
probes = sa.Table(
    "probes",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("reachable", sa.Boolean),
    sa.Column("last_probe_at", sa.Float),
    sa.Column("disk_total_bytes", sa.BigInteger),
    sa.Column("disk_free_bytes", sa.BigInteger),
    sa.Column("gpu_util_percent", sa.Float),
    sa.Column("probe_error", sa.Text),
    # The first probe that missed the node since its last successful one (NULL: the last
    # probe succeeded, or none yet): the node lifecycle's lost clock.
    sa.Column("silent_since", sa.Float),
)
_PROBE_COLUMNS = [c.name for c in probes.columns if c.name not in ("node", "silent_since")]

# Every node state change, oldest first: why a node's copies stopped (or started) counting.
node_events = sa.Table(
    "node_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("from_state", sa.String(16)),  # None: first recorded
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
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
    sa.Column("state", sa.String(16), nullable=False),  # ReplicaState
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

# Per-node circuit breakers: they must outlive runs, so they live here; what the numbers
# mean is decided outside the catalog (sync_assets/engine/breaker.py).
breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("failures", sa.Float, nullable=False),
    sa.Column("last_failure_at", sa.Float),
    sa.Column("opened_at", sa.Float),
    sa.Column("last_error", sa.Text),
)

# --- audit and scrub on rotation (issue 10 item 3): tables -------------------------------
# When each node was last audited (one listing against the catalog) and last scrubbed (a
# byte budget re-hashed), so the next checks go to the nodes looked at longest ago.
node_checks = sa.Table(
    "node_checks",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("audited_at", sa.Float),  # None: never audited
    sa.Column("scrubbed_at", sa.Float),  # None: never scrubbed
    sa.Column("scrub_bytes", sa.BigInteger),  # bytes the last scrub re-hashed
    sa.Column("last_finding", sa.Text),  # what the last audit or scrub said, one line
)
# What audits and scrubs found wrong with single replicas (missing, resized, corrupt,
# rewritten), oldest first: the catalog row is gone, this says why (and where a corrupt
# file was moved aside).
check_findings = sa.Table(
    "check_findings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("finding", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)
# --- end of audit and scrub tables --------------------------------------------------------

# --- probing the whole fleet (issue 10 item 2): tables -----------------------------------
# Every probe of every node, newest last: what `probes` (the latest) forgets. Kept for
# PROBE_HISTORY_S, pruned at each probe of the node.
probe_history = sa.Table(
    "probe_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(128), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("reachable", sa.Boolean, nullable=False),
    sa.Column("disk_total_bytes", sa.BigInteger),
    sa.Column("disk_free_bytes", sa.BigInteger),
    sa.Column("gpu_util_percent", sa.Float),  # None: unknown, never idle
    sa.Column("jobs", sa.Integer),  # None: unknown
    sa.Column("sessions", sa.Integer),  # None: unknown
    sa.Column("error", sa.Text),
    sa.Index("ix_probe_history_node_at", "node", "at"),
)
# The game and Elo DBs (games/*.db, elo/*.db) the last successful probe of a node saw:
# the DB file and its WAL, as the collectors fingerprint them (`sources`).
probe_databases = sa.Table(
    "probe_databases",
    metadata,
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # games | elo: its directory
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("wal_size", sa.BigInteger),  # None: no WAL file beside it
    sa.Column("wal_mtime_ns", sa.BigInteger),
    sa.Column("seen_at", sa.Float, nullable=False),
)
PROBE_HISTORY_S = 3 * 86400  # 100 nodes probed each minute: ~430k rows
# --- end of probing tables ----------------------------------------------------------------


# --- transfer_failures (issue 10 item 6): tables ----------------------------------------
# Failed runs, one row per failed step (step '' for a run that failed outside a step):
# which node and file, the error, and whether it was transient (retried). The newest
# RUN_FAILURES_KEPT rows are kept.
run_failures = sa.Table(
    "run_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("step", sa.String(256), nullable=False),
    sa.Column("job", sa.String(256), nullable=False),
    sa.Column("node", sa.String(128), nullable=False),  # '': no node (a repair run)
    sa.Column("file", sa.Text, nullable=False),  # '': none named by the error
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("transient", sa.Boolean, nullable=False),
    sa.Column("failed_at", sa.Float, nullable=False),
    sa.UniqueConstraint("run_id", "step"),
)
RUN_FAILURES_KEPT = 1000
# --- end of transfer_failures tables ------------------------------------------------------


class LeaseHeld(RuntimeError):
    """Another holder owns the lease; the message names it."""


class Replica(NamedTuple):
    sha256: str
    node: str
    path: str
    size: int


class Artifact(NamedTuple):
    sha256: str
    kind: str
    config: str | None
    name: str
    size: int
    origin_node: str


def _durable_copy(durable_nodes: Collection[str]) -> sa.ColumnElement[bool]:
    """THE definition of a durable copy, used by every count: a verified replica on one of
    `durable_nodes` (the inventory's durable nodes whose copies count now, lost ones left
    out: `sync_assets.engine.replication.counted_durable_nodes`). Counted per distinct node."""
    return (replicas.c.state == ReplicaState.VERIFIED) & replicas.c.node.in_(sorted(durable_nodes))


def _where(table: sa.Table, key: dict[str, Any]) -> sa.ColumnElement[bool]:
    return sa.and_(*(table.c[column] == value for column, value in key.items()))


def _replace(
    conn: sa.Connection, table: sa.Table, key: dict[str, Any], *rows: dict[str, Any]
) -> None:
    """Make the rows at `key` be `rows` (each completed with `key`), whatever was there."""
    conn.execute(table.delete().where(_where(table, key)))
    if rows:
        conn.execute(table.insert(), [key | row for row in rows])


def _insert_new(conn: sa.Connection, table: sa.Table, key: dict[str, Any], **values: Any) -> None:
    """Insert the row at `key` unless there is one: the first one written stays."""
    if conn.execute(sa.select(*table.primary_key).where(_where(table, key))).first() is None:
        conn.execute(table.insert().values(**key, **values))


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

    def _rows(self, query: sa.Select[*_Columns]) -> Sequence[sa.Row[*_Columns]]:
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def _scalars(self, query: sa.Executable) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def _frame(self, query: sa.Select[Any]) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    # --- nodes -------------------------------------------------------------------

    def sync_nodes(self, fleet_nodes: Sequence[Any]) -> None:
        """Record inventory nodes as they are described; a new one starts active, a known
        one keeps its lifecycle state (the lifecycle decides it, never this). Node
        discovery's step: decisions take node roles from the inventory, never from here."""
        with self.engine.begin() as conn:
            states = {r.name: r.state for r in conn.execute(sa.select(nodes.c.name, nodes.c.state))}
            for n in fleet_nodes:
                values = {
                    "roles": ",".join(n.roles),
                    "durable": n.durable,
                    "ephemeral": n.ephemeral,
                    "provider": n.provider.kind,
                    "state": states.get(n.name, NodeState.ACTIVE),
                }
                _replace(conn, nodes, {"name": n.name}, values)

    def record_probe(self, node: str, probe: NodeProbe) -> None:
        """The node's latest probe (`probes`), one more row of its history (older rows than
        PROBE_HISTORY_S pruned), and, when it answered, the DBs it saw."""
        now = _now()
        seen = {c: getattr(probe, c) for c in _PROBE_COLUMNS if hasattr(probe, c)}
        with self.engine.begin() as conn:
            before = conn.scalar(sa.select(probes.c.silent_since).where(probes.c.node == node))
            silent = None if probe.reachable else now if before is None else before
            latest = {"last_probe_at": now, "probe_error": probe.error, "silent_since": silent}
            _replace(conn, probes, {"node": node}, seen | latest)
            self._record_probe_history(conn, node, probe, seen | {"at": now})

    def node_lifecycle(self) -> dict[str, tuple[NodeState, float | None]]:
        """Recorded node → (lifecycle state, first missed probe since the last success)."""
        query = sa.select(nodes.c.name, nodes.c.state, probes.c.silent_since).outerjoin(
            probes, probes.c.node == nodes.c.name
        )
        return {r.name: (NodeState(r.state), r.silent_since) for r in self._rows(query)}

    def set_node_states(self, changes: dict[str, tuple[NodeState, str]]) -> None:
        """node → (new state, why): each real change is made and logged in `node_events`."""
        now = _now()
        with self.engine.begin() as conn:
            states = {r.name: r.state for r in conn.execute(sa.select(nodes.c.name, nodes.c.state))}
            for node, (state, reason) in sorted(changes.items()):
                if node not in states or states[node] == state:
                    continue
                conn.execute(nodes.update().where(nodes.c.name == node).values(state=state))
                conn.execute(
                    node_events.insert().values(
                        node=node, at=now, from_state=states[node], to_state=state, reason=reason
                    )
                )

    def uncounted_nodes(self) -> frozenset[str]:
        """Recorded nodes whose replicas do not count toward policy (lost, retired)."""
        query = sa.select(nodes.c.name).where(nodes.c.state.not_in(COUNTED_NODE_STATES))
        return frozenset(self._scalars(query))

    def node_events_frame(self) -> pd.DataFrame:
        """Every node state change, oldest first."""
        return self._frame(sa.select(node_events).order_by(node_events.c.id))

    def nodes_frame(self) -> pd.DataFrame:
        """The recorded nodes, each with what its last probe saw (NaN: never probed)."""
        query = sa.select(nodes, *(probes.c[c] for c in _PROBE_COLUMNS)).outerjoin(
            probes, probes.c.node == nodes.c.name
        )
        return self._frame(query)

    def disk_space(self, names: Collection[str]) -> dict[str, tuple[int | None, int | None]]:
        """node → (total, free) bytes its last probe saw, for the probed ones of `names`."""
        p = probes
        query = sa.select(p.c.node, p.c.disk_total_bytes, p.c.disk_free_bytes).where(
            p.c.node.in_(sorted(names))
        )
        return {r.node: (r.disk_total_bytes, r.disk_free_bytes) for r in self._rows(query)}

    def unreachable_nodes(self) -> frozenset[str]:
        """Nodes whose last probe found them unreachable."""
        query = sa.select(probes.c.node).where(probes.c.reachable.is_(False))
        return frozenset(self._scalars(query))

    # --- artifacts and replicas --------------------------------------------------

    def add_artifact(
        self, sha256: str, *, kind: str, config: str | None, name: str, size: int, origin_node: str
    ) -> None:
        """Idempotent: the same content registered twice is one artifact."""
        with self.engine.begin() as conn:
            _insert_new(
                conn,
                artifacts,
                {"sha256": sha256},
                kind=kind,
                config=config,
                name=name,
                size=size,
                origin_node=origin_node,
                created_at=_now(),
            )

    def record_replica(
        self, sha256: str, node: str, path: str, size: int, state: str = ReplicaState.VERIFIED
    ) -> None:
        """Record a copy whose SHA-256 was checked at `node`; replaces any other
        artifact previously recorded at the same (node, path), since the file was replaced."""
        with self.engine.begin() as conn:
            copy = {"sha256": sha256, "size": size, "verified_at": _now(), "state": state}
            _replace(conn, replicas, {"node": node, "path": path}, copy)

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
        return self._rows(query)

    def replica_path_span(self, node: str, states: Sequence[str]) -> tuple[str, str] | None:
        """The lowest and highest replica path on `node` (None: it holds none). Every
        path sorts between them, so they share the prefix all paths share: the
        directory one listing must cover, from the index alone."""
        r = replicas
        query = sa.select(sa.func.min(r.c.path), sa.func.max(r.c.path)).where(
            (r.c.node == node) & r.c.state.in_(list(states))
        )
        ((lowest, highest),) = self._rows(query)
        return None if lowest is None else (lowest, highest)

    def has_copy(self, sha256: str, nodes: Collection[str]) -> bool:
        """Whether one of `nodes` holds a copy, staged or verified."""
        r = replicas
        query = sa.select(r.c.sha256).where(
            (r.c.sha256 == sha256) & r.c.state.in_(list(ReplicaState)) & r.c.node.in_(list(nodes))
        )
        return bool(self._rows(query.limit(1)))

    def _durable_counts(self, durable_nodes: Collection[str]) -> sa.Subquery:
        r = replicas
        return (
            sa.select(r.c.sha256, sa.func.count(sa.distinct(r.c.node)).label("copies"))
            .where(_durable_copy(durable_nodes))
            .group_by(r.c.sha256)
            .subquery()
        )

    def below_policy(
        self, min_replicas: dict[str, int], durable_nodes: Collection[str]
    ) -> set[str]:
        """Artifacts with fewer durable copies than `min_replicas[kind]`, counted by the
        database, so a fleet in order costs one query instead of three catalog frames."""
        kinds = [kind for kind, wanted in min_replicas.items() if wanted > 0]
        if not kinds:
            return set()
        a, have = artifacts, self._durable_counts(durable_nodes)
        wanted = sa.case(min_replicas, value=a.c.kind, else_=0)
        query = (
            sa.select(a.c.sha256)
            .outerjoin(have, have.c.sha256 == a.c.sha256)
            .where(a.c.kind.in_(kinds) & (sa.func.coalesce(have.c.copies, 0) < wanted))
        )
        return set(self._scalars(query))

    def copies_at_risk(
        self,
        shas: Iterable[str],
        durable_nodes: Collection[str],
        holders: Collection[str],
        at_risk: Collection[str],
    ) -> list[sa.Row[Any]]:
        """Per artifact of `shas` (those below policy): sha256, kind, config, size,
        durable_copies, copies (nodes of `holders` with a verified or staged copy) and
        safe_copies (those copies on a holder not `at_risk`). Served by the primary key
        (sha256 first), so its cost follows len(shas), not the table; chunked to stay under
        the databases' bound-parameter limits."""
        a, r = artifacts, replicas
        usable = r.c.state.in_(list(ReplicaState)) & r.c.node.in_(sorted(holders))
        safe = usable & r.c.node.not_in(sorted(at_risk))

        def distinct_nodes(where: sa.ColumnElement[bool], label: str) -> sa.Label[Any]:
            return sa.func.count(sa.distinct(sa.case((where, r.c.node)))).label(label)

        about = (a.c.sha256, a.c.kind, a.c.config, a.c.size)
        query = (
            sa.select(
                *about,
                distinct_nodes(_durable_copy(durable_nodes), "durable_copies"),
                distinct_nodes(usable, "copies"),
                distinct_nodes(safe, "safe_copies"),
            )
            .outerjoin(r, r.c.sha256 == a.c.sha256)
            .group_by(*about)
        )
        wanted, rows = sorted(set(shas)), list[sa.Row[Any]]()
        for start in range(0, len(wanted), 10_000):
            rows += self._rows(query.where(a.c.sha256.in_(wanted[start : start + 10_000])))
        return rows

    def durable_copy_counts(
        self,
        durable_nodes: Collection[str],
        *,
        shas: Iterable[str] | None = None,
        kind: str | None = None,
    ) -> dict[str, int]:
        """sha256 → durable copies, for the artifacts (of `kind`, among `shas`) that have
        any; an artifact missing here has none."""
        have = self._durable_counts(durable_nodes)
        query = sa.select(have.c.sha256, have.c.copies)
        if kind is not None:
            query = query.join(artifacts, artifacts.c.sha256 == have.c.sha256).where(
                artifacts.c.kind == kind
            )
        if shas is not None:
            query = query.where(have.c.sha256.in_(sorted(set(shas))))
        return {r.sha256: r.copies for r in self._rows(query)}

    def replicas_of(
        self,
        shas: Iterable[str],
        states: Collection[str] = (ReplicaState.VERIFIED,),
        nodes: Collection[str] | None = None,
    ) -> list[Replica]:
        """The copies of these artifacts in `states` (on `nodes`, if given), by node, path."""
        r = replicas
        query = sa.select(r.c.sha256, r.c.node, r.c.path, r.c.size).where(
            r.c.sha256.in_(sorted(set(shas))) & r.c.state.in_(list(states))
        )
        if nodes is not None:
            query = query.where(r.c.node.in_(sorted(nodes)))
        return [Replica(*row) for row in self._rows(query.order_by(r.c.node, r.c.path, r.c.sha256))]

    def artifacts_of(
        self,
        kind: str | None = None,
        *,
        config: str | None = None,
        shas: Iterable[str] | None = None,
    ) -> dict[str, Artifact]:
        """sha256 → artifact, of `kind` (for `config`, among `shas`, if given)."""
        a = artifacts
        query = sa.select(a.c.sha256, a.c.kind, a.c.config, a.c.name, a.c.size, a.c.origin_node)
        if kind is not None:
            query = query.where(a.c.kind == kind)
        if config is not None:
            query = query.where(a.c.config == config)
        if shas is not None:
            query = query.where(a.c.sha256.in_(sorted(set(shas))))
        return {row.sha256: Artifact(*row) for row in self._rows(query.order_by(a.c.sha256))}

    def originated(self, kind: str, node: str) -> list[str]:
        """The artifacts of `kind` first registered from `node`."""
        a = artifacts
        query = sa.select(a.c.sha256).where((a.c.kind == kind) & (a.c.origin_node == node))
        return self._scalars(query.order_by(a.c.created_at, a.c.sha256))

    def snapshots_to_merge(self, config: str, durable_nodes: Collection[str]) -> set[str]:
        """Snapshots whose census counted games of `config`, with a verified copy on one
        of `durable_nodes`, not quarantined."""
        c, r, q = snapshot_configs, replicas, quarantine
        query = sa.select(c.c.snapshot_sha256).where(
            (c.c.config == config)
            & (c.c.games > 0)
            & sa.exists().where((r.c.sha256 == c.c.snapshot_sha256) & _durable_copy(durable_nodes))
            & ~sa.exists().where(q.c.sha256 == c.c.snapshot_sha256)
        )
        return set(self._scalars(query))

    def last_copy_holders(self, among: Collection[str], inventory: Collection[str]) -> set[str]:
        """The nodes of `among` holding a copy (verified or staged) of something that has no
        copy elsewhere: another copy counts only on an `inventory` node outside `among` in a
        counted state, so nodes leaving together never vouch for each other."""
        if not among:
            return set()
        r, other = replicas, replicas.alias("other")
        vouching = (
            sa.select(nodes.c.name)
            .where(nodes.c.name.in_(sorted(set(inventory) - set(among))))
            .where(nodes.c.state.in_(COUNTED_NODE_STATES))
        )
        alone = ~sa.exists().where(
            (other.c.sha256 == r.c.sha256)
            & other.c.node.in_(vouching)
            & other.c.state.in_(list(ReplicaState))
        )
        query = (
            sa.select(r.c.node)
            .distinct()
            .where(r.c.node.in_(sorted(among)) & r.c.state.in_(list(ReplicaState)) & alone)
        )
        return set(self._scalars(query))

    def artifacts_frame(
        self, kinds: Sequence[str] | None = None, shas: Iterable[str] | None = None
    ) -> pd.DataFrame:
        query = sa.select(artifacts)
        if kinds is not None:
            query = query.where(artifacts.c.kind.in_(list(kinds)))
        if shas is not None:
            query = query.where(artifacts.c.sha256.in_(sorted(set(shas))))
        return self._frame(query)

    def replicas_frame(
        self, kinds: Sequence[str] | None = None, shas: Iterable[str] | None = None
    ) -> pd.DataFrame:
        """Replicas (of `kinds`, of `shas`) joined with their artifact's kind, config, origin."""
        a = artifacts
        query = sa.select(replicas, a.c.kind, a.c.config, a.c.name, a.c.origin_node).join(
            a, a.c.sha256 == replicas.c.sha256
        )
        if kinds is not None:
            query = query.where(a.c.kind.in_(list(kinds)))
        if shas is not None:
            query = query.where(replicas.c.sha256.in_(sorted(set(shas))))
        return self._frame(query)

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
        row: dict[str, Any] = {"sha256": sha256, "source": source, "target": target, "path": path}
        row |= {"bytes": bytes_moved, "seconds": seconds, "status": "failed" if error else "ok"}
        with self.engine.begin() as conn:
            conn.execute(transfers.insert().values(**row, error=error, finished_at=_now()))

    def bytes_moved(self) -> int:
        """Bytes of every transfer that succeeded."""
        t = transfers
        query = sa.select(sa.func.coalesce(sa.func.sum(t.c.bytes), 0)).where(t.c.status == "ok")
        return int(self._scalars(query)[0])

    def verified_copies_per_node(self) -> dict[str, int]:
        r = replicas
        query = (
            sa.select(r.c.node, sa.func.count())
            .where(r.c.state == ReplicaState.VERIFIED)
            .group_by(r.c.node)
        )
        return {node: n for node, n in self._rows(query)}

    def transfers_frame(self) -> pd.DataFrame:
        return self._frame(sa.select(transfers))

    # --- live sources, merges, aliases -------------------------------------------

    def source_state(self, node: str, path: str) -> tuple[str, str] | None:
        """(fingerprint, snapshot_sha256) of the last snapshot of a live DB, if any."""
        s = sources
        key = _where(s, {"node": node, "path": path})
        rows = self._rows(sa.select(s.c.fingerprint, s.c.snapshot_sha256).where(key))
        return (rows[0].fingerprint, rows[0].snapshot_sha256) if rows else None

    def set_source_state(self, node: str, path: str, fingerprint: str, sha256: str) -> None:
        snapshot = {"fingerprint": fingerprint, "snapshot_sha256": sha256, "snapshotted_at": _now()}
        with self.engine.begin() as conn:
            _replace(conn, sources, {"node": node, "path": path}, snapshot)

    def record_merges(
        self, config: str, canonical_sha256: str | None, per_snapshot: dict[str, dict[str, Any]]
    ) -> None:
        """Log the snapshots (sha256 → merge stats) merged into `config`'s canonical DB,
        which became version `canonical_sha256` (None: not known)."""
        if not per_snapshot:
            return
        merge = {"config": config, "canonical_sha256": canonical_sha256, "merged_at": _now()}
        rows = [
            merge | {"snapshot_sha256": sha, "stats_json": json.dumps(stats, sort_keys=True)}
            for sha, stats in per_snapshot.items()
        ]
        with self.engine.begin() as conn:
            conn.execute(merges.insert(), rows)

    def merge_log(self) -> list[tuple[str, str]]:
        """(config, stats_json) of the newest merge of each (config, snapshot): a snapshot
        merged again into another canonical version is counted once."""
        m = merges
        newest = sa.select(sa.func.max(m.c.id)).group_by(m.c.config, m.c.snapshot_sha256).subquery()
        query = sa.select(m.c.config, m.c.stats_json).where(m.c.id.in_(sa.select(newest)))
        return [(r.config, r.stats_json) for r in self._rows(query)]

    def canonical_contents(self, canonical_sha256: str) -> set[str]:
        """The snapshots a canonical version is known to hold (empty: not known)."""
        c = canonical_contents
        query = sa.select(c.c.snapshot_sha256).where(c.c.canonical_sha256 == canonical_sha256)
        return set(self._scalars(query))

    def record_canonical_contents(
        self, config: str, canonical_sha256: str, snapshots: set[str]
    ) -> None:
        """Record what a canonical version holds (replacing what was recorded for it)."""
        held = ({"snapshot_sha256": s, "config": config} for s in sorted(snapshots))
        with self.engine.begin() as conn:
            _replace(conn, canonical_contents, {"canonical_sha256": canonical_sha256}, *held)

    def record_census(self, snapshot_sha256: str, configs: dict[str, int], unparsed: int) -> None:
        """Record the games per config counted in a snapshot (replacing an older count)."""
        key = {"snapshot_sha256": snapshot_sha256}
        games = ({"config": c, "games": n} for c, n in sorted(configs.items()))
        with self.engine.begin() as conn:
            _replace(conn, snapshot_census, key, {"unparsed_games": unparsed, "counted_at": _now()})
            _replace(conn, snapshot_configs, key, *games)

    def uncounted_snapshots(self, kind: str) -> set[str]:
        """Artifacts of `kind` with no census yet."""
        a, c = artifacts, snapshot_census
        query = sa.select(a.c.sha256).where(
            (a.c.kind == kind) & ~sa.exists().where(c.c.snapshot_sha256 == a.c.sha256)
        )
        return set(self._scalars(query))

    def quarantine(self, sha256: str, reason: str) -> None:
        """Mark an artifact unusable (idempotent: the first reason stays)."""
        with self.engine.begin() as conn:
            _insert_new(conn, quarantine, {"sha256": sha256}, reason=reason, quarantined_at=_now())

    def quarantined(self) -> dict[str, str]:
        """sha256 → reason of every quarantined artifact."""
        return {r.sha256: r.reason for r in self._rows(sa.select(quarantine))}

    def alias(self, kind: str, config: str) -> str | None:
        return self._alias_column("sha256", kind, config)

    def alias_updated_at(self, kind: str, config: str) -> float | None:
        """When the alias last moved (None: never set)."""
        return self._alias_column("updated_at", kind, config)

    def _alias_column(self, column: str, kind: str, config: str) -> Any:
        key = _where(aliases, {"kind": kind, "config": config})
        return next(iter(self._scalars(sa.select(aliases.c[column]).where(key))), None)

    def aliases_frame(self, kinds: Sequence[str]) -> pd.DataFrame:
        """The aliases of `kinds` (the primary key leads with the kind)."""
        return self._frame(sa.select(aliases).where(aliases.c.kind.in_(list(kinds))))

    def aliases(self, kind: str) -> dict[str, str]:
        """config → sha256 of every alias of `kind`."""
        query = sa.select(aliases.c.config, aliases.c.sha256).where(aliases.c.kind == kind)
        return {config: sha for config, sha in self._rows(query)}

    def merges_since(self, since: dict[str, float | None]) -> pd.DataFrame:
        """config, snapshot_sha256, merged_at, games added (from the stats) of each
        config's merges after `since[config]` (None: all of them), by the config index."""
        m = merges
        after = [
            (m.c.config == config) & (m.c.merged_at > at if at is not None else sa.true())
            for config, at in since.items()
        ]
        frame = self._frame(sa.select(m).where(sa.or_(sa.false(), *after)))
        frame["added"] = [json.loads(s).get("added", 0) for s in frame["stats_json"]]
        return frame.drop(columns=["stats_json"])

    def set_alias(self, kind: str, config: str, sha256: str) -> None:
        with self.engine.begin() as conn:
            key = {"kind": kind, "config": config}
            _replace(conn, aliases, key, {"sha256": sha256, "updated_at": _now()})

    # --- circuit breakers ---------------------------------------------------------

    def breaker(self, node: str) -> sa.Row[Any] | None:
        """The node's breaker row (failures, last_failure_at, opened_at, last_error)."""
        return next(iter(self._rows(sa.select(breakers).where(breakers.c.node == node))), None)

    def update_breaker(
        self, node: str, step: Callable[[sa.Row[Any] | None], dict[str, Any] | None]
    ) -> None:
        """Replace the node's breaker row by `step(row)` (None: leave it), read and
        written in one transaction so concurrent outcomes are never lost."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(breakers).where(breakers.c.node == node)).first()
            new = step(row)
            if new is not None:
                _replace(conn, breakers, {"node": node}, new)

    def opened_breakers(self) -> Sequence[sa.Row[Any]]:
        """The breaker rows that have opened (open, or half-open by now)."""
        return self._rows(sa.select(breakers).where(breakers.c.opened_at.is_not(None)))

    # --- audit and scrub on rotation (issue 10 item 3) ----------------------------------

    def node_checks(self) -> dict[str, sa.Row[Any]]:
        """node → its `node_checks` row (audited_at, scrubbed_at, scrub_bytes,
        last_finding); a node never checked has no row."""
        return {row.node: row for row in self._rows(sa.select(node_checks))}

    def record_audit(self, node: str, finding: str, at: float | None = None) -> None:
        """The node was audited (or its audit was tried) at `at` (default: now)."""
        self._record_check(node, {"audited_at": _now() if at is None else at}, finding)

    def record_scrub(
        self, node: str, scrubbed_bytes: int, finding: str, at: float | None = None
    ) -> None:
        """The node was scrubbed at `at` (default: now), `scrubbed_bytes` re-hashed."""
        done = {"scrubbed_at": _now() if at is None else at, "scrub_bytes": scrubbed_bytes}
        self._record_check(node, done, finding)

    def _record_check(self, node: str, done: dict[str, Any], finding: str) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(node_checks).where(node_checks.c.node == node)).first()
            kept = dict(row._mapping) if row is not None else {}
            _replace(conn, node_checks, {"node": node}, kept | done | {"last_finding": finding})

    def scrub_candidates(self, node: str, limit: int = 100_000) -> Sequence[sa.Row[Any]]:
        """The node's verified replicas, least recently verified first (at most `limit`):
        (sha256, path, size, verified_at, kind) rows. Staging copies are never scrubbed."""
        r, a = replicas, artifacts
        query = (
            sa.select(r.c.sha256, r.c.path, r.c.size, r.c.verified_at, a.c.kind)
            .join(a, a.c.sha256 == r.c.sha256)
            .where((r.c.node == node) & (r.c.state == ReplicaState.VERIFIED))
            .order_by(r.c.verified_at, r.c.path)
            .limit(limit)
        )
        return self._rows(query)

    def refresh_verified(self, node: str, replicas_at: Sequence[tuple[str, str]], at: float) -> int:
        """The (sha256, path) verified replicas on `node` were hashed again, matching, at
        `at`: their verified_at moves up to it (never back). Returns how many were asked."""
        if not replicas_at:
            return 0
        r = replicas
        with self.engine.begin() as conn:
            conn.execute(
                r.update()
                .where(
                    (r.c.node == node)
                    & (r.c.sha256 == sa.bindparam("s"))
                    & (r.c.path == sa.bindparam("p"))
                    & (r.c.state == ReplicaState.VERIFIED)
                    & (r.c.verified_at < at)
                )
                .values(verified_at=at),
                [{"s": sha256, "p": path} for sha256, path in replicas_at],
            )
        return len(replicas_at)

    def record_check_findings(
        self, node: str, findings: Sequence[tuple[str, str, str, str]]
    ) -> None:
        """Log (sha256, path, finding, detail) found wrong on `node` by an audit or scrub."""
        if findings:
            rows = [
                {"node": node, "at": _now(), "sha256": s, "path": p, "finding": f, "detail": d}
                for s, p, f, d in findings
            ]
            with self.engine.begin() as conn:
                conn.execute(check_findings.insert(), rows)

    def check_findings_frame(self, node: str | None = None) -> pd.DataFrame:
        """Every finding (on `node`, if given), oldest first."""
        query = sa.select(check_findings).order_by(check_findings.c.id)
        if node is not None:
            query = query.where(check_findings.c.node == node)
        return self._frame(query)

    # --- end of audit and scrub on rotation ---------------------------------------------

    # --- fleetsync status: recent audit/scrub findings (issue 10 CLI review) ------------

    def recent_check_findings(self, limit: int) -> pd.DataFrame:
        """The newest `limit` audit/scrub findings, newest first."""
        query = sa.select(check_findings).order_by(check_findings.c.id.desc()).limit(limit)
        return self._frame(query)

    # --- end of fleetsync status: recent findings ----------------------------------------

    # --- probing the whole fleet (issue 10 item 2) ---------------------------------------

    @staticmethod
    def _record_probe_history(
        conn: sa.Connection, node: str, probe: NodeProbe, seen: dict[str, Any]
    ) -> None:
        h = probe_history
        facts = {"jobs": probe.jobs, "sessions": probe.sessions, "error": probe.error}
        conn.execute(h.insert().values(node=node, **seen, **facts))
        conn.execute(h.delete().where((h.c.node == node) & (h.c.at < seen["at"] - PROBE_HISTORY_S)))
        # Only a successful probe says which DBs are there: an unreadable answer keeps the
        # last successful probe's view (`NodeProbe.seen` refused unsafe names already).
        if probe.reachable and probe.error is None:
            rows = [
                {
                    "path": live.db.path,
                    "kind": live.db.path.split("/", 1)[0],
                    "size": live.db.size,
                    "mtime_ns": live.db.mtime_ns,
                    "wal_size": live.wal.size if live.wal else None,
                    "wal_mtime_ns": live.wal.mtime_ns if live.wal else None,
                    "seen_at": seen["at"],
                }
                for live in probe.databases
            ]
            _replace(conn, probe_databases, {"node": node}, *rows)

    def probe_history_frame(
        self, node: str | None = None, since: float | None = None
    ) -> pd.DataFrame:
        """Probes (of `node`, at or after `since`, when given), oldest first: node, at,
        reachable, disk_total_bytes, disk_free_bytes, gpu_util_percent, jobs, sessions, error."""
        h = probe_history
        query = sa.select(*(c for c in h.columns if c.name != "id")).order_by(h.c.at, h.c.id)
        if node is not None:
            query = query.where(h.c.node == node)
        if since is not None:
            query = query.where(h.c.at >= since)
        return self._frame(query)

    def probed_databases(self, nodes: Collection[str]) -> Sequence[sa.Row[Any]]:
        """The DBs the last successful probes of `nodes` saw, one row each: node, path, kind,
        size, mtime_ns, wal_size, wal_mtime_ns, seen_at; `reachable` (the node's latest
        probe answered); `collected_fingerprint` and `collected_at` of the last snapshot
        taken of that DB (`sources`; None: never snapshotted)."""
        d, s, p = probe_databases, sources, probes
        query = (
            sa.select(
                *d.columns,
                p.c.reachable,
                s.c.fingerprint.label("collected_fingerprint"),
                s.c.snapshotted_at.label("collected_at"),
            )
            .join(p, p.c.node == d.c.node)
            .outerjoin(s, (s.c.node == d.c.node) & (s.c.path == d.c.path))
            .where(d.c.node.in_(sorted(nodes)))
            .order_by(d.c.node, d.c.path)
        )
        return self._rows(query)  # rows, not a frame: nanosecond mtimes stay exact ints

    # --- end of probing the whole fleet -------------------------------------------------

    # --- transfer_failures (issue 10 item 6) ---------------------------------------------

    def record_run_failures(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record failed steps (columns of `run_failures`); a (run_id, step) already
        recorded stays as first written, so a sensor tick seen twice records once. Only
        the newest RUN_FAILURES_KEPT rows are kept."""
        with self.engine.begin() as conn:
            for row in rows:
                key = {"run_id": row["run_id"], "step": row["step"]}
                _insert_new(conn, run_failures, key, **{k: row[k] for k in row.keys() - key})
            oldest_kept = conn.execute(
                sa.select(run_failures.c.id)
                .order_by(run_failures.c.id.desc())
                .offset(RUN_FAILURES_KEPT - 1)
                .limit(1)
            ).scalar()
            if oldest_kept is not None:
                conn.execute(run_failures.delete().where(run_failures.c.id < oldest_kept))

    def recent_run_failures(self, limit: int) -> pd.DataFrame:
        """The newest `limit` failed steps, newest first."""
        query = sa.select(run_failures).order_by(run_failures.c.id.desc()).limit(limit)
        return self._frame(query)

    # --- end of transfer_failures ----------------------------------------------------------

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
            owner = next(
                iter(self._scalars(sa.select(leases.c.holder).where(leases.c.name == name))), None
            )
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
    kept = (old.c.config, old.c.snapshot_sha256, old.c.merged_at, old.c.stats_json)
    rows = [dict(r._mapping, canonical_sha256=None) for r in conn.execute(sa.select(*kept))]
    old.drop(conn)
    merges.create(conn)
    if rows:
        conn.execute(merges.insert(), rows)


def _v3_probes_apart_from_nodes(conn: sa.Connection) -> None:
    """v2 kept probe results on the `nodes` rows, so nothing could be recorded of a node
    discovery had not registered yet; v3 keeps them in `probes`."""
    if not sa.inspect(conn).has_table(nodes.name):
        return  # `create_all` makes both tables
    old = sa.Table("nodes", sa.MetaData(), autoload_with=conn)
    probes.create(conn)
    rows = conn.execute(
        sa.select(old.c.name.label("node"), *(old.c[c] for c in _PROBE_COLUMNS)).where(
            old.c.last_probe_at.is_not(None)
        )
    )
    if found := [dict(r._mapping) for r in rows]:
        conn.execute(probes.insert(), found)
    for column in _PROBE_COLUMNS:
        conn.execute(sa.text(f"ALTER TABLE nodes DROP COLUMN {column}"))


def _v4_probes_know_silent_since(conn: sa.Connection) -> None:
    """v4 records since when a node has not answered (the node lifecycle's clock); a node
    whose last probe missed starts that clock at that probe, one that answered has none."""
    if not sa.inspect(conn).has_table(probes.name):
        return  # `create_all` makes it
    if "silent_since" not in {c["name"] for c in sa.inspect(conn).get_columns(probes.name)}:
        conn.execute(sa.text("ALTER TABLE probes ADD COLUMN silent_since FLOAT"))
    missed_at = "CASE WHEN reachable THEN NULL ELSE last_probe_at END"
    conn.execute(sa.text(f"UPDATE probes SET silent_since = {missed_at}"))


# version → the step that brings a catalog from version - 1 to it. Tables and indexes
# that are only new are made by `create_all` after the steps run.
_MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {
    2: _v2_merges_by_canonical_version,
    3: _v3_probes_apart_from_nodes,
    4: _v4_probes_know_silent_since,
}


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
