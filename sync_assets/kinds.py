"""The artifact kinds fleetsync keeps: one entry each, and every per-kind map derives from here.

A new kind is one entry below plus its domain folder. `name` is the catalog's `artifacts.kind`,
`policy_field` the `MinReplicas` field giving its durable copies, `alias` the catalog alias of a
config's current version ("": none). `replaced_in_place`: each version is written over the last
at the same path, so an older version with no copy left is superseded, not at risk.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_assets.fleet.inventory import Fleet


@dataclass(frozen=True)
class ArtifactKind:
    name: str
    policy_field: str
    alias: str = ""
    replaced_in_place: bool = False


GAMES_SNAPSHOT = ArtifactKind("games_snapshot", "games")
GAMES_CANONICAL = ArtifactKind("games_canonical", "games", "games_canonical", True)
NPZ = ArtifactKind("npz", "npz", alias="npz")
MODEL = ArtifactKind("model", "models", alias="model_promoted")
ELO_SNAPSHOT = ArtifactKind("elo_snapshot", "elo")
ELO_RATINGS = ArtifactKind("elo_ratings", "elo", "elo_ratings", True)

KINDS = (GAMES_SNAPSHOT, GAMES_CANONICAL, NPZ, MODEL, ELO_SNAPSHOT, ELO_RATINGS)

REPLACED_IN_PLACE = frozenset(k.name for k in KINDS if k.replaced_in_place)


def min_replicas_by_kind(fleet: Fleet) -> dict[str, int]:
    """Durable copies each artifact kind needs, from the fleet's policy."""
    return {k.name: getattr(fleet.policy.min_replicas, k.policy_field) for k in KINDS}
