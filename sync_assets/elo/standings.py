"""What the promotion gate asks of the ratings: a model's standing in its config.

Reads the published `fleet_ratings.db` (the current alias, on a durable node) and
looks each model up by its SHA-256 — participants are rated under their weights'
hash (`identity.py`) — through the pure `ratings.rating_of`.
"""

from __future__ import annotations

from resources.catalog import Catalog
from resources.transport import Transports
from sync_assets.elo.publish import read_ratings
from sync_assets.elo.ratings import rating_of
from sync_assets.fleet.inventory import Fleet
from sync_assets.models.promotion import Standing


def standings_for(
    config: str,
    candidate_sha: str,
    promoted_sha: str | None,
    fleet: Fleet,
    catalog: Catalog,
    transports: Transports,
) -> tuple[Standing, Standing]:
    """(candidate, promoted) standings in `config`, with whether each rating is
    anchored; a model never rated (or no promoted model) stands at (None, None, 0,
    False)."""
    published = read_ratings(config, fleet, catalog, transports)
    unrated = Standing(None, None, 0, False)
    mine = Standing(*rating_of(published, candidate_sha))
    theirs = Standing(*rating_of(published, promoted_sha)) if promoted_sha else unrated
    return mine, theirs
