"""The Backups API on the fake driver and store: shapes, bytes, rules, failures, tenancy,
and new servers made from a snapshot or a backup."""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from tests.helpers import ApiClient, snapshot_tag, wait_for
from vpsd.agent.recovery import recover
from vpsd.backups import same_filesystem_warning
from vpsd.backups.base import BackupStoreError
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.models import Backup, BackupStatus, BackupType, Server
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations.context import OperationContext

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
BACKUP_KEYS = {
    "id",
    "server",
    "name",
    "type",
    "status",
    "size_mb",
    "stored_mb",
    "created_at",
    "description",
    "status_reason",
    "consistency",
    "progress",
    "completed_at",
}
MIB = 1024 * 1024


def test_create_answers_in_the_snapshot_pages_style(alice: ApiClient) -> None:
    server = alice.create_server("web-server-01")
    response = alice.post(
        "/backups/",
        json={"server_id": server["id"], "name": "weekly-offsite", "description": "off site"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == BACKUP_KEYS | {"message"}
    assert body["server"] == {"id": server["id"], "name": "web-server-01"}
    assert (body["name"], body["type"], body["status"]) == (
        "weekly-offsite",
        "manual",
        "in_progress",
    )
    assert body["size_mb"] is None and body["stored_mb"] is None
    assert body["progress"] == 0
    assert TIME.match(body["created_at"])
    assert f"/api/v1/backups/{body['id']}/" in body["message"]
    done = alice.wait_backup(body["id"])
    assert set(done) == BACKUP_KEYS
    assert done["status"] == "completed", done
    assert done["progress"] == 100
    assert TIME.match(done["completed_at"])


def test_backup_holds_the_bytes_and_restore_puts_them_back(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    original = b"\xaa" * (2 * MIB) + b"tail"
    fake_driver.write(sid, original)
    backup = alice.create_backup(sid, "before-update")
    assert backup["status"] == "completed", backup
    assert backup["size_mb"] == 3
    assert backup["stored_mb"] is not None and backup["stored_mb"] >= 1
    # The point in time came from a temporary snapshot, which is gone.
    assert fake_driver.snapshot_tags(sid) == set()
    assert [data for data, _ in fake_store.stored.values()] == [original]

    fake_driver.write(sid, b"broken by an update")
    restore = alice.post(f"/backups/{backup['id']}/restore/")
    assert restore.status_code == 200, restore.text
    body = restore.json()
    assert body["status"] == "success"
    assert body["backup"] == {
        "id": backup["id"],
        "name": "before-update",
        "created_at": backup["created_at"],
    }
    assert body["server"] == {"id": sid, "name": "web-1", "status": "restoring"}
    alice.wait_server(sid, "running")  # back to its prior power state
    assert fake_driver.read(sid) == original


def test_second_backup_of_unchanged_data_stores_nothing_new(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, bytes(range(256)) * 8192)
    first = alice.create_backup(sid, "first")
    second = alice.create_backup(sid, "second")
    assert first["stored_mb"] >= 1
    assert second["stored_mb"] == 0


def test_a_stopped_server_stays_stopped_after_a_restore(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"good")
    backup = alice.create_backup(sid)
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    fake_driver.write(sid, b"bad")
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped")
    assert fake_driver.read(sid) == b"good"


def test_backups_outlive_their_server_and_make_a_new_one(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server("old-web")["id"]
    fake_driver.write(sid, b"customer data")
    backup = alice.create_backup(sid)
    assert alice.delete(f"/servers/{sid}/").status_code == 204
    alice.wait_server(sid, None)

    listed = alice.get("/backups/", params={"server_id": sid}).json()
    assert [b["id"] for b in listed["results"]] == [backup["id"]]
    assert listed["results"][0]["server"] == {"id": sid, "name": "old-web"}
    refused = alice.post(f"/backups/{backup['id']}/restore/")
    assert refused.status_code == 400
    assert "backup_id" in refused.json()["detail"]

    created = alice.post(
        "/servers/", json={"name": "new-web", "disk_gb": 1, "backup_id": backup["id"]}
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["source"] == {"backup_id": backup["id"]}
    alice.wait_server(new["id"], "running")
    assert fake_driver.read(new["id"]) == b"customer data"
    assert alice.get(f"/servers/{new['id']}/").json()["source"] == {"backup_id": backup["id"]}


def test_a_new_server_from_a_snapshot_has_its_bytes(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server(disk_gb=2)["id"]
    fake_driver.write(sid, b"at snapshot time")
    snapshot = alice.create_snapshot(sid)
    fake_driver.write(sid, b"later")
    created = alice.post(
        "/servers/", json={"name": "clone", "disk_gb": 2, "snapshot_id": snapshot["id"]}
    )
    assert created.status_code == 201, created.text
    assert created.json()["source"] == {"snapshot_id": snapshot["id"]}
    alice.wait_server(created.json()["id"], "running")
    assert fake_driver.read(created.json()["id"]) == b"at snapshot time"
    assert fake_driver.read(sid) == b"later"


def test_a_new_server_cannot_be_smaller_than_its_source(alice: ApiClient) -> None:
    sid = alice.create_server(disk_gb=3)["id"]
    snapshot = alice.create_snapshot(sid)
    backup = alice.create_backup(sid)
    for source in ({"snapshot_id": snapshot["id"]}, {"backup_id": backup["id"]}):
        response = alice.post("/servers/", json={"name": "small", "disk_gb": 2, **source})
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["field"] == "body.disk_gb"
        assert "at least 3 GiB" in response.json()["errors"][0]["message"]
    both = alice.post(
        "/servers/",
        json={"name": "x", "disk_gb": 3, "snapshot_id": snapshot["id"], "backup_id": backup["id"]},
    )
    assert both.status_code == 400
    assert "not both" in both.text
    other_image = alice.post(
        "/servers/",
        json={"name": "x", "disk_gb": 3, "snapshot_id": snapshot["id"], "image": "debian-12"},
    )
    assert other_image.status_code == 400
    assert other_image.json()["errors"][0]["field"] == "body.image"
    assert len(alice.get("/servers/").json()["results"]) == 1


def test_at_most_ten_manual_backups_automatic_ones_apart(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    for index in range(10):
        response = alice.post("/backups/", json={"server_id": sid, "name": f"b{index}"})
        assert response.status_code == 201, response.text
    refused = alice.post("/backups/", json={"server_id": sid, "name": "eleventh"})
    assert refused.status_code == 400
    assert "at most 10 manual backups" in refused.json()["detail"]
    first = alice.get("/backups/", params={"server_id": sid}).json()["results"][-1]
    alice.wait_backup(first["id"])
    assert alice.delete(f"/backups/{first['id']}/").status_code == 204
    assert alice.post("/backups/", json={"server_id": sid, "name": "room"}).status_code == 201


def test_a_failing_store_fails_the_backup_and_leaves_the_server_alone(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"data")
    fake_store.fail_next(
        "save_disk", "the backup storage is full (the operator's log has the details)"
    )
    backup = alice.create_backup(sid)
    assert backup["status"] == "failed"
    assert backup["status_reason"] == (
        "the backup storage is full (the operator's log has the details)"
    )
    assert backup["size_mb"] is None and backup["progress"] is None
    server = alice.get(f"/servers/{sid}/").json()
    assert (server["status"], server["status_reason"]) == ("running", None)
    assert fake_driver.read(sid) == b"data"
    assert fake_driver.snapshot_tags(sid) == set()
    assert fake_store.stored == {}
    # A failed backup does not count toward the limit and cannot be restored.
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 400


def test_a_restore_cut_short_puts_the_disk_back_and_says_so(
    alice: ApiClient,
    fake_driver: FakeDriver,
    fake_store: FakeBackupStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22, item 5: a restore whose stream was cut left the disk partly overwritten,
    and the server in ``error``."""
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"A" * 4096)
    backup = alice.create_backup(sid)
    fake_driver.write(sid, b"B" * 4096)

    def cut_short(snapshot: str, disk: str, size_bytes: int, sink: IO[bytes]) -> None:
        with sink:
            sink.write(b"A" * 1024)
        raise BackupStoreError("the backup storage cannot be reached")

    monkeypatch.setattr(fake_store, "load_disk", cut_short)
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped")  # it was running: the restore stopped it
    reason = alice.get(f"/servers/{sid}/").json()["status_reason"]
    assert reason == (
        f"restore from backup {backup['id']} failed: the backup storage cannot be reached; "
        "its disks were put back as they were"
    )
    assert fake_driver.read(sid) == b"B" * 4096
    assert fake_driver.incomplete_disks(sid) == []
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "running")


def test_delete_forgets_the_data(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"x")
    backup = alice.create_backup(sid)
    assert len(fake_store.stored) == 1
    assert alice.delete(f"/backups/{backup['id']}/").status_code == 204
    assert alice.get(f"/backups/{backup['id']}/").status_code == 404
    wait_for(lambda: fake_store.stored == {}, what="the stored data to be forgotten")


def test_another_accounts_backups_are_not_found(alice: ApiClient, bob: ApiClient) -> None:
    sid = alice.create_server()["id"]
    backup = alice.create_backup(sid)
    bid = backup["id"]
    assert bob.get(f"/backups/{bid}/").status_code == 404
    assert bob.post(f"/backups/{bid}/restore/").status_code == 404
    assert bob.delete(f"/backups/{bid}/").status_code == 404
    assert bob.get("/backups/").json() == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }
    assert bob.post("/backups/", json={"server_id": sid, "name": "mine"}).status_code == 404
    from_backup = bob.post("/servers/", json={"name": "steal", "disk_gb": 1, "backup_id": bid})
    assert from_backup.status_code == 404
    assert from_backup.json()["detail"] == "backup not found"
    snapshot = alice.create_snapshot(sid)
    from_snapshot = bob.post(
        "/servers/", json={"name": "steal", "disk_gb": 1, "snapshot_id": snapshot["id"]}
    )
    assert from_snapshot.status_code == 404
    assert bob.get(f"/servers/{sid}/backup-policy/").status_code == 404
    assert bob.request("PUT", f"/servers/{sid}/backup-policy/", json={}).status_code == 404
    assert alice.get(f"/backups/{bid}/").json()["status"] == "completed"


def test_bad_input_is_a_clear_400_and_changes_nothing(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    bad = [
        {"server_id": sid, "name": "has space"},
        {"server_id": sid, "name": ""},
        {"server_id": "1", "name": "x"},
        {"server_id": sid, "name": "x", "extra": 1},
        {"server_id": sid, "name": "x", "description": "d" * 1001},
    ]
    for body in bad:
        response = alice.post("/backups/", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["errors"], body
    for policy in ({"hour": 24}, {"keep": 0}, {"frequency": "hourly"}, {"enabled": "yes"}):
        response = alice.request("PUT", f"/servers/{sid}/backup-policy/", json=policy)
        assert response.status_code == 400, (policy, response.text)
    assert alice.get("/backups/").json()["count"] == 0
    assert alice.get(f"/servers/{sid}/backup-policy/").json()["enabled"] is False


def test_recovery_deletes_leftover_temporary_snapshots_and_settles_backups(
    alice: ApiClient, settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.snapshot_create(sid, "vpsd-backup-0123456789abcdef")  # left by a crash
    snapshot = alice.create_snapshot(sid)
    database = Database(settings.effective_database_url)
    try:
        with database.write() as session:  # a backup whose operation vanished
            session.add(
                Backup(
                    account_id=session.scalars(select(Server.account_id)).one(),
                    server_id=sid, name="orphan", type=BackupType.MANUAL,
                    status=BackupStatus.IN_PROGRESS, disk_gb=1,
                )
            )  # fmt: skip
        recover(OperationContext(database, fake_driver, settings, fake_store))
    finally:
        database.dispose()
    assert fake_driver.snapshot_tags(sid) == {
        snapshot_tag(settings.effective_database_url, snapshot["id"])
    }
    [orphan] = alice.get("/backups/").json()["results"]
    assert orphan["status"] == "failed"
    assert orphan["status_reason"] == "interrupted: vpsd stopped before it was taken"


def test_operators_are_warned_when_backups_share_the_disks_filesystem(
    settings: Settings, tmp_path: Path
) -> None:
    assert "same filesystem" in (same_filesystem_warning(settings) or "")
    remote = settings.model_copy(update={"backup_repository": "sftp:backup@storage:/srv/vpsd"})
    assert same_filesystem_warning(remote) is None
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != settings.data_dir.stat().st_dev:
        apart = settings.model_copy(update={"backup_repository": str(shm / "vpsd-repo")})
        assert same_filesystem_warning(apart) is None


def test_a_deleted_servers_backup_can_be_deleted(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"old")
    backup = alice.create_backup(sid)
    assert alice.delete(f"/servers/{sid}/").status_code == 204
    alice.wait_server(sid, None)
    assert alice.delete(f"/backups/{backup['id']}/").status_code == 204
    wait_for(lambda: fake_store.stored == {}, what="the deleted server's backup to be forgotten")
    assert alice.get("/backups/").json()["count"] == 0


def failed_copy(alice: ApiClient, fake_driver: FakeDriver) -> int:
    """A server made from a snapshot whose disk could not be made: in ``error``; its id."""
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"the data")
    snapshot = alice.create_snapshot(sid)
    fake_driver.fail_next("snapshot_clone", "qemu-img convert failed")
    created = alice.post(
        "/servers/", json={"name": "copy", "disk_gb": 1, "snapshot_id": snapshot["id"]}
    )
    copy: int = created.json()["id"]
    alice.wait_server(copy, "error")
    return copy


def test_a_copy_whose_disk_was_never_made_is_not_started_blank(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    copy = failed_copy(alice, fake_driver)
    refused = alice.post(f"/servers/{copy}/start/")
    assert refused.status_code == 400
    assert "never made from snapshot" in refused.json()["detail"]
    assert not fake_driver.exists(copy)  # no empty disk made behind the user's back
    assert alice.delete(f"/servers/{copy}/").status_code == 204


def test_a_copys_host_refuses_to_start_it_blank_whatever_the_record_says(
    alice: ApiClient, fake_driver: FakeDriver, db: Database
) -> None:
    """The API refuses by what the host's agent recorded (``disks_made``); the host's start
    handler looks at the disk itself, so a record that is wrong boots no empty disk."""
    copy = failed_copy(alice, fake_driver)
    with db.write() as session:
        server = session.get(Server, copy)
        assert server is not None and not server.disks_made
        server.disks_made = True  # a record that says otherwise than the disk
    assert alice.post(f"/servers/{copy}/start/").status_code == 200
    alice.wait_server(copy, "error")
    reason = alice.get(f"/servers/{copy}/").json()["status_reason"]
    assert "never made from its source" in reason
    assert not fake_driver.exists(copy)
