"""The chain sensors' decisions (item 7), against independently written oracles: which
nodes get a current version this tick, what names a run, and the interval override."""

from __future__ import annotations

import hashlib
import itertools

import dagster as dg
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors._common import (
    INTERVAL_ENV,
    RETRY_AFTER_S,
    fleet_sensor,
    sensor_interval,
    set_digest,
)
from sensors.fan_out import Current, nodes_to_serve, run_key
from sensors.merge_trigger import merge_run_keys

NODES = [f"n{i}" for i in range(8)]
SHAS = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
PATHS = ["training/a.npz", "training/b.npz", "training/shards/a.0123.npz"]


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[Current], list[tuple[str, str, str, str]], list[str]]:
    """Current versions (one per key), replica rows (sha, node, path, state), targets."""
    keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    current = [Current(k, draw(st.sampled_from(SHAS)), draw(st.sampled_from(PATHS))) for k in keys]
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(SHAS),
                st.sampled_from(NODES),
                st.sampled_from(PATHS),
                st.sampled_from(["verified", "staging"]),
            ),
            unique=True,
            max_size=20,
        )
    )
    targets = draw(st.lists(st.sampled_from(NODES), unique=True))
    return current, rows, targets


def oracle(
    current: list[Current], rows: list[tuple[str, str, str, str]], targets: list[str], per: int
) -> dict[str, set[tuple[str, str]]]:
    """From the words: a target lacking a verified copy at the version's path gets it, the
    first ones in target order, as many as (nodes holding it verified anywhere) × per, and
    at least one."""
    out: dict[str, set[tuple[str, str]]] = {}
    for v in current:
        holders = {node for sha, node, _, state in rows if sha == v.sha256 and state == "verified"}
        placed = {
            node
            for sha, node, path, state in rows
            if sha == v.sha256 and path == v.path and state == "verified"
        }
        allowed = max(len(holders) * per, 1)
        for node in [t for t in targets if t not in placed][:allowed]:
            out.setdefault(node, set()).add((v.key, v.sha256))
    return out


@settings(max_examples=600, deadline=None)
@given(fleet=fleets(), per=st.integers(1, 3))
def test_nodes_to_serve_matches_the_oracle(fleet, per):
    current, rows, targets = fleet
    replicas = pd.DataFrame(rows, columns=["sha256", "node", "path", "state"])
    todo = nodes_to_serve(current, replicas, targets, per)
    got = {node: {(v.key, v.sha256) for v in versions} for node, versions in todo.items()}
    assert got == oracle(current, rows, targets, per)
    # Invariants beside the oracle: only targets, never one already holding the version.
    assert set(todo) <= set(targets)


@settings(max_examples=500, deadline=None)
@given(
    versions=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(SHAS)),
        unique_by=lambda v: v[0],
        min_size=1,
    ),
    now=st.floats(0, 1e10),
    data=st.data(),
)
def test_run_key_names_the_versions_whatever_their_order(versions, now, data):
    current = [Current(k, sha, f"p/{k}") for k, sha in versions]
    shuffled = data.draw(st.permutations(current))
    key = run_key("shards", "train-1", current, now)
    assert key == run_key("shards", "train-1", shuffled, now)
    # A later version of any file is a new key: the sensor asks again.
    k, sha = versions[0]
    newer = next(s for s in SHAS if s != sha)
    assert key != run_key("shards", "train-1", [Current(k, newer, "p")] + current[1:], now)
    # So is the next retry hour, and another node.
    assert key != run_key("shards", "train-1", current, now + RETRY_AFTER_S)
    assert key != run_key("shards", "train-2", current, now)


@settings(max_examples=500, deadline=None)
@given(shas=st.lists(st.sampled_from(SHAS + ["e" * 64, "f" * 64]), min_size=1), data=st.data())
def test_set_digest_names_the_set(shas, data):
    """Order and repeats do not matter; a new snapshot in the set makes a new version."""
    version = set_digest(shas)
    assert version == set_digest(data.draw(st.permutations(shas)) + shas[:1])
    missing = [s for s in SHAS + ["e" * 64, "f" * 64] if s not in shas]
    for extra in missing:
        assert set_digest([*shas, extra]) != version


def test_set_digest_of_distinct_sets_differ():
    sets = [frozenset(c) for r in range(4) for c in itertools.combinations(SHAS, r)]
    assert len({set_digest(s) for s in sets}) == len(sets)


# ---- FLEETSYNC_SENSOR_INTERVAL_S ---------------------------------------------------------


def _sensor() -> dg.SensorDefinition:
    @fleet_sensor("probe_sensor", 60)
    def probe_sensor(context, fleet, catalog):  # never evaluated here
        return dg.SkipReason("unused")

    return probe_sensor


def test_interval_defaults_to_the_sensors_own(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert _sensor().minimum_interval_seconds == 60
    monkeypatch.setenv(INTERVAL_ENV, " ")
    assert sensor_interval(120) == 120


def test_interval_override_applies_to_every_fleet_sensor(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "3")
    assert _sensor().minimum_interval_seconds == 3
    assert sensor_interval(120) == 3


@pytest.mark.parametrize("bad", ["0", "-5", "1.5", "soon"])
def test_interval_override_must_be_whole_positive_seconds(monkeypatch, bad):
    monkeypatch.setenv(INTERVAL_ENV, bad)
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        sensor_interval(60)


# ---- merge_trigger -----------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    pending=st.dictionaries(
        st.sampled_from(["hex8_2p", "square8_2p", "hex8_4p"]), st.sets(st.sampled_from(SHAS))
    ),
    canonical=st.dictionaries(st.sampled_from(["hex8_2p", "square8_2p"]), st.sampled_from(SHAS)),
    now=st.floats(0, 1e10),
)
def test_merge_is_asked_for_each_config_with_snapshots_to_merge(pending, canonical, now):
    keys = merge_run_keys(pending, canonical, now)
    assert set(keys) == {config for config, snapshots in pending.items() if snapshots}
    assert len(set(keys.values())) == len(keys)  # one run per config
    for config in keys:
        # Anything new asks again: another snapshot, another canonical version, the next hour.
        more = {**pending, config: pending[config] | {"f" * 64}}
        assert merge_run_keys(more, canonical, now)[config] != keys[config]
        newer = {**canonical, config: "e" * 64}
        assert merge_run_keys(pending, newer, now)[config] != keys[config]
        assert merge_run_keys(pending, canonical, now + RETRY_AFTER_S)[config] != keys[config]
        assert merge_run_keys(pending, canonical, now)[config] == keys[config]
