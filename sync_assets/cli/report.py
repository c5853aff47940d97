"""The report client: `report(...)` in Python, `fleetsync report` on the command line
(`cmd_report`), and `report(..., url=...)` which POSTs to a running webserver.

All three go through the validation of `sync_assets/reports.py` and a check of the file
on its node (size, SHA-256 computed *there*, the `.sha256` sidecar if present). Nothing
is recorded unless every check passed; a report never moves or deletes a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from resources.transport import Transports
from resources.transport.base import TransferError, Transport
from resources.transport.paths import UnsafePathError
from sync_assets.fleet.inventory import Fleet, InventoryError, Node, load_inventory
from sync_assets.reports import (
    SHA256_HEX,
    ReportPayload,
    ReportRequest,
    one_line,
    validate,
    validate_report,
)

_SIDECAR_MAX_BYTES = 4096
_DATA_VERSION_TAG = "dagster/data_version"
_DATA_VERSION_USER_TAG = "dagster/data_version_is_user_provided"


# ---- checking the file on its node --------------------------------------------------------


def verify_on_node(
    request: ReportRequest, fleet: Fleet, transports: Transports
) -> tuple[ReportPayload | None, list[str]]:
    """The payload as the node sees it: size from `stat`, SHA-256 computed on the node.

    Why always hash, even when the reporter gave a digest: a report is a claim, and a
    truncated upload or a stale sidecar must not reach promotion. The sidecar, when
    present, must agree too (a disagreement means the file or the sidecar is half-written).
    The file is stat'ed before and after hashing: a file still being written is refused."""
    node = fleet.node(request.node)
    transport = transports.for_node(node)
    path = request.path
    where = f"{path} on node {node.name}"
    try:
        before = transport.stat(node, path)
        if before is None:
            return None, [f"path: {where} does not exist"]
        digest = transport.sha256(node, path)
        after = transport.stat(node, path)
        if after is None or (after.size, after.mtime_ns) != (before.size, before.mtime_ns):
            return None, [
                f"path: {where} changed while it was being hashed; report it once complete"
            ]
        sidecar, sidecar_problem = _read_sidecar(transport, node, path)
    except (UnsafePathError, TransferError) as exc:
        return None, [one_line(str(exc))]
    problems: list[str] = []
    if sidecar_problem:
        problems.append(sidecar_problem)
    elif sidecar is not None and sidecar != digest:
        problems.append(
            f"sidecar: {path}.sha256 on node {node.name} says {sidecar}, but the file "
            f"hashes to {digest} (stale sidecar or incomplete file)"
        )
    if request.sha256 is not None and request.sha256 != digest:
        problems.append(f"sha256: the report says {request.sha256}, but {where} hashes to {digest}")
    if problems:
        return None, problems
    return validate_report({**request.model_dump(), "sha256": digest, "size": after.size}, fleet)


def _read_sidecar(transport: Transport, node: Node, path: str) -> tuple[str | None, str | None]:
    """(digest, None) from `X.sha256` (`<hex>  <name>`), (None, None) if absent, or a problem.

    Read with `head -c` through the transport's exec: the interface has no read, and a
    sidecar is a few bytes; its content is parsed, never echoed back beyond a prefix."""
    rel = f"{path}.sha256"
    found = transport.stat(node, rel)
    if found is None:
        return None, None
    bad = f"sidecar: {rel} on node {node.name} is not '<sha256>  <file name>'"
    if found.size > _SIDECAR_MAX_BYTES:
        return None, bad
    done = transport.exec(node, ["head", "-c", str(_SIDECAR_MAX_BYTES), "--", rel], timeout=60)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace")
        return None, one_line(f"sidecar: {rel} on node {node.name}: cannot read: {err}")
    words = done.stdout.decode("utf-8", "replace").split()
    if not words or not SHA256_HEX.match(words[0]):
        return None, bad
    return words[0].lower(), None


# ---- recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    """What `report` did: recorded (`ok`, `payload`, `recorded_to`) or every problem."""

    payload: ReportPayload | None
    problems: tuple[str, ...] = ()
    recorded_to: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.recorded_to is not None

    def raise_for_problems(self) -> ReportResult:
        """For callers that prefer an exception to checking `ok`."""
        if not self.ok:
            raise ReportRejected(list(self.problems))
        return self


