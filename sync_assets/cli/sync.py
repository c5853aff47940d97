"""`fleetsync sync KIND --targets ...` and `sync(...)` in Python: request a sync now.

Runs the kind's node-partitioned job once per target, in-process on the local Dagster
instance ($DAGSTER_HOME) by default, or submitted to a running deployment (`--url`, through
Dagster's GraphQL client), so the runs show in the UI like any other. Inventory nodes
missing from the `nodes` partitions are added first. One target failing never stops the
others; each failure is reported with the reason the run failed with (an unreachable
node, a changed host key), never as a traceback. A run that succeeds with a failed asset
check fails its target too: several assets record a node's trouble as a check, not as a
failed run (`fleet/node_status`'s `reachable`, `games/selfplay`'s `every_db_collected`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sync_assets.fleet.inventory import InventoryError, load_inventory
from sync_assets.reports import one_line

if TYPE_CHECKING:
    import dagster as dg
    from dagster_shared.error import SerializableErrorInfo

# KIND → the one-asset job over that node-partitioned asset (sync_assets/jobs.py; named
# here, not imported: the command line starts without loading Dagster).
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
PARTITION_TAG = "dagster/partition"  # how a submitted run names its `nodes` partition
NODES_PARTITIONS = "nodes"  # sync_assets.partitions.NODES (not imported: it loads Dagster)
# Progress and summary are ours; the per-event log stays in the UI.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# How long a --url --wait follows its runs before giving up on those not finished (they
# go on in the deployment): a run queue no dagster-daemon serves never starts them.
WAIT_TIMEOUT_S = 3600.0
# Errors Dagster wraps a step's own error in (its `cause`).
_DAGSTER_WRAPPERS = {"RetryRequestedFromPolicy"}


@dataclass(frozen=True)
class TargetResult:
    """One target's run: `ok`, or the reason it failed (one line). `submitted`: the run
    was handed to a deployment and not waited for (ok means only that it was accepted)."""

    node: str
    ok: bool
    reason: str = ""
    run_id: str | None = None
    submitted: bool = False


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


def parse_targets(given: str | Sequence[str]) -> list[str]:
    """The node names in `all`, `NODE[,NODE...]`, or a sequence of such items (`--targets a
    b,c --targets d`), in order: each item split on commas, spaces around names ignored,
    empty items dropped."""
    items = [given] if isinstance(given, str) else given
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


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


def request_problems(kind: str, priority: str, timeout_s: float = WAIT_TIMEOUT_S) -> list[str]:
    """Problems with KIND, priority and the wait's timeout, one line each."""
    problems = []
    if kind not in KIND_JOBS:
        problems.append(f"kind: {kind!r} is not one of {', '.join(KIND_JOBS)}")
    if priority not in RUN_PRIORITY:
        problems.append(f"priority: {priority!r} is not one of {', '.join(RUN_PRIORITY)}")
    if not timeout_s > 0:  # also NaN
        problems.append(f"timeout: {timeout_s!r} is not a number of seconds above 0")
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


def unfinished_reason(status: str, waited_s: float) -> str:
    """Why a target whose run had not ended when the wait timed out fails: its last status,
    and, for a run never started, the usual cause (no daemon serving the run queue)."""
    said = f"still {status} after {waited_s:.0f} s"
    if status in NOT_STARTED:
        return f"{said}: is a dagster-daemon running?"
    return f"{said} (the run goes on in the deployment)"


def status_line(node: str, run_id: str, status: str) -> str:
    """Progress while waiting: a run's new status (queued, started, ...)."""
    return f"node {node}: {status.lower()} (run {run_id})"


def target_line(target: TargetResult) -> str:
    if target.submitted:
        return f"node {target.node}: submitted (run {target.run_id})"
    return f"node {target.node}: " + ("ok" if target.ok else f"FAILED: {target.reason}")


