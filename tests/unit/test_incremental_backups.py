"""Incremental backups through the API on the fake driver and store: what each backup read,
whether it went on from the previous one, and the bytes every one of them restores."""

from __future__ import annotations

import io
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.helpers import ApiClient, wait_for
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.models import Backup
from vpsd.db.session import Database
from vpsd.hypervisor.fake import GRANULE, FakeDriver

KIB = 1024
DATA = bytes(range(256)) * (256 * KIB // 256)
"""256 KiB of data, no zeros runs: every chunk of it is present."""


@pytest.fixture
def database(settings: Settings) -> Any:
    database = Database(settings.effective_database_url)
    yield database
    database.dispose()


def disks(database: Database, backup_id: int) -> list[dict[str, Any]]:
    """What the backup recorded of each disk."""
    with database.read() as session:
        return list(session.scalars(select(Backup.disks).where(Backup.id == backup_id)).one())


def restored(alice: ApiClient, fake_driver: FakeDriver, sid: int, backup_id: int) -> bytes:
    response = alice.post(f"/backups/{backup_id}/restore/")
    assert response.status_code == 200, response.text
    alice.wait_server(sid, "running")
    return fake_driver.read(sid)


def rewrite(fake_driver: FakeDriver, sid: int, offset: int, data: bytes) -> bytes:
    """Write ``data`` at ``offset`` as the guest would; the disk's new bytes."""
    disk = bytearray(fake_driver.read(sid))
    disk[offset : offset + len(data)] = data
    fake_driver.write(sid, bytes(disk))
    return bytes(disk)


def test_a_second_backup_reads_only_what_changed_and_each_restores_its_bytes(
    alice: ApiClient, fake_driver: FakeDriver, database: Database
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA + bytes(256 * KIB))
    first = alice.create_backup(sid, "first")
    [disk] = disks(database, first["id"])
    assert (disk["incremental"], disk["read_bytes"]) == (False, 256 * KIB)
    assert disk["chain_break"] is None  # a first backup breaks no chain

    changed = rewrite(fake_driver, sid, 10 * KIB, b"\xee" * 100)
    second = alice.create_backup(sid, "second")
    [disk] = disks(database, second["id"])
    assert (disk["incremental"], disk["read_bytes"]) == (True, GRANULE)

    unchanged = alice.create_backup(sid, "third")
    assert disks(database, unchanged["id"])[0]["read_bytes"] == 0

    assert restored(alice, fake_driver, sid, first["id"]) == DATA + bytes(256 * KIB)
    assert restored(alice, fake_driver, sid, second["id"]) == changed
    assert restored(alice, fake_driver, sid, unchanged["id"]) == changed


def test_after_a_restore_the_next_backup_reads_everything_and_says_why(
    alice: ApiClient, fake_driver: FakeDriver, database: Database
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA)
    first = alice.create_backup(sid, "first")
    rewrite(fake_driver, sid, 0, b"\x01" * KIB)
    alice.create_backup(sid, "second")
    assert restored(alice, fake_driver, sid, first["id"]) == DATA
    after = alice.create_backup(sid, "after-restore")
    [disk] = disks(database, after["id"])
    assert not disk["incremental"] and disk["read_bytes"] == len(DATA)
    assert disk["chain_break"] == "the server was restored from a backup"
    assert restored(alice, fake_driver, sid, after["id"]) == DATA


def test_a_failed_backup_leaves_the_chain_to_the_last_kept_one(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore, database: Database
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA)
    alice.create_backup(sid, "first")
    rewrite(fake_driver, sid, 0, b"\x02" * KIB)
    fake_store.fail_next("save_disk", "the backup storage is full")
    assert alice.create_backup(sid, "failed")["status"] == "failed"
    now = rewrite(fake_driver, sid, 100 * KIB, b"\x03" * KIB)
    third = alice.create_backup(sid, "third")
    [disk] = disks(database, third["id"])
    # Both writes since the first backup are read, nothing else.
    assert (disk["incremental"], disk["read_bytes"]) == (True, 2 * GRANULE)
    assert restored(alice, fake_driver, sid, third["id"]) == now


def test_deleting_the_newest_backup_makes_the_next_one_read_everything(
    alice: ApiClient, fake_driver: FakeDriver, database: Database
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA)
    alice.create_backup(sid, "first")
    now = rewrite(fake_driver, sid, 0, b"\x04" * KIB)
    second = alice.create_backup(sid, "second")
    assert alice.delete(f"/backups/{second['id']}/").status_code == 204
    wait_for(lambda: alice.get(f"/backups/{second['id']}/").status_code == 404)
    # The disk's record is the deleted backup's: the first's chunks must not be trusted.
    third = alice.create_backup(sid, "third")
    [disk] = disks(database, third["id"])
    assert not disk["incremental"] and disk["read_bytes"] == len(DATA)
    assert restored(alice, fake_driver, sid, third["id"]) == now


@pytest.mark.parametrize("how", ["inconsistent", "paused", "removed"])
def test_a_spoiled_change_record_makes_the_next_backup_read_everything(
    alice: ApiClient, fake_driver: FakeDriver, database: Database, how: str
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA)
    alice.create_backup(sid, "first")
    fake_driver.spoil_change_records(sid, how)
    now = rewrite(fake_driver, sid, 0, b"\x05" * KIB)
    after = alice.create_backup(sid, "after")
    [disk] = disks(database, after["id"])
    assert not disk["incremental"] and disk["chain_break"]
    assert restored(alice, fake_driver, sid, after["id"]) == now


def test_a_backup_stored_whole_before_chunks_still_restores(
    alice: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore, database: Database
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, DATA)
    backup = alice.create_backup(sid, "old")
    raw = fake_store.save(io.BytesIO(b"old bytes"), "disk0.raw", {"backup": "old"})
    with database.write() as session:  # as a backup taken with restic backup --stdin was
        session.execute(
            update(Backup)
            .where(Backup.id == backup["id"])
            .values(disks=[{"name": "disk0", "size_bytes": 9, "snapshot": raw.snapshot}])
        )
    assert restored(alice, fake_driver, sid, backup["id"]) == b"old bytes"
    # The next backup has no chunked base: it reads everything.
    after = alice.create_backup(sid, "after")
    assert not disks(database, after["id"])[0]["incremental"]
