"""Recompute a config's ratings from every raw match and publish `elo/fleet_ratings.db`.

Ratings are never merged or carried over (LESSONS 10): each recompute unions what
is new, reads *all* of the config's match rows from the union DB, maps participants
to their weights' SHA-256, rejects cross-config matches and fits from scratch. The
config's rows of the one `fleet_ratings.db` (all configs, CONTRACT.md) are replaced
on the primary durable node by `ratings_db.py` (staging copy + atomic rename, other
configs' rows carried over), the result is registered by SHA-256 (kind
`elo_ratings`, alias `elo_ratings/fleet`) and the same bytes are placed on every
durable node, each copy verified there and made read-only. One writer at a time: a
catalog lease, since every config writes the same file.

Nothing is written unless the union took in every collected snapshot
(`collect.py`): a fit of a subset (a new primary that could not stage them all)
would replace good ratings with worse ones. The step fails with the staging errors
and the published file and its alias stay as they were. Conflicting matches
(`matches.py`) are not rated; they are counted here, per config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets.elo.collect import MATCHES_DB, UnionResult, union_all
from sync_assets.elo.identity import Identity, Selection, select_matches
from sync_assets.elo.ratings import DEFAULT_ANCHORS, decompose, fit_ratings
from sync_assets.elo.ratings_db import COLUMNS, READ_ONLY
from sync_assets.elo.remote import MATCHES_PY, RATINGS_DB_PY, waiting_lease
from sync_assets.engine.replication import (
    ReplicationResult,
    distribute,
    node_names,
    unavailable_nodes,
)
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.kinds import ELO_RATINGS, MODEL

RATINGS_DB = "elo/fleet_ratings.db"
RATINGS_KIND = ELO_RATINGS.name
RATINGS_ALIAS = (ELO_RATINGS.alias, "fleet")  # catalog alias (kind, key) of the current file
RATINGS_LEASE = "elo/fleet_ratings"
EVAL_ROLE = "eval"


@dataclass
class RatingsResult:
    union: UnionResult = field(default_factory=UnionResult)
    selection: Selection | None = None
    conflicts: int = 0  # conflicting matches of the config, left out of the fit
    fit_iterations: int = 0
    fit_converged: bool = True
    published: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    changed: bool = False
    sha256: str | None = None
    moved: ReplicationResult = field(default_factory=ReplicationResult)
    verified: dict[str, str] = field(default_factory=dict)  # durable node → file mode


@dataclass
class OnNodeResult:
    eval_node: bool
    sha256: str | None = None
    moved: ReplicationResult = field(default_factory=ReplicationResult)
    verified: dict[str, Any] = field(default_factory=dict)  # ratings_db.py verify output


def catalog_identity(catalog: Catalog) -> Identity:
    """{model name → sha256} from the catalog's model artifacts, keeping only names that
    have always meant one set of weights, and {sha256 → config}. A name meaning one
    sha *so far* is not enough for a reused file name (`candidate_*`, ...): those are
    never resolved by name (`identity.is_reused_name`), only by a recorded sha."""
    models = catalog.artifacts_of(MODEL.name).values()
    shas_of: dict[str, set[str]] = {}
    for art in models:
        shas_of.setdefault(art.name, set()).add(art.sha256)
    unique = {name: next(iter(shas)) for name, shas in shas_of.items() if len(shas) == 1}
    configs = {a.sha256: a.config for a in models if a.config}
    return Identity(model_shas=unique, model_configs=configs)


def fit_config(selection: Selection) -> pd.DataFrame:
    """The fit of the selected matches (empty when there are none)."""
    if selection.matches.empty:
        return pd.DataFrame(columns=["participant_id", "rating", "uncertainty", "games"])
    return fit_ratings(decompose(selection.matches), anchors=DEFAULT_ANCHORS)


def _holders(catalog: Catalog, sha256: str, names: set[str]) -> set[str]:
    """Nodes among `names` with a verified copy of `sha256` at RATINGS_DB."""
    return {r.node for r in catalog.replicas_of([sha256], nodes=names) if r.path == RATINGS_DB}


def _bring_current(primary: Node, fleet: Fleet, catalog: Catalog, transports: Transports) -> None:
    """The primary must hold the current file before a write builds on it: the other
    configs' rows come from it. Refuse to write while a copy exists that cannot be
    brought there. The primary's copy is looked at on disk (`distribute` confirms a
    recorded copy first): a file lost behind the catalog's back is copied again, not
    written from empty, unless no copy is left anywhere."""
    current = catalog.alias(*RATINGS_ALIAS)
    if current is None:
        return
    moved = distribute(current, RATINGS_DB, [primary.name], fleet, catalog, transports)
    if primary.name in _holders(catalog, current, {primary.name}):
        return
    # Every copy looked for and gone: ratings are derived data, rebuilt config by config
    # from the matches, so starting from an empty file loses nothing that still exists.
    # A copy on a lost node counts here: it does not meet policy, but writing from empty
    # would drop the other configs' rows from it when it comes back.
    if catalog.has_copy(current, node_names(fleet.nodes)):
        raise TransferError(
            f"node {primary.name}: cannot get the current {RATINGS_DB} ({current[:16]}) here "
            f"({'; '.join(moved.failures) or 'no reachable copy'}); not writing ratings, "
            "which would drop the other configs' rows"
        )


def _verify(node: Node, sha256: str, transports: Transports) -> dict[str, Any]:
    args = ["verify", RATINGS_DB, sha256]
    return transports.run_program(node, RATINGS_DB_PY, args, timeout=3600)


def recompute_ratings(
    config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> RatingsResult:
    """Union what is new, refit `config` from all its matches, publish on durable nodes.

    Raises UnionIncomplete, before anything is written, when the union lacks a
    collected snapshot."""
    result = RatingsResult()
    result.union = union_all(fleet, catalog, transports)
    result.union.raise_if_incomplete(f"config {config}: not publishing {RATINGS_DB}")
    primary = fleet.node(str(result.union.primary))
    dump = transports.run_program(primary, MATCHES_PY, ["dump", MATCHES_DB, config], timeout=3600)
    result.conflicts = int(dump["conflicts"])
    result.selection = select_matches(dump["matches"], config, catalog_identity(catalog))
    fitted = fit_config(result.selection)
    result.fit_iterations = int(fitted.attrs.get("iterations", 0))
    result.fit_converged = bool(fitted.attrs.get("converged", True))
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in fitted.to_dict("records")
    ]
    durable = [n.name for n in fleet.durable_nodes]
    with waiting_lease(catalog, RATINGS_LEASE):
        _bring_current(primary, fleet, catalog, transports)
        written = transports.run_program(
            primary, RATINGS_DB_PY, ["write", RATINGS_DB, config],
            payload={"rows": rows, "now": time.time()}, timeout=3600,
        )  # fmt: skip
        result.changed = bool(written["changed"])
        transport = transports.for_node(primary)
        found = transport.stat(primary, RATINGS_DB)
        if found is None:
            return result  # nothing rated yet anywhere, nothing to publish
        sha = transport.sha256(primary, RATINGS_DB)
        catalog.add_artifact(
            sha, kind=RATINGS_KIND, config=None, name=RATINGS_DB, size=found.size,
            origin_node=primary.name,
        )  # fmt: skip
        catalog.record_replica(sha, primary.name, RATINGS_DB, found.size)
        catalog.set_alias(*RATINGS_ALIAS, sha)
        result.sha256 = sha
        result.moved = distribute(sha, RATINGS_DB, durable, fleet, catalog, transports)
        for name in sorted(_holders(catalog, sha, set(durable))):
            result.verified[name] = _verify(fleet.node(name), sha, transports)["mode"]
    read = transports.run_program(
        primary, RATINGS_DB_PY, ["read", RATINGS_DB, config], timeout=3600
    )
    result.published = pd.DataFrame(read["rows"], columns=list(COLUMNS))
    return result


def publish_on_node(
    node: Node, fleet: Fleet, catalog: Catalog, transports: Transports
) -> OnNodeResult:
    """The current `fleet_ratings.db` on an eval node, verified there and read-only;
    nothing for other nodes."""
    result = OnNodeResult(eval_node=EVAL_ROLE in node.roles)
    if not result.eval_node:
        return result
    sha = catalog.alias(*RATINGS_ALIAS)
    result.sha256 = sha
    if sha is None:
        return result
    result.moved = distribute(sha, RATINGS_DB, [node.name], fleet, catalog, transports)
    if node.name in _holders(catalog, sha, {node.name}):
        result.verified = _verify(node, sha, transports)
    return result


def is_read_only(mode: str) -> bool:
    """True for the mode string `ratings_db.py verify` reports for a published copy."""
    return int(mode, 8) == READ_ONLY


def read_ratings(
    config: str, fleet: Fleet, catalog: Catalog, transports: Transports
) -> pd.DataFrame:
    """The published rows of `config` (CONTRACT columns), read on a durable node holding
    the current file; empty when nothing is published."""
    sha = catalog.alias(*RATINGS_ALIAS)
    if sha is None:
        return pd.DataFrame(columns=list(COLUMNS))
    down = unavailable_nodes(catalog)
    holders = _holders(catalog, sha, {n.name for n in fleet.durable_nodes}) - down
    if not holders:
        raise TransferError(f"no reachable durable node holds {RATINGS_DB} ({sha[:16]})")
    node = fleet.node(sorted(holders)[0])
    read = transports.run_program(node, RATINGS_DB_PY, ["read", RATINGS_DB, config], timeout=3600)
    return pd.DataFrame(read["rows"], columns=list(COLUMNS))