def summary_lines(result: SyncResult) -> list[str]:
    """The closing lines: refused request, or counts and every failed target with why."""
    if result.problems:
        return list(result.problems)
    n = len(result.targets)
    submitted = sum(1 for t in result.targets if t.submitted)
    done = n - len(result.failed) - submitted
    lines = [f"sync {result.kind}: {done} of {n} target(s) ok"] if done or not submitted else []
    if submitted:
        lines.append(f"sync {result.kind}: {submitted} of {n} run(s) submitted, not waited for")
    if result.failed:
        lines.append(f"failed: {', '.join(t.node for t in result.failed)}")
        lines += [f"  {target_line(t)}" for t in result.failed]
    return lines


def exit_code(result: SyncResult) -> int:
    if result.problems:
        return EXIT_USAGE if result.usage else EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run said, read from an in-process result or a deployment's event
    log alike: the failed steps' own errors, the run failure's messages, and a
    `check_failure_line` for every asset check it failed."""

    success: bool
    step_errors: tuple[str, ...] = ()
    run_failures: tuple[str, ...] = ()
    failed_checks: tuple[str, ...] = ()


def target_result(node: str, run_id: str | None, outcome: RunOutcome) -> TargetResult:
    """A failed run fails its target with its failed steps' own errors (else the run
    failure's message); a successful one fails it with every asset check it failed (an
    unreachable probe, a skipped DB), else it is ok."""
    if not outcome.success:
        reasons = [r for r in outcome.step_errors if r] or [r for r in outcome.run_failures if r]
        why = one_line("; ".join(reasons) or "the run failed (see its logs)")
        return TargetResult(node, False, why, run_id)
    return TargetResult(node, not outcome.failed_checks, "; ".join(outcome.failed_checks), run_id)


def client_address(url: str) -> tuple[dict[str, Any], list[str]]:
    """`DagsterGraphQLClient`'s arguments for a webserver's URL
    (`http[s]://HOST[:PORT][/PREFIX]`, a trailing `/graphql` allowed), or the problem."""
    problem = [f"url: {url!r} is not http[s]://HOST[:PORT][/PATH] of a Dagster webserver"]
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return {}, problem
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        return {}, problem
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    prefix = parts.path.rstrip("/").removesuffix("/graphql")
    address = {"hostname": host, "port_number": port, "use_https": parts.scheme == "https"}
    return {**address, "path_prefix": prefix}, []


def deployment_error_line(url: str, error: BaseException) -> str:
    """Why a deployment did not answer or refused, one line: the innermost cause's own words (an OS
    error's text alone, e.g. "Connection refused"), never the query the client sent."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = ": ".join(str(arg) for arg in error.args if arg) or type(error).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    return one_line(f"deployment {url}: {errno.group(1) if errno else text}")[:500]


def job_repository(repositories: Mapping[str, Any], job: str) -> tuple[dict[str, str], str]:
    """The repository selector of the one repository on the deployment that has `job`
    (from a `repositoriesOrError` reply), or why there is none."""
    if repositories.get("__typename") != "RepositoryConnection":
        return {}, f"cannot list its repositories: {repositories.get('message', '')}"
    found = {
        f"{repo['name']}@{repo['location']['name']}": {
            "repositoryLocationName": repo["location"]["name"],
            "repositoryName": repo["name"],
        }
        for repo in repositories["nodes"]
        if job in {p["name"] for p in repo["pipelines"]}
    }
    if len(found) == 1:
        return next(iter(found.values())), ""
    if found:
        return {}, f"job {job} is in several repositories: {', '.join(sorted(found))}"
    loaded = sorted(f"{r['name']}@{r['location']['name']}" for r in repositories["nodes"])
    return {}, (
        f"no repository there has the job {job} (is fleetsync's code location loaded? "
        f"repositories: {', '.join(loaded) or 'none'})"
    )


