"""Backups when their storage or the disks misbehave, on the fake driver and store: a
repository gone, a backup gone from it, a disk left incomplete, a stop behind a backup, and
failure reasons with host paths (issue 22, items 4, 5, 6 and 9). The same on real QEMU and
restic: tests/faults/test_backup_storage_faults.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiClient, wait_for
from vpsd.backups.base import MISSING
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.hypervisor.base import IncompleteDisks
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations.backup_handlers import NOT_STORED
from vpsd.services.backups import STORAGE_REASONS

HOST_PATH = "/var/lib/vpsd/servers/13/disk0.qcow2"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The storage is looked at every 0.2 s, so that what is found shows at once."""
    return settings.model_copy(update={"backup_storage_check_seconds": 0.2})


def _storage_up(client: TestClient) -> float | None:
    found = re.search(r"^vpsd_backup_storage_up\{host=\"[^\"]+\"\} (\S+)$", _metrics(client), re.M)
    return float(found.group(1)) if found else None


def _metrics(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def _server(alice: ApiClient, sid: int) -> tuple[str, str | None]:
    body = alice.get(f"/servers/{sid}/").json()
    return body["status"], body["status_reason"]


def _settled(alice: ApiClient, sid: int) -> tuple[str, str | None]:
    """The server's status and reason once no operation of it is under way."""
    return wait_for(
        lambda: (state := _server(alice, sid))[0] not in ("restoring", "stopping") and state,
        what=f"server {sid} to settle",
    )


def test_a_missing_repository_fails_backups_and_restores_and_shows(
    alice: ApiClient, client: TestClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"old")
    kept = alice.create_backup(sid, "kept")
    assert kept["status"] == "completed"
    wait_for(lambda: _storage_up(client) == 1.0, what="the storage to show up")

    fake_store.vanish()
    failed = alice.create_backup(sid, "while-missing")
    assert (failed["status"], failed["status_reason"]) == ("failed", MISSING)
    assert not fake_store.exists  # nothing made in its place
    wait_for(lambda: _storage_up(client) == 0.0, what="the gauge to say the storage is down")
    shown = alice.get(f"/backups/{kept['id']}/").json()
    assert (shown["status"], shown["status_reason"]) == ("completed", STORAGE_REASONS["missing"])

    # The restore fails before the server is stopped: it runs on, its disk untouched.
    fake_driver.write(sid, b"new")
    calls = len(fake_driver.calls)
    assert alice.post(f"/backups/{kept['id']}/restore/").status_code == 200
    status, reason = _settled(alice, sid)
    assert status == "running"
    assert reason == (
        f"restore from backup {kept['id']} failed: {MISSING}; the server was not changed"
    )
    assert ("kill", sid) not in fake_driver.calls[calls:]
    assert fake_driver.read(sid) == b"new"

    fake_store.come_back()
    wait_for(lambda: _storage_up(client) == 1.0, what="the storage to show up again")
    assert alice.get(f"/backups/{kept['id']}/").json()["status_reason"] is None
    assert alice.post(f"/backups/{kept['id']}/restore/").status_code == 200
    assert _settled(alice, sid) == ("running", None)
    assert fake_driver.read(sid) == b"old"


def test_a_backup_gone_from_the_storage_is_not_restored(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"old")
    backup = alice.create_backup(sid)
    fake_store.forget(fake_store.find({}))  # removed by hand, behind vpsd's back
    fake_driver.write(sid, b"new")
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    assert _settled(alice, sid) == (
        "running",
        f"restore from backup {backup['id']} failed: {NOT_STORED}; the server was not changed",
    )
    assert fake_driver.read(sid) == b"new"


def test_a_disk_left_incomplete_is_never_started(alice: ApiClient, fake_driver: FakeDriver) -> None:
    """Issue 22, item 5: after a restore killed half-way, ``start`` booted the mix."""
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"A" * 4096)
    backup = alice.create_backup(sid)
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    # What vpsd dying mid-restore leaves: half written, never finished.
    with (
        pytest.raises(RuntimeError),
        fake_driver.disk_writer(fake_driver.spec(sid), "disk0", 4096) as sink,
    ):
        sink.write(b"B" * 1024)
        raise RuntimeError("vpsd was killed")
    assert fake_driver.incomplete_disks(sid) == ["disk0"]

    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "error")
    assert _server(alice, sid)[1] == str(IncompleteDisks())
    assert fake_driver.info(sid).pid is None  # never booted

    # The user says what the disk is to be: a restore (allowed from error) makes it whole.
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped")
    assert fake_driver.read(sid) == b"A" * 4096
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "running")


def test_a_stop_cancels_the_backup_it_would_wait_for(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    """Issue 22, item 9: a stop waited behind a stuck backup."""
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"data")
    fake_driver.delay("backup_source", 3.0)  # a long backup
    response = alice.post("/backups/", json={"server_id": sid, "name": "long"})
    backup_id = response.json()["id"]
    wait_for(lambda: ("backup_source", sid) in fake_driver.calls, what="the backup to read")
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200

    backup = alice.wait_backup(backup_id)
    assert (backup["status"], backup["status_reason"]) == (
        "failed",
        "cancelled: the server was stopped",
    )
    alice.wait_server(sid, "stopped")
    assert fake_store.stored == {}
    assert fake_driver.snapshot_tags(sid) == set()
    fake_driver.delay("backup_source", 0)
    assert alice.create_backup(sid, "after")["status"] == "completed"


@pytest.mark.parametrize("method", ["snapshot_create", "start", "snapshot_restore"])
def test_failure_reasons_name_no_host_path(
    alice: ApiClient, fake_driver: FakeDriver, method: str
) -> None:
    """Issue 22, item 6: a failed snapshot said "Could not open '/…/servers/13/disk0.qcow2'"."""
    sid = alice.create_server()["id"]
    fault = f"qemu-img: Could not open '{HOST_PATH}': Permission denied"
    if method == "snapshot_create":
        fake_driver.fail_next(method, fault)
        shown = alice.create_snapshot(sid)
        assert shown["status"] == "failed"
        reason = shown["status_reason"]
        assert reason == (
            "the snapshot could not be taken (a problem on the host; the operator's log has "
            "the details)"
        )
    elif method == "start":
        assert alice.post(f"/servers/{sid}/stop/").status_code == 200
        alice.wait_server(sid, "stopped")
        fake_driver.fail_next(method, fault)
        assert alice.post(f"/servers/{sid}/start/").status_code == 200
        alice.wait_server(sid, "error")
        reason = _server(alice, sid)[1]
    else:
        snapshot = alice.create_snapshot(sid)
        fake_driver.fail_next(method, fault)
        assert alice.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
        alice.wait_server(sid, "error")
        reason = _server(alice, sid)[1]
    assert reason and "/" not in reason, reason
    assert "operator's log" in reason


def test_a_plain_reason_is_shown_as_it_is(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server()["id"]
    fake_driver.fail_next("snapshot_create", "the disk is busy; try again")
    assert alice.create_snapshot(sid)["status_reason"] == "the disk is busy; try again"
