"""The promotion gate: which model becomes `canonical` for a config, and which file may
be a candidate at all. Pure, no I/O.

A candidate is promoted when a training repo reports an explicit decision, or
when its rating beats the promoted model's by `margin` Elo over at least
`min_games` games. Only an anchored rating (a chain of games to an anchor,
docs/RATINGS.md) counts: an unanchored one sits where the prior put it, on no
common scale, so it neither promotes a candidate nor defends the promoted model
against one. Promotion is an alias flip in the catalog (which sha256 is
promoted), never an overwrite of a file a half-finished copy could catch.
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.transport.paths import UnsafePathError, safe_relpath

MODELS_DIR = "models"
# Names fleetsync publishes under models/: never a candidate, whatever a report says.
PUBLISHED_PREFIXES = ("canonical_", "ringrift_best_")
DEFAULT_MARGIN = 20.0
DEFAULT_MIN_GAMES = 200


@dataclass(frozen=True)
class Standing:
    """A model's rating in its config (None: never rated); `anchored`: the rating has a
    chain of games to an anchor, so it is on the common scale."""

    rating: float | None
    uncertainty: float | None
    games: int
    anchored: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(
    candidate_sha: str,
    promoted_sha: str | None,
    candidate: Standing,
    promoted: Standing,
    *,
    explicit: bool = False,
    margin: float = DEFAULT_MARGIN,
    min_games: int = DEFAULT_MIN_GAMES,
) -> Decision:
    if candidate_sha == promoted_sha:
        return Decision(False, "candidate is already the promoted model")
    if explicit:
        return Decision(True, "explicit promotion reported by the training repo")
    if promoted_sha is None:
        return Decision(True, "no model promoted yet for this config")
    if candidate.rating is None or candidate.games < min_games:
        return Decision(False, f"candidate has {candidate.games} rated games, needs {min_games}")
    if not candidate.anchored:
        return Decision(
            False,
            "candidate's rating is unanchored (no chain of games to an anchor): the prior's "
            "guess on no common scale, not promoted on it",
        )
    if promoted.rating is None:
        return Decision(True, "the promoted model has no rating; the candidate has one")
    if not promoted.anchored:
        return Decision(True, "the promoted model's rating is unanchored; the candidate's is")
    lead = candidate.rating - promoted.rating
    if lead < margin:
        return Decision(False, f"candidate leads by {lead:+.1f} Elo, needs {margin:+.1f}")
    return Decision(True, f"candidate leads by {lead:+.1f} Elo over {candidate.games} games")


def candidate_path_problem(path: str) -> str | None:
    """Why `path` cannot name a reported candidate model, or None when it can. Pure.

    It must be a safe relative path under `models/` naming a file training wrote, never
    one fleetsync publishes (the promoted `canonical_*` model, the `ringrift_best_*`
    symlink). Checked after normalisation, so `models/./canonical_x.pth` is refused like
    `models/canonical_x.pth`; a `..` never passes (`models/sub/../canonical_x.pth`)."""
    try:
        rel = safe_relpath(path)
    except UnsafePathError as exc:
        return str(exc)
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] != MODELS_DIR:
        return f"{rel!r}: a candidate model is a file under {MODELS_DIR}/"
    if parts[-1].lower().startswith(PUBLISHED_PREFIXES):
        published = " and ".join(f"{prefix}*" for prefix in PUBLISHED_PREFIXES)
        return f"{rel!r}: {published} are fleetsync's promoted models, never a candidate"
    return None
