"""The load test's figures, as text and as ``docs/load-test.md`` (``VPSD_LOAD_REPORT=1``)."""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests import qemu_helpers as qh

DOC = Path(__file__).resolve().parents[2] / "docs" / "load-test.md"


@dataclass
class Figures:
    """What one run measured."""

    clients: int
    servers: int
    seconds: float
    elapsed: float
    statuses: Counter[tuple[str, int]]
    transport_errors: Counter[str]
    latencies: dict[str, list[float]]
    observations: int
    max_live: dict[int, int]
    rss_before: int
    rss_warm: int
    rss_peak: int
    rss_end: int
    operations: Counter[tuple[str, str]]
    accel: str
    generator_cpu: float
    """CPU seconds the load generator (the test's process) spent during the load."""
    service_cpu: float
    """CPU seconds the watched ``vpsd serve`` process spent during the load."""


def accel_of(data_dir: Path) -> str:
    """``kvm`` or ``tcg``: read from the command line of a VM under ``data_dir``."""
    for pid in qh.qemu_pids_under(data_dir):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(args).decode(errors="replace")
        for accel in ("kvm", "tcg"):
            if f"accel={accel}" in text or f"-accel {accel}" in text:
                return accel
    return "unknown"


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process has spent so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def machine() -> str:
    """nproc, CPU model and kernel of this machine."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}; load average {load}"


def render(f: Figures) -> str:
    """The figures as Markdown tables."""
    total = sum(f.statuses.values())
    lines = [
        f"- {f.clients} concurrent clients, {f.servers} servers (1 GiB disks), "
        f"{f.seconds:.0f} s of load ({f.elapsed:.1f} s wall), accelerator **{f.accel}**",
        f"- {total} requests ({total / max(f.elapsed, 1e-9):.0f}/s), "
        f"connection errors: {sum(f.transport_errors.values())}",
        f"- snapshot-count observations: {f.observations}; highest live count per server: "
        + ", ".join(f"{n}" for _, n in sorted(f.max_live.items())),
        f"- RSS of `vpsd serve` (MiB): before {f.rss_before / 1024:.0f}, after warm-up "
        f"{f.rss_warm / 1024:.0f}, peak {f.rss_peak / 1024:.0f}, end {f.rss_end / 1024:.0f}",
        f"- CPU during the load: the load generator {f.generator_cpu:.0f} s "
        f"({f.generator_cpu / max(f.elapsed, 1e-9):.0%} of a core), `vpsd serve` "
        f"{f.service_cpu:.0f} s ({f.service_cpu / max(f.elapsed, 1e-9):.0%})",
        "",
        "| kind | requests | statuses | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|",
    ]
    for kind in sorted(f.latencies):
        values = f.latencies[kind]
        statuses = ", ".join(
            f"{status}: {n}" for (k, status), n in sorted(f.statuses.items()) if k == kind
        )
        lines.append(
            f"| {kind} | {len(values)} | {statuses} | {percentile(values, 0.5) * 1000:.0f} "
            f"| {percentile(values, 0.99) * 1000:.0f} |"
        )
    lines += ["", "| operation | status | count |", "|---|---|---:|"]
    lines += [f"| {k} | {s} | {n} |" for (k, s), n in sorted(f.operations.items())]
    return "\n".join(lines)


FINDINGS = "## Findings"


def findings() -> str:
    """The doc's hand-written ``## Findings`` section, up to the next section: kept when a
    run rewrites the figures (empty when there is none)."""
    text = DOC.read_text() if DOC.exists() else ""
    start = text.find(f"\n{FINDINGS}\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start + 1 : end + 1 if end >= 0 else len(text)].rstrip() + "\n\n"


def write(f: Figures) -> None:
    """Replace ``docs/load-test.md`` with this run's figures, keeping its findings."""
    command = (
        f"VPSD_LOAD_CLIENTS={f.clients} VPSD_LOAD_SECONDS={f.seconds:.0f} "
        f"VPSD_LOAD_SERVERS={f.servers} VPSD_LOAD_REPORT=1 "
        ".venv/bin/pytest tests/load/test_load.py -s"
    )
    DOC.write_text(
        f"""# Load test

`tests/load/test_load.py` runs `vpsd serve` (SQLite, real QEMU VMs) and drives it over
loopback with concurrent clients, each an `httpx.AsyncClient` of its own with one connection,
each sending back-to-back random requests: list snapshots (all, or of one server), get a
snapshot, create, restore and delete snapshots. A poller checks every server's live snapshot
count four times a second and samples the service's RSS from `/proc/<pid>/status`. The test
then waits until everything settles and asserts: no 5xx and no failed connection, the
5-snapshot limit never exceeded, every 201/200/204 matched by exactly one operation that
ended, every snapshot completed, every server running again, and RSS at the end below twice
the RSS after warm-up.

Statuses other than 2xx are expected: 400 for a restore while the server is busy or a
create over the limit, 404 for a get, restore or delete of a snapshot another client
already deleted.

{findings()}## Last recorded run ({datetime.now(UTC):%Y-%m-%d})

Machine: {machine()}.

{render(f)}

The load generator's clients run as coroutines of one Python process on the same two cores
as the service and its VMs (the CPU line says how they shared them; restores also boot VMs),
so latencies include the generator's own queueing and the throughput is what this machine
gives both, not the service's ceiling; `bench/` is where speed is measured. This test asserts
correctness under load.

## Reproduce

```sh
{command}
```

`VPSD_LOAD_CLIENTS`, `VPSD_LOAD_SECONDS` and `VPSD_LOAD_SERVERS` default to 200, 60 and 3;
`VPSD_LOAD_REPORT=1` rewrites this file (CI never sets it). `VPSD_TEST_ACCEL=tcg` forces
TCG emulation.
"""
    )
