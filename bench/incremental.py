"""Incremental backups through the API (issue 21), beside restic alone in the same run.

One ``vpsd serve`` on the real QEMU driver, a blank server whose disk holds random data
(AES-CTR keystream, the worst case for deduplication) written with ``qemu-img convert -n``
while it is stopped; the backups are then taken while its VM runs (the QMP transaction, the
VM's own NBD server for the change record). In this order:

1. a baseline: ``restic backup --stdin`` of the whole raw disk (what vpsd streamed before
   chunk files) into a repository of its own;
2. ``reps`` times: ``restic backup --stdin`` of a file holding exactly the disk's data (in
   a new repository) and a full backup (one with no base: its predecessor deleted first),
   side by side; a backup of the unchanged disk; 1% of
   the disk rewritten with new random data in runs of 4 MiB at random 4 KiB-aligned
   offsets, then a backup; 1% rewritten as 64 KiB writes scattered at random (the worst
   case for 1 MiB chunks), then a backup;
3. a chain: backups 2..``chain`` each after 0.1% rewritten, then the server is stopped and
   the first and the last backups of the chain restored (``POST /backups/{id}/restore/``)
   and compared with copies of the disk taken at their points (``qemu-img compare``).

A server keeps at most 10 manual backups: each backup's predecessor is deleted (forgotten
and pruned) once the next is taken, untimed; in the chain, all but the first and the newest.
So the restores also show that pruning any backup leaves the others whole.

Data is written into the running VM through HMP ``qemu-io`` (``write -s FILE``), as guest
writes: they go through QEMU's block layer and its dirty bitmaps. What a backup read comes
from its record in the database (``disks[].read_bytes``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.backups import Restic, children_cpu, create_server, delete_server, scratch_dir, wait
from bench.backups import write_random as _write_random
from bench.serve import Api, Serve, kill_qemus_under
from bench.util import (
    GIB,
    MIB,
    ResultTable,
    console,
    fmt_s,
    fmt_summary,
    human_size,
    summary,
    target,
    timed,
)
from vpsd.hypervisor.qemu.qmp import QmpSession

POLL = 0.02
"""Seconds between polls of a backup (the unchanged one takes about a second; each poll
is a request to the process that also serves the FUSE view)."""
UNCHANGED_TARGET_S = 1.0
UNCHANGED_READ_TARGET = 0.01
ONE_PERCENT_TIME_TARGET = 0.10
ONE_PERCENT_READ_TARGET = 0.03
THROUGHPUT_TARGET = 0.8
RUN = 4 * MIB
SCATTERED = 64 * 1024


def _own_cpu(pid: int) -> float:
    """CPU seconds of ``vpsd serve`` itself and its waited-for children (restic, qemu-nbd):
    the FUSE view and the NBD reads run in vpsd's threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + children_cpu(pid)


