"""Running the Elo node scripts (`matches.py`, `ratings_db.py`) where the files are.

The bytes of an Elo DB never pass through the orchestrator: a script goes to the node
over the transport and runs there. It travels on stdin behind a one-line bootstrap,
`python3 -c "exec(first N bytes of stdin)" ARGS`, so that what follows it on stdin —
a JSON payload of any size (ratings rows, a list of snapshots) — reaches the script
without an argv length limit or a temporary file on the node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from resources.catalog import Catalog, LeaseHeld
from resources.transport import Transports, python_for
from resources.transport.base import TransferError
from sync_assets.elo import matches, ratings_db
from sync_assets.fleet.inventory import Node

MATCHES_SCRIPT = Path(matches.__file__).read_bytes()
RATINGS_DB_SCRIPT = Path(ratings_db.__file__).read_bytes()


class NodeScriptFailed(TransferError):
    """A node script ran and refused (bad input file, failed check); the message says why."""


def run_script(
    node: Node,
    transports: Transports,
    script: bytes,
    args: list[str],
    payload: Any = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Run a node script with `args` and an optional JSON payload; its JSON result."""
    boot = f"import sys;exec(compile(sys.stdin.buffer.read({len(script)}),'fleetsync','exec'))"
    stdin = script + (json.dumps(payload).encode() if payload is not None else b"")
    argv = [python_for(node), "-c", boot, *args]
    done = transports.for_node(node).exec(node, argv, stdin=stdin, timeout=timeout)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if done.returncode != 0 or not isinstance(result, dict):
        why = result.get("error") if isinstance(result, dict) else None
        why = why or done.stderr.decode(errors="replace").strip()[-2000:] or "no output"
        raise NodeScriptFailed(f"node {node.name}: {' '.join(args[:2])}: {why}")
    return result


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
