"""Real Debian guests: create to running, boot to SSH, snapshots with the filesystem freeze
(idle and under heavy writes), graceful stop, restore and reboot back to SSH.

One ``vpsd serve`` on the real QEMU driver; guests boot one at a time (under TCG each boot
takes the 2 cores). The freeze window is vpsd's own measurement, from the freeze request to
the thaw's answer (its INFO log line): the longest any guest write can have waited.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serve import Api, Serve, kill_qemus_under
from bench.util import ResultTable, console, fmt_s, fmt_summary, summary, target
from vpsd.config import default_image_cache_dir
from vpsd.hypervisor.images import build, recipes

FROZEN = re.compile(r"guest of server (\d+) frozen (\d+) ms \(pre-freeze sync (\d+) ms\)")
LOAD = (
    "mkdir -p /root/load; while :; do dd if=/dev/zero of=/root/load/f bs=1M count=256 "
    "status=none; done"
)
TARGETS = {
    "create": 2.0,
    "boot_ssh": 25.0,
    "snapshot_idle": 0.200,
    "freeze_idle": 0.150,
    "freeze_load": 0.500,
    "stop": 5.0,
}


class Guests:
    """The service, a key, and the steps the figures time."""

    def __init__(self, serve: Serve, api: Api, key: Path) -> None:
        self.serve, self.api, self.key = serve, api, key
        self.key_id: int = api.call(
            "POST",
            "/ssh_keys/",
            201,
            json={"name": "bench", "public_key": key.with_suffix(".pub").read_text().strip()},
        )["id"]
        self._log_offset = 0

    def ssh(self, port: int, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the guest on ``port`` as root."""
        args = [
            "ssh", "-i", str(self.key), "-p", str(port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "root@127.0.0.1", command,
        ]  # fmt: skip
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 255, "", "timed out")

    def wait_ssh(self, port: int, since: float, timeout: float = 300) -> float:
        """Seconds from ``since`` until SSH on ``port`` runs a command."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ssh(port, "true", timeout=10).returncode == 0:
                return time.perf_counter() - since
            time.sleep(0.2)
        raise RuntimeError(f"SSH on port {port} did not answer in {timeout:g} s")

    def create(self, name: str) -> tuple[int, int, float, float]:
        """A server: its id, SSH port, seconds to ``running`` and to SSH answering."""
        started = time.perf_counter()
        server = self.api.call(
            "POST",
            "/servers/",
            201,
            json={"name": name, "disk_gb": 4, "image": "debian-12", "ssh_keys": [self.key_id]},
        )
        self.api.wait(f"/servers/{server['id']}/", "status", "running")
        running = time.perf_counter() - started
        return (
            server["id"],
            server["ssh"]["port"],
            running,
            self.wait_ssh(server["ssh"]["port"], started),
        )

    def snapshot(self, server_id: int, name: str) -> tuple[float, int | None, int | None]:
        """API time to ``completed``, and the freeze window and pre-freeze sync (ms) logged."""
        self._skip_log()
        snapshot_id, took = self.api.snapshot(server_id, name)
        body = self.api.call("GET", f"/snapshots/{snapshot_id}/", 200)
        if body["consistency"] != "filesystem":
            raise RuntimeError(f"snapshot {snapshot_id} is {body['consistency']}")
        self.api.call("DELETE", f"/snapshots/{snapshot_id}/", 204)
        for match in FROZEN.finditer(self._new_log()):
            if int(match.group(1)) == server_id:
                return took, int(match.group(2)), int(match.group(3))
        return took, None, None

    def _skip_log(self) -> None:
        self._log_offset = len(self.serve.log())

    def _new_log(self) -> str:
        return self.serve.log()[self._log_offset :]


def run(reps: int, work_root: Path | None) -> dict[str, Any]:
    """Boot guests and time what users wait for; return the part's result."""
    cache = default_image_cache_dir()
    console.print(f"[bold]guests[/bold]: the debian-12 image (from {cache}, or built now)")
    image = build.build(recipes.DEBIAN_12, cache, progress=lambda line: None)
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-", dir=work_root or "/tmp"))
    key = root / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    serve = Serve(
        root / "data",
        log_level="info",
        stop_timeout="30",
        monitor_interval="1",
        image_cache_dir=str(image.folder.parent),
    )
    api: Api | None = None
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float | None) -> None:
        if value is not None:
            samples.setdefault(key, []).append(value)

    try:
        serve.start()
        api = Api(serve.base_url, serve.create_token("bench"))
        guests = Guests(serve, api, key)
        first: tuple[int, int] | None = None
        for i in range(max(1, reps // 2)):
            server_id, port, running, ssh_up = guests.create(f"boot-{i}")
            console.print(f"  server {server_id}: running {running:.2f} s, SSH {ssh_up:.1f} s")
            add("create", running)
            add("boot_ssh", ssh_up)
            if first is None:
                first = (server_id, port)
            else:  # one guest at a time from here on
                api.call("DELETE", f"/servers/{server_id}/", 204)
        assert first is not None
        server_id, port = first
        for rep in range(reps):
            took, window, sync = guests.snapshot(server_id, f"idle-{rep}")
            add("snapshot_idle", took)
            add("freeze_idle", window and window / 1000)
            add("sync_idle", sync and sync / 1000)
        guests.ssh(port, f"nohup sh -c '{LOAD}' >/dev/null 2>&1 &")
        time.sleep(3)
        for rep in range(reps):
            took, window, sync = guests.snapshot(server_id, f"load-{rep}")
            add("snapshot_load", took)
            add("freeze_load", window and window / 1000)
            add("sync_load", sync and sync / 1000)
            time.sleep(1)
        guests.ssh(port, "pkill -f 'f bs=1M' ; pkill dd; rm -rf /root/load")
        for _ in range(max(1, reps // 2)):
            add("stop", api.server_to(server_id, "stop", "stopped"))
            reason = api.call("GET", f"/servers/{server_id}/", 200)["status_reason"]
            if reason:
                raise RuntimeError(f"the stop was not graceful: {reason}")
            started = time.perf_counter()
            api.server_to(server_id, "start", "running")
            add("start_ssh", guests.wait_ssh(port, started))
        snapshot_id, _ = api.snapshot(server_id, "restore-me")
        started = time.perf_counter()
        add("restore_running", api.restore(snapshot_id, server_id, "running"))
        add("restore_ssh", guests.wait_ssh(port, started))
        started = time.perf_counter()
        add("reboot_running", api.server_to(server_id, "reboot", "running"))
        add("reboot_ssh", guests.wait_ssh(port, started))
    finally:
        if api is not None:
            api.close()
        serve.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "reps": reps,
        "image": image.build_name,
        "summary": {key: summary(values) for key, values in samples.items()},
        "samples": samples,
    }


ROWS = (
    ("create", "create → running (API)"),
    ("boot_ssh", "create → SSH answering"),
    ("snapshot_idle", "snapshot of a running, idle guest, API → completed"),
    ("freeze_idle", "  of which the guest was frozen"),
    ("sync_idle", "  pre-freeze step (not frozen)"),
    ("snapshot_load", "snapshot under heavy writes (dd 256 MiB loop), API → completed"),
    ("freeze_load", "  of which the guest was frozen"),
    ("sync_load", "  pre-freeze step (not frozen)"),
    ("stop", "graceful stop (ACPI) → stopped"),
    ("start_ssh", "start → SSH answering"),
    ("restore_running", "restore of a running guest → running"),
    ("restore_ssh", "restore of a running guest → SSH answering"),
    ("reboot_running", "reboot → running"),
    ("reboot_ssh", "reboot → SSH answering"),
)


def tables(data: dict[str, Any]) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's table and its targets, from ``run``'s result."""
    stats = data["summary"]
    table = ResultTable(
        "What a user waits for, on a real Debian 12 guest (median (min-max))",
        ["step", "time", "samples"],
    )
    for key, label in ROWS:
        if key in stats:
            table.rows.append([label, fmt_summary(stats[key]), str(len(data["samples"][key]))])
    table.notes += [
        f"Image {data['image']}; servers of 1 vCPU, 256 MiB, 4 GiB disk; one guest running at "
        "a time. Snapshot times include the runner, the database and a few ms of polling.",
        "Frozen = from vpsd's guest-fsfreeze-freeze request to the answer of its thaw (vpsd's "
        "log); the guest's writes wait at most that long. The pre-freeze step reads the "
        "guest's dirty memory and, above 4 MiB, runs sync in it, while the guest keeps "
        "writing.",
    ]
    return [table], _targets(stats)


def _targets(stats: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {
        "create": "create → running ≤ 2 s",
        "boot_ssh": "boot → SSH ≤ 25 s",
        "snapshot_idle": "snapshot with freeze, idle guest, API → completed ≤ 200 ms",
        "freeze_idle": "freeze window ≤ 150 ms, idle",
        "freeze_load": "freeze window ≤ 500 ms under heavy writes",
        "stop": "graceful stop ≤ 5 s",
    }
    found = []
    for key, name in labels.items():
        if key not in stats:
            found.append(target(name, "not measured", None))
            continue
        worst = stats[key]["max"]
        found.append(
            target(
                name,
                f"median {fmt_s(stats[key]['median'])}, worst {fmt_s(worst)}",
                stats[key]["median"] <= TARGETS[key],
            )
        )
    return found