class Bench:
    """The server under test and the clients around it."""

    def __init__(self, api: Api, serve: Serve, server_id: int, scratch: Path) -> None:
        self.api = api
        self.serve = serve
        self.server_id = server_id
        self.scratch = scratch
        self.folder = serve.data_dir / "servers" / str(server_id)
        self.disk = self.folder / "disk0.qcow2"
        self.database = serve.data_dir / "vpsd.db"
        self.pieces = 0

    def backup(self, name: str) -> dict[str, Any]:
        """POST /backups/ → completed: time, CPU, what it read and stored."""
        assert self.serve.process is not None
        pid = self.serve.process.pid
        cpu = _own_cpu(pid)
        started = time.perf_counter()
        backup_id = self.api.call(
            "POST", "/backups/", 201, json={"server_id": self.server_id, "name": name}
        )["id"]
        body = wait(self.api, f"/backups/{backup_id}/", "completed", POLL)
        took = time.perf_counter() - started
        with sqlite3.connect(self.database) as db:
            (disks,) = db.execute("SELECT disks FROM backups WHERE id = ?", (backup_id,)).fetchone()
        [disk] = json.loads(disks)
        return {
            "id": backup_id,
            "seconds": took,
            "cpu": _own_cpu(pid) - cpu,
            "read_bytes": int(disk["read_bytes"]),
            "incremental": bool(disk["incremental"]),
            "stored_mb": int(body["stored_mb"]),
        }

    def delete(self, backup_id: int) -> None:
        """Delete a backup (forget and prune) and wait until it is gone: a server keeps at
        most 10 manual backups, and a prune queued behind a backup would be timed with it."""
        self.api.call("DELETE", f"/backups/{backup_id}/", 204)
        deadline = time.monotonic() + 600
        # The API hides a backup at once; its row goes when the prune is done.
        while self._row_exists(backup_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"backup {backup_id} was not deleted in 600 s")
            time.sleep(0.1)

    def _row_exists(self, backup_id: int) -> bool:
        with sqlite3.connect(self.database) as db:
            return (
                db.execute("SELECT 1 FROM backups WHERE id = ?", (backup_id,)).fetchone()
                is not None
            )

    def rewrite(self, total: int, length: int, rng: random.Random) -> None:
        """Write ``total`` bytes of new random data into the running VM's disk, in writes of
        ``length`` at random 4 KiB-aligned offsets."""
        size = self.disk_size()
        piece = self.scratch / "piece.raw"
        self.pieces += 1
        _write_random(piece, length, length, key=10_000 + self.pieces)
        commands = [
            f'qemu-io disk0 "write -s {piece} {rng.randrange(0, (size - length) // 4096) * 4096}'
            f' {length}"'
            for _ in range(max(1, total // length))
        ]
        with QmpSession(self.folder / "qmp.sock", timeout=600) as qmp:
            for command in [*commands, 'qemu-io disk0 "flush"']:
                output = qmp.human_command(command)
                if output.strip():
                    raise RuntimeError(f"{command}: {output.strip()}")
        piece.unlink()

    def disk_size(self) -> int:
        """The disk's virtual size."""
        info = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(self.disk)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return int(json.loads(info)["virtual-size"])

    def copy(self, target: Path) -> None:
        """A copy of the disk as it is now (the VM writes nothing by itself: a blank one)."""
        timed(["qemu-img", "convert", "-U", "-O", "qcow2", str(self.disk), str(target)])

    def restore(self, backup_id: int) -> float:
        """POST /backups/{id}/restore/ on the stopped server → stopped: the time taken."""
        started = time.perf_counter()
        self.api.call("POST", f"/backups/{backup_id}/restore/", 200)
        wait(self.api, f"/servers/{self.server_id}/", "stopped", POLL)
        return time.perf_counter() - started

    def same_as(self, reference: Path) -> bool:
        """``qemu-img compare`` of the disk with ``reference``: identical bytes."""
        result = subprocess.run(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(reference), str(self.disk)],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode not in (0, 1):
            raise RuntimeError(result.stderr)
        return result.returncode == 0


def _measure(
    bench: Bench, root: Path, raw: Path, data: Path, reps: int, chain: int
) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {}
    rng = random.Random(21)
    size = bench.disk_size()
    password = root / "restic-password"
    password.write_text("bench\n")
    baselines: dict[str, list[dict[str, Any]]] = {}

    def restic_alone(key: str, source: Path) -> None:
        alone = Restic(root / f"repo-{key}", password, root / "restic-cache")
        shutil.rmtree(root / f"repo-{key}", ignore_errors=True)
        alone.init()
        took, cpu, done = alone.backup(source)
        found = {"seconds": took, "cpu": cpu, "bytes": int(done["total_bytes_processed"])}
        baselines.setdefault(key, []).append(found)
        console.print(f"  {key}: {took:.2f} s for {human_size(found['bytes'])}")

    restic_alone("restic_disk", raw)
    latest: dict[str, Any] | None = None
    for rep in range(reps):
        # A full backup and restic alone on the same bytes, side by side: a full backup is
        # one with no base (its predecessor deleted first).
        restic_alone("restic_data", data)
        if latest is not None:
            bench.delete(latest["id"])
        latest = bench.backup(f"full-{rep}")
        samples.setdefault("full", []).append(latest)
        console.print(
            f"  full backup {latest['seconds']:.2f} s, read {human_size(latest['read_bytes'])}"
        )
        baselines.setdefault("restic_floor", []).append(
            _restic_floor(root, password, latest["read_bytes"] // MIB)
        )
        for key, change in (("unchanged", 0), ("one_percent", RUN), ("scattered", SCATTERED)):
            if change:
                bench.rewrite(size // 100, change, rng)
            taken = bench.backup(f"{key}-{rep}")
            bench.delete(latest["id"])  # the newest stays the base of the next
            latest = taken
            samples.setdefault(key, []).append(taken)
            console.print(
                f"  {key}: {taken['seconds']:.2f} s, read {human_size(taken['read_bytes'])}, "
                f"stored {taken['stored_mb']} MiB"
            )
    references = root / "references"
    references.mkdir()
    links = [bench.backup("chain-1")]
    assert latest is not None
    bench.delete(latest["id"])
    bench.copy(references / "first.qcow2")
    for index in range(2, chain + 1):
        bench.rewrite(size // 1000, 2 * MIB, rng)
        links.append(bench.backup(f"chain-{index}"))
        if index > 2:  # the middle of the chain goes: the first and the newest stay
            bench.delete(links[-2]["id"])
    bench.api.server_to(bench.server_id, "stop", "stopped")
    bench.copy(references / "last.qcow2")
    restores = {}
    for key, link, reference in (
        ("first", links[0], references / "first.qcow2"),
        ("last", links[-1], references / "last.qcow2"),
        ("first_again", links[0], references / "first.qcow2"),
        ("last_again", links[-1], references / "last.qcow2"),
    ):
        took = bench.restore(link["id"])
        restores[key] = {"seconds": took, "exact": bench.same_as(reference)}
        console.print(f"  restore of the {key} backup of the chain: {took:.2f} s, exact: "
                      f"{restores[key]['exact']}")  # fmt: skip
    return {
        "disk_bytes": size,
        "data_bytes": data.stat().st_size,
        "baselines": baselines,
        "samples": samples,
        "chain": {"length": chain, "backups": links, "restores": restores},
    }


def _restic_floor(root: Path, password: Path, files: int) -> dict[str, Any]:
    """restic alone backing up, with its parent, an unchanged directory of ``files`` files of
    1 MiB (sparse): what restic itself needs for an unchanged backup of that many chunks."""
    folder, repository = root / "floor", root / "repo-floor"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(repository, ignore_errors=True)
    (folder / "disk0").mkdir(parents=True)
    for index in range(files):
        with (folder / "disk0" / f"{index * MIB:016x}").open("wb") as file:
            file.truncate(MIB)
    alone = Restic(repository, password, root / "restic-cache")
    alone.init()
    args = ["restic", "backup", "--json", "--host", "bench", "disk0"]
    subprocess.run(args, cwd=folder, env=alone.env, check=True, capture_output=True)
    listed = subprocess.run(
        ["restic", "snapshots", "--json"], env=alone.env, check=True, capture_output=True
    )
    parent = json.loads(listed.stdout)[-1]["id"]
    started = time.perf_counter()
    subprocess.run(
        [*args, "--parent", parent], cwd=folder, env=alone.env, check=True, capture_output=True
    )
    took = time.perf_counter() - started
    console.print(f"  restic alone, {files} unchanged files: {took:.2f} s")
    return {"seconds": took, "files": files}


def run(disk_gb: int, fill: int, reps: int, chain: int, work_root: Path | None) -> dict[str, Any]:
    """Measure incremental backups; return the part's result."""
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-", dir=work_root or "/tmp"))
    scratch = scratch_dir(root, disk_gb * GIB)
    serve = Serve(root / "data", log_level="warning", monitor_interval="0.5")
    api: Api | None = None
    try:
        serve.start()
        api = Api(serve.base_url, serve.create_token("bench"))
        console.print(
            f"[bold]incremental[/bold]: a {disk_gb} GiB disk holding {human_size(fill)} of "
            f"random data, {reps} repetitions, a chain of {chain}"
        )
        server_id, _ = create_server(api, {"name": "bench-incremental", "disk_gb": disk_gb}, POLL)
        api.server_to(server_id, "stop", "stopped")
        raw, data = scratch / "disk.raw", scratch / "data.raw"
        _write_random(data, fill, fill, key=21)
        shutil.copyfile(data, raw)
        with raw.open("r+b") as file:
            file.truncate(disk_gb * GIB)  # the rest of the disk: a hole, zeros
        bench = Bench(api, serve, server_id, scratch)
        timed(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(bench.disk)])
        api.server_to(server_id, "start", "running")
        result = _measure(bench, root, raw, data, reps, chain)
        delete_server(api, server_id)
    finally:
        if api is not None:
            api.close()
        serve.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
        if scratch != root:
            shutil.rmtree(scratch, ignore_errors=True)
    return {**result, "restic": Restic.version()}


# --- tables --------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return summary(values)["median"]


def _rate(runs: list[dict[str, Any]]) -> str:
    """Median MB/s (10^6 bytes) of backups (``read_bytes``) or restic runs (``bytes``)."""
    rates = [r.get("read_bytes", r.get("bytes", 0)) / r["seconds"] / 1e6 for r in runs]
    return f"{_median(rates):.0f}"


def tables(data: dict[str, Any]) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and its targets, from ``run``'s result."""
    size, base = data["disk_bytes"], data["baselines"]
    table = ResultTable(
        f"Backups of a running server's {human_size(size)} disk holding "
        f"{human_size(data['data_bytes'])} of random data, POST → completed (median (min-max))",
        ["backup", "time", "read of the disk", "stored", "CPU s (vpsd and its children)"],
    )

    def row(label: str, taken: list[dict[str, Any]]) -> list[str]:
        reads = [t["read_bytes"] / size * 100 for t in taken]
        return [
            label,
            fmt_summary(summary([t["seconds"] for t in taken])),
            f"{_median(reads):.2f}% (max {max(reads):.2f}%)",
            f"{_median([t['stored_mb'] for t in taken]):.0f} MiB",
            f"{_median([t['cpu'] for t in taken]):.1f}",
        ]

    for key, label in (
        ("restic_data", "restic backup --stdin < a file of the disk's data alone (baseline)"),
        ("restic_disk", "restic backup --stdin < the whole raw disk (what vpsd streamed before)"),
    ):
        runs = base[key]
        table.rows.append(
            [
                label,
                fmt_summary(summary([r["seconds"] for r in runs])),
                human_size(runs[0]["bytes"]),
                "",
                f"{_median([r['cpu'] for r in runs]):.1f}",
            ]
        )
    if "restic_floor" in base:
        floor = base["restic_floor"]
        table.rows.append(
            [
                f"restic alone: an unchanged directory of {floor[0]['files']} files of 1 MiB, "
                "with its parent (restic's own floor for the unchanged backup)",
                fmt_summary(summary([r["seconds"] for r in floor])),
                "0",
                "",
                "",
            ]
        )
    samples = data["samples"]
    table.rows.append(row("full backup (no base: every chunk holding data)", samples["full"]))
    table.rows.append(row("the disk unchanged", samples["unchanged"]))
    table.rows.append(row("after 1% rewritten in 4 MiB runs", samples["one_percent"]))
    table.rows.append(row("after 1% rewritten in scattered 64 KiB writes", samples["scattered"]))
    links = data["chain"]["backups"][1:]
    table.rows.append(row(f"chain: backups 2-{data['chain']['length']}, each after 0.1%", links))
    table.notes += [
        f"{len(samples['unchanged'])} repetitions, each: restic alone on the data, a full "
        "backup, then the unchanged and rewritten backups (the raw-disk baseline once). "
        "'read of the disk' is what vpsd read from the snapshot (the chunks the change "
        "record marks, or that hold data for a full backup), as a share of the disk. "
        "Rewrites are new random data written through the running VM's QEMU (HMP qemu-io), "
        "as guest writes.",
        f"{data['restic']}, local repository in the data dir; the baselines each in a "
        "repository of their own. CPU = user + system seconds of vpsd serve (whose threads "
        "serve the FUSE view and the NBD reads) and its finished children, on 2 cores.",
    ]
    restores = ResultTable(
        f"Restore of the first and the last backup of a chain of {data['chain']['length']} "
        "(stopped server, POST → stopped)",
        ["backup", "time", "bytes as at its point (qemu-img compare)"],
    )
    for key, label in (
        ("first", "the 1st"),
        ("last", f"the {data['chain']['length']}th"),
        ("first_again", "the 1st, again"),
        ("last_again", f"the {data['chain']['length']}th, again"),
    ):
        found = data["chain"]["restores"][key]
        restores.rows.append(
            [label, fmt_s(found["seconds"]), "identical" if found["exact"] else "**differ**"]
        )
    return [table, restores], _targets(data)


def _targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    size, base = data["disk_bytes"], data["baselines"]
    unchanged, one = data["samples"]["unchanged"], data["samples"]["one_percent"]
    fulls = data["samples"]["full"]
    full_s = _median([t["seconds"] for t in fulls])
    # Throughput, pair by pair: a later full backup reads more (the rewrites added chunks).
    ratios = [
        (full["read_bytes"] / full["seconds"]) / (alone["bytes"] / alone["seconds"])
        for full, alone in zip(fulls, base["restic_data"], strict=False)
    ]
    unchanged_s = _median([t["seconds"] for t in unchanged])
    unchanged_read = max(t["read_bytes"] for t in unchanged) / size
    one_s = _median([t["seconds"] for t in one])
    one_read = max(t["read_bytes"] for t in one) / size
    ratio = _median(ratios)
    restores = data["chain"]["restores"]
    first_r = min(restores["first"]["seconds"], restores["first_again"]["seconds"])
    last_r = min(restores["last"]["seconds"], restores["last_again"]["seconds"])
    exact = all(r["exact"] for r in restores.values())
    gib = human_size(size)
    return [
        target(
            f"second backup of an unchanged {gib} disk ≤ {UNCHANGED_TARGET_S:g} s (median), "
            f"reading ≤ {UNCHANGED_READ_TARGET:.0%}",
            f"median {fmt_s(unchanged_s)}, read at most {unchanged_read:.2%}",
            unchanged_s <= UNCHANGED_TARGET_S and unchanged_read <= UNCHANGED_READ_TARGET,
        ),
        target(
            f"backup after 1% rewritten ≤ {ONE_PERCENT_TIME_TARGET:.0%} of a full backup's "
            f"time, reading ≤ {ONE_PERCENT_READ_TARGET:.0%}",
            f"median {fmt_s(one_s)} = {one_s / full_s:.1%} of {fmt_s(full_s)} (medians), "
            f"read at most {one_read:.2%}",
            one_s <= ONE_PERCENT_TIME_TARGET * full_s and one_read <= ONE_PERCENT_READ_TARGET,
        ),
        target(
            f"full backup ≥ {THROUGHPUT_TARGET} times the throughput of restic alone reading "
            "the same bytes from a file",
            f"{ratio:.2f} times (median of {len(ratios)} side-by-side pairs: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; {_rate(fulls)} against {_rate(base['restic_data'])} MB/s)",
            ratio >= THROUGHPUT_TARGET,
        ),
        target(
            f"restore of the {data['chain']['length']}th backup byte-exact and as fast as the "
            "1st's",
            f"{'identical' if exact else 'DIFFERENT'} bytes; {fmt_s(last_r)} against "
            f"{fmt_s(first_r)} (best of two each)",
            exact and last_r <= first_r * 1.2,
        ),
    ]
