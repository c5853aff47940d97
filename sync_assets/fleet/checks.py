"""`audit_fleet`: audit and scrub nodes on rotation (an op-based job, a domain job).

Requested by the `fleet_audit` sensor, which names the nodes: `audit` lists each node once
and drops from the catalog the replicas whose files are gone or resized
(`engine.audit.audit_nodes`, no hashing); `scrub` re-hashes a byte budget of each node's
replicas, least recently verified first, and moves corrupt files aside
(`engine.scrub.scrub_node`). Both record when each node was checked (catalog
`node_checks`) and what was wrong (catalog `check_findings`); the dropped replicas are
a deficit the `replication_deficit` sensor has repaired. A node that cannot be reached
changes nothing; it is named in the run's failure and goes to the back of the rotation.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import dagster as dg

from resources.catalog import Catalog
from resources.inventory import FleetInventory
from resources.transport import Transports
from resources.transport.base import TransferError
from sync_assets.engine.audit import AuditResult, DataRootEmpty, audit_nodes
from sync_assets.engine.scrub import ScrubResult, gone_finding, scrub_node
from sync_assets.fleet.inventory import Fleet, Node, load_fleet
from sync_assets.fleet.repair import REPAIR_PATHS
from sync_assets.kinds import KINDS, NPZ
from sync_assets.training.shards import node_shard_path

# Files rewritten in place at one path (a canonical DB, the ratings, a promoted model).
# Every other kind is named by its content where it is kept durably.
REWRITABLE_KINDS = frozenset(k.name for k in KINDS) - REPAIR_PATHS.keys()
SCRUB_WORKERS = 4  # nodes hashing at once: the work is on the nodes, the wait here


def replaced_in_place(kind: str, path: str) -> bool:
    """A newer version of the artifact may be written over the file at `path`, so other
    bytes there are a writer's, never rot (a scrub leaves them, see engine/scrub.py):
    every path of a rewritable kind, and a training node's current shard
    `training/{config}.npz`, replaced on each export (its durable copies are content-named)."""
    if kind == NPZ.name:
        return path == node_shard_path(PurePosixPath(path).stem)
    return kind in REWRITABLE_KINDS


class AuditConfig(dg.Config):
    nodes: list[str] = []


class ScrubConfig(dg.Config):
    nodes: list[str] = []


def audit_run_config(audit: list[str], scrub: list[str]) -> dict[str, object]:
    return {
        "ops": {
            "audit": {"config": AuditConfig(nodes=audit).model_dump()},
            "scrub": {"config": ScrubConfig(nodes=scrub).model_dump()},
        }
    }


def _listed(fleet: Fleet, names: list[str], context: dg.OpExecutionContext) -> list[Node]:
    """The named nodes still in the inventory (one gone since the request is skipped)."""
    listed = {n.name: n for n in fleet.nodes}
    if gone := sorted(set(names) - listed.keys()):
        context.log.info(f"not in the inventory any more, skipped: {', '.join(gone)}")
    return [listed[name] for name in names if name in listed]


def _audit_summary(result: AuditResult) -> str:
    return (
        f"audit: {len(result.ok)} ok, {len(result.missing)} missing, "
        f"{len(result.changed)} resized, {result.dropped} dropped"
    )


@dg.op
def audit(
    context: dg.OpExecutionContext,
    config: AuditConfig,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> None:
    """One listing per node against the catalog; gone or resized replicas dropped."""
    started = time.time()
    nodes = _listed(load_fleet(inventory), config.nodes, context)
    failures, seen = [], {}
    for name, outcome in audit_nodes(nodes, catalog, transports.for_node).items():
        if isinstance(outcome, TransferError):
            failures.append(f"{name}: {outcome}")
            if isinstance(outcome, DataRootEmpty):
                catalog.record_check_findings(name, [outcome.finding()])
            catalog.record_audit(name, f"audit failed: {outcome}", at=started)
            continue
        wrong = [*outcome.missing, *outcome.changed]
        catalog.record_check_findings(name, [gone_finding(r) for r in wrong])
        catalog.record_audit(name, _audit_summary(outcome), at=started)
        seen[name] = outcome.metadata()
    context.add_output_metadata({"audited": seen, "failures": failures})
    if failures:
        raise dg.Failure("audit incomplete:\n" + "\n".join(failures))


@dg.op
def scrub(
    context: dg.OpExecutionContext,
    config: ScrubConfig,
    inventory: FleetInventory,
    catalog: Catalog,
    transports: Transports,
) -> None:
    """Re-hash `policy.scrub.budget_gib` per node, oldest verification first; corrupt
    files moved aside and their replicas dropped. Fails naming the nodes that could not be
    scrubbed and the corrupt files that could not be moved aside."""
    started = time.time()
    fleet = load_fleet(inventory)
    nodes = _listed(fleet, config.nodes, context)
    policy = fleet.policy.scrub

    def one(node: Node) -> ScrubResult | TransferError:
        try:
            return scrub_node(
                node,
                catalog,
                transports,
                replaced_in_place=replaced_in_place,
                budget=int(policy.budget_gib * 2**30),
                hash_timeout_s=policy.hash_timeout_s,
            )
        except TransferError as exc:
            catalog.record_scrub(node.name, 0, f"scrub failed: {exc}", at=started)
            return exc

    if not nodes:
        return
    with ThreadPoolExecutor(min(SCRUB_WORKERS, len(nodes))) as pool:
        outcomes = dict(zip([n.name for n in nodes], pool.map(one, nodes), strict=True))
    failures = [f"{name}: {out}" for name, out in outcomes.items() if isinstance(out, Exception)]
    scrubbed = {n: r for n, r in outcomes.items() if isinstance(r, ScrubResult)}
    failures += [f"{n}: {why}" for n, r in scrubbed.items() for why in r.failures]
    failures += [f"{n}: {r.refused}" for n, r in scrubbed.items() if r.refused]
    context.add_output_metadata(
        {"scrubbed": {n: r.metadata() for n, r in scrubbed.items()}, "failures": failures}
    )
    if failures:
        raise dg.Failure("scrub incomplete:\n" + "\n".join(failures))


@dg.job
def audit_fleet() -> None:
    # Independent ops: a node that cannot be listed does not stop the others' scrub. A
    # file resized under a scrub is left to the audit's own look (confirm_replicas).
    audit()
    scrub()
