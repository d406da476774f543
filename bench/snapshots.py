"""Snapshot and restore latency through the API, beside full copies of the same disk.

For each size a server is created through ``vpsd serve`` (real QEMU driver), stopped, and
``size`` bytes of real data are written into its disk with qemu-io. Then, in the same run:
full copies of that disk (the baseline a copy-based snapshot pays), snapshot/restore of the
stopped server, and snapshot/restore of the running server, each repeated.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import libvirt, qemu
from bench.serve import POLL, Api, Serve, kill_qemus_under
from bench.util import (
    GIB,
    MIB,
    ResultTable,
    console,
    fmt_s,
    fmt_summary,
    free_bytes,
    human_size,
    summary,
    target,
)

CREATE_TARGET = 0.100
RESTORE_TARGET = 1.0
SPEEDUP_TARGET = 20.0
SCALING_TARGET = 3.0


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:.0f}x"


def needed_bytes(size: int) -> int:
    """Free space a size needs: its disk, one copy at a time, and 2 GiB of headroom."""
    return 2 * size + 2 * GIB


def _measure_size(
    api: Api, serve: Serve, size: int, reps: int, copy_reps: int, libvirt_reason: str | None
) -> dict[str, Any]:
    disk_gb = max(1, -(-(size + 256 * MIB) // GIB))
    server_id: int = api.call(
        "POST", "/servers/", 201, json={"name": f"bench-{size // MIB}m", "disk_gb": disk_gb}
    )["id"]
    api.wait(f"/servers/{server_id}/", "status", "running")
    api.server_to(server_id, "stop", "stopped")
    disk = serve.data_dir / "servers" / str(server_id) / "disk0.qcow2"
    console.print(f"  writing {human_size(size)} into {disk}")
    fill = qemu.write(disk, 0xAB, size)

    copies: dict[str, list[float]] = {"cp": [], "convert": []}
    copy_path = serve.data_dir / "copy.qcow2"
    for _ in range(copy_reps):
        for how in copies:
            copies[how].append(qemu.full_copy(disk, copy_path, how))
            copy_path.unlink()

    timings: dict[str, list[float]] = {}
    libvirt_result: dict[str, Any] | None = None
    for power in ("stopped", "running"):
        if power == "running":
            timings["start"] = [api.server_to(server_id, "start", "running")]
        ids = []
        for rep in range(reps):
            snapshot_id, took = api.snapshot(server_id, f"{power}-{rep}")
            timings.setdefault(f"create_{power}", []).append(took)
            ids.append(snapshot_id)
            timings.setdefault(f"restore_{power}", []).append(
                api.restore(snapshot_id, server_id, power)
            )
        for snapshot_id in ids:
            left = len(qemu.snapshot_tags(disk))
            started = time.perf_counter()
            api.call("DELETE", f"/snapshots/{snapshot_id}/", 204)
            deadline = time.monotonic() + 600
            while len(qemu.snapshot_tags(disk)) >= left and time.monotonic() < deadline:
                time.sleep(POLL)
            timings.setdefault(f"delete_{power}", []).append(time.perf_counter() - started)
    if libvirt_reason is None:
        api.server_to(server_id, "stop", "stopped")
        twin = serve.data_dir / "libvirt.qcow2"
        qemu.full_copy(disk, twin, "convert")
        console.print(f"  libvirt on a copy of the same disk ({twin})")
        libvirt_result = libvirt.measure(twin, reps)
        twin.unlink()
    api.call("DELETE", f"/servers/{server_id}/", 204)
    deadline = time.monotonic() + 120
    while disk.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "size": size,
        "fill_seconds": fill,
        "copy": {how: summary(samples) for how, samples in copies.items()},
        "libvirt": libvirt_result,
        **{key: summary(samples) for key, samples in timings.items()},
        "samples": {**timings, **{f"copy_{k}": v for k, v in copies.items()}},
    }


def run(sizes: list[int], reps: int, copy_reps: int, work_root: Path | None) -> dict[str, Any]:
    """Measure every size that fits on the disk; return the part's result."""
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-", dir=work_root or "/tmp"))
    serve = Serve(root, log_level="warning", monitor_interval="0.5")
    measured: list[dict[str, Any]] = []
    skipped: list[str] = []
    api: Api | None = None
    libvirt_reason = libvirt.unavailable()
    if libvirt_reason:
        console.print(f"[yellow]libvirt not measured: {libvirt_reason}[/yellow]")
    try:
        serve.start()
        api = Api(serve.base_url, serve.create_token("bench"))
        for size in sizes:
            free = free_bytes(root)
            if free < needed_bytes(size):
                skipped.append(
                    f"{human_size(size)} skipped: needs {needed_bytes(size) / GIB:.1f} GiB free, "
                    f"{free / GIB:.1f} GiB available on {root}"
                )
                console.print(f"[yellow]{skipped[-1]}[/yellow]")
                continue
            console.print(f"[bold]snapshots[/bold]: {human_size(size)}")
            measured.append(_measure_size(api, serve, size, reps, copy_reps, libvirt_reason))
    finally:
        if api is not None:
            api.close()
        serve.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "sizes": measured,
        "skipped": skipped,
        "reps": reps,
        "copy_reps": copy_reps,
        "libvirt": libvirt_reason or libvirt.version(),
    }


