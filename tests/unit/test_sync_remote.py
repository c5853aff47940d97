"""`fleetsync sync --url`'s pure decisions: the webserver's address, one-line errors, which
repository has the job, and a target's outcome read from a deployment's event log."""

from __future__ import annotations

import json

import requests
from hypothesis import given
from hypothesis import strategies as st

from sync_assets.cli.sync import (
    RunOutcome,
    SyncResult,
    TargetResult,
    client_address,
    deployment_error_line,
    events_outcome,
    exit_code,
    job_repository,
    summary_lines,
    target_result,
)

HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,5}){0,2}", fullmatch=True)
PREFIXES = st.from_regex(r"(/[a-z0-9_-]{1,6}){0,2}", fullmatch=True)


@given(st.sampled_from(["http", "https"]), HOSTS, st.none() | st.integers(1, 65535), PREFIXES,
       st.sampled_from(["", "/", "/graphql"]))  # fmt: skip
def test_a_webserver_url_becomes_the_clients_address(scheme, host, port, prefix, tail):
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{prefix}{tail}"
    address, problems = client_address(url)
    assert problems == []
    assert address == {
        "hostname": host,
        "port_number": port,
        "use_https": scheme == "https",
        "path_prefix": prefix,
    }


def test_what_is_not_a_webserver_url_is_a_problem_naming_it():
    for url in ["ftp://h:1", "h:3000", "http://", "http://h:99999", "http://h:x", "http://h/?a=1"]:
        address, problems = client_address(url)
        assert address == {}
        assert problems == [
            f"url: {url!r} is not http[s]://HOST[:PORT][/PATH] of a Dagster webserver"
        ]
    assert client_address("http://[::1]:3000")[0]["hostname"] == "[::1]"


def test_an_unreachable_deployment_is_one_line_in_the_os_words():
    refused = requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /graphql "
        "(Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=1): Failed to "
        'establish a new connection: [Errno 111] Connection refused"))'
    )
    try:
        try:
            raise refused
        except requests.exceptions.ConnectionError as exc:
            raise RuntimeError("Exception occured during execution of query\n{ x }\n") from exc
    except RuntimeError as outer:
        line = deployment_error_line("http://h:1", outer)
        assert line == "deployment http://h:1: Connection refused"
    # Without a cause: the error's own arguments, on one line.
    error = RuntimeError("RunConflict", "a run\nwith that id exists")
    assert deployment_error_line("http://h", error) == (
        "deployment http://h: RunConflict: a run with that id exists"
    )


def repos(*entries: tuple[str, str, list[str]]) -> dict:
    nodes = [{"name": n, "location": {"name": loc}, "pipelines": [{"name": j} for j in jobs]}
             for n, loc, jobs in entries]  # fmt: skip
    return {"__typename": "RepositoryConnection", "nodes": nodes}


def test_the_job_is_found_in_exactly_one_repository_or_the_reason_says_where_it_looked():
    fleetsync = ("__repository__", "fleetsync", ["collect_games", "probe_nodes"])
    training = ("__repository__", "training_repo", ["train"])
    assert job_repository(repos(fleetsync, training), "collect_games") == (
        {"repositoryLocationName": "fleetsync", "repositoryName": "__repository__"},
        "",
    )
    assert job_repository(repos(training), "collect_games") == (
        {},
        "no repository there has the job collect_games (is fleetsync's code location "
        "loaded? repositories: __repository__@training_repo)",
    )
    twice = ("__repository__", "fleetsync-2", ["collect_games"])
    assert job_repository(repos(fleetsync, twice), "collect_games") == (
        {},
        "job collect_games is in several repositories: "
        "__repository__@fleetsync, __repository__@fleetsync-2",
    )
    error = {"__typename": "PythonError", "message": "boom"}
    assert job_repository(error, "x") == ({}, "cannot list its repositories: boom")


