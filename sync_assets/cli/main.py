"""The `fleetsync` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import pandas as pd

from sync_assets.cli.status import FleetStatus


def _load_status() -> tuple[str, FleetStatus]:
    from resources.catalog import Catalog
    from sync_assets.cli.status import fleet_status
    from sync_assets.fleet.inventory import load_inventory

    fleet = load_inventory(os.environ.get("FLEETSYNC_FLEET", "fleet.yaml"))
    return fleet.fleet, fleet_status(Catalog(), fleet)


def _print_status(fleet_name: str, status: FleetStatus) -> None:
    def show(frame: pd.DataFrame) -> str:
        return frame.to_string(index=False) if not frame.empty else "  none yet"

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"== fleet {fleet_name}")
        print("\nGames per config (canonical):\n" + show(status.games))
        print("\nReplicas per kind:\n" + show(status.replicas))
        print("\nNodes:\n" + show(status.nodes))
        print("\nRecent failed runs (newest first):\n" + show(status.recent_failures))
        print("\nAudit and scrub (last per node):\n" + show(status.node_checks))
        print("\nRecent audit/scrub findings (newest first):\n" + show(status.recent_findings))
    print(
        f"\nData at risk (no durable copy): {status.bytes_without_durable_copy / 1e6:.1f} MB"
        f"\nBelow policy (fewer durable copies than asked): "
        f"{status.bytes_below_policy / 1e6:.1f} MB"
        f"\nAt risk (policy met only with copies on unreachable nodes): "
        f"{status.bytes_relying_on_unreachable / 1e6:.1f} MB"
    )


def cmd_check(args: argparse.Namespace) -> int:
    from sync_assets.fleet.inventory import check_inventory

    problems = check_inventory(args.file)
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.file}: ok")
    return 1 if problems else 0


def cmd_status(_args: argparse.Namespace) -> int:
    from sync_assets.fleet.inventory import InventoryError

    try:
        loaded = _load_status()
    except InventoryError as exc:  # as `fleetsync check` says it: one line per problem
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    _print_status(*loaded)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sync_assets.demo.pipeline import build_demo_fleet, demo_nodes, run_pipeline
    from sync_assets.demo.sshd_fleet import SshdFleet

    os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    root = Path(args.dir).resolve()
    with contextlib.ExitStack() as stack:
        sshd = None
        if args.ssh:
            names = [n.name for n in demo_nodes(args.nodes)]
            sshd = stack.enter_context(SshdFleet(root, names))
            print(f"started {len(names)} sshd nodes on 127.0.0.{sshd.first_octet}..")
        fleet_file = build_demo_fleet(root, args.nodes, args.games, sshd=sshd)
        os.environ["FLEETSYNC_FLEET"] = str(fleet_file)
        _, before = _load_status()
        run_pipeline(fleet_file)
        name, after = _load_status()
    _print_status(name, after)
    added = int(after.games["games"].sum()) - int(before.games["games"].sum())
    moved = after.bytes_moved - before.bytes_moved
    print(f"\nThis pass: {added} games added to canonical DBs, {moved / 1e6:.1f} MB moved")
    print(
        f"Fleet: {fleet_file}\nDagster instance: {os.environ['DAGSTER_HOME']} "
        "(`make dev` shows these runs in the UI)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a fleet inventory")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="replicas per kind and node, data at risk")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="build a demo fleet and run the pipeline once")
    demo.add_argument("--dir", default="demo")
    demo.add_argument("--nodes", type=int, default=6)
    demo.add_argument("--games", type=int, default=400, help="games per self-play node")
    demo.add_argument("--ssh", action="store_true", help="real sshd nodes on loopback")
    demo.set_defaults(func=cmd_demo)

    from sync_assets.cli.report import add_report_parser
    from sync_assets.cli.sync import add_sync_parser

    add_report_parser(sub)
    add_sync_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
