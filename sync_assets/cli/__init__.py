"""The `fleetsync` command line: check, status, demo, report."""