# A step failure as the webserver reports it (Dagster's Failure around fleetsync's error).
STEP_FAILURE = {
    "__typename": "ExecutionStepFailureEvent",
    "error": {
        "message": "dagster._core.definitions.events.Failure: node 'gpu-1': '/d': list: "
        "data root is not a directory\n",
        "className": "Failure",
        "causes": [{"message": "resources.transport.base.TransferError: node 'gpu-1': "
                    "'/d': list: data root is not a directory\n", "className": "TransferError"}],
    },
}  # fmt: skip
RUN_FAILURE = {"__typename": "RunFailureEvent", "message": "Execution of run failed."}


def check_event(name: str, success: bool, entries: list[dict]) -> dict:
    evaluation = {"checkName": name, "success": success, "description": None,
                  "metadataEntries": entries}  # fmt: skip
    return {"__typename": "AssetCheckEvaluationEvent", "evaluation": evaluation}


def test_a_failed_run_fails_its_target_with_the_steps_own_error():
    outcome = events_outcome(
        "FAILURE", [{"__typename": "RunStartEvent"}, STEP_FAILURE, RUN_FAILURE]
    )
    assert target_result("gpu-1", "r1", outcome) == TargetResult(
        "gpu-1", False, "node 'gpu-1': '/d': list: data root is not a directory", "r1"
    )
    # No step failed (the run crashed, or was canceled): the run's own message.
    crashed = events_outcome("FAILURE", [RUN_FAILURE])
    assert target_result("n", "r", crashed).reason == "Execution of run failed."
    canceled = events_outcome("CANCELED", [])
    assert target_result("n", "r", canceled).reason == "the run was canceled"
    assert target_result("n", "r", events_outcome("FAILURE", [])).reason == (
        "the run failed (see its logs)"
    )


def test_a_successful_run_fails_its_target_with_each_failed_check_and_its_metadata():
    entries = [
        {"__typename": "JsonMetadataEntry", "label": "skipped",
         "jsonString": json.dumps(["a.db: locked", "b.db: gone"])},
        {"__typename": "IntMetadataEntry", "label": "required", "intValue": 2},
    ]  # fmt: skip
    reachable = [{"__typename": "TextMetadataEntry", "label": "error", "text": "no route"}]
    events = [
        check_event("durable_copies", True, []),
        check_event("every_db_collected", False, entries),
        check_event("reachable", False, reachable),
    ]
    outcome = events_outcome("SUCCESS", events)
    assert outcome == RunOutcome(
        True,
        failed_checks=(
            "check every_db_collected failed: skipped: a.db: locked, b.db: gone; required: 2",
            "check reachable failed: no route",
        ),
    )
    assert target_result("n", "r", outcome) == TargetResult("n", False, "; ".join(
        outcome.failed_checks), "r")  # fmt: skip
    passed = events_outcome("SUCCESS", [check_event("durable_copies", True, [])])
    assert target_result("n", "r", passed) == TargetResult("n", True, "", "r")


OUTCOMES = st.lists(st.sampled_from(["ok", "failed", "submitted"]), max_size=6)


@given(OUTCOMES)
def test_runs_not_waited_for_are_counted_as_submitted_and_exit_0_unless_one_failed(states):
    targets = tuple(
        TargetResult(f"n{i}", state != "failed", "why" if state == "failed" else "",
                     f"r{i}", submitted=state == "submitted")
        for i, state in enumerate(states)
    )  # fmt: skip
    result = SyncResult("games", targets)
    lines = summary_lines(result)
    n, sent, bad = len(states), states.count("submitted"), states.count("failed")
    ok = n - sent - bad
    assert (f"sync games: {ok} of {n} target(s) ok" in lines) == (ok > 0 or sent == 0)
    assert (f"sync games: {sent} of {n} run(s) submitted, not waited for" in lines) == (sent > 0)
    assert ("failed: " + ", ".join(t.node for t in targets if not t.ok) in lines) == (bad > 0)
    assert exit_code(result) == (1 if bad else 0)
