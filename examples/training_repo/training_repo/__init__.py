"""EXAMPLE training repo: a second Dagster code location that produces `models/candidate`."""
