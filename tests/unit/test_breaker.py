"""Circuit breaker decisions (pure) and their persistence in the catalog."""

from __future__ import annotations

from resources.catalog import Catalog
from sync_assets.engine import breaker
from sync_assets.engine.breaker import (
    COOLDOWN_S,
    HALF_LIFE_S,
    THRESHOLD,
    BreakerState,
    after_failure,
    after_success,
    decayed_failures,
    status,
)


def fail(times: int, start: float = 0.0, gap: float = 1.0) -> BreakerState:
    state = BreakerState()
    for i in range(times):
        state = after_failure(state, start + i * gap)
    return state


def test_opens_at_threshold_not_before():
    assert status(fail(int(THRESHOLD) - 1), 10) == "closed"
    assert status(fail(int(THRESHOLD)), 10) == "open"


def test_half_opens_after_cooldown_and_a_failed_probe_reopens():
    state = fail(int(THRESHOLD))
    opened = state.opened_at
    assert status(state, opened + COOLDOWN_S - 1) == "open"
    assert status(state, opened + COOLDOWN_S) == "half_open"
    again = after_failure(state, opened + COOLDOWN_S + 1)
    assert status(again, opened + COOLDOWN_S + 2) == "open"


def test_success_closes():
    assert status(after_success(fail(5)), 100) == "closed"


def test_failures_decay_so_sparse_failures_never_open():
    state = fail(int(THRESHOLD) * 4, gap=HALF_LIFE_S * 2)
    assert status(state, state.last_failure_at) == "closed"
    assert abs(decayed_failures(fail(2, gap=0), HALF_LIFE_S) - 1.0) < 1e-9


def test_catalog_keeps_breakers_across_instances(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    for _ in range(int(THRESHOLD)):
        breaker.record(Catalog(url=url), "gpu-7", "connection refused")
    assert breaker.open_nodes(Catalog(url=url)) == frozenset({"gpu-7"})
    breaker.record(Catalog(url=url), "gpu-7", None)
    assert breaker.open_nodes(Catalog(url=url)) == frozenset()