def tables(data: dict[str, Any]) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and its targets, from ``run``'s result."""
    latency = ResultTable(
        "Snapshot and restore through the API vs a full copy of the same disk (median (min-max))",
        [
            "written data",
            "operation",
            "vpsd",
            "full copy: cp",
            "full copy: qemu-img convert",
            "speed-up vs cp",
            "speed-up vs convert",
        ],
    )
    for entry in data["sizes"]:
        cp, convert = entry["copy"]["cp"], entry["copy"]["convert"]
        for key, label in (
            ("create_stopped", "snapshot, stopped"),
            ("create_running", "snapshot, running"),
            ("restore_stopped", "restore, stopped"),
            ("restore_running", "restore, running (incl. VM stop+start)"),
        ):
            stats = entry[key]
            latency.rows.append(
                [
                    human_size(entry["size"]),
                    label,
                    fmt_summary(stats),
                    fmt_summary(cp),
                    fmt_summary(convert),
                    _ratio(cp["median"] / stats["median"]),
                    _ratio(convert["median"] / stats["median"]),
                ]
            )
        latency.rows.append(
            [
                human_size(entry["size"]),
                "VM start alone (stopped → running)",
                fmt_s(entry["start"]["median"]),
                "",
                "",
                "",
                "",
            ]
        )
    latency.notes += [
        f"vpsd: {data['reps']} repetitions per operation and size; full copies: "
        f"{data['copy_reps']} each. Snapshot = POST /snapshots/ until GET shows completed; "
        "restore = POST restore until the server is back to stopped/running. "
        f"Polling every {POLL * 1000:.0f} ms, so figures carry up to that much extra.",
        "Full copies include fsync of the copy (qemu-img also flushes its snapshot); the "
        "source disk is in the page cache (just written), which favours the copies.",
        *data["skipped"],
    ]
    return [latency, _libvirt_table(data)], _targets(data)


