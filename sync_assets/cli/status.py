"""What the fleet holds, read from the catalog only: replicas per kind and node, data at risk."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from resources.catalog import Catalog, NodeState, ReplicaState
from sync_assets.engine.replication import counted_durable_nodes
from sync_assets.fleet.inventory import Fleet
from sync_assets.kinds import REPLACED_IN_PLACE, min_replicas_by_kind


@dataclass(frozen=True)
class FleetStatus:
    games: pd.DataFrame  # config, games, duplicates, rejected, collisions_kept
    replicas: pd.DataFrame  # kind, artifacts, verified copies, min/max durable copies
    nodes: pd.DataFrame  # name, roles, lifecycle state, reachable, disk_free_gb, copies held
    bytes_without_durable_copy: int  # data at risk: lost if its node vanishes
    bytes_below_policy: int  # fewer durable copies than policy asks for
    # Meets policy only by counting copies on durable nodes that are suspect or did not
    # answer their last probe: those copies count until the node is lost, but are at risk.
    # (A lost node's copies do not count at all: its artifacts are below policy.)
    bytes_relying_on_unreachable: int
    bytes_moved: int  # all verified transfers ever recorded
    # The newest failed runs (`transfer_failures`): node, when (UTC), job, kind, error.
    recent_failures: pd.DataFrame
    # Per node, when its last audit and scrub ran and what the last one said (`node_checks`).
    node_checks: pd.DataFrame
    # The newest audit/scrub findings (`check_findings`): node, when, finding, path, and
    # where a corrupt file was moved aside.
    recent_findings: pd.DataFrame


RECENT_FAILURES = 10
FAILURE_COLUMNS = ["node", "when", "job", "kind", "error"]
ERROR_WIDTH = 100  # characters of an error's first line shown
# A node in the inventory with no catalog row yet (node discovery and probes not run).
NEVER_PROBED = "unknown (never probed)"
NODE_COLUMNS = ["name", "roles", "durable", "ephemeral", "state", "reachable", "disk_free_gb"]
RECENT_FINDINGS = 10
NODE_CHECK_COLUMNS = ["node", "last_audited", "last_scrubbed", "scrub_mb", "last_finding"]
FINDING_COLUMNS = ["node", "when", "finding", "path", "quarantined"]
# How a scrub's `corrupt` finding names where the file went (sync_assets/engine/scrub.py).
MOVED_ASIDE = "moved aside to "


def fleet_status(catalog: Catalog, fleet: Fleet) -> FleetStatus:
    artifacts = catalog.artifacts_frame()
    nodes = catalog.nodes_frame()
    # An older version of a file that is replaced in place (every merge rewrites the
    # canonical DB, every recompute the ratings DB) keeps its catalog row with no copy
    # left: it is superseded, not at risk.
    in_place = artifacts.loc[artifacts["kind"].isin(REPLACED_IN_PLACE), "sha256"]
    copied = {r.sha256 for r in catalog.replicas_of(in_place, list(ReplicaState))}
    artifacts = artifacts[artifacts["sha256"].isin(copied) | ~artifacts["sha256"].isin(in_place)]
    durable = counted_durable_nodes(fleet, catalog)
    copies = catalog.durable_copy_counts(durable)
    suspect = set(nodes.loc[nodes["state"] == NodeState.SUSPECT, "name"])
    answering = catalog.durable_copy_counts(durable - catalog.unreachable_nodes() - suspect)
    artifacts = artifacts.assign(
        durable_copies=[copies.get(sha, 0) for sha in artifacts["sha256"]],
        answering_copies=[answering.get(sha, 0) for sha in artifacts["sha256"]],
    )
    wanted = artifacts["kind"].map(min_replicas_by_kind(fleet)).fillna(1)
    meets = artifacts["durable_copies"] >= wanted

    by_kind = (
        artifacts.groupby("kind")
        .agg(
            artifacts=("sha256", "size"),
            bytes=("size", "sum"),
            min_durable_copies=("durable_copies", "min"),
            max_durable_copies=("durable_copies", "max"),
        )
        .reset_index()
    )
    held = pd.Series(catalog.verified_copies_per_node(), name="copies_held", dtype=int)
    node_view = nodes.assign(disk_free_gb=(nodes["disk_free_bytes"] / 1024**3).round(1))[
        NODE_COLUMNS
    ]
    node_view = (
        pd.concat([node_view, unrecorded_nodes(fleet, set(node_view["name"]))], ignore_index=True)
        .merge(held, left_on="name", right_index=True, how="left")
        .fillna({"copies_held": 0})
        .astype({"copies_held": int})
    )
    return FleetStatus(
        games=_games_per_config(catalog),
        replicas=by_kind,
        nodes=node_view,
        bytes_without_durable_copy=int(
            artifacts.loc[artifacts["durable_copies"] == 0, "size"].sum()
        ),
        bytes_below_policy=int(artifacts.loc[~meets, "size"].sum()),
        bytes_relying_on_unreachable=int(
            artifacts.loc[meets & (artifacts["answering_copies"] < wanted), "size"].sum()
        ),
        bytes_moved=catalog.bytes_moved(),
        recent_failures=failures_view(catalog.recent_run_failures(RECENT_FAILURES)),
        node_checks=node_checks_view(catalog.node_checks().values()),
        recent_findings=findings_view(catalog.recent_check_findings(RECENT_FINDINGS)),
    )


def unrecorded_nodes(fleet: Fleet, recorded: set[str]) -> pd.DataFrame:
    """Inventory nodes the catalog has no row for, as rows of the nodes table: their
    roles from the inventory, their state unknown (so a new catalog still lists them)."""
    rows = [
        {
            "name": node.name,
            "roles": ",".join(node.roles),
            "durable": node.durable,
            "ephemeral": node.ephemeral,
            "state": NEVER_PROBED,
            "reachable": None,
            "disk_free_gb": None,
        }
        for node in fleet.nodes
        if node.name not in recorded
    ]
    return pd.DataFrame(rows, columns=NODE_COLUMNS, dtype=object)


def _utc(seconds: pd.Series) -> pd.Series:
    """Epoch seconds as UTC to the second; no time (None/NaN) as "never"."""
    when = pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")
    return when.fillna("never")


def node_checks_view(rows: Iterable[Any]) -> pd.DataFrame:
    """`node_checks` rows as an operator reads them, by node name: when each node was last
    audited and scrubbed (UTC), the MB the scrub re-hashed, the last check's one line."""
    frame = pd.DataFrame(
        [(r.node, r.audited_at, r.scrubbed_at, r.scrub_bytes, r.last_finding) for r in rows],
        columns=NODE_CHECK_COLUMNS,
    )
    if frame.empty:
        return frame
    frame = frame.sort_values("node", ignore_index=True)
    return frame.assign(
        last_audited=_utc(frame["last_audited"].astype(float)),
        last_scrubbed=_utc(frame["last_scrubbed"].astype(float)),
        scrub_mb=(frame["scrub_mb"].astype(float) / 1e6).round(1),
        last_finding=frame["last_finding"].fillna("").map(_shortened),
    )


