"""fleetsync: a Dagster code location that keeps a self-play fleet's data where it must be.

`report` tells fleetsync about an artifact a training repo produced (validated first).
"""

from sync_assets.report import report

__all__ = ["report"]
