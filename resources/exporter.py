"""The `Exporter` resource: a config's canonical game DB → one NPZ shard, on a node.

The export runs where the canonical DB already is (a durable node by default), so game
bytes never cross the network; only the finished shard travels. Two kinds of exporter:

- `command`: a training repo's own exporter, a template with `{db}`, `{out}` and
  `{config}` placeholders. The template is split into argv words first (POSIX shell
  rules), then the placeholders are filled inside each word, so a value can never
  become a second argument or shell syntax; the transport runs argv without a shell
  (local) or quotes every word (SSH). Shell features need an explicit shell and
  positional arguments: `sh -c 'cd /srv/train && exec python export.py "$1" "$2"' sh
  {db} {out}`. The output is then validated on the node with `npz_check.py`.
- None: the built-in reference exporter (`sync_assets/training/export_reference.py`),
  shipped to the node with the validator and run there.

This resource is only the configuration; the export itself (placement, running it,
validation) is the training domain's (`sync_assets/training/export.py`).
"""

from __future__ import annotations

import shlex
import string

import dagster as dg
from pydantic import Field, field_validator

PLACEHOLDERS = ("db", "out", "config")


def render_command(template: str, db: str, out: str, config: str) -> list[str]:
    """argv of the command template with its placeholders filled word by word."""
    values = {"db": db, "out": out, "config": config}
    return [word.format_map(values) for word in shlex.split(template)]


def _placeholder_problems(template: str) -> list[str]:
    try:
        words = shlex.split(template)
    except ValueError as exc:
        return [f"not a valid command line ({exc})"]
    problems = []
    used = set()
    for word in words:
        try:
            fields = list(string.Formatter().parse(word))
        except ValueError as exc:
            problems.append(f"{word!r}: {exc} (write a literal brace as {{{{ or }}}})")
            continue
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                problems.append(f"unknown placeholder {{{name}}} (known: db, out, config)")
            used.add(name)
    problems += [f"no {{{name}}} placeholder" for name in ("db", "out") if name not in used]
    return problems


class Exporter(dg.ConfigurableResource):
    """Which exporter runs for a config, and where (`sync_assets/training/export.py` runs it)."""

    command: str | None = Field(
        default=None,
        description="The training repo's exporter command with {db}, {out} and {config} "
        "placeholders (absolute paths on the node); None = the built-in reference exporter.",
    )
    node: str | None = Field(
        default=None,
        description="Node to export on (given a verified copy of the canonical DB first if "
        "it lacks one); None = a durable node already holding the current canonical DB.",
    )
    timeout_s: float = Field(default=6 * 3600, gt=0, description="Limit for one export.")

    @field_validator("command")
    @classmethod
    def _valid_template(cls, command: str | None) -> str | None:
        if command is not None and (problems := _placeholder_problems(command)):
            raise ValueError(f"exporter command {command!r}: " + "; ".join(problems))
        return command