def findings_view(findings: pd.DataFrame) -> pd.DataFrame:
    """`check_findings` rows as an operator reads them, in the order given: node, when
    (UTC), what was found (missing, resized, corrupt, rewritten, ...), the path, and
    where a corrupt file was moved aside ("-" when it was not)."""
    if findings.empty:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    aside = findings["detail"].str.extract(rf"{re.escape(MOVED_ASIDE)}(\S+)\s*$")[0]
    return pd.DataFrame(
        {
            "node": findings["node"],
            "when": _utc(findings["at"]),
            "finding": findings["finding"],
            "path": findings["path"],
            "quarantined": aside.fillna("-"),
        }
    )


def _shortened(text: str) -> str:
    first = text.strip().split("\n")[0]
    return first if len(first) <= ERROR_WIDTH else first[: ERROR_WIDTH - 1] + "…"


def failures_view(failures: pd.DataFrame) -> pd.DataFrame:
    """Catalog `run_failures` rows as an operator reads them, in the order given: one
    line each, the error's first line (shortened), the time in UTC to the second."""
    if failures.empty:
        return pd.DataFrame(columns=FAILURE_COLUMNS)
    return pd.DataFrame(
        {
            "node": failures["node"].replace("", "-"),
            "when": _utc(failures["failed_at"]),
            "job": failures["job"],
            "kind": failures["transient"].map(lambda t: "transient" if t else "permanent"),
            "error": failures["error"].map(_shortened),
        }
    )


def _games_per_config(catalog: Catalog) -> pd.DataFrame:
    """Merge outcomes summed per config, from the catalog's merge log."""
    columns = ["config", "games", "duplicates", "collisions_kept", "rejected"]
    rows = []
    for config, stats_json in catalog.merge_log():
        stats = json.loads(stats_json)
        counts = [stats.get(k, 0) for k in ("added", "duplicates", "collisions_kept")]
        rows.append((config, *counts, sum(stats.get("rejected", {}).values())))
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows, columns=columns).groupby("config", as_index=False)[columns[1:]].sum()
