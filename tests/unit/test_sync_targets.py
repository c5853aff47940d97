"""`fleetsync sync`'s pure decisions: which targets, what the summary says, the exit code."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync_assets.cli.sync import (
    SyncResult,
    TargetResult,
    check_failure_line,
    exit_code,
    parse_targets,
    request_problems,
    resolve_targets,
    run_tags,
    summary_lines,
)

NAMES = st.text("abgpu-1.", min_size=1, max_size=6).filter(lambda s: s != "all")
INVENTORIES = st.lists(NAMES, unique=True, max_size=8)


@given(INVENTORIES, st.data())
def test_resolved_targets_are_the_requested_inventory_nodes_in_inventory_order(inventory, data):
    requested = data.draw(st.lists(st.sampled_from([*inventory, "all"]), min_size=1))
    targets, problems = resolve_targets(requested, inventory)
    assert problems == []
    expected = inventory if "all" in requested else [n for n in inventory if n in requested]
    assert targets == expected
    assert len(set(targets)) == len(targets)


@given(INVENTORIES, st.lists(NAMES, min_size=1, max_size=4), st.booleans())
def test_any_unknown_node_refuses_the_whole_request_naming_each(inventory, extra, with_all):
    unknown = [n for n in extra if n not in inventory]
    requested = [*inventory[:2], *extra] + (["all"] if with_all else [])
    targets, problems = resolve_targets(requested, inventory)
    if not unknown:
        assert problems == [] and targets
        return
    assert targets == [] and len(problems) == 1
    assert problems[0].startswith("targets: unknown node(s): ")
    assert all(name in problems[0] for name in unknown)


def test_nothing_requested_is_a_problem_not_an_empty_success():
    assert resolve_targets([], ["gpu-1"]) == (
        [],
        ["targets: none given (use `all` or NODE[,NODE...])"],
    )


def test_unknown_node_line_names_it_and_the_inventory():
    assert resolve_targets(["gpu-1", "nosuch"], ["store-1", "gpu-1"]) == (
        [],
        ["targets: unknown node(s): nosuch (inventory nodes: store-1, gpu-1)"],
    )


@given(st.lists(st.text("ab-1 ", max_size=5), max_size=5))
def test_parse_targets_splits_on_commas_and_drops_blanks(parts):
    assert parse_targets(",".join(parts)) == [p.strip() for p in parts if p.strip()]


def test_request_problems_and_tags():
    assert request_problems("games", "high") == []
    assert request_problems("gamez", "urgent") == [
        "kind: 'gamez' is not one of games, elo, npz, models, status",
        "priority: 'urgent' is not one of high, normal",
    ]
    # Higher dagster/priority runs first; normal is Dagster's default, 0.
    assert run_tags("games", "high") == {"dagster/priority": "10", "fleetsync/sync": "games"}
    assert run_tags("elo", "normal")["dagster/priority"] == "0"


OUTCOMES = st.lists(
    st.tuples(NAMES, st.booleans(), st.text("abc :", min_size=1, max_size=10)),
    unique_by=lambda t: t[0],
    max_size=6,
)


@given(OUTCOMES)
def test_summary_names_every_failed_target_with_its_reason_and_exit_follows(outcomes):
    targets = tuple(TargetResult(n, ok, "" if ok else why) for n, ok, why in outcomes)
    result = SyncResult("games", targets)
    lines = summary_lines(result)
    failed = [(n, why) for n, ok, why in outcomes if not ok]
    assert lines[0] == f"sync games: {len(outcomes) - len(failed)} of {len(outcomes)} target(s) ok"
    for name, why in failed:
        assert f"  node {name}: FAILED: {why}" in lines
    if failed:
        assert lines[1] == "failed: " + ", ".join(n for n, _ in failed)
    assert len(lines) == (1 if not failed else 2 + len(failed))
    assert exit_code(result) == (1 if failed else 0)
    assert result.ok == (not failed)


def test_refused_requests_exit_2_for_arguments_1_for_the_inventory():
    usage = SyncResult("status", problems=("targets: unknown node(s): nosuch",), usage=True)
    assert exit_code(usage) == 2 and summary_lines(usage) == list(usage.problems)
    broken = SyncResult("status", problems=("fleet.yaml: node x: host: required",))
    assert exit_code(broken) == 1 and not broken.ok


def test_a_failed_check_line_names_the_check_and_why():
    # fleet/node_status: the probe's error alone, it names itself.
    error = "node 'gpu-1': '/data': probe: data root is not a directory"
    assert check_failure_line("reachable", None, {"error": error}) == (
        f"check reachable failed: {error}"
    )
    # games/selfplay: every skipped DB with its reason; durable_copies: key and value.
    assert check_failure_line(
        "every_db_collected", None, {"skipped": ["a.db: locked", "b.db: gone"]}
    ) == ("check every_db_collected failed: skipped: a.db: locked, b.db: gone")
    assert check_failure_line(
        "durable_copies", "too few", {"required": 2, "under_replicated": []}
    ) == ("check durable_copies failed: too few; required: 2")
    # models/on_node's verified_on_node carries no metadata: its name is the reason.
    assert check_failure_line("verified_on_node", "", {}) == "check verified_on_node failed"


TEXTS = st.text("ab :\n\t", max_size=8)
VALUES = st.one_of(TEXTS, st.integers(), st.lists(TEXTS, max_size=3), st.none())


KEYS = st.sampled_from(["error", "skipped", "required", "under_replicated"]) | st.text(
    "ab_", min_size=1
)


@given(st.text("abc_", min_size=1), st.none() | TEXTS, st.dictionaries(KEYS, VALUES))
def test_a_failed_check_line_is_one_line_with_every_non_empty_detail(check, description, details):
    line = check_failure_line(check, description, details)
    assert line.startswith(f"check {check} failed")
    assert "\n" not in line and "\t" not in line and "  " not in line
    said = False  # the oracle: each non-blank detail, as it reads once on one line
    for key, value in details.items():
        items = value if isinstance(value, list) else [] if value is None else [value]
        for item in (str(i) for i in items if str(i).split()):
            assert " ".join(item.split()) in line
            assert key == "error" or f"{key}:" in line
            said = True
    if description and description.split():
        assert " ".join(description.split()) in line
        said = True
    assert (line == f"check {check} failed") == (not said)


# `--targets all|NODE...` (CONTRACT): space-separated, comma lists and a repeated flag, all
# merged in order; none of them silently drops a node.
def parsed_targets(*argv: str) -> list[str]:
    from sync_assets.cli.main import build_parser

    args = build_parser().parse_args(["sync", "games", *argv])
    return parse_targets(args.targets or ["all"])


def test_targets_space_separated_comma_lists_and_repeated_flags_all_count():
    assert parsed_targets() == ["all"]
    assert parsed_targets("--targets", "gpu-1", "gpu-2") == ["gpu-1", "gpu-2"]
    assert parsed_targets("--targets", "gpu-1", "--targets", "gpu-2") == ["gpu-1", "gpu-2"]
    assert parsed_targets("--targets", "a,b", "c", "--targets", "d", "--priority", "high") == [
        "a", "b", "c", "d"
    ]  # fmt: skip


@given(st.lists(st.lists(st.text("ab-1 ,", min_size=1, max_size=6), min_size=1, max_size=3),
                min_size=1, max_size=3))  # fmt: skip
def test_every_name_given_to_targets_is_kept_in_order(flags):
    argv = [arg for values in flags for arg in ("--targets", *values)]
    if any(value.startswith("-") for values in flags for value in values):
        return  # argparse reads those as options, not names
    oracle = []  # independently: every comma-separated piece of every value, stripped
    for values in flags:
        for value in values:
            oracle += [piece.strip() for piece in value.split(",") if piece.strip()]
    # Only names: given but blank (`--targets ,`) is nothing, refused by resolve_targets.
    assert parsed_targets(*argv) == oracle


def test_parse_targets_takes_a_sequence_of_items_as_sync_does():
    assert parse_targets(["all"]) == ["all"]
    assert parse_targets(["a, b", "", "c"]) == ["a", "b", "c"]
