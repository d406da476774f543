"""Real bytes: a restore through the API puts back exactly what the snapshot captured.

Stopped servers are written with ``qemu-io`` on the qcow2 file; running servers through
their QEMU (HMP ``qemu-io`` over QMP), as guest I/O would be.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, snapshot_tag
from tests.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]
GIB = 1024**3


def _disk(server: LiveServer, server_id: int) -> Path:
    return server.data_dir / "servers" / str(server_id) / "disk0.qcow2"


def _stopped_server(client: ApiClient, disk_gb: int = 1) -> int:
    sid = client.create_server("data", disk_gb=disk_gb)["id"]
    client.post(f"/servers/{sid}/stop/")
    client.wait_server(sid, "stopped")
    return sid


def test_stopped_server_restore_brings_back_gigabytes(
    live_server: LiveServer, alice_live: ApiClient
) -> None:
    sid = _stopped_server(alice_live, disk_gb=4)
    disk = _disk(live_server, sid)
    qh.write_pattern(disk, 0xA1, 0, 2 * GIB)

    started = time.monotonic()
    snapshot = alice_live.create_snapshot(sid, "two-gib")
    print(f"snapshot of 2 GiB of data completed in {time.monotonic() - started:.3f} s")
    assert snapshot["status"] == "completed"
    assert snapshot["size_mb"] == 2048

    qh.write_pattern(disk, 0xB2, 0, 64 * qh.MIB)
    qh.write_pattern(disk, 0xB2, GIB, 64 * qh.MIB)
    assert not qh.has_pattern(disk, 0xA1, 0, qh.MIB)

    assert alice_live.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
    alice_live.wait_server(sid, "stopped")
    assert qh.has_pattern(disk, 0xA1, 0, 2 * GIB)
    assert qh.image_check(disk).returncode == 0


def test_running_server_restore_brings_back_bytes_written_through_qemu(
    live_server: LiveServer, alice_live: ApiClient
) -> None:
    sid = alice_live.create_server("live", disk_gb=1)["id"]
    disk = _disk(live_server, sid)
    qmp = live_server.data_dir / "servers" / str(sid) / "qmp.sock"
    qh.write_pattern_running(qmp, 0xC3, 0, 8 * qh.MIB)
    snapshot = alice_live.create_snapshot(sid, "running-snap")
    assert snapshot["status"] == "completed" and snapshot["size_mb"] == 8

    qh.write_pattern_running(qmp, 0xD4, 0, 8 * qh.MIB)
    assert qh.has_pattern_running(qmp, disk, 0xD4, 0, 8 * qh.MIB)

    assert alice_live.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
    alice_live.wait_server(sid, "running")
    assert qh.has_pattern_running(qmp, disk, 0xC3, 0, 8 * qh.MIB)


def test_newer_snapshots_stay_usable_and_delete_reclaims_the_tag(
    live_server: LiveServer, alice_live: ApiClient
) -> None:
    sid = _stopped_server(alice_live)
    disk = _disk(live_server, sid)
    qh.write_pattern(disk, 0x01)
    first = alice_live.create_snapshot(sid, "first")
    qh.write_pattern(disk, 0x02)
    second = alice_live.create_snapshot(sid, "second")

    alice_live.post(f"/snapshots/{first['id']}/restore/")
    alice_live.wait_server(sid, "stopped")
    assert qh.has_pattern(disk, 0x01)
    alice_live.post(f"/snapshots/{second['id']}/restore/")
    alice_live.wait_server(sid, "stopped")
    assert qh.has_pattern(disk, 0x02)

    first_tag = snapshot_tag(live_server.database_url, first["id"])
    assert alice_live.delete(f"/snapshots/{first['id']}/").status_code == 204

    def tags() -> str:
        listing = subprocess.run(
            ["qemu-img", "snapshot", "-l", "-U", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        )
        return listing.stdout

    deadline = time.monotonic() + 30
    while first_tag in tags() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first_tag not in tags()
    assert snapshot_tag(live_server.database_url, second["id"]) in tags()
    assert "before-update" not in tags()  # tags never carry the user's name


def test_concurrency_rules_over_http(live_server: LiveServer, alice_live: ApiClient) -> None:
    sid = alice_live.create_server("busy")["id"]
    headers = {"Authorization": f"Bearer {alice_live.token}"}
    url = f"{live_server.base_url}/api/v1/snapshots/"

    def create(i: int) -> int:
        body = {"server_id": sid, "name": f"parallel-{i}"}
        return httpx.post(url, json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(create, range(10)))
    assert statuses == [201] * 5 + [400] * 5

    snapshot_ids = [s["id"] for s in alice_live.get("/snapshots/").json()["results"]]
    for snapshot_id in snapshot_ids:
        alice_live.wait_snapshot(snapshot_id)

    def restore(snapshot_id: int) -> int:
        return httpx.post(f"{url}{snapshot_id}/restore/", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(4) as pool:
        restores = sorted(pool.map(restore, snapshot_ids[:4]))
    assert restores == [200, 400, 400, 400]
    alice_live.wait_server(sid, "running")
