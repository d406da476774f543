"""Backups through the API on real QEMU and restic, beside raw reads of the same disk;
new servers from a snapshot and from a backup.

One ``vpsd serve`` on the real QEMU driver with its default backup repository (restic, in
the data dir). A blank server's disk is filled with random bytes (AES-CTR keystream from
``cryptography``, a new key per repetition, written with ``qemu-img convert -n`` from a raw
file), the worst case for deduplication. In each repetition, in this order: the raw reads of
that disk (qemu-img to a null target, vpsd's reader ``nbdcopy`` to /dev/null, ``restic backup
--stdin`` of the raw file into a repository of its own), the first backup, a second one of
the unchanged disk, a restore of the stopped server, ``restic dump`` of the backup, and a new
server made from the backup. Then servers of 8 GiB: data written into one, a snapshot of it,
and new servers from that snapshot, beside new servers made without one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench import qemu
from bench.serve import Api, Serve, kill_qemus_under
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
    timed,
)
from vpsd.config import default_image_cache_dir
from vpsd.hypervisor.images import recipes, store

MB = 1_000_000
STREAM_POLL = 0.05
"""Seconds between polls of a backup, a restore or a create from a backup (they take
seconds; polling faster would take CPU from restic on 2 cores)."""
CLONE_POLL = 0.005
"""Seconds between polls of a create from a snapshot (it takes well under a second)."""
SECOND_BACKUP_TARGET = 0.01
CLONE_TARGET = 2.0
RAW_NAME = "disk0.raw"


# --- data and baselines --------------------------------------------------------------------


def write_random(path: Path, size: int, random_bytes: int, key: int) -> float:
    """A raw file of ``size`` bytes: ``random_bytes`` of AES-CTR keystream (``key`` picks
    it: every key gives bytes no other does), then a hole. Returns its wall time."""
    started = time.perf_counter()
    cipher = Cipher(algorithms.AES(key.to_bytes(16, "big")), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(16 * MIB)
    with path.open("wb") as file:
        left = random_bytes
        while left > 0:
            chunk = min(left, len(zeros))
            file.write(cipher.update(zeros[:chunk]))
            left -= chunk
        file.truncate(size)
    return time.perf_counter() - started


def scratch_dir(root: Path, size: int) -> Path:
    """Where the raw random files go: /dev/shm when it holds them (writes to it are several
    times faster than to a disk), else ``root``."""
    shm = Path("/dev/shm")
    if shm.is_dir() and free_bytes(shm) > 2 * size + GIB:
        return Path(tempfile.mkdtemp(prefix="vpsd-bench-", dir=shm))
    return root


def convert_into(raw: Path, disk: Path, new: bool = False) -> list[str]:
    """qemu-img writing the raw file into the qcow2 ``disk``: in place (its clusters are
    already allocated), or with ``new`` into a new qcow2 whose clusters it allocates."""
    if new:
        return ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)]
    return ["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(disk)]


def raw_read(disk: Path, size: int) -> float:
    """qemu-img reading the whole qcow2 into a null target: the disk read alone."""
    return timed(
        ["qemu-img", "convert", "-n", "-f", "qcow2", "--target-image-opts", str(disk),
         f"driver=null-co,size={size}"]
    )  # fmt: skip


def nbd_read(disk: Path) -> float:
    """vpsd's reader alone: nbdcopy from qemu-nbd to a pipe, into /dev/null."""
    started = time.perf_counter()
    subprocess.run(
        f"nbdcopy -- [ qemu-nbd --read-only -f qcow2 {disk} ] - | cat > /dev/null",
        shell=True,
        check=True,
        timeout=1800,
    )
    return time.perf_counter() - started


