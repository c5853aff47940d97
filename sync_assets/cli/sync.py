"""`fleetsync sync KIND --targets ...` and `sync(...)` in Python: request a sync now.

Runs the kind's node-partitioned job once per target, in-process on the local Dagster
instance ($DAGSTER_HOME), so the runs show in the UI like any other. Inventory nodes
missing from the `nodes` partitions are added first. One target failing never stops the
others; each failure is reported with the reason the run failed with (an unreachable
node, a changed host key), never as a traceback. A run that succeeds with a failed asset
check fails its target too: several assets record a node's trouble as a check, not as a
failed run (`fleet/node_status`'s `reachable`, `games/selfplay`'s `every_db_collected`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sync_assets.fleet.inventory import InventoryError, load_inventory
from sync_assets.reports import one_line

if TYPE_CHECKING:
    import dagster as dg
    from dagster_shared.error import SerializableErrorInfo

# KIND → the one-asset job over that node-partitioned asset (sync_assets/definitions.py).
KIND_JOBS = {
    "games": "collect_games",  # games/selfplay
    "elo": "collect_matches",  # elo/matches
    "npz": "npz_to_nodes",  # training/npz_on_node
    "models": "models_to_nodes",  # models/on_node
    "status": "probe_nodes",  # fleet/node_status
}
ALL = "all"
# The QueuedRunCoordinator launches higher `dagster/priority` first; the default is 0.
RUN_PRIORITY = {"high": "10", "normal": "0"}
PRIORITY_TAG = "dagster/priority"
SYNC_TAG = "fleetsync/sync"  # value: the KIND; marks runs requested through this facade
# Progress and summary are ours; the per-event log stays in the UI.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Errors Dagster wraps a step's own error in (its `cause`).
_DAGSTER_WRAPPERS = {"RetryRequestedFromPolicy"}


@dataclass(frozen=True)
class TargetResult:
    """One target's run: `ok`, or the reason it failed (one line)."""

    node: str
    ok: bool
    reason: str = ""
    run_id: str | None = None


@dataclass(frozen=True)
class SyncResult:
    """What `sync` did. `problems`: the request itself was refused (nothing ran);
    `usage`: refused for its arguments (bad kind, priority or target) rather than for
    the inventory or the instance."""

    kind: str
    targets: tuple[TargetResult, ...] = ()
    problems: tuple[str, ...] = ()
    usage: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.targets)

    @property
    def failed(self) -> tuple[TargetResult, ...]:
        return tuple(t for t in self.targets if not t.ok)


# ---- pure decisions -----------------------------------------------------------------------


def parse_targets(text: str) -> list[str]:
    """`all`, or `NODE[,NODE...]` (spaces around names ignored, empty items dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def resolve_targets(
    requested: Sequence[str], inventory_nodes: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(targets in inventory order, problems). `all` means every inventory node; a name
    not in the inventory is a problem naming it and the known nodes; nothing requested
    is a problem too (a sync of nothing is a mistake, not a success)."""
    if not requested:
        return [], ["targets: none given (use `all` or NODE[,NODE...])"]
    unknown = sorted({name for name in requested if name != ALL} - set(inventory_nodes))
    if unknown:
        return [], [
            f"targets: unknown node(s): {', '.join(unknown)} "
            f"(inventory nodes: {', '.join(inventory_nodes) or 'none'})"
        ]
    wanted = set(inventory_nodes) if ALL in requested else set(requested)
    return [name for name in inventory_nodes if name in wanted], []


def request_problems(kind: str, priority: str) -> list[str]:
    """Problems with KIND and priority, one line each."""
    problems = []
    if kind not in KIND_JOBS:
        problems.append(f"kind: {kind!r} is not one of {', '.join(KIND_JOBS)}")
    if priority not in RUN_PRIORITY:
        problems.append(f"priority: {priority!r} is not one of {', '.join(RUN_PRIORITY)}")
    return problems


