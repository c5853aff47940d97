"""fleetsync: a Dagster code location that keeps a self-play fleet's data where it must be.

`from sync_assets import report` — tell fleetsync about an artifact a training repo
produced (validated before anything is recorded); `from sync_assets import sync` —
request a sync of one kind for some or all nodes now. Resolved lazily: importing any
`sync_assets` module must not pull in Dagster-facing code (and its imports) first.
"""

from typing import Any

__all__ = ["report", "sync"]


def __getattr__(name: str) -> Any:
    if name == "report":
        from sync_assets.cli.report import report

        return report
    if name == "sync":
        from sync_assets.cli.sync import sync

        return sync
    raise AttributeError(f"module 'sync_assets' has no attribute {name!r}")
