"""Shared pieces of the benchmarks: timing statistics, the machine, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MIB = 1024 * 1024
GIB = 1024 * MIB
console = Console()


def parse_size(text: str) -> int:
    """``256M``/``2G``/``8M`` (binary units) to bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": MIB, "G": GIB}
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human_size(size: int) -> str:
    """Bytes as ``256 MiB`` / ``2 GiB``."""
    if size >= GIB and size % GIB == 0:
        return f"{size // GIB} GiB"
    return f"{size / MIB:g} MiB"


def summary(samples: list[float]) -> dict[str, float]:
    """Median, min and max of timing samples (seconds), with how many there were."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def fmt_s(seconds: float) -> str:
    """A duration with a unit that keeps 2-3 significant digits."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_summary(stats: dict[str, float]) -> str:
    """``median (min-max)`` of a ``summary``."""
    return f"{fmt_s(stats['median'])} ({fmt_s(stats['min'])}-{fmt_s(stats['max'])})"


def timed(args: list[str], timeout: float = 1800) -> float:
    """Run a command, fail on a non-zero exit, return its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr + result.stdout).strip()}")
    return elapsed


def free_bytes(path: Path) -> int:
    """Free space on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


def _first_line(args: list[str]) -> str:
    try:
        return (
            subprocess.run(args, capture_output=True, text=True, timeout=10)
            .stdout.split("\n")[0]
            .strip()
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def accel() -> str:
    """What VMs run on, as vpsd chooses it (KVM only on a CPU with vmx/svm), or forced."""
    from vpsd.hypervisor.qemu.process import resolve_accel

    forced = os.environ.get("VPSD_TEST_ACCEL") or os.environ.get("VPSD_ACCEL", "auto")
    chosen = resolve_accel(forced).upper()
    return f"{chosen} (forced)" if forced != "auto" else chosen


def other_qemus() -> int:
    """QEMU processes on the machine (other engineers' tests load the same cores)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                exe = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            count += exe.endswith(b"qemu-system-x86_64")
    return count


def machine(work_dir: Path) -> dict[str, Any]:
    """The machine a result was measured on, and how busy it was at that moment."""
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "accel": accel(),
        "filesystem": _first_line(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(work_dir)]
        ),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "other_qemus": other_qemus(),
    }


@dataclass
class ResultTable:
    """One table of a part: printed with Rich and written as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in ``bench/results``."""
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
        }


def target(name: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
    """A target line: ``met`` None when it could not be measured (e.g. size skipped)."""
    return {"target": name, "measured": measured, "met": met, "note": note}


def print_table(table: dict[str, Any]) -> None:
    """Show a result table on the terminal."""
    rich_table = Table(title=table["title"], title_justify="left")
    for column in table["columns"]:
        rich_table.add_column(column)
    for row in table["rows"]:
        rich_table.add_row(*row)
    console.print(rich_table)
    for note in table["notes"]:
        console.print(f"  [dim]{note}[/dim]")


def print_targets(targets: list[dict[str, Any]]) -> None:
    """Show the targets of a part, met or not."""
    rich_table = Table(title="Targets", title_justify="left")
    for column in ("target", "measured", "met"):
        rich_table.add_column(column)
    for item in targets:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[item["met"]]
        rich_table.add_row(item["target"], item["measured"], met)
    console.print(rich_table)


def save_result(results_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write one part's result as ``<results_dir>/<name>.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