def run_tags(kind: str, priority: str) -> dict[str, str]:
    return {PRIORITY_TAG: RUN_PRIORITY[priority], SYNC_TAG: kind}


def check_failure_line(check: str, description: str | None, details: Mapping[str, object]) -> str:
    """Why a failed asset check fails its target, one line: the check's name, its
    description, then each non-empty metadata entry as `key: value` (an `error` entry bare:
    an error message names itself)."""
    parts = [description or ""]
    for key, value in details.items():
        items = value if isinstance(value, list | tuple) else [] if value is None else [value]
        text = ", ".join(str(item) for item in items if str(item).strip())
        parts.append(text if key == "error" or not text else f"{key}: {text}")
    said = [part for part in parts if part.strip()]
    return one_line(f"check {check} failed" + (": " + "; ".join(said) if said else ""))


def target_line(target: TargetResult) -> str:
    return f"node {target.node}: " + ("ok" if target.ok else f"FAILED: {target.reason}")


def summary_lines(result: SyncResult) -> list[str]:
    """The closing lines: refused request, or counts and every failed target with why."""
    if result.problems:
        return list(result.problems)
    done = len(result.targets) - len(result.failed)
    lines = [f"sync {result.kind}: {done} of {len(result.targets)} target(s) ok"]
    if result.failed:
        lines.append(f"failed: {', '.join(t.node for t in result.failed)}")
        lines += [f"  {target_line(t)}" for t in result.failed]
    return lines


def exit_code(result: SyncResult) -> int:
    if result.problems:
        return EXIT_USAGE if result.usage else EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


# ---- running ------------------------------------------------------------------------------


def sync(
    kind: str,
    targets: Sequence[str] = (ALL,),
    priority: str = "normal",
    *,
    instance: dg.DagsterInstance | None = None,
    on_target: Callable[[TargetResult], None] | None = None,
) -> SyncResult:
    """Run KIND's job for each target node now, in-process on `instance` (default:
    `DagsterInstance.get()`, i.e. $DAGSTER_HOME), with the inventory at $FLEETSYNC_FLEET.

    `targets`: node names or `all` (or one string, "all" or "a,b"). `on_target` is called
    as each target finishes. Never raises for a refused request or a failed target: the
    result says which and why."""
    problems = request_problems(kind, priority)
    if problems:
        return SyncResult(kind, problems=tuple(problems), usage=True)
    fleet_path = os.environ.get("FLEETSYNC_FLEET") or "fleet.yaml"
    try:
        fleet = load_inventory(fleet_path)
    except InventoryError as exc:
        return SyncResult(kind, problems=tuple(exc.problems))
    inventory_nodes = [n.name for n in fleet.nodes]
    # A bare string is "all" or "a,b", as on the command line, never its characters.
    requested = parse_targets(targets) if isinstance(targets, str) else list(targets)
    nodes, problems = resolve_targets(requested, inventory_nodes)
    if problems:
        return SyncResult(kind, problems=tuple(problems), usage=True)

    if instance is not None:
        return _run(instance, kind, nodes, fleet_path, inventory_nodes, priority, on_target)
    import dagster as dg

    try:
        own = dg.DagsterInstance.get()
    except dg.DagsterError as exc:  # DAGSTER_HOME unset, or not a valid instance
        return SyncResult(kind, problems=(one_line(f"dagster instance: {exc}"),))
    with own:
        return _run(own, kind, nodes, fleet_path, inventory_nodes, priority, on_target)