def metadata_value(entry: Mapping[str, Any]) -> object:
    """A GraphQL metadata entry's value as Dagster's in-process metadata holds it."""
    if entry.get("__typename") == "JsonMetadataEntry":
        return json.loads(entry.get("jsonString") or "null")
    for field in ("text", "intValue", "floatValue", "boolValue", "path", "mdStr", "url"):
        if field in entry:
            return entry[field]
    return None


def error_info(error: Mapping[str, Any]) -> SerializableErrorInfo:
    """A GraphQL `PythonError` (with its explicit `causes`) as Dagster's error chain."""
    from dagster_shared.error import SerializableErrorInfo

    info = None
    for link in reversed([error, *(error.get("causes") or [])]):
        info = SerializableErrorInfo(link.get("message") or "", [], link.get("className"), info)
    assert info is not None
    return info


def events_outcome(status: str, events: Sequence[Mapping[str, Any]]) -> RunOutcome:
    """A finished run's outcome from its status and its event log (`RUN_EVENTS`)."""
    steps, failures, checks = [], [], []
    for event in events:
        kind = event.get("__typename")
        if kind == "ExecutionStepFailureEvent" and event.get("error"):
            steps.append(_own_error(error_info(event["error"])))
        elif kind == "RunFailureEvent":
            failures.append(event.get("message") or "")
        elif kind == "AssetCheckEvaluationEvent" and not event["evaluation"]["success"]:
            check = event["evaluation"]
            details = {e["label"]: metadata_value(e) for e in check.get("metadataEntries") or []}
            checks.append(check_failure_line(check["checkName"], check.get("description"), details))
    if status == "CANCELED" and not any(failures):
        failures.append("the run was canceled")
    return RunOutcome(status == "SUCCESS", tuple(steps), tuple(failures), tuple(checks))


# ---- running ------------------------------------------------------------------------------


def sync(
    kind: str,
    targets: Sequence[str] = (ALL,),
    priority: str = "normal",
    *,
    url: str | None = None,
    wait: bool = True,
    instance: dg.DagsterInstance | None = None,
    on_target: Callable[[TargetResult], None] | None = None,
    on_status: Callable[[str, str, str], None] | None = None,
    poll_s: float = 1.0,
    timeout_s: float = WAIT_TIMEOUT_S,
) -> SyncResult:
    """Run KIND's job for each target node now, with the inventory at $FLEETSYNC_FLEET:
    in-process on `instance` (default: `DagsterInstance.get()`, i.e. $DAGSTER_HOME), or,
    given `url`, submitted to that running deployment (its webserver) and, with `wait`,
    followed every `poll_s` seconds until each run ends, at most `timeout_s` seconds: a
    run not ended by then fails its target with its last status (it goes on in the
    deployment). In-process runs always finish before this returns.

    `targets`: node names or `all`, each item possibly "a,b" (or one string, "all" or
    "a,b"). `on_target` is called as each target is submitted (`url` only) and as it
    finishes; `on_status(node, run_id, status)` as a followed run's status changes (QUEUED,
    STARTED, ...) before it ends. Never raises for a refused request or a failed target:
    the result says which and why."""
    problems = request_problems(kind, priority, timeout_s)
    address: dict[str, Any] = {}
    if url is not None:
        address, bad_url = client_address(url)
        problems += bad_url
        if instance is not None:
            problems.append("instance: runs go to the deployment at url, not to an instance")
    if problems:
        return SyncResult(kind, problems=tuple(problems), usage=True)
    fleet_path = os.environ.get("FLEETSYNC_FLEET") or "fleet.yaml"
    try:
        fleet = load_inventory(fleet_path)
    except InventoryError as exc:
        return SyncResult(kind, problems=tuple(exc.problems))
    inventory_nodes = [n.name for n in fleet.nodes]
    # A bare string is "all" or "a,b", as on the command line, never its characters.
    requested = parse_targets(targets)
    nodes, problems = resolve_targets(requested, inventory_nodes)
    if problems:
        return SyncResult(kind, problems=tuple(problems), usage=True)

    if url is not None:
        deployment = Deployment(url, address)
        request = (kind, nodes, inventory_nodes, priority)
        follow = Follow(poll_s, timeout_s, on_status) if wait else None
        return _submit(deployment, *request, follow=follow, on_target=on_target)
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
            target = target_result(node, run.run_id, _in_process_outcome(run))
        except Exception as exc:  # one target's crash never stops the others
            target = TargetResult(node, False, one_line(f"{type(exc).__name__}: {exc}"))
        results.append(target)
        if on_target is not None:
            on_target(target)
    return SyncResult(kind, tuple(results))


