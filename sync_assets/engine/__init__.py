"""The replication engine: placement planner, copies, audits, live-DB snapshots, breakers."""