def _run(
    instance: dg.DagsterInstance,
    kind: str,
    nodes: list[str],
    fleet_path: str,
    inventory_nodes: list[str],
    priority: str,
    on_target: Callable[[TargetResult], None] | None,
) -> SyncResult:
    # Imported here: loading the definitions reads the (already validated) inventory.
    from resources.inventory import FleetInventory
    from sync_assets.definitions import defs
    from sync_assets.partitions import NODES

    known = set(instance.get_dynamic_partitions(NODES))
    missing = [name for name in inventory_nodes if name not in known]
    if missing:
        instance.add_dynamic_partitions(NODES, missing)
    job = defs.resolve_job_def(KIND_JOBS[kind])
    results = []
    for node in nodes:
        try:
            run = job.execute_in_process(
                instance=instance,
                partition_key=node,
                tags=run_tags(kind, priority),
                run_config=QUIET_RUN,
                raise_on_error=False,
                # The inventory read above, not the one the definitions saw when imported.
                resources={"inventory": FleetInventory(path=fleet_path)},
            )
            target = _target_result(node, run)
        except Exception as exc:  # one target's crash never stops the others
            target = TargetResult(node, False, one_line(f"{type(exc).__name__}: {exc}"))
        results.append(target)
        if on_target is not None:
            on_target(target)
    return SyncResult(kind, tuple(results))


def _target_result(node: str, run: dg.ExecuteInProcessResult) -> TargetResult:
    """A failed run fails its target with the run's own errors; a successful one fails it
    with every asset check it failed (an unreachable probe, a skipped DB), else it is ok."""
    if not run.success:
        return TargetResult(node, False, _failure_reason(run), run.run_id)
    failed = [
        check_failure_line(
            check.check_name,
            check.description,
            {key: value.value for key, value in check.metadata.items()},
        )
        for check in run.get_asset_check_evaluations()
        if not check.passed
    ]
    return TargetResult(node, not failed, "; ".join(failed), run.run_id)


def _failure_reason(run: dg.ExecuteInProcessResult) -> str:
    """The failed steps' own errors (not Dagster's wrappers around them), else the run
    failure's message."""
    reasons = []
    for event in run.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            reasons.append(_own_error(event.step_failure_data.error))
    if not any(reasons):
        reasons = [e.message or "" for e in run.all_events if e.is_run_failure]
    return one_line("; ".join(r for r in reasons if r) or "the run failed (see its logs)")


def _own_error(error: SerializableErrorInfo | None) -> str:
    """The first error in the chain that is not Dagster's own (a step error wrapper, or
    the retry policy's "Exceeded max_retries"), without its class name."""
    while error is not None and (
        error.cls_name in _DAGSTER_WRAPPERS or (error.cls_name or "").startswith("Dagster")
    ) and error.cause is not None:  # fmt: skip
        error = error.cause
    if error is None:
        return ""
    head, sep, rest = error.message.strip().partition(": ")
    # "Cls: text" or "module.Cls: text": the text alone.
    return rest if sep and head.split(".")[-1] == error.cls_name else error.message.strip()


# ---- command line -------------------------------------------------------------------------


def add_sync_parser(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sync",
        help="request a sync now (games, elo, npz, models, status) for some or all nodes",
        description="Run KIND's node-partitioned job for each target, in-process on the "
        "local Dagster instance. Exit 0 if every target synced, 1 naming each failed "
        "target (a failed run or a failed asset check) and why, 2 for a bad request.",
    )
    parser.add_argument("kind", help=", ".join(f"{k} ({j})" for k, j in KIND_JOBS.items()))
    parser.add_argument("--targets", default=ALL, help="all (default) or NODE[,NODE...]")
    parser.add_argument("--priority", default="normal", help="high or normal (default)")
    parser.add_argument("--url", help="a running deployment (not supported yet)")
    parser.add_argument(
        "--wait", action="store_true", help="wait for every run (always, in-process)"
    )
    parser.set_defaults(func=cmd_sync)
    return parser


def cmd_sync(args: argparse.Namespace) -> int:
    if args.url is not None:
        print("--url: submitting to a running deployment is not supported yet; "
              "run without --url to sync in-process", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve()))

    def progress(target: TargetResult) -> None:
        print(target_line(target), flush=True)

    result = sync(args.kind, parse_targets(args.targets), args.priority, on_target=progress)
    out = sys.stdout if result.ok else sys.stderr
    for line in summary_lines(result):
        print(line, file=out)
    return exit_code(result)