def _in_process_outcome(run: dg.ExecuteInProcessResult) -> RunOutcome:
    events = run.all_events
    return RunOutcome(
        run.success,
        tuple(
            _own_error(e.step_failure_data.error)
            for e in events
            if e.is_step_failure and e.step_failure_data is not None
        ),
        tuple(e.message or "" for e in events if e.is_run_failure),
        tuple(
            check_failure_line(
                check.check_name,
                check.description,
                {key: value.value for key, value in check.metadata.items()},
            )
            for check in run.get_asset_check_evaluations()
            if not check.passed
        ),
    )


# ---- a running deployment (--url) --------------------------------------------------------

REPOSITORIES = """{ repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } pipelines { name } } }
  ... on Error { message } } }"""
PARTITION_KEYS = """query($job: PipelineSelector!) { pipelineOrError(params: $job) { __typename
  ... on Pipeline { partitionKeysOrError { partitionKeys } } ... on Error { message } } }"""
ADD_PARTITION = """mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key)
  { __typename ... on Error { message } } }"""
RUN_STATUSES = """query($ids: [String]) { runsOrError(filter: {runIds: $ids}) { __typename
  ... on Runs { results { runId status } } ... on Error { message } } }"""
# The events a target's outcome is read from (`events_outcome`); others come back bare.
RUN_EVENTS = """query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) {
  __typename ... on Error { message }
  ... on EventConnection { cursor hasMore events { __typename
    ... on ExecutionStepFailureEvent { error { message className causes { message className } } }
    ... on RunFailureEvent { message }
    ... on AssetCheckEvaluationEvent { evaluation { checkName success description
      metadataEntries { __typename label ... on TextMetadataEntry { text }
        ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
        ... on BoolMetadataEntry { boolValue } ... on JsonMetadataEntry { jsonString }
        ... on PathMetadataEntry { path } ... on MarkdownMetadataEntry { mdStr }
        ... on UrlMetadataEntry { url } } } } } } } }"""
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
# Run statuses of a run not started yet; SUBMITTED: ours, for a run whose status no poll saw.
NOT_STARTED = frozenset({"SUBMITTED", "QUEUED", "NOT_STARTED", "STARTING"})


class DeploymentError(Exception):
    """The deployment did not answer, or refused; the message is one line naming it."""


