"""Running fleetsync's own numpy/stdlib programs on a node, and moving files there.

A node has no fleetsync installed: a program is shipped as source on stdin and run with
`python3 - ARGS` in the node's data root (as `games/canonical.py` runs merge.py). A
program made of several modules (the reference exporter imports the NPZ validator) is
shipped as one *bundle*: a short prelude registers each library module under its real
dotted name in `sys.modules`, then runs the main module as `__main__` — the same files,
byte for byte, that the orchestrator imports and tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from resources.transport import Transports, python_for
from resources.transport.base import TransferError
from resources.transport.paths import safe_relpath
from sync_assets.fleet.inventory import Node

# Renames within the data root: atomic (same filesystem), creates the target directory.
_RENAME = (
    "import os, sys\n"
    "src, dst = sys.argv[1], sys.argv[2]\n"
    "os.makedirs(os.path.dirname(dst) or '.', exist_ok=True)\n"
    "os.replace(src, dst)\n"
)
_MAKE_DIRS = "import os, sys\nos.makedirs(sys.argv[1], exist_ok=True)\n"


class RemoteFailed(TransferError):
    """A shipped program failed on the node; the message names node, program and why."""


def bundle(main: ModuleType, *libraries: ModuleType) -> bytes:
    """One `python3 -` program: `libraries` importable by their dotted names, then `main`
    run as `__main__`. Every module must be standard-library/numpy only."""
    lines = ["import sys, types"]
    for module in libraries:
        source = Path(module.__file__ or "").read_text()
        lines += [
            f"_m = types.ModuleType({module.__name__!r})",
            f"_m.__file__ = {Path(module.__file__ or '').name!r}",
            f"sys.modules[{module.__name__!r}] = _m",
            f"exec(compile({source!r}, _m.__file__, 'exec'), _m.__dict__)",
        ]
    main_source = Path(main.__file__ or "").read_text()
    lines += [
        "_m = types.ModuleType('__main__')",
        f"_m.__file__ = {Path(main.__file__ or '').name!r}",
        "sys.modules['__main__'] = _m",
        f"exec(compile({main_source!r}, _m.__file__, 'exec'), _m.__dict__)",
    ]
    return ("\n".join(lines) + "\n").encode()


def run_program(
    node: Node,
    program: bytes,
    args: list[str],
    transports: Transports,
    what: str,
    timeout: float,
) -> tuple[int, dict[str, Any]]:
    """Run a shipped program printing one JSON object; (exit code, that object).

    Output that is not JSON (the interpreter itself failed: no numpy, a traceback) is
    a RemoteFailed naming the node and quoting stderr."""
    done = transports.for_node(node).exec(
        node, [python_for(node), "-", *args], stdin=program, timeout=timeout
    )
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        raise RemoteFailed(
            f"node {node.name}: {what} failed (exit {done.returncode}): {stderr or 'no output'}"
        )
    return done.returncode, result


def _run_snippet(
    node: Node, snippet: str, args: list[str], transports: Transports, what: str
) -> None:
    done = transports.for_node(node).exec(
        node, [python_for(node), "-c", snippet, *args], timeout=120
    )
    if done.returncode != 0:
        raise RemoteFailed(
            f"node {node.name}: {what} failed: "
            f"{done.stderr.decode(errors='replace').strip()[-500:]}"
        )


def rename_on_node(node: Node, src: str, dst: str, transports: Transports) -> None:
    """Atomically rename `src` to `dst` (both relative to the data root) on the node: a
    published or quarantined multi-GB file is never copied, only renamed."""
    rel_src, rel_dst = safe_relpath(src), safe_relpath(dst)
    _run_snippet(node, _RENAME, [rel_src, rel_dst], transports, f"rename {src} -> {dst}")


def make_dirs(node: Node, directory: str, transports: Transports) -> None:
    """Create `directory` (relative to the data root) on the node if it is missing."""
    rel = safe_relpath(directory)
    _run_snippet(node, _MAKE_DIRS, [rel], transports, f"mkdir {directory}")
