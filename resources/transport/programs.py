"""The one runner for fleetsync's own programs shipped to nodes.

A node has no fleetsync installed: a program travels as source. Its *bundle* is one
Python text: a prelude registers each helper module under its import name in
`sys.modules`, then the main module runs as `__main__` — the same files, byte for byte,
that the orchestrator imports and tests. Every program is launched one way,
`python3 -c BOOT ARGS` in the node's data root, with the bundle on stdin followed by an
optional JSON payload: BOOT executes the first len(bundle) bytes, the program reads the
rest, so a payload of any size reaches it without an argv limit or a temporary file.

Every shipped module is standard library (+ numpy for the NPZ programs), Python >= 3.8.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from resources.transport import sqlite_snapshot
from resources.transport.base import Node, TransferError, Transport

STDERR_TAIL = 2000  # characters of stderr kept in a failure's message


@dataclass(frozen=True)
class Program:
    """A program shipped to nodes: `main` run as `__main__`, with `helpers` importable
    under their import names. `name` is what failures call it."""

    name: str
    main: ModuleType
    helpers: tuple[ModuleType, ...] = ()

    @functools.cached_property
    def bundle(self) -> bytes:
        """The program as one source text (read once per process)."""
        lines = ["import sys, types"]
        for module, name in [*((m, m.__name__) for m in self.helpers), (self.main, "__main__")]:
            path = Path(module.__file__ or "")
            lines += [
                f"_m = types.ModuleType({name!r})",
                f"_m.__file__ = {path.name!r}",
                f"sys.modules[{name!r}] = _m",
                f"exec(compile({path.read_text()!r}, _m.__file__, 'exec'), _m.__dict__)",
            ]
        return ("\n".join(lines) + "\n").encode()


SQLITE_SNAPSHOT = Program("sqlite_snapshot.py", sqlite_snapshot)


class RemoteProgramFailed(TransferError):
    """A shipped program exited non-zero or printed no JSON object. `result` is the JSON
    object it printed (what it did before failing), if any."""

    def __init__(
        self, node: str, program: str, returncode: int, result: dict[str, Any] | None, why: str
    ) -> None:
        super().__init__(f"node {node}: {program} failed (exit {returncode}): {why}")
        self.node = node
        self.result = result
        self.why = why


def run_program(
    transport: Transport,
    node: Node,
    program: Program,
    args: list[str],
    payload: Any,
    timeout: float,
) -> dict[str, Any]:
    """Run `program` with `args` (and `payload`, unless None, as JSON on stdin) on the
    node; the JSON object it printed. RemoteProgramFailed on a non-zero exit or output
    that is not one (`Transports.run_program` is the way in for the domains)."""
    source = program.bundle
    boot = f"import sys;exec(compile(sys.stdin.buffer.read({len(source)}),'fleetsync','exec'))"
    stdin = source + (json.dumps(payload).encode() if payload is not None else b"")
    # This process's own interpreter for local nodes (same numpy), the node's `python3` over SSH.
    python = sys.executable if node.transport == "local" else "python3"
    done = transport.exec(node, [python, "-c", boot, *args], stdin, timeout)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        result = None
    if done.returncode != 0 or result is None:
        stderr = done.stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
        why = str((result or {}).get("error") or stderr or "no output")
        what = " ".join([program.name, *args[:2]])
        raise RemoteProgramFailed(node.name, what, done.returncode, result, why)
    return result
