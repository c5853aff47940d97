"""fleetsync: a Dagster code location that keeps a self-play fleet's data where it must be."""
