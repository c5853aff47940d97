"""What the fleet holds, read from the catalog only: replicas per kind and node, data at risk."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from resources.catalog import Catalog
from sync_assets.engine.placement import durable_copies

REPLACED_IN_PLACE = frozenset({"games_canonical", "elo_ratings"})


@dataclass(frozen=True)
class FleetStatus:
    games: pd.DataFrame  # config, games, duplicates, rejected, collisions_kept
    replicas: pd.DataFrame  # kind, artifacts, verified copies, min/max durable copies
    nodes: pd.DataFrame  # name, roles, state, reachable, disk_free_gb, copies held
    bytes_without_durable_copy: int  # data at risk: lost if its node vanishes
    bytes_below_policy: int  # fewer durable copies than policy asks for
    # Meets policy only by counting copies on durable nodes that did not answer their
    # last probe: those copies count until the node is declared lost, but are at risk.
    bytes_relying_on_unreachable: int
    bytes_moved: int  # all verified transfers ever recorded


def fleet_status(catalog: Catalog, min_replicas: dict[str, int]) -> FleetStatus:
    artifacts = catalog.artifacts_frame()
    replicas = catalog.replicas_frame()
    nodes = catalog.nodes_frame()
    # An older version of a file that is replaced in place (every merge rewrites the
    # canonical DB, every recompute the ratings DB) keeps its catalog row with no copy
    # left: it is superseded, not at risk.
    superseded = artifacts["kind"].isin(REPLACED_IN_PLACE) & ~artifacts["sha256"].isin(
        replicas["sha256"]
    )
    artifacts = artifacts[~superseded]
    copies = durable_copies(replicas, nodes).reindex(artifacts["sha256"], fill_value=0)
    answering = durable_copies(replicas, nodes[nodes["reachable"].ne(False)])
    artifacts = artifacts.assign(
        durable_copies=copies.to_numpy(),
        answering_copies=answering.reindex(artifacts["sha256"], fill_value=0).to_numpy(),
    )
    wanted = artifacts["kind"].map(min_replicas).fillna(1)
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
    held = replicas[replicas["state"] == "verified"].groupby("node").size().rename("copies_held")
    node_view = nodes.assign(disk_free_gb=(nodes["disk_free_bytes"] / 1024**3).round(1))[
        ["name", "roles", "durable", "ephemeral", "state", "reachable", "disk_free_gb"]
    ]
    node_view = (
        node_view.merge(held, left_on="name", right_index=True, how="left")
        .fillna({"copies_held": 0})
        .astype({"copies_held": int})
    )
    transfers = catalog.transfers_frame()
    moved = int(transfers.loc[transfers["status"] == "ok", "bytes"].sum())
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
        bytes_moved=moved,
    )


def _games_per_config(catalog: Catalog) -> pd.DataFrame:
    """Merge outcomes summed per config, from the catalog's merge log."""
    rows = []
    for config, stats_json in catalog.merge_log():
        stats = json.loads(stats_json)
        rows.append(
            {
                "config": config,
                "games": stats.get("added", 0),
                "duplicates": stats.get("duplicates", 0),
                "collisions_kept": stats.get("collisions_kept", 0),
                "rejected": sum(stats.get("rejected", {}).values()),
            }
        )
    columns = ["config", "games", "duplicates", "collisions_kept", "rejected"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).groupby("config", as_index=False)[columns[1:]].sum()
