"""The artifact kinds fleetsync keeps: one entry each, and every per-kind map derives from here.

A new kind is one entry below plus its domain folder. `name` is the catalog's
`artifacts.kind`; `policy_field` the `MinReplicas` field giving its durable copies;
`alias` the catalog alias naming a config's current version ("": it has none);
`replaced_in_place` says each new version is written over the last one at the same
path, so an older version with no copy left is superseded, not at risk.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from sync_assets.fleet.inventory import Fleet


@dataclass(frozen=True)
class ArtifactKind:
    name: str
    policy_field: str
    asset_path: str  # the asset that writes artifacts of this kind, as "a/b"
    alias: str = ""  # "": none
    replaced_in_place: bool = False

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey(self.asset_path.split("/"))


GAMES_SNAPSHOT = ArtifactKind("games_snapshot", "games", "games/selfplay")
GAMES_CANONICAL = ArtifactKind(
    "games_canonical", "games", "games/canonical", "games_canonical", True
)
NPZ = ArtifactKind("npz", "npz", "training/npz", alias="npz")
MODEL = ArtifactKind("model", "models", "models/promoted", alias="model_promoted")
ELO_SNAPSHOT = ArtifactKind("elo_snapshot", "elo", "elo/matches")
ELO_RATINGS = ArtifactKind("elo_ratings", "elo", "elo/ratings", "elo_ratings", True)

KINDS: tuple[ArtifactKind, ...] = (
    GAMES_SNAPSHOT,
    GAMES_CANONICAL,
    NPZ,
    MODEL,
    ELO_SNAPSHOT,
    ELO_RATINGS,
)

REPLACED_IN_PLACE = frozenset(k.name for k in KINDS if k.replaced_in_place)


def min_replicas_by_kind(fleet: Fleet) -> dict[str, int]:
    """Durable copies each artifact kind needs, from the fleet's policy."""
    return {k.name: getattr(fleet.policy.min_replicas, k.policy_field) for k in KINDS}
