"""The `transfer_failures` sensor's pure decisions: which node, which file, what to record,
which breakers count it, how the run is tagged."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.transfer_failures import (
    FAILURE_TAG,
    NODE_TAG,
    RunFailure,
    StepError,
    breaker_failures,
    failure_rows,
    file_named,
    run_tags,
)
from sync_assets.cli.status import failures_view

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
node_names = st.sampled_from(["gpu-1", "gpu-2", "store-1", "train-1"])


@settings(max_examples=500, deadline=None)  # pure and fast; no flaky deadline on a busy box
@given(
    dirs=st.lists(segment, max_size=3),
    stem=segment,
    ext=st.sampled_from(["db", "npz", "pth"]),
    node=node_names,
    quoted=st.booleans(),
)
def test_file_named_finds_the_file_a_transport_error_names(
    dirs: list[str], stem: str, ext: str, node: str, quoted: bool
) -> None:
    path = "/".join([*dirs, f"{stem}.{ext}"])
    # Both transports' forms: local quotes node and path, ssh does not.
    message = (
        f"node {node!r}: {path!r}: copy: size differs"
        if quoted
        else f"node {node}: {path}: checksum mismatch at the target"
    )
    assert file_named(message) == path


def test_file_named_is_empty_when_no_file_is_named() -> None:
    assert file_named("node 'gpu-1': '/data/gpu-1': list: data root is not a directory") == ""
    assert file_named("node gpu-1: cannot connect to 10.0.0.5:22: timed out") == ""
    assert file_named("exporter failed: training.npzz and db.backup") == ""
    assert file_named("merge of /srv/x/games/canonical_hex8_2p.db failed") == (
        "/srv/x/games/canonical_hex8_2p.db"
    )


step_errors = st.builds(
    StepError,
    step=st.sampled_from(["", "games__selfplay", "repair"]),
    message=st.sampled_from(["node gpu-1: host key differs\nmore", "boom", ""]),
    metadata=st.fixed_dictionaries(
        {},
        optional={"node": st.one_of(st.just(""), node_names), "transient": st.booleans()},
    ),
    retried=st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(
    errors=st.lists(step_errors, max_size=4),
    partition=st.one_of(st.none(), node_names),
    run_message=st.text(max_size=20),
)
def test_failure_rows_record_each_failed_step_against_the_right_node(
    errors: list[StepError], partition: str | None, run_message: str
) -> None:
    rows = failure_rows("r1", "collect_games", partition, errors, run_message, 100.0)
    if not errors:  # the run failed outside any step: one row, from the run's message
        assert rows == [
            RunFailure("r1", "", "collect_games", partition or "", "", run_message, False, 100.0)
        ]
        return
    assert len(rows) == len(errors)
    for row, error in zip(rows, errors, strict=True):
        named = error.metadata.get("node")
        assert row.node == (named if named else partition or "")
        # A classified error says it; any other was transient if the policy retried it.
        assert row.transient is error.metadata.get("transient", error.retried)
        assert (row.run_id, row.step, row.job, row.error) == (
            "r1",
            error.step,
            "collect_games",
            error.message,
        )


@settings(max_examples=500, deadline=None)
@given(errors=st.lists(step_errors, max_size=4))
def test_breakers_count_only_the_nodes_errors_name(errors: list[StepError]) -> None:
    counted = breaker_failures(errors)
    named = [e for e in errors if e.metadata.get("node")]
    assert set(counted) == {e.metadata["node"] for e in named}
    for node, line in counted.items():
        first = next(e for e in named if e.metadata["node"] == node)
        assert line == (first.message.splitlines()[0] if first.message else "")


def test_run_tags_name_the_nodes_and_say_permanent_when_any_step_was() -> None:
    def row(node: str, transient: bool) -> RunFailure:
        return RunFailure("r", "s", "j", node, "", "e", transient, 0.0)

    assert run_tags([row("gpu-2", True), row("gpu-1", False), row("gpu-2", True)]) == {
        NODE_TAG: "gpu-1,gpu-2",
        FAILURE_TAG: "permanent",
    }
    assert run_tags([row("", True)]) == {FAILURE_TAG: "transient"}


def test_status_shows_each_failure_on_one_line() -> None:
    failures = pd.DataFrame(
        {
            "node": ["gpu-1", ""],
            "failed_at": [0.0, 86400.0 + 3661.0],
            "job": ["collect_games", "repair_replicas"],
            "transient": [1, 0],
            "error": ["  node gpu-1: timed out\nTraceback ...", "x" * 300],
        }
    )
    view = failures_view(failures)
    assert view.to_dict("records") == [
        {
            "node": "gpu-1",
            "when": "1970-01-01 00:00:00",
            "job": "collect_games",
            "kind": "transient",
            "error": "node gpu-1: timed out",
        },
        {
            "node": "-",
            "when": "1970-01-02 01:01:01",
            "job": "repair_replicas",
            "kind": "permanent",
            "error": "x" * 99 + "…",
        },
    ]
    assert list(failures_view(failures.iloc[:0]).columns) == [
        "node",
        "when",
        "job",
        "kind",
        "error",
    ]
