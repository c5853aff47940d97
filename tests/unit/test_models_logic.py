"""Promotion gate and sensor decisions: pure functions, no I/O."""

from __future__ import annotations

import pandas as pd
import pytest

from sensors.fan_out import Current, nodes_to_serve
from sensors.training_trigger import configs_due
from sync_assets.models.promotion import Standing, decide_promotion

UNRATED = Standing(None, None, 0, False)


def rated(rating: float, games: int) -> Standing:
    """An anchored rating (a chain of games to an anchor), ±10 Elo."""
    return Standing(rating, 10, games, True)


@pytest.mark.parametrize(
    ("cand", "prom", "kwargs", "promote", "reason"),
    [
        (rated(1600, 500), rated(1500, 900), {}, True, "leads by +100.0 Elo"),
        (rated(1510, 500), rated(1500, 900), {}, False, "needs +20.0"),
        (rated(1900, 50), rated(1500, 900), {}, False, "50 rated games, needs 200"),
        (UNRATED, rated(1500, 900), {}, False, "0 rated games"),
        (UNRATED, UNRATED, {"explicit": True}, True, "explicit promotion"),
        (rated(1530, 300), rated(1500, 900), {"margin": 50}, False, "needs +50.0"),
        (rated(1600, 300), UNRATED, {}, True, "promoted model has no rating"),
    ],
)
def test_gate(cand, prom, kwargs, promote, reason):
    decision = decide_promotion("c" * 64, "p" * 64, cand, prom, **kwargs)
    assert decision.promote is promote
    assert reason in decision.reason


def test_first_model_is_promoted_and_same_model_is_not():
    assert decide_promotion("c" * 64, None, UNRATED, UNRATED).promote
    assert not decide_promotion("c" * 64, "c" * 64, UNRATED, UNRATED, explicit=True).promote


def test_configs_due_counts_games_since_the_last_export():
    merges = pd.DataFrame(
        {
            "config": ["a", "a", "a", "b"],
            "merged_at": [1.0, 5.0, 9.0, 2.0],
            "added": [100, 30, 30, 49],
        }
    )
    aliases = pd.DataFrame({"kind": ["npz"], "config": ["a"], "sha256": ["x"], "updated_at": [4.0]})
    assert configs_due(merges, aliases, ["a", "b", "c"], 50) == {"a": 60}
    assert configs_due(merges, aliases, ["a", "b"], 49) == {"a": 60, "b": 49}


def test_model_pushes_fan_out_with_the_holders():
    sha = "s" * 64
    reps = pd.DataFrame(
        {
            "sha256": [sha],
            "node": ["store-1"],
            "path": ["models/canonical_a.pth"],
            "state": ["verified"],
        }
    )
    gpus = [f"gpu-{i}" for i in range(10)]
    model = [Current("a", sha, "models/canonical_a.pth")]
    first = nodes_to_serve(model, reps, gpus, per_source=2)
    assert list(first) == ["gpu-0", "gpu-1"]  # one holder × 2
    reps = pd.concat(
        [
            reps,
            pd.DataFrame(
                {
                    "sha256": [sha] * 2,
                    "node": ["gpu-0", "gpu-1"],
                    "path": ["models/canonical_a.pth"] * 2,
                    "state": ["verified"] * 2,
                }
            ),
        ]
    )
    second = nodes_to_serve(model, reps, gpus, per_source=2)
    assert list(second) == [f"gpu-{i}" for i in range(2, 8)]  # 3 holders × 2