class Restic:
    """restic on one repository, outside vpsd (the baselines)."""

    def __init__(self, repository: Path, password_file: Path, cache: Path) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "RESTIC_REPOSITORY": str(repository),
            "RESTIC_PASSWORD_FILE": str(password_file),
            "RESTIC_CACHE_DIR": str(cache),
        }

    def init(self) -> None:
        """A new repository."""
        subprocess.run(["restic", "init"], env=self.env, check=True, capture_output=True)

    def backup(
        self, raw: Path | None, disk: Path | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """``restic backup --stdin < raw``, or with ``disk``, ``nbdcopy`` of it piped into
        ``restic backup --stdin`` (vpsd's pipeline without vpsd): wall time, CPU seconds
        (user + system, restic's and nbdcopy's) and restic's summary."""
        args = ["restic", "backup", "--stdin", "--stdin-filename", RAW_NAME, "--json"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        if disk is not None:
            result = subprocess.run(
                f"nbdcopy -- [ qemu-nbd --read-only -f qcow2 {disk} ] - | {' '.join(args)}",
                shell=True, env=self.env, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
        else:
            assert raw is not None
            with raw.open("rb") as stdin:
                result = subprocess.run(
                    args, stdin=stdin, env=self.env, capture_output=True, text=True, timeout=1800
                )
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise RuntimeError(f"restic backup failed: {result.stderr}")
        lines = [line for line in result.stdout.splitlines() if '"summary"' in line]
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return took, cpu, json.loads(lines[-1])

    def dump_latest(self, tag: str) -> float:
        """``restic dump`` of the latest snapshot tagged ``tag`` into /dev/null: its disk's
        chunk files (a tar), as a restore reads them."""
        started = time.perf_counter()
        with Path(os.devnull).open("wb") as sink:
            subprocess.run(
                ["restic", "dump", "--tag", tag, "latest", "/disk0"],
                stdout=sink, env=self.env, check=True, timeout=1800,
            )  # fmt: skip
        return time.perf_counter() - started

    @staticmethod
    def version() -> str:
        """``restic 0.14.0`` and the like."""
        out = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
        return " ".join(out.split()[:2])


def children_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the waited-for children of ``pid`` (``vpsd serve``:
    its restic, nbdcopy and their qemu-nbd once they have exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


# --- the API -------------------------------------------------------------------------------


def wait(api: Api, path: str, wanted: str, interval: float, timeout: float = 1800) -> Any:
    """Poll ``GET path`` until its status is ``wanted``; return the body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.call("GET", path, 200)
        if body["status"] == wanted:
            return body
        if body["status"] in ("error", "failed"):
            raise RuntimeError(f"{path} went {body['status']}: {body.get('status_reason')}")
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {path} to be {wanted}")


def create_server(api: Api, body: dict[str, Any], interval: float) -> tuple[int, float]:
    """POST /servers/ → running: the id and the time taken."""
    started = time.perf_counter()
    server_id: int = api.call("POST", "/servers/", 201, json=body)["id"]
    wait(api, f"/servers/{server_id}/", "running", interval)
    return server_id, time.perf_counter() - started


def delete_server(api: Api, server_id: int, timeout: float = 120) -> None:
    """DELETE the server and wait until it is gone (its VM killed, its folder removed)."""
    api.call("DELETE", f"/servers/{server_id}/", 204)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.http.get(f"/servers/{server_id}/").status_code == 404:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server {server_id} was not deleted in {timeout:g} s")


def backup(
    api: Api, serve: Serve, server_id: int, name: str
) -> tuple[dict[str, Any], float, float]:
    """POST /backups/ → completed: the backup, the time taken and the CPU seconds vpsd's
    children (restic, nbdcopy, qemu-nbd) used meanwhile."""
    assert serve.process is not None
    cpu = children_cpu(serve.process.pid)
    started = time.perf_counter()
    backup_id = api.call("POST", "/backups/", 201, json={"server_id": server_id, "name": name})[
        "id"
    ]
    body = wait(api, f"/backups/{backup_id}/", "completed", STREAM_POLL)
    took = time.perf_counter() - started
    return body, took, children_cpu(serve.process.pid) - cpu


def restore(api: Api, backup_id: int, server_id: int) -> float:
    """POST /backups/{id}/restore/ on a stopped server → stopped: the time taken."""
    started = time.perf_counter()
    api.call("POST", f"/backups/{backup_id}/restore/", 200)
    wait(api, f"/servers/{server_id}/", "stopped", STREAM_POLL)
    return time.perf_counter() - started


# --- the measurements ----------------------------------------------------------------------


def _measure_backups(
    api: Api, serve: Serve, root: Path, scratch: Path, disk_gb: int, fill: int, reps: int
) -> dict[str, Any]:
    size = disk_gb * GIB
    fill = min(fill, size)
    server_id, _ = create_server(api, {"name": "bench-backup", "disk_gb": disk_gb}, CLONE_POLL)
    api.server_to(server_id, "stop", "stopped")
    disk = serve.data_dir / "servers" / str(server_id) / "disk0.qcow2"
    raw = scratch / "disk.raw"
    password = root / "restic-password"
    password.write_text("bench\n")
    alone = Restic(root / "restic-alone", password, root / "restic-cache")
    alone.init()
    piped = Restic(root / "restic-piped", password, root / "restic-cache")
    piped.init()
    ours = Restic(
        serve.data_dir / "backups", serve.data_dir / "backup-password", root / "restic-cache-2"
    )
    samples: dict[str, list[float]] = {}
    stored: dict[str, list[int]] = {"first": [], "second": [], "alone": []}
    sizes: list[int] = []

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    # The first backup after vpsd starts creates the repository: measured apart, on the
    # blank disk (all zeros), so that the repetitions below all find it.
    warm, took, cpu = backup(api, serve, server_id, "blank")
    add("blank", took)
    add("blank_cpu", cpu)
    blank_stored = int(warm["stored_mb"])
    console.print(f"  backup of the blank disk (repository created): {took:.2f} s")
    # Allocate the disk's clusters once, so that every repetition's fill below overwrites
    # them in place as a restore does (a new server's disk allocates: timed apart).
    write_random(raw, size, fill, key=0)
    timed(convert_into(raw, disk))

    for rep in range(reps):
        console.print(f"  repetition {rep + 1}/{reps}: {human_size(fill)} of random data")
        add("generate", write_random(raw, size, fill, key=rep + 1))
        add("write", timed(convert_into(raw, disk)))
        fresh = root / "fresh.qcow2"
        add("write_new", timed(convert_into(raw, fresh, new=True)))
        fresh.unlink()
        add("raw_read", raw_read(disk, size))
        add("nbd_read", nbd_read(disk))
        took, cpu, done = alone.backup(raw)
        add("restic_alone", took)
        add("restic_alone_cpu", cpu)
        stored["alone"].append(int(done["data_added"]))
        took, cpu, _ = piped.backup(None, disk)
        add("restic_piped", took)
        add("restic_piped_cpu", cpu)
        first, took, cpu = backup(api, serve, server_id, f"first-{rep}")
        add("first", took)
        add("first_cpu", cpu)
        stored["first"].append(int(first["stored_mb"]))
        sizes.append(int(first["size_mb"]))
        second, took, cpu = backup(api, serve, server_id, f"second-{rep}")
        add("second", took)
        add("second_cpu", cpu)
        stored["second"].append(int(second["stored_mb"]))
        console.print(
            f"    restic alone {samples['restic_alone'][-1]:.2f} s, first backup "
            f"{samples['first'][-1]:.2f} s ({first['stored_mb']} MiB stored), second "
            f"{took:.2f} s ({second['stored_mb']} MiB stored)"
        )
        add("restore", restore(api, second["id"], server_id))
        add("dump", ours.dump_latest(f"server={server_id}"))
        new_id, took = create_server(
            api,
            {"name": f"from-backup-{rep}", "disk_gb": disk_gb, "backup_id": first["id"]},
            STREAM_POLL,
        )
        add("from_backup", took)
        delete_server(api, new_id)
        console.print(
            f"    restore {samples['restore'][-1]:.2f} s, new server from it {took:.2f} s"
        )
    raw.unlink(missing_ok=True)
    delete_server(api, server_id)
    return {
        "disk_bytes": size,
        "random_bytes": fill,
        "reps": reps,
        "size_mb": sizes,
        "stored_mb": {
            "first": stored["first"],
            "second": stored["second"],
            "blank": [blank_stored],
        },
        "restic_alone_added_bytes": stored["alone"],
        "summary": {key: summary(values) for key, values in samples.items()},
        "samples": samples,
    }


def _backing_file(disk: Path) -> Path | None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    backing = info.get("full-backing-filename")
    return Path(backing) if backing else None


def clone_copy(disk: Path, tag: str, target_path: Path) -> float:
    """The command vpsd runs to copy a snapshot into a new server's disk (see
    ``disk_stream.clone_snapshot``), timed on its own; the copy is removed."""
    args = ["qemu-img", "convert", "-U", "-l", f"snapshot.name={tag}", "-O", "qcow2"]
    backing = _backing_file(disk)
    if backing is not None:
        args += ["-B", str(backing), "-F", "qcow2"]
    took = timed([*args, str(disk), str(target_path)])
    target_path.unlink()
    return took


def _measure_clone(
    api: Api,
    serve: Serve,
    scratch: Path,
    image: str | None,
    disk_gb: int,
    fill: int,
    reps: int,
) -> dict[str, Any]:
    size = disk_gb * GIB
    fill = min(fill, size)
    body: dict[str, Any] = {"disk_gb": disk_gb, "image": image or "blank"}
    source, _ = create_server(api, {**body, "name": "clone-source"}, CLONE_POLL)
    api.server_to(source, "stop", "stopped")
    disk = serve.data_dir / "servers" / str(source) / "disk0.qcow2"
    # At the disk's end: past what an image's filesystem uses, so its guest still boots.
    piece = scratch / "piece.raw"
    write_random(piece, fill, fill, key=1000 + disk_gb)
    console.print(f"  writing {human_size(fill)} of random data at the end of {disk}")
    qemu_io = ["qemu-io", "-f", "qcow2"]
    for offset in range(0, fill, qemu.CHUNK):
        length = min(qemu.CHUNK, fill - offset)
        qemu_io += ["-c", f"write -s {piece} {size - fill + offset} {length}"]
    timed([*qemu_io, str(disk)])
    piece.unlink()
    snapshot_id, _ = api.snapshot(source, "golden")
    (tag,) = qemu.snapshot_tags(disk)
    samples: dict[str, list[float]] = {}
    for rep in range(reps):
        plain, took = create_server(api, {**body, "name": f"plain-{rep}"}, CLONE_POLL)
        samples.setdefault("plain", []).append(took)
        delete_server(api, plain)
        copy, took = create_server(
            api, {"name": f"copy-{rep}", "disk_gb": disk_gb, "snapshot_id": snapshot_id}, CLONE_POLL
        )
        samples.setdefault("from_snapshot", []).append(took)
        delete_server(api, copy)
        samples.setdefault("copy_alone", []).append(
            clone_copy(disk, tag, serve.data_dir / "clone-copy.qcow2")
        )
    console.print(
        f"    {image or 'blank'}: from the snapshot {min(samples['from_snapshot']):.2f}-"
        f"{max(samples['from_snapshot']):.2f} s, without one {min(samples['plain']):.2f}-"
        f"{max(samples['plain']):.2f} s"
    )
    delete_server(api, source)
    return {
        "image": image or "blank",
        "disk_gb": disk_gb,
        "random_bytes": fill,
        "summary": {key: summary(values) for key, values in samples.items()},
        "samples": samples,
    }


def run(
    disk_gb: int,
    fill: int,
    clone_disk_gb: int,
    clone_fill: int,
    reps: int,
    use_image: bool,
    work_root: Path | None,
) -> dict[str, Any]:
    """Measure backups, restores and new servers; return the part's result."""
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-", dir=work_root or "/tmp"))
    scratch = scratch_dir(root, disk_gb * GIB)
    image = (
        store.find_build(default_image_cache_dir(), recipes.DEBIAN_12.build_name)
        if use_image
        else None
    )
    settings = {"image_cache_dir": str(image.folder.parent)} if image else {}
    serve = Serve(root / "data", log_level="warning", monitor_interval="0.5", **settings)
    api: Api | None = None
    try:
        serve.start()
        api = Api(serve.base_url, serve.create_token("bench"))
        console.print(f"[bold]backups[/bold]: a {disk_gb} GiB disk, {reps} repetitions")
        backups = _measure_backups(api, serve, root, scratch, disk_gb, fill, reps)
        clones = []
        for slug in ("blank", *(["debian-12"] if image else [])):
            console.print(f"[bold]backups[/bold]: new servers from a snapshot ({slug})")
            clones.append(
                _measure_clone(
                    api,
                    serve,
                    scratch,
                    None if slug == "blank" else slug,
                    clone_disk_gb,
                    clone_fill,
                    reps,
                )
            )
    finally:
        if api is not None:
            api.close()
        serve.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
        if scratch != root:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "backups": backups,
        "clones": clones,
        "image": image.build_name if image else None,
        "restic": Restic.version(),
        "random_data": "AES-CTR keystream (cryptography), a new key per repetition, written "
        "into the qcow2 with qemu-img convert -n from a raw file",
    }


# --- tables --------------------------------------------------------------------------------


def _rate(size: int, stats: dict[str, float]) -> str:
    """``median (min-max)`` throughput in MB/s from a time summary."""
    return (
        f"{size / stats['median'] / MB:.0f} "
        f"({size / stats['max'] / MB:.0f}-{size / stats['min'] / MB:.0f})"
    )


BACKUP_ROWS = (
    ("raw_read", "raw read: qemu-img convert of the qcow2 to a null target"),
    ("nbd_read", "raw read: nbdcopy from qemu-nbd → pipe → /dev/null (vpsd's reader alone)"),
    ("restic_alone", "restic backup --stdin < the raw file, a repository of its own"),
    ("restic_piped", "nbdcopy → pipe → restic backup --stdin, a repository of its own"),
    ("blank", "vpsd: backup of the blank disk (zeros) creating the repository"),
    ("first", "vpsd: first backup, stopped server, POST → completed"),
    ("second", "vpsd: second backup of the unchanged disk, POST → completed"),
    ("dump", "restic dump of the backup → /dev/null (restore's read alone)"),
    ("write", "raw write: qemu-img convert -n of the raw file over the disk's clusters"),
    ("restore", "vpsd: restore of the stopped server, POST → stopped"),
    ("write_new", "raw write: qemu-img convert of the raw file into a new qcow2"),
    ("from_backup", "vpsd: new server from the backup, POST → running"),
)


def tables(data: dict[str, Any]) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and its targets, from ``run``'s result."""
    b = data["backups"]
    size, stats = b["disk_bytes"], b["summary"]
    cpu = {
        key: f"{key}_cpu" for key in ("restic_alone", "restic_piped", "blank", "first", "second")
    }
    throughput = ResultTable(
        f"Backup and restore of a {human_size(size)} disk holding "
        f"{human_size(b['random_bytes'])} of random data, beside raw reads and writes of the "
        "same disk (median (min-max))",
        ["step", "time", "MB/s", "CPU s (restic, nbdcopy, qemu-nbd)"],
    )
    for key, label in BACKUP_ROWS:
        if key not in stats:
            continue
        used = stats.get(cpu.get(key, ""))
        throughput.rows.append(
            [
                label,
                fmt_summary(stats[key]),
                _rate(size, stats[key]),
                f"{used['median']:.1f}" if used else "",
            ]
        )
    throughput.notes += [
        f"{b['reps']} repetitions, each on new random data ({data['random_data']}): the worst "
        f"case for deduplication. MB/s = 10^6 bytes of the {human_size(size)} disk per second. "
        f"{data['restic']}, local repository in the data dir (vpsd's default). The machine's "
        "RAM holds the disk, the raw file and the repositories in the page cache throughout, "
        "so the figures are CPU and copying, not the disk's speed.",
        "vpsd's times are the API's: POST, the runner, the temporary internal snapshot, "
        f"nbdcopy → restic backup --stdin, the database; polled every {STREAM_POLL * 1000:.0f} "
        "ms. CPU = user + system seconds of the processes listed (for vpsd, its finished "
        "children), on 2 cores.",
    ]
    disk_mib = size / MIB
    dedup = ResultTable(
        "What each backup added to the repository (stored_mb)",
        ["backup", "stored_mb, per repetition", "% of the disk"],
    )
    for key, label in (
        ("blank", "the blank disk (all zeros)"),
        ("first", "first backup of the random data"),
        ("second", "second, disk unchanged"),
    ):
        values = b["stored_mb"].get(key)
        if not values:
            continue
        dedup.rows.append(
            [
                label,
                ", ".join(str(v) for v in values) + " MiB",
                f"{max(values) / disk_mib * 100:.2f}% (worst)",
            ]
        )
    alone = b["restic_alone_added_bytes"]
    dedup.rows.append(
        [
            "restic alone, first backup (data_added)",
            ", ".join(f"{v / MIB:.0f}" for v in alone) + " MiB",
            f"{max(alone) / size * 100:.2f}% (worst)",
        ]
    )
    dedup.notes.append(
        "stored_mb is restic's data_added for the backup, rounded up to a MiB: what the "
        f"repository grew by (no compression in this restic's repository format). "
        f"size_mb of the backups: {', '.join(str(v) for v in b['size_mb'])}."
    )
    clones = ResultTable(
        "New servers from a snapshot (median (min-max))",
        ["source server", "step", "time"],
    )
    for entry in data["clones"]:
        source = (
            f"{entry['image']}, {entry['disk_gb']} GiB, {human_size(entry['random_bytes'])} "
            "of its own data"
        )
        s = entry["summary"]
        clones.rows += [
            [source, "new server, same image, no snapshot → running", fmt_summary(s["plain"])],
            [source, "new server from the snapshot → running", fmt_summary(s["from_snapshot"])],
            [
                source,
                "  the copy's part (difference of medians)",
                fmt_s(max(0.0, s["from_snapshot"]["median"] - s["plain"]["median"])),
            ],
            [
                source,
                "  vpsd's copy command alone (qemu-img convert -l snapshot.name=…)",
                fmt_summary(s["copy_alone"]),
            ],
        ]
    clones.notes += [
        "The source is stopped when its snapshot is taken; its own data is random bytes "
        "written with qemu-io (write -s FILE) at the end of its disk. A server from the image "
        "is an overlay of it, so its copy holds only the server's own data (qemu-img convert "
        "-B image); a blank server's copy holds all of its data.",
        f"Every new server is deleted (and gone) before the next; polled every "
        f"{CLONE_POLL * 1000:.0f} ms. VMs run on the accelerator in the machine line; "
        "'running' is QEMU started, not the guest booted.",
    ]
    if "from_backup" in stats:
        clones.rows.append(
            [
                f"blank, {human_size(size)}, the backup above",
                "new server from the backup → running",
                fmt_summary(stats["from_backup"]),
            ]
        )
    return [throughput, dedup, clones], _targets(data)


def _targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    b = data["backups"]
    disk_mib = b["disk_bytes"] / MIB
    worst = max(b["stored_mb"]["second"])
    found = [
        target(
            f"second backup of an unchanged {human_size(b['disk_bytes'])} disk stores < 1% of it",
            f"worst {worst} MiB ({worst / disk_mib * 100:.2f}%), median time "
            f"{fmt_s(b['summary']['second']['median'])}",
            worst / disk_mib < SECOND_BACKUP_TARGET,
        )
    ]
    for entry in data["clones"]:
        s = entry["summary"]["from_snapshot"]
        found.append(
            target(
                f"new server from a snapshot at {entry['disk_gb']} GiB ({entry['image']}) "
                "→ running ≤ 2 s (median)",
                f"median {fmt_s(s['median'])}, worst {fmt_s(s['max'])}",
                s["median"] <= CLONE_TARGET,
            )
        )
    return found
