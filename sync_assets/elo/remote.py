"""What Elo runs on nodes: its two shipped programs, and the lease their writers queue on.

The bytes of an Elo DB never pass through the orchestrator: `matches.py` and
`ratings_db.py` go to the node (`Transports.run_program`) and run where the files are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from resources.catalog import Catalog, LeaseHeld
from resources.transport.programs import Program
from sync_assets.elo import matches, ratings_db
from sync_assets.fleet import configs, node_program

MATCHES_PY = Program("matches.py", matches, (configs, node_program))
RATINGS_DB_PY = Program("ratings_db.py", ratings_db, (node_program,))


@contextmanager
def waiting_lease(catalog: Catalog, name: str, wait_s: float = 900) -> Iterator[str]:
    """The catalog lease `name`, waiting up to `wait_s` for its holder to finish.

    Every config's ratings live in one file and every node's matches in one union DB,
    so concurrent runs queue here instead of failing (one writer per artifact)."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    with ExitStack() as stack:
        while True:
            try:
                holder = stack.enter_context(catalog.lease(name))
                break
            except LeaseHeld:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        yield holder
