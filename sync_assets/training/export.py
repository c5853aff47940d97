"""Export a config's canonical game DB to one NPZ shard, on a node (the `Exporter`
resource says how: a training repo's command, or the built-in reference exporter).

The export runs where the canonical DB already is (a durable node by default), so game
bytes never cross the network; only the finished shard travels. A command's output is
validated on the node with `npz_check.py`; the reference exporter is shipped there with
the validator and runs both. Either way the result is a file under a staging name in
`training/` on that node plus the validator's verdict computed there; publishing,
quarantine and replication are `shards.py`'s job.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from resources.catalog import Catalog
from resources.exporter import Exporter, render_command
from resources.transport import Transports
from resources.transport.base import TransferError
from resources.transport.paths import STAGING_PREFIX
from resources.transport.programs import Program, RemoteProgramFailed
from sync_assets.engine.replication import ReplicationResult, distribute, unavailable_nodes
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games.canonical import CANONICAL_KIND, canonical_path
from sync_assets.training import export_reference, npz_check

SHARD_DIR = "training"
REFERENCE_EXPORTER = "reference"
REFERENCE = Program("export_reference.py", export_reference, (npz_check,))
NPZ_CHECK = Program("npz_check.py", npz_check)


class ExportFailed(TransferError):
    """The export could not run or did not finish; nothing was published."""


@dataclass(frozen=True)
class ExportResult:
    """One finished export: where the file is and what the validator said about it."""

    config: str
    node: str  # where the export ran and the file is
    canonical_sha256: str  # the canonical DB version that was exported
    path: str  # the exported file, relative to the node's data root (a staging name)
    check: dict[str, Any]  # npz_check's result, computed on the node
    seconds: float  # export + validation, wall clock as seen from here
    exporter: str  # "reference" or the command template
    canonical_moved: ReplicationResult = field(default_factory=ReplicationResult)

    @property
    def ok(self) -> bool:
        return bool(self.check.get("ok"))

    @property
    def sha256(self) -> str:
        return str(self.check["sha256"])

    @property
    def size(self) -> int:
        return int(self.check.get("bytes") or 0)

    @property
    def samples(self) -> int:
        return int(self.check.get("samples") or 0)

    @property
    def games(self) -> int | None:
        """From the shard's own metadata; None when the exporter did not say."""
        count = (self.check.get("metadata") or {}).get("game_count")
        return int(count) if count is not None else None


def export_canonical(
    exporter: Exporter, fleet: Fleet, catalog: Catalog, transports: Transports, config: str
) -> ExportResult:
    """Export the current canonical DB of `config` to a staging file on the chosen
    node and validate it there; an exporter that fails leaves nothing behind."""
    canonical = catalog.alias(CANONICAL_KIND, config)
    if canonical is None:
        raise ExportFailed(f"config {config}: no canonical DB to export yet")
    node, db, moved = _place(exporter, fleet, catalog, transports, config, canonical)
    out = f"{SHARD_DIR}/{STAGING_PREFIX}{config}.{uuid.uuid4().hex[:12]}.npz"
    transports.for_node(node).make_dirs(node, SHARD_DIR)
    db = _on_node(node, db)
    started = time.monotonic()
    if exporter.command is None:
        check = _run_reference(exporter, node, db, out, config, transports)
    else:
        check = _run_command(exporter.command, exporter, node, db, out, config, transports)
    return ExportResult(
        config=config,
        node=node.name,
        canonical_sha256=canonical,
        path=out,
        check=check,
        seconds=time.monotonic() - started,
        exporter=exporter.command or REFERENCE_EXPORTER,
        canonical_moved=moved,
    )


def _place(
    exporter: Exporter,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
    config: str,
    sha: str,
) -> tuple[Node, str, ReplicationResult]:
    """(node, canonical DB path there, bytes moved to put it there)."""
    if exporter.node is not None:
        try:
            node = fleet.node(exporter.node)
        except KeyError as exc:
            raise ExportFailed(f"exporter node {exporter.node!r} is not in the fleet") from exc
        if here := catalog.replicas_of([sha], nodes=[node.name]):
            return node, here[0].path, ReplicationResult()
        path = canonical_path(config)
        moved = distribute(sha, path, [node.name], fleet, catalog, transports)
        if moved.failures or moved.copies == 0:
            raise ExportFailed(
                f"config {config}: could not put canonical DB {sha[:12]} on exporter node "
                f"{node.name}: {'; '.join(moved.failures) or 'no reachable copy'}"
            )
        return node, path, moved
    durable = {n.name for n in fleet.durable_nodes} - unavailable_nodes(catalog)
    holders = catalog.replicas_of([sha], nodes=durable)
    if not holders:
        raise ExportFailed(
            f"config {config}: no reachable durable node holds a verified copy of "
            f"canonical DB {sha[:12]}"
        )
    return fleet.node(holders[0].node), holders[0].path, ReplicationResult()


def _run_reference(
    exporter: Exporter, node: Node, db: str, out: str, config: str, transports: Transports
) -> dict[str, Any]:
    args = [db, _on_node(node, out), config]
    try:
        result = transports.run_program(node, REFERENCE, args, timeout=exporter.timeout_s)
    except RemoteProgramFailed as exc:
        if exc.result is None:
            raise
        raise ExportFailed(f"node {node.name}: exporting {config}: {exc.why}") from exc
    check: dict[str, Any] = result["check"]
    return check


def _run_command(
    command: str,
    exporter: Exporter,
    node: Node,
    db: str,
    out: str,
    config: str,
    transports: Transports,
) -> dict[str, Any]:
    transport = transports.for_node(node)
    argv = render_command(command, db, _on_node(node, out), config)
    done = transport.exec(node, argv, timeout=exporter.timeout_s)
    if done.returncode != 0:
        transport.remove(node, out)  # a half-written file is no evidence of anything
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        raise ExportFailed(
            f"node {node.name}: exporter command failed (exit {done.returncode}) for "
            f"{config}: {stderr or 'no output'}"
        )
    try:
        check = transports.run_program(
            node, NPZ_CHECK, [_on_node(node, out)], timeout=exporter.timeout_s
        )
    except RemoteProgramFailed as exc:
        if exc.result is None:
            transport.remove(node, out)  # what cannot be validated is never published
            raise
        check = exc.result  # an invalid shard: npz_check's verdict, exit 1
    if check.get("sha256") is None:
        raise ExportFailed(
            f"node {node.name}: exporter command exited 0 for {config} but wrote no "
            f"file at {out} (does it write to {{out}}?)"
        )
    return check


def _on_node(node: Node, rel: str) -> str:
    """The path as the exporter gets it: absolute when the data root is (commands may
    change directory), else relative to the data root, which is where exec runs."""
    root = os.path.realpath(node.data_root) if node.transport == "local" else node.data_root
    return posixpath.join(root, rel) if posixpath.isabs(root) else rel
