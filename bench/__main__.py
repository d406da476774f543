"""``python -m bench [snapshots|guest|api|guests|backups|incremental|all] [--quick]``.

Each part prints its tables, writes ``<results-dir>/<part>.json`` and then
``docs/benchmarks.md`` is regenerated from every part's latest result (``--doc`` elsewhere,
``--no-doc`` to leave it alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import api, backups, guest, guests, incremental, report, snapshots
from bench.util import (
    GIB,
    ResultTable,
    console,
    machine,
    parse_size,
    print_table,
    print_targets,
    save_result,
)

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("snapshots", "guest", "api", "guests", "backups", "incremental")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=(*PARTS, "all", "report"),
        help="which part to run (report: only rewrite the doc)",
    )
    parser.add_argument(
        "--sizes", default="256M,2G,8G", help="written data per server (snapshots, deletion)"
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions of API snapshot/restore")
    parser.add_argument(
        "--copy-reps", type=int, default=3, help="repetitions of full copies (and of backups)"
    )
    parser.add_argument("--throughput-size", default="1G", help="data per write pass (guest)")
    parser.add_argument("--servers", type=int, default=10_000, help="seeded servers (api)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per step")
    parser.add_argument("--rates", default="300", help="fixed rates in req/s (api)")
    parser.add_argument(
        "--api-backends", default="sqlite,postgresql", help="databases the api part loads"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="api: A/B rounds per read (--duration split)"
    )
    parser.add_argument(
        "--backup-disk-gb", type=int, default=2, help="disk of the backed-up server (backups)"
    )
    parser.add_argument(
        "--backup-data", default="", help="random data in it (backups; default: all of it)"
    )
    parser.add_argument(
        "--clone-disk-gb", type=int, default=8, help="disk of servers made from a snapshot"
    )
    parser.add_argument("--clone-data", default="256M", help="random data in their source")
    parser.add_argument(
        "--incremental-disk-gb", type=int, default=8, help="disk of the server (incremental)"
    )
    parser.add_argument("--incremental-data", default="2G", help="random data in it (incremental)")
    parser.add_argument(
        "--chain", type=int, default=30, help="backups in the restored chain (incremental)"
    )
    parser.add_argument(
        "--no-image",
        action="store_true",
        help="backups: no servers from the debian-12 image even when it is built",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny run for the smoke test: 8 MiB, 50 servers, 2 s of load",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc")
    parser.add_argument(
        "--label", default="", help="save as <part>-<label>.json (e.g. 'before' for a baseline)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where disks and data dirs go (default /tmp; must be short)",
    )
    return parser


def _run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "snapshots": lambda: snapshots.run(sizes, args.reps, args.copy_reps, args.work_dir),
        "guest": lambda: guest.run(parse_size(args.throughput_size), sizes, args.work_dir),
        "api": lambda: api.run(
            args.servers,
            args.duration,
            [float(r) for r in args.rates.split(",")],
            args.work_dir,
            args.api_backends.split(","),
            args.rounds,
        ),
        "guests": lambda: guests.run(args.reps, args.work_dir),
        "backups": lambda: backups.run(
            args.backup_disk_gb,
            parse_size(args.backup_data) if args.backup_data else args.backup_disk_gb * GIB,
            args.clone_disk_gb,
            parse_size(args.clone_data),
            args.copy_reps,
            not args.no_image,
            args.work_dir,
        ),
        "incremental": lambda: incremental.run(
            args.incremental_disk_gb,
            parse_size(args.incremental_data),
            args.copy_reps,
            args.chain,
            args.work_dir,
        ),
    }
    before = machine(args.work_dir or Path("/tmp"))
    data = runners[part]()
    return {
        "part": part,
        "label": args.label,
        "machine": before,
        "machine_after": machine(args.work_dir or Path("/tmp")),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "data": data,
    }


def render(
    result: dict[str, Any], results_dir: Path
) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """Tables and targets of a saved result (the api part compares with ``api-before``)."""
    data = result["data"]
    if result["part"] == "snapshots":
        return snapshots.tables(data)
    if result["part"] == "guest":
        return guest.tables(data)
    if result["part"] == "guests":
        return guests.tables(data)
    if result["part"] == "backups":
        return backups.tables(data)
    if result["part"] == "incremental":
        return incremental.tables(data)
    before_path = results_dir / "api-before.json"
    before = json.loads(before_path.read_text())["data"] if before_path.exists() else None
    return api.tables(data, None if result.get("label") == "before" else before)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, save their results and regenerate the doc."""
    args = _parser().parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.copy_reps = "8M", 2, 1
        args.throughput_size, args.servers, args.duration = "8M", 50, 2.0
        args.backup_disk_gb, args.backup_data, args.no_image = 1, "8M", True
        args.clone_disk_gb, args.clone_data = 1, "8M"
        args.incremental_disk_gb, args.incremental_data, args.chain = 1, "8M", 3
    parts = PARTS if args.part == "all" else () if args.part == "report" else (args.part,)
    for part in parts:
        result = _run_part(part, args)
        name = f"{part}-{args.label}" if args.label else part
        tables, targets = render(result, args.results_dir)
        result["tables"] = [t.as_dict() for t in tables]
        result["targets"] = targets
        path = save_result(args.results_dir, name, result)
        for table in result["tables"]:
            print_table(table)
        print_targets(targets)
        console.print(f"results: {path}")
    if not args.no_doc:
        report.write(args.results_dir, args.doc, render)
        console.print(f"doc: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
