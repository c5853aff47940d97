"""Per-node circuit breaker: pure decisions over a state the catalog keeps across runs.

Failures decay (a node that failed twice an hour ago is not one failure away from
being cut off); at THRESHOLD the breaker opens; after COOLDOWN it half-opens, letting
one attempt through; a success closes it (LESSONS 11: breakers with decay, not
timeouts retuned back and forth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