class Deployment:
    """A running Dagster deployment, through its webserver's GraphQL API: runs are
    submitted with `DagsterGraphQLClient.submit_job_execution`; what that client has no
    method for (dynamic partitions, events, many runs' status at once) goes through its
    query call, so connection handling and errors are the client's."""

    def __init__(self, url: str, address: Mapping[str, Any]) -> None:
        from dagster_graphql import DagsterGraphQLClient

        self.url = url
        self.client = DagsterGraphQLClient(**address, timeout=60)

    def _query(
        self, text: str, field: str, variables: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The reply's `field`: a typed GraphQL object (`__typename`) as Dagster answers;
        a server that answers otherwise is not a Dagster webserver (one line, no KeyError)."""
        from dagster_graphql import DagsterGraphQLClientError

        try:
            reply = self.client._execute(text, dict(variables or {}))
        except DagsterGraphQLClientError as exc:
            raise DeploymentError(deployment_error_line(self.url, exc)) from None
        answer = reply.get(field) if isinstance(reply, dict) else None
        if not isinstance(answer, dict) or "__typename" not in answer:
            said = one_line(json.dumps(reply))[:200]
            raise DeploymentError(
                f"deployment {self.url}: URL does not answer like a Dagster webserver: "
                f"no {field} in its reply {said}"
            )
        return answer

    def _refused(self, what: str, reply: Mapping[str, Any]) -> DeploymentError:
        said = reply.get("message") or reply.get("__typename")
        return DeploymentError(one_line(f"deployment {self.url}: {what}: {said}"))

    def repository(self, job: str) -> dict[str, str]:
        """The selector of the repository that has `job`."""
        selector, problem = job_repository(self._query(REPOSITORIES, "repositoriesOrError"), job)
        if problem:
            raise DeploymentError(f"deployment {self.url}: {problem}")
        return selector

    def add_missing_partitions(self, repo: Mapping[str, str], job: str, keys: list[str]) -> None:
        """Add the `nodes` partitions among `keys` the deployment does not have yet."""
        found = self._query(
            PARTITION_KEYS, "pipelineOrError", {"job": {**repo, "pipelineName": job}}
        )
        if found["__typename"] != "Pipeline":
            raise self._refused(f"job {job}", found)
        known = set(found["partitionKeysOrError"]["partitionKeys"])
        for key in (k for k in keys if k not in known):
            variables = {"repo": dict(repo), "name": NODES_PARTITIONS, "key": key}
            added = self._query(ADD_PARTITION, "addDynamicPartition", variables)
            if added["__typename"] not in ("AddDynamicPartitionSuccess",
                                           "DuplicateDynamicPartitionError"):  # fmt: skip
                raise self._refused(f"adding node partition {key}", added)

    def submit(self, repo: Mapping[str, str], job: str, tags: Mapping[str, str]) -> str:
        """Submit one run of `job`; its run id."""
        from dagster_graphql import DagsterGraphQLClientError

        location, name = repo["repositoryLocationName"], repo["repositoryName"]
        try:
            return self.client.submit_job_execution(job, location, name, {}, dict(tags))
        except DagsterGraphQLClientError as exc:
            raise DeploymentError(deployment_error_line(self.url, exc)) from None

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        runs = self._query(RUN_STATUSES, "runsOrError", {"ids": run_ids})
        if runs["__typename"] != "Runs":
            raise self._refused("run status", runs)
        return {run["runId"]: run["status"] for run in runs["results"]}

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's whole event log, page by page."""
        events: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._query(RUN_EVENTS, "logsForRun", {"id": run_id, "after": cursor})
            if page["__typename"] != "EventConnection":
                raise self._refused(f"events of run {run_id}", page)
            events += page["events"]
            if not page["hasMore"]:
                return events
            cursor = page["cursor"]


@dataclass(frozen=True)
class Follow:
    """How submitted runs are waited for: polled every `poll_s`, given up after
    `timeout_s`, each status change told to `on_status(node, run_id, status)`."""

    poll_s: float
    timeout_s: float
    on_status: Callable[[str, str, str], None] | None = None


def _submit(
    deployment: Deployment,
    kind: str,
    nodes: list[str],
    inventory_nodes: list[str],
    priority: str,
    *,
    follow: Follow | None,
    on_target: Callable[[TargetResult], None] | None,
) -> SyncResult:
    """Add the missing node partitions, submit one run per target, then (with `follow`)
    poll the runs' status until each has ended, or the timeout, and read each ended run's
    outcome from its events."""
    job = KIND_JOBS[kind]
    try:
        repo = deployment.repository(job)
        deployment.add_missing_partitions(repo, job, inventory_nodes)
    except DeploymentError as exc:
        return SyncResult(kind, problems=(str(exc),))

    def done(target: TargetResult) -> None:
        results[target.node] = target
        if on_target is not None:
            on_target(target)

    results: dict[str, TargetResult] = {}
    running: dict[str, str] = {}  # node → run id
    for node in nodes:
        try:
            run_id = deployment.submit(repo, job, {**run_tags(kind, priority), PARTITION_TAG: node})
        except DeploymentError as exc:
            done(TargetResult(node, False, f"not submitted: {exc}"))
            continue
        running[node] = run_id
        done(TargetResult(node, True, run_id=run_id, submitted=True))
    if follow is not None:
        _follow(deployment, running, follow, done)
    return SyncResult(kind, tuple(results[node] for node in nodes))


def _follow(
    deployment: Deployment,
    running: dict[str, str],
    follow: Follow,
    done: Callable[[TargetResult], None],
) -> None:
    """Poll the `running` runs (node → run id) until each has ended (`done` with its
    outcome) or `follow.timeout_s` has passed (`done` with its last status)."""
    started = time.monotonic()
    seen: dict[str, str] = {}  # node → last status told
    while running:
        waited = time.monotonic() - started
        if waited >= follow.timeout_s:
            for node, run_id in running.items():
                status = seen.get(node, "SUBMITTED")
                done(TargetResult(node, False, unfinished_reason(status, waited), run_id))
            return
        time.sleep(min(follow.poll_s, follow.timeout_s - waited))
        try:
            statuses = deployment.statuses(list(running.values()))
            ended = {n: r for n, r in running.items() if statuses.get(r) in FINISHED}
            outcomes = {
                n: events_outcome(statuses[r], deployment.events(r)) for n, r in ended.items()
            }
        except DeploymentError as exc:  # the deployment went away: say so for every run left
            for node, run_id in running.items():
                done(TargetResult(node, False, f"lost track of run {run_id}: {exc}", run_id))
            return
        for node, run_id in running.items():
            now = statuses.get(run_id)
            if now is not None and node not in ended and seen.get(node) != now:
                seen[node] = now
                if follow.on_status is not None:
                    follow.on_status(node, run_id, now)
        for node, outcome in outcomes.items():
            done(target_result(node, running.pop(node), outcome))


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
        "local Dagster instance, or submitted to a running deployment (--url). Exit 0 if "
        "every target synced (or, with --url and no --wait, every run was submitted), 1 "
        "naming each failed target (a failed run or asset check, or a run not ended within "
        "--timeout) and why, or when "
        "the deployment cannot be reached or lacks the job, 2 for a bad request.",
    )
    parser.add_argument("kind", help=", ".join(f"{k} ({j})" for k, j in KIND_JOBS.items()))
    parser.add_argument(
        "--targets",
        nargs="+",
        action="extend",  # `--targets a b --targets c,d`: every node named, none dropped
        metavar="NODE",
        help="all (default), or nodes: space- or comma-separated, the flag repeatable",
    )
    parser.add_argument("--priority", default="normal", help="high or normal (default)")
    parser.add_argument(
        "--url", help="a running deployment's webserver, e.g. http://dagster:3000: submit there"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --url: wait for every run and report how it ended (in-process: always)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"with --url --wait: give up on runs not ended after this long, naming each "
        f"with its status (default {WAIT_TIMEOUT_S:.0f})",
    )
    parser.set_defaults(func=cmd_sync)
    return parser


def cmd_sync(args: argparse.Namespace) -> int:
    if args.url is None:
        os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve()))

    def progress(target: TargetResult) -> None:
        print(target_line(target), flush=True)

    def status(node: str, run_id: str, status: str) -> None:
        print(status_line(node, run_id, status), flush=True)

    targets = parse_targets(args.targets or [ALL])
    try:
        result = sync(args.kind, targets, args.priority, url=args.url, wait=args.wait,
                      on_target=progress, on_status=status, timeout_s=args.timeout)  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted" + (": submitted runs go on in the deployment" if args.url else ""),
              file=sys.stderr)  # fmt: skip
        return 130
    out = sys.stdout if result.ok else sys.stderr
    for line in summary_lines(result):
        print(line, file=out)
    return exit_code(result)
