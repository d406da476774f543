"""The cost snapshots put on the guest: write throughput, copy-on-write, deleting snapshots.

Everything runs with qemu-io / qemu-img on a qcow2 made the way vpsd makes server disks
(the same block layer QEMU uses under a guest), so only the storage cost is measured.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import qemu
from bench.util import GIB, MIB, ResultTable, console, fmt_s, free_bytes, human_size, target


def _mib_s(size: int, seconds: float) -> float:
    return size / MIB / seconds


def throughput(root: Path, size: int) -> list[dict[str, Any]]:
    """Write ``size`` bytes again and again, with 0, 1 and 5 snapshots sharing the data."""
    disk = root / "throughput.qcow2"
    qemu.create_image(disk, size + GIB)
    rows = []

    def measure(label: str, snapshots: int, pattern: int) -> None:
        seconds = qemu.write(disk, pattern, size)
        rows.append(
            {
                "case": label,
                "snapshots": snapshots,
                "seconds": seconds,
                "mib_s": _mib_s(size, seconds),
            }
        )

    measure("first write into a fresh disk (allocation)", 0, 0x11)
    measure("rewrite, no snapshot", 0, 0x12)
    for count in range(1, 6):
        qemu.snapshot(disk, f"s{count}")
        measure(f"first write after snapshot {count} (copy-on-write)", count, 0x20 + count)
        if count in (1, 5):
            measure("rewrite once unshared", count, 0x30 + count)
    disk.unlink()
    return rows


def deletion(root: Path, size: int) -> dict[str, Any]:
    """Time ``qemu-img snapshot -d`` of a snapshot sharing all its data with the disk, and of
    one whose ``size`` bytes were all overwritten since (its clusters are freed)."""
    disk = root / "delete.qcow2"
    qemu.create_image(disk, size + GIB)
    qemu.write(disk, 0x41, size)
    qemu.snapshot(disk, "shared")
    shared = qemu.snapshot_delete(disk, "shared")
    qemu.snapshot(disk, "owned")
    qemu.write(disk, 0x42, size)
    owned = qemu.snapshot_delete(disk, "owned")
    create = qemu.snapshot(disk, "again")
    disk.unlink()
    return {"size": size, "delete_shared": shared, "delete_owned": owned, "create": create}


def run(throughput_size: int, sizes: list[int], work_root: Path | None) -> dict[str, Any]:
    """The part's raw result; sizes that do not fit on the disk are skipped with a note."""
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-guest-", dir=work_root or "/tmp"))
    skipped = []
    try:
        console.print(f"[bold]guest[/bold]: write throughput on {human_size(throughput_size)}")
        rows = throughput(root, throughput_size)
        deletes = []
        for size in sizes:
            if free_bytes(root) < size + 3 * GIB:
                skipped.append(f"{human_size(size)} skipped: not enough free space on {root}")
                continue
            console.print(f"[bold]guest[/bold]: deleting a snapshot of {human_size(size)}")
            deletes.append(deletion(root, size))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "throughput_size": throughput_size,
        "throughput": rows,
        "deletion": deletes,
        "skipped": skipped,
    }


def tables(data: dict[str, Any]) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and targets."""
    base = next(r for r in data["throughput"] if r["case"] == "rewrite, no snapshot")
    writes = ResultTable(
        f"Write throughput into the qcow2 ({human_size(data['throughput_size'])} per pass, "
        "qemu-io, 256 MiB requests, flush included)",
        ["case", "snapshots on the disk", "time", "MiB/s", "vs rewrite with no snapshot"],
    )
    for row in data["throughput"]:
        writes.rows.append(
            [
                row["case"],
                str(row["snapshots"]),
                fmt_s(row["seconds"]),
                f"{row['mib_s']:.0f}",
                f"{row['mib_s'] / base['mib_s']:.2f}x",
            ]
        )
    writes.notes.append(
        "A first write to a cluster shared with a snapshot allocates a new cluster and updates "
        "refcounts (copy-on-write); once rewritten the cluster is the disk's own again. The "
        "number of snapshots does not matter, only whether the cluster is shared."
    )
    deletes = ResultTable(
        "Deleting a snapshot (qemu-img snapshot -d, stopped disk) by data size",
        [
            "written data",
            "snapshot shares all data with the disk",
            "snapshot owns all its data",
            "taking a snapshot (for scale)",
        ],
    )
    for entry in data["deletion"]:
        deletes.rows.append(
            [
                human_size(entry["size"]),
                fmt_s(entry["delete_shared"]),
                fmt_s(entry["delete_owned"]),
                fmt_s(entry["create"]),
            ]
        )
    deletes.notes += [
        "Deleting walks the snapshot's L1/L2 tables and decrements refcounts: it grows with "
        "the allocated size, and freeing owned clusters adds discards.",
        *data["skipped"],
    ]
    cow = [r for r in data["throughput"] if "copy-on-write" in r["case"]]
    worst = min(r["mib_s"] for r in cow) / base["mib_s"]
    unshared = [r for r in data["throughput"] if r["case"] == "rewrite once unshared"]
    recovered = min(r["mib_s"] for r in unshared) / base["mib_s"]
    found = [
        target(
            "first writes after a snapshot (copy-on-write), relative to a plain rewrite",
            f"worst {worst:.2f}x",
            None,
            "informational",
        ),
        target(
            "rewrites once unshared, relative to a plain rewrite",
            f"worst {recovered:.2f}x",
            None,
            "informational; expected ~1x, run-to-run noise here is about ±30%",
        ),
    ]
    return [writes, deletes], found
