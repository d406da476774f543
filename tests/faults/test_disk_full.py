"""The filesystem holding the disks fills up: a snapshot cannot be written.

The data dir lives on a small tmpfs mounted by the test and filled with a filler file.
The snapshot must fail saying why, and nothing else may suffer: the disk, the earlier
snapshots and the database stay intact, and the failed attempt does not use up a slot.
A second test puts the SQLite database on the full filesystem too.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.faults.conftest import MIB, Faults, SmallFs
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

DATA = 32 * MIB
OLD, NEW = 0xA5, 0x5B
NO_SPACE = "No space left on device"


def _server_with_snapshots(faults: Faults, count: int) -> tuple[int, list[int]]:
    sid = faults.alice.create_server("full", disk_gb=1)["id"]
    qh.write_pattern_running(faults.qmp(sid), OLD, 0, DATA)
    taken = [faults.alice.create_snapshot(sid, f"ok-{i}")["id"] for i in range(count)]
    assert all(faults.snapshot(s)["status"] == "completed" for s in taken)
    return sid, taken


def test_snapshot_on_a_full_disk_fails_cleanly_and_costs_nothing(
    small_fs: SmallFs, fault_root: Path, faults_factory: Callable[..., Faults]
) -> None:
    # Disks on the small filesystem; database and log elsewhere, as an operator would
    # put them (see docs/failure-model.md).
    faults = faults_factory(
        small_fs.mountpoint / "data", fault_root / "vpsd.db", fault_root / "serve.log"
    )
    sid, earlier = _server_with_snapshots(faults, 4)  # one slot of five left
    small_fs.fill()

    failed = faults.request_snapshot(sid, "no-room")
    snapshot = faults.alice.wait_snapshot(failed)
    assert snapshot["status"] == "failed", snapshot
    assert NO_SPACE in snapshot["status_reason"], snapshot
    faults.wait_settled()
    assert faults.server(sid)["status"] == "running"
    for snapshot_id in earlier:
        assert faults.snapshot(snapshot_id)["status"] == "completed"

    small_fs.free()
    # The failed attempt holds no slot: the fifth snapshot is accepted, the sixth is not.
    fifth = faults.alice.create_snapshot(sid, "fifth")
    assert fifth["status"] == "completed", fifth
    refused = faults.alice.post("/snapshots/", json={"server_id": sid, "name": "sixth"})
    assert refused.status_code == 400 and "limit" in refused.json()["detail"]

    # The disk is sound and every earlier snapshot restores to exactly its bytes.
    qh.write_pattern_running(faults.qmp(sid), NEW, 0, DATA)
    faults.stop_server(sid)
    # QEMU may leak the cluster it had allocated when the write failed: 64 KiB of wasted
    # space that ``qemu-img check -r leaks`` reclaims, never a damaged image.
    faults.assert_disk_clean(sid, allow_leaks=True)
    tags = faults.disk_tags(sid)
    assert {faults.tag(s) for s in earlier} <= tags
    assert faults.tag(failed) not in tags
    assert faults.alice.post(f"/snapshots/{earlier[0]}/restore/").status_code == 200
    faults.alice.wait_server(sid, "stopped")
    assert qh.has_pattern(faults.disk(sid), OLD, 0, DATA)
    faults.assert_disk_clean(sid, allow_leaks=True)


def _json_error(response: Any) -> None:
    """A refusal vpsd could make on a full disk: an error status with the documented body."""
    assert response.status_code >= 400, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["errors"], list), body


def test_database_on_the_full_disk_too_gives_clean_errors_and_recovers(
    small_fs: SmallFs, faults_factory: Callable[..., Faults], fault_root: Path
) -> None:
    data_dir = small_fs.mountpoint / "data"
    faults = faults_factory(data_dir, data_dir / "vpsd.db", fault_root / "serve.log")
    sid, earlier = _server_with_snapshots(faults, 1)
    small_fs.fill()

    # Every answer is either a success or a clean JSON error; vpsd itself never dies. (A
    # fresh connection per request: see test_a_500_keeps_the_connection_usable.)
    fresh = {"Connection": "close"}
    answers = []
    for attempt in range(3):
        response = faults.alice.post(
            "/snapshots/", json={"server_id": sid, "name": f"f{attempt}"}, headers=fresh
        )
        answers.append(response.status_code)
        if response.status_code != 201:
            _json_error(response)
    listed = faults.alice.get("/snapshots/", headers=fresh)
    assert listed.status_code == 200, listed.text
    assert faults.live.process is not None and faults.live.process.poll() is None, "vpsd died"

    small_fs.free()
    # Once space is back, whatever was accepted settles without a restart...
    faults.wait_settled()
    assert faults.live.process.poll() is None
    for snapshot in faults.alice.get("/snapshots/", params={"server_id": sid}).json()["results"]:
        assert snapshot["status"] in ("completed", "failed"), snapshot
        if snapshot["status"] == "failed":
            assert snapshot["status_reason"], snapshot
    assert faults.snapshot(earlier[0])["status"] == "completed"
    # ...and vpsd works as before.
    latest = faults.alice.create_snapshot(sid, "after")
    assert latest["status"] == "completed", latest
    wait_for(lambda: faults.server(sid)["status"] == "running", 10, what="server running")
    faults.stop_server(sid)
    faults.assert_disk_clean(sid, allow_leaks=True)
    print(f"answers while full: {answers}")


def test_a_result_that_cannot_be_written_is_recorded_once_space_is_back(
    small_fs: SmallFs, faults_factory: Callable[..., Faults], fault_root: Path
) -> None:
    data_dir = small_fs.mountpoint / "data"
    faults = faults_factory(data_dir, data_dir / "vpsd.db", fault_root / "serve.log")
    sid = faults.alice.create_server("full-db")["id"]
    folder = faults.folder(sid)

    # The stop is accepted while there is room; the guest ignores ACPI, so the VM is forced
    # off a second later, and by then the database cannot take the result.
    assert faults.alice.post(f"/servers/{sid}/stop/").status_code == 200
    small_fs.fill()
    wait_for(lambda: not qh.qemu_pids_under(folder), 30, what="the VM to be forced off")

    small_fs.free()
    # No restart: the stop is recorded as soon as the database takes writes again.
    faults.wait_settled(timeout=30)
    assert faults.server(sid)["status"] == "stopped"
    assert faults.alice.post(f"/servers/{sid}/start/").status_code == 200
    faults.alice.wait_server(sid, "running")


def test_a_500_keeps_the_connection_usable(
    small_fs: SmallFs, faults_factory: Callable[..., Faults], fault_root: Path, tmp_path: Path
) -> None:
    data_dir = small_fs.mountpoint / "data"
    faults = faults_factory(data_dir, data_dir / "vpsd.db", fault_root / "serve.log")
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public_key = key.with_suffix(".pub").read_text().strip()
    small_fs.fill()
    conn = http.client.HTTPConnection("127.0.0.1", faults.live.port, timeout=30)
    headers = {"Authorization": f"Bearer {faults.alice.token}", "Content-Type": "application/json"}
    try:
        # Saving a key is a plain database write (no admission check that could refuse it
        # first): on the full filesystem it fails, twice on the same keep-alive connection.
        for name in ("first", "second"):
            conn.request(
                "POST",
                "/api/v1/ssh_keys/",
                body=json.dumps({"name": name, "public_key": public_key}),
                headers=headers,
            )
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 500 and body["detail"], body
    finally:
        conn.close()
