"""Who played: one model = one SHA-256, whatever its names; which matches a config may rate.

Pure functions, no I/O. Participant ids look like `{model}:{ai_type}:{settings}`
(`ringrift_best_hex8_2p:gumbel_mcts:b800`, `none:random:d1`). The same weights have
been rated under two names before (LESSONS 10), so the model part is replaced by the
weights' SHA-256 wherever it is known: `{sha256}:{ai_type}:{settings}`. The search
settings stay part of the id — the same net at 800 and at 200 playouts is two players.

Where a hash comes from, most trustworthy first: the match row itself (its
`model_refs`, taken from the node's Elo DB when it recorded hashes), then the
{model name or path → sha256} map the caller builds (the catalog's model artifacts).
A name that has meant different weights over time would pin old results on new
weights. The caller's map keeps only names that meant one sha so far, but that is
not enough for the file names DATA.md reuses by design (`candidate_{config}.pth`
for every training output, `canonical_{config}.pth` and its `ringrift_best_{config}`
link for every promotion): the next version is played before it is registered. So
those are never resolved by name (`is_reused_name`): their matches are credited to
a sha only when one was recorded with the match; otherwise the name stays a name.
A versioned name (`models/hex8_2p_v17.pth`) still resolves if it always meant one sha.

A match is rated for one config only if every participant belongs to it: a model
from another config (a `*_4p` model in a 2-player match) or a player count that
is not the config's marks a cross-config match, which is rejected and counted.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from sync_assets.fleet.configs import ConfigKeyError, normalize_config, split_config

NO_MODEL = "none"  # baselines (random, heuristic) carry no weights
# DATA.md's file names that hold one version after another (matches.py has the same rule).
REUSED_NAME_PREFIXES = ("candidate_", "canonical_", "ringrift_best_")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONFIG_IN_NAME = re.compile(
    r"(?<![a-z0-9])(hex8|square8|sq8|square19|sq19|hexagonal|hex)_([234])p?(?![a-z0-9])"
)
CROSS_CONFIG_REASONS = ("model_of_other_config", "player_count_mismatch")
REJECT_REASONS = (*CROSS_CONFIG_REASONS, "one_participant")


def name_forms(model: str) -> list[str]:
    """The ways a model may be listed in a name map: as given, file name, file stem."""
    base = posixpath.basename(model)
    stem = base[: -len(".pth")] if base.endswith(".pth") else base
    return list(dict.fromkeys([model, base, stem]))


def is_reused_name(name: str) -> bool:
    """A model name or path whose file holds different weights over time (`candidate_*`,
    `canonical_*`, `ringrift_best_*`): it never identifies weights."""
    return posixpath.basename(name).lower().startswith(REUSED_NAME_PREFIXES)


def expand_names(model_shas: Mapping[str, str]) -> dict[str, str]:
    """Every form of every name in a {model name or path → sha256} map (see `name_forms`);
    a form that two different hashes claim is dropped, not guessed."""
    claims: dict[str, set[str]] = {}
    for name, sha in model_shas.items():
        for form in name_forms(name):
            claims.setdefault(form, set()).add(sha.lower())
    return {form: next(iter(shas)) for form, shas in claims.items() if len(shas) == 1}


def model_sha(pid: str, names: Mapping[str, str], ref: str | None = None) -> str | None:
    """The SHA-256 of a participant's weights, if known: `ref` (a hash, or a model path
    to look up), else its model part looked up in `names` (an `expand_names` map);
    None for baselines and for reused names without a recorded hash."""
    model = pid.split(":", 1)[0]
    if model == NO_MODEL:
        return None
    if ref is not None and _HEX64.match(ref):
        return ref
    for name in [*(name_forms(ref) if ref else []), *name_forms(model)]:
        if name in names and not is_reused_name(name):
            return names[name]
    return None


def _with_sha(pid: str, sha: str | None) -> str:
    if sha is None:
        return pid
    _, sep, rest = pid.partition(":")
    return f"{sha}{sep}{rest}"


def canonical_participant(pid: str, model_shas: Mapping[str, str], ref: str | None = None) -> str:
    """`{model}:{ai_type}:{settings}` → `{sha256}:{ai_type}:{settings}` when the weights
    are known from `ref` or the {model name or path → sha256} map (a model is found by
    its name, file name or file stem), else the id unchanged."""
    return _with_sha(pid, model_sha(pid, expand_names(model_shas), ref))


def config_in_name(name: str) -> str | None:
    """The config a model name states (`ringrift_best_sq8_4p` → `square8_4p`), if any."""
    m = _CONFIG_IN_NAME.search(posixpath.basename(name).lower())
    if m is None:
        return None
    try:
        return normalize_config(f"{m.group(1)}_{m.group(2)}p")
    except ConfigKeyError:
        return None


def participant_config(
    pid: str, sha: str | None, model_configs: Mapping[str, str], ref: str | None = None
) -> str | None:
    """The config a participant's model belongs to: the catalog's word for its weights,
    else what its model name (or path) says; None when unknown (baselines included)."""
    if sha is not None and sha in model_configs:
        return model_configs[sha]
    model = pid.split(":", 1)[0]
    if model == NO_MODEL:
        return None
    return config_in_name(model) or (config_in_name(ref) if ref else None)


@dataclass(frozen=True)
class Identity:
    """What the orchestrator knows about weights: {model name or path → sha256} (only
    names that always meant the same weights) and {sha256 → config}."""

    model_shas: Mapping[str, str] = field(default_factory=dict)
    model_configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The matches one config's fit uses, and what was left out and why."""

    matches: pd.DataFrame  # match_id, participants (canonical ids), winner (canonical or None)
    rejected: dict[str, int]
    participant_configs: dict[str, str | None]  # canonical id → its model's config

    @property
    def cross_config(self) -> int:
        return sum(self.rejected[r] for r in CROSS_CONFIG_REASONS)


def select_matches(rows: Iterable[Sequence[object]], config: str, identity: Identity) -> Selection:
    """Rows [match_id, participants, winner, model_refs] of one config (as `matches.py
    dump` returns them) → canonical participants, cross-config matches rejected."""
    config = normalize_config(config)
    players = split_config(config)[1]
    names = expand_names(identity.model_shas)
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    configs: dict[str, str | None] = {}
    kept: list[tuple[object, list[str], str | None]] = []
    for match_id, participants, winner, refs in rows:
        assert isinstance(participants, list) and isinstance(refs, dict)
        if len(participants) != players:
            rejected["player_count_mismatch"] += 1
            continue
        canon: dict[str, str] = {}
        other = False
        for pid in participants:
            ref = refs.get(pid)
            sha = model_sha(pid, names, ref)
            cid = _with_sha(pid, sha)
            canon[pid] = cid
            own = participant_config(pid, sha, identity.model_configs, ref)
            configs.setdefault(cid, own)
            other = other or (own is not None and own != config)
        if other:
            rejected["model_of_other_config"] += 1
            continue
        ids = list(dict.fromkeys(canon[p] for p in participants))
        if len(ids) < 2:
            rejected["one_participant"] += 1
            continue
        kept.append((match_id, ids, canon[str(winner)] if winner is not None else None))
    frame = pd.DataFrame(kept, columns=["match_id", "participants", "winner"])
    used = set(frame["participants"].explode()) if not frame.empty else set()
    return Selection(frame, rejected, {c: configs[c] for c in sorted(used)})
