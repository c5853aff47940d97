"""The `Exporter` resource: a config's canonical game DB → one NPZ shard, on a node.

The export runs where the canonical DB already is (a durable node by default), so game
bytes never cross the network; only the finished shard travels. Two kinds of exporter:

- `command`: a training repo's own exporter, a template with `{db}`, `{out}` and
  `{config}` placeholders. The template is split into argv words first (POSIX shell
  rules), then the placeholders are filled inside each word, so a value can never
  become a second argument or shell syntax; the transport runs argv without a shell
  (local) or quotes every word (SSH). Shell features need an explicit shell and
  positional arguments: `sh -c 'cd /srv/train && exec python export.py "$1" "$2"' sh
  {db} {out}`. The output is then validated on the node with `npz_check.py`.
- None: the built-in reference exporter (`sync_assets/training/export_reference.py`),
  shipped to the node with the validator and run there.

Either way the result is a file under a staging name in `training/` on that node plus
the validator's verdict computed there; publishing, quarantine and replication are
`sync_assets.training.shards`'s job.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from resources.catalog import Catalog
from resources.transport import Transports
from resources.transport.base import TransferError
from resources.transport.paths import STAGING_PREFIX
from sync_assets.engine.replication import ReplicationResult, distribute, unavailable_nodes
from sync_assets.fleet.inventory import Fleet, Node
from sync_assets.games.canonical import CANONICAL_KIND, canonical_path
from sync_assets.training import export_reference, npz_check
from sync_assets.training.remote import RemoteFailed, bundle, make_dirs, run_program

PLACEHOLDERS = ("db", "out", "config")
SHARD_DIR = "training"
REFERENCE = "reference"
# What is shipped to the node (read once per process: the files do not change under us).
REFERENCE_PROGRAM = bundle(export_reference, npz_check)
CHECK_PROGRAM = bundle(npz_check)


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


def render_command(template: str, db: str, out: str, config: str) -> list[str]:
    """argv of the command template with its placeholders filled word by word."""
    values = {"db": db, "out": out, "config": config}
    return [word.format_map(values) for word in shlex.split(template)]


def _placeholder_problems(template: str) -> list[str]:
    try:
        words = shlex.split(template)
    except ValueError as exc:
        return [f"not a valid command line ({exc})"]
    problems = []
    used = set()
    for word in words:
        try:
            fields = list(string.Formatter().parse(word))
        except ValueError as exc:
            problems.append(f"{word!r}: {exc} (write a literal brace as {{{{ or }}}})")
            continue
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                problems.append(f"unknown placeholder {{{name}}} (known: db, out, config)")
            used.add(name)
    problems += [f"no {{{name}}} placeholder" for name in ("db", "out") if name not in used]
    return problems


class Exporter(dg.ConfigurableResource):
    """Runs the exporter for a config on a node and validates its output there."""

    command: str | None = Field(
        default=None,
        description="The training repo's exporter command with {db}, {out} and {config} "
        "placeholders (absolute paths on the node); None = the built-in reference exporter.",
    )
    node: str | None = Field(
        default=None,
        description="Node to export on (given a verified copy of the canonical DB first if "
        "it lacks one); None = a durable node already holding the current canonical DB.",
    )
    timeout_s: float = Field(default=6 * 3600, gt=0, description="Limit for one export.")

    @field_validator("command")
    @classmethod
    def _valid_template(cls, command: str | None) -> str | None:
        if command is not None and (problems := _placeholder_problems(command)):
            raise ValueError(f"exporter command {command!r}: " + "; ".join(problems))
        return command

    def export(
        self, fleet: Fleet, catalog: Catalog, transports: Transports, config: str
    ) -> ExportResult:
        """Export the current canonical DB of `config` to a staging file on the chosen
        node and validate it there; an exporter that fails leaves nothing behind."""
        canonical = catalog.alias(CANONICAL_KIND, config)
        if canonical is None:
            raise ExportFailed(f"config {config}: no canonical DB to export yet")
        node, db, moved = self._place(fleet, catalog, transports, config, canonical)
        out = f"{SHARD_DIR}/{STAGING_PREFIX}{config}.{uuid.uuid4().hex[:12]}.npz"
        make_dirs(node, SHARD_DIR, transports)
        started = time.monotonic()
        if self.command is None:
            check = self._run_reference(node, _on_node(node, db), out, config, transports)
        else:
            check = self._run_command(
                self.command, node, _on_node(node, db), out, config, transports
            )
        return ExportResult(
            config=config,
            node=node.name,
            canonical_sha256=canonical,
            path=out,
            check=check,
            seconds=time.monotonic() - started,
            exporter=self.command or REFERENCE,
            canonical_moved=moved,
        )

    def _place(
        self, fleet: Fleet, catalog: Catalog, transports: Transports, config: str, sha: str
    ) -> tuple[Node, str, ReplicationResult]:
        """(node, canonical DB path there, bytes moved to put it there)."""
        replicas = catalog.replicas_frame([CANONICAL_KIND])
        verified = replicas[(replicas["sha256"] == sha) & (replicas["state"] == "verified")]
        if self.node is not None:
            try:
                node = fleet.node(self.node)
            except KeyError as exc:
                raise ExportFailed(f"exporter node {self.node!r} is not in the fleet") from exc
            here = verified[verified["node"] == node.name]
            if not here.empty:
                return node, str(here["path"].iloc[0]), ReplicationResult()
            path = canonical_path(config)
            moved = distribute(sha, path, [node.name], fleet, catalog, transports)
            if moved.failures or moved.copies == 0:
                raise ExportFailed(
                    f"config {config}: could not put canonical DB {sha[:12]} on exporter node "
                    f"{node.name}: {'; '.join(moved.failures) or 'no reachable copy'}"
                )
            return node, path, moved
        down = unavailable_nodes(catalog.nodes_frame(), catalog.open_breakers())
        durable = {n.name for n in fleet.durable_nodes} - down
        holders = verified[verified["node"].isin(durable)].sort_values(["node", "path"])
        if holders.empty:
            raise ExportFailed(
                f"config {config}: no reachable durable node holds a verified copy of "
                f"canonical DB {sha[:12]}"
            )
        first = holders.iloc[0]
        return fleet.node(str(first["node"])), str(first["path"]), ReplicationResult()

    def _run_reference(
        self, node: Node, db: str, out: str, config: str, transports: Transports
    ) -> dict[str, Any]:
        code, result = run_program(
            node, REFERENCE_PROGRAM, [db, _on_node(node, out), config], transports,
            "reference export", self.timeout_s,
        )  # fmt: skip
        if code != 0:
            raise ExportFailed(f"node {node.name}: exporting {config}: {result.get('error')}")
        check: dict[str, Any] = result["check"]
        return check

    def _run_command(
        self, command: str, node: Node, db: str, out: str, config: str, transports: Transports
    ) -> dict[str, Any]:
        transport = transports.for_node(node)
        argv = render_command(command, db, _on_node(node, out), config)
        done = transport.exec(node, argv, timeout=self.timeout_s)
        if done.returncode != 0:
            transport.remove(node, out)  # a half-written file is no evidence of anything
            stderr = done.stderr.decode(errors="replace").strip()[-2000:]
            raise ExportFailed(
                f"node {node.name}: exporter command failed (exit {done.returncode}) for "
                f"{config}: {stderr or 'no output'}"
            )
        try:
            _, check = run_program(
                node, CHECK_PROGRAM, [_on_node(node, out)], transports, "npz_check", self.timeout_s
            )
        except RemoteFailed:
            transport.remove(node, out)  # what cannot be validated is never published
            raise
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