def _libvirt_table(data: dict[str, Any]) -> ResultTable:
    table = ResultTable(
        "Beside libvirt on the same disk: a stopped server / a shut-off domain (median (min-max))",
        ["written data", "operation", "vpsd (API)", "libvirt (virsh)", "vpsd / libvirt"],
    )
    for entry in data["sizes"]:
        theirs = entry.get("libvirt")
        for ours_key, their_key, label in (
            ("create_stopped", "create", "create a snapshot"),
            ("restore_stopped", "revert", "restore / revert"),
            ("delete_stopped", "delete", "delete a snapshot"),
        ):
            ours = entry.get(ours_key)
            if ours is None:
                continue
            other = theirs[their_key] if theirs else None
            table.rows.append(
                [
                    human_size(entry["size"]),
                    label,
                    fmt_summary(ours),
                    fmt_summary(other) if other else "not measured",
                    f"{ours['median'] / other['median']:.2f}" if other else "",
                ]
            )
    table.notes += [
        f"libvirt: {data.get('libvirt', 'not measured')}; a persistent domain defined on a "
        "qemu-img copy of the same disk, each operation one virsh call (its process start "
        "included, as vpsd's figures include HTTP and the runner).",
        "vpsd's delete is DELETE → the tag gone from the disk (the API answers 204 at once and "
        "deletes in the background), polled with qemu-img snapshot -l.",
    ]
    return table


def _targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    by_size = {entry["size"]: entry for entry in data["sizes"]}
    found: list[dict[str, Any]] = []
    if not by_size:
        return [target("any size measured", "none fitted", None)]
    worst_create = max(
        max(e["create_stopped"]["max"], e["create_running"]["max"]) for e in by_size.values()
    )
    worst_create_median = max(
        max(e["create_stopped"]["median"], e["create_running"]["median"]) for e in by_size.values()
    )
    found.append(
        target(
            "snapshot ≤ 100 ms at every size (median)",
            f"worst median {fmt_s(worst_create_median)}, worst single {fmt_s(worst_create)}",
            worst_create_median <= CREATE_TARGET,
        )
    )
    pairs = (
        ("create_stopped", "create"),
        ("restore_stopped", "revert"),
        ("delete_stopped", "delete"),
    )
    compared = [
        (e[ours]["median"], e["libvirt"][theirs]["median"])
        for e in by_size.values()
        if e.get("libvirt")
        for ours, theirs in pairs
        if ours in e
    ]
    if compared:
        worst_ratio = max(ours / theirs for ours, theirs in compared)
        found.append(
            target(
                "no slower than libvirt on the same disk (create, revert, delete; medians)",
                f"worst vpsd/libvirt ratio {worst_ratio:.2f}",
                worst_ratio <= 1.0,
            )
        )
    else:
        found.append(target("no slower than libvirt on the same disk", "not measured", None))
    worst_restore = max(e["restore_stopped"]["median"] for e in by_size.values())
    found.append(
        target(
            "restore of a stopped server ≤ 1 s (median)",
            f"worst median {fmt_s(worst_restore)}",
            worst_restore <= RESTORE_TARGET,
        )
    )
    over = max(e["restore_running"]["median"] - e["start"]["median"] for e in by_size.values())
    found.append(
        target(
            "restore of a running server ≤ 1 s + VM start (median)",
            f"worst restore minus VM start: {fmt_s(over)}",
            over <= RESTORE_TARGET,
        )
    )
    two = by_size.get(2 * GIB)
    if two:
        ratio = min(
            two["copy"][how]["median"] / two[key]["median"]
            for how in ("cp", "convert")
            for key in ("create_stopped", "create_running", "restore_stopped")
        )
        found.append(
            target(
                "≥ 20x faster than a full copy at 2 GiB",
                f"worst {ratio:.0f}x",
                ratio >= SPEEDUP_TARGET,
            )
        )
    else:
        found.append(target("≥ 20x faster than a full copy at 2 GiB", "2 GiB not measured", None))
    small, big = by_size.get(256 * MIB), by_size.get(8 * GIB)
    if small and big:
        ratio = max(
            big[key]["median"] / small[key]["median"]
            for key in ("create_stopped", "create_running", "restore_stopped")
        )
        found.append(
            target("8 GiB ≤ 3x the 256 MiB time", f"worst {ratio:.1f}x", ratio <= SCALING_TARGET)
        )
    else:
        found.append(target("8 GiB ≤ 3x the 256 MiB time", "256 MiB or 8 GiB not measured", None))
    return found
