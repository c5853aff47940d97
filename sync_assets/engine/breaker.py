"""Per-node circuit breaker: pure decisions over a state the catalog keeps across runs.

Failures decay (a node that failed twice an hour ago is not one failure away from
being cut off); at THRESHOLD the breaker opens; after COOLDOWN it half-opens, letting
one attempt through; a success closes it (LESSONS 11: breakers with decay, not
timeouts retuned back and forth).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from resources.catalog import Catalog

THRESHOLD = 3.0
COOLDOWN_S = 300.0
HALF_LIFE_S = 900.0

BreakerStatus = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerState:
    failures: float = 0.0
    last_failure_at: float | None = None
    opened_at: float | None = None


def decayed_failures(state: BreakerState, now: float) -> float:
    if state.last_failure_at is None:
        return 0.0
    return state.failures * 0.5 ** (max(0.0, now - state.last_failure_at) / HALF_LIFE_S)


def after_failure(state: BreakerState, now: float) -> BreakerState:
    failures = decayed_failures(state, now) + 1.0
    if state.opened_at is not None:  # a failed half-open probe: open again, fresh cooldown
        opened_at: float | None = now
    else:
        # Rounded: failures seconds apart have barely decayed and must count as whole.
        opened_at = now if round(failures, 1) >= THRESHOLD else None
    return BreakerState(failures=failures, last_failure_at=now, opened_at=opened_at)


def after_success(_state: BreakerState) -> BreakerState:
    return BreakerState()


def status(state: BreakerState, now: float) -> BreakerStatus:
    if state.opened_at is None:
        return "closed"
    return "half_open" if now - state.opened_at >= COOLDOWN_S else "open"


def _state_of(row: Any) -> BreakerState:
    """The state a catalog breaker row holds (None: no breaker yet, closed)."""
    return BreakerState(row.failures, row.last_failure_at, row.opened_at) if row else BreakerState()


def state(catalog: Catalog, node: str) -> BreakerState:
    return _state_of(catalog.breaker(node))


def record(catalog: Catalog, node: str, error: str | None) -> None:
    """Feed one attempt's outcome (error None: it worked) to the node's breaker."""

    def step(row: Any) -> dict[str, Any] | None:
        old = _state_of(row)
        new = after_failure(old, time.time()) if error else after_success(old)
        if row is not None and error is None and old == new:
            return None  # a success on a closed breaker: nothing to write
        return {**asdict(new), "last_error": error}

    catalog.update_breaker(node, step)


def open_nodes(catalog: Catalog) -> frozenset[str]:
    """Nodes whose breaker is open now (half-open ones may be tried)."""
    now = time.time()
    return frozenset(
        row.node for row in catalog.opened_breakers() if status(_state_of(row), now) == "open"
    )