class ReportRejected(ValueError):
    """A report that was not recorded; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def report(
    kind: str,
    config: str,
    node: str,
    path: str,
    sha256: str | None = None,
    promote: bool = False,
    *,
    url: str | None = None,
    instance: dg.DagsterInstance | None = None,
    fleet: Fleet | None = None,
    transports: Transports | None = None,
    timeout: float = 30,
) -> ReportResult:
    """Validate a report, check the file on its node, then record the materialization.

    `url`: POST to that running webserver's `/report_asset_materialization/` endpoint;
    otherwise record on `instance` (default: `DagsterInstance.get()`, i.e. $DAGSTER_HOME).
    `fleet` defaults to the inventory at $FLEETSYNC_FLEET. Never raises for a bad
    report: the result lists the problems and nothing is recorded."""
    if fleet is None:
        try:
            fleet = load_inventory(os.environ.get("FLEETSYNC_FLEET") or "fleet.yaml")
        except InventoryError as exc:
            return ReportResult(None, tuple(exc.problems))
    data = {"kind": kind, "config": config, "node": node, "path": path, "promote": promote}
    if sha256 is not None:
        data["sha256"] = sha256
    request, problems = validate(ReportRequest, data, fleet)
    if request is None:
        return ReportResult(None, tuple(problems))
    own = transports is None
    transports = transports or Transports()
    try:
        payload, problems = verify_on_node(request, fleet, transports)
    finally:
        if own:  # close the SSH connections opened for this report (outside a run)
            transports.teardown_after_execution(None)  # type: ignore[arg-type]  # unused
    if payload is None:
        return ReportResult(None, tuple(problems))
    if url is not None:
        problem = post_report(url, payload, timeout=timeout)
        return ReportResult(payload, (problem,) if problem else (), None if problem else url)
    return _record(payload, instance)


def materialization(payload: ReportPayload) -> dg.AssetMaterialization:
    """The event a report records: partition = config, data version = content SHA-256
    (reporting the same bytes twice does not make downstream assets look stale)."""
    return dg.AssetMaterialization(
        asset_key=payload.asset_key,
        partition=payload.config,
        metadata=payload.metadata(),
        description=payload.description(),
        tags={_DATA_VERSION_TAG: payload.sha256, _DATA_VERSION_USER_TAG: "true"},
    )


def _record(payload: ReportPayload, instance: dg.DagsterInstance | None) -> ReportResult:
    if instance is not None:
        instance.report_runless_asset_event(materialization(payload))
        return ReportResult(payload, (), "instance")
    try:
        with dg.DagsterInstance.get() as own:
            own.report_runless_asset_event(materialization(payload))
    except dg.DagsterError as exc:  # DAGSTER_HOME unset, or not a valid instance
        return ReportResult(payload, (one_line(f"dagster instance: {exc}"),))
    return ReportResult(payload, (), f"instance {os.environ.get('DAGSTER_HOME', '')}".strip())


def post_report(url: str, payload: ReportPayload, *, timeout: float = 30) -> str | None:
    """POST the report to a webserver; None on success, else one problem line.

    The endpoint (dagster-webserver 1.13) takes the asset key as the URL path
    (`/report_asset_materialization/models/candidate`) and a JSON body with
    `partition`, `metadata`, `description`, `data_version`; it wants the content type
    exactly `application/json` and answers `{}` (200), or `{"error": ...}` (400, 401)."""
    endpoint = (
        f"{url.rstrip('/')}/report_asset_materialization/"
        f"{urllib.parse.quote(payload.asset_key.to_user_string())}"
    )
    body = {
        "partition": payload.config,
        "metadata": payload.metadata(),
        "description": payload.description(),
        "data_version": payload.sha256,
    }
    req = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(detail).get("error", detail))
        return one_line(f"url: {endpoint} answered HTTP {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return one_line(f"url: cannot reach {url}: {reason}")
    return None


# ---- command line -------------------------------------------------------------------------


def add_report_parser(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> argparse.ArgumentParser:
    """`fleetsync report KIND --config C --node N --path P [--sha256 H] [--promote] [--url U]`.

    Every option is optional to argparse so that validation lists *all* problems in
    one pass, one line each, exit 1 (argparse would stop at the first, exit 2)."""
    parser = subparsers.add_parser(
        "report",
        help="report an artifact produced outside Dagster (candidate model, export)",
        description="Validate a report, check the file on its node (size, SHA-256), then "
        "record a materialization of models/candidate (candidate) or training/npz (npz).",
    )
    parser.add_argument("kind", help="candidate (models/candidate) or npz (training/npz)")
    parser.add_argument("--config", help="config key, e.g. hex8_2p (aliases are normalised)")
    parser.add_argument("--node", help="inventory node holding the file")
    parser.add_argument("--path", help="file path relative to the node's data root")
    parser.add_argument("--sha256", help="expected SHA-256 (default: computed on the node)")
    parser.add_argument("--promote", action="store_true", help="explicit promotion decision")
    parser.add_argument("--url", help="a running dagster-webserver (default: $DAGSTER_HOME)")
    parser.set_defaults(func=cmd_report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0 and one summary line, or exit 1 and one line per problem on stderr."""
    missing = [f"{name}: required (--{name})" for name in ("config", "node", "path")
               if getattr(args, name) is None]  # fmt: skip
    if args.url is None:
        os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve()))
    result = (
        report(args.kind, args.config, args.node, args.path, args.sha256, args.promote,
               url=args.url)
        if not missing
        else ReportResult(None, tuple(missing))
    )  # fmt: skip
    if not result.ok or result.payload is None:
        for line in result.problems:
            print(line, file=sys.stderr)
        return 1
    p = result.payload
    print(
        f"reported {p.asset_key.to_user_string()} [{p.config}]: {p.path} on node {p.node}, "
        f"{p.size} bytes, sha256 {p.sha256}{', promote' if p.promote else ''} "
        f"→ {result.recorded_to}"
    )
    return 0
