"""Real bytes through real backups: ``vpsd serve`` on QEMU, a restic repository, qemu-io.

A backup taken while the server runs or is stopped holds exactly the disk's bytes at that
point; restored in place it puts them back (zeros included, over an image's data too); a
new server made from a backup or a snapshot starts with them; the temporary snapshot a
backup reads from never outlives it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, stopped_server
from tests.live_server import LiveServer, serving

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]
GIB = 1024**3
MIB = qh.MIB


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """One ``vpsd serve`` for the module, its backups in a repository beside its data dir."""
    with serving() as live:
        yield live


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> ApiClient:
    return server.client(server.create_token("alice"), timeout=60.0)


def test_stopped_server_backup_and_restore_bring_back_the_bytes(
    server: LiveServer, alice: ApiClient
) -> None:
    sid = stopped_server(alice, "stopped", disk_gb=2)
    disk = server.disk(sid)
    qh.write_pattern(disk, 0xA1, 0, 64 * MIB)
    qh.write_pattern(disk, 0xA2, GIB, 16 * MIB)
    backup = alice.create_backup(sid, "before-update", timeout=300)
    assert backup["status"] == "completed", backup
    assert backup["size_mb"] == 80
    assert 0 < backup["stored_mb"] <= 80  # deduplicated: a pattern is a few chunks
    assert backup["consistency"] == "crash"  # a blank server was forced off
    assert qh.snapshot_tags(disk) == []

    qh.write_pattern(disk, 0xB2, 0, 8 * MIB)
    qh.write_pattern(disk, 0xB3, 512 * MIB, 8 * MIB)  # zeros when backed up
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped", timeout=300)
    assert qh.has_pattern(disk, 0xA1, 0, 64 * MIB)
    assert qh.has_pattern(disk, 0xA2, GIB, 16 * MIB)
    assert qh.has_pattern(disk, 0x00, 512 * MIB, 8 * MIB)
    assert qh.image_check(disk).returncode == 0


def test_running_server_is_backed_up_without_stopping(server: LiveServer, alice: ApiClient) -> None:
    sid = alice.create_server("live", disk_gb=1)["id"]
    disk = server.disk(sid)
    qmp = server.data_dir / "servers" / str(sid) / "qmp.sock"
    qh.write_pattern_running(qmp, 0xC3, 0, 8 * MIB)
    backup = alice.create_backup(sid, "live", timeout=300)
    assert backup["status"] == "completed", backup
    assert backup["size_mb"] == 8
    info = alice.get(f"/servers/{sid}/").json()
    assert (info["status"], info["status_reason"]) == ("running", None)
    assert qh.snapshot_tags(disk) == []

    qh.write_pattern_running(qmp, 0xD4, 0, 8 * MIB)
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "running", timeout=300)
    assert qh.has_pattern_running(qmp, disk, 0xC3, 0, 8 * MIB)


def test_a_backup_outlives_its_server_and_makes_a_new_one(
    server: LiveServer, alice: ApiClient
) -> None:
    sid = stopped_server(alice, "doomed")
    qh.write_pattern(server.disk(sid), 0xE5, 4 * MIB, 32 * MIB)
    backup = alice.create_backup(sid, "last-words", timeout=300)
    assert alice.delete(f"/servers/{sid}/").status_code == 204
    alice.wait_server(sid, None)
    assert not server.disk(sid).exists()
    assert alice.get(f"/backups/{backup['id']}/").json()["server"] == {"id": sid, "name": "doomed"}

    response = alice.post(
        "/servers/", json={"name": "reborn", "disk_gb": 2, "backup_id": backup["id"]}
    )
    assert response.status_code == 201, response.text
    new_id = response.json()["id"]
    alice.wait_server(new_id, "running", timeout=300)
    assert alice.post(f"/servers/{new_id}/stop/").status_code == 200
    alice.wait_server(new_id, "stopped")
    disk = server.disk(new_id)
    assert qh.has_pattern(disk, 0x00, 0, 4 * MIB)
    assert qh.has_pattern(disk, 0xE5, 4 * MIB, 32 * MIB)
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    assert '"virtual-size": 2147483648' in info  # grown to the disk asked for
    assert "backing-filename" not in info  # on its own: no other server's files below it


def test_a_new_server_from_a_snapshot_of_a_running_server(
    server: LiveServer, alice: ApiClient
) -> None:
    sid = alice.create_server("origin", disk_gb=1)["id"]
    qmp = server.data_dir / "servers" / str(sid) / "qmp.sock"
    qh.write_pattern_running(qmp, 0x5A, 0, 16 * MIB)
    snapshot = alice.create_snapshot(sid, "golden")
    qh.write_pattern_running(qmp, 0x6B, 0, 16 * MIB)

    response = alice.post(
        "/servers/", json={"name": "copy", "disk_gb": 1, "snapshot_id": snapshot["id"]}
    )
    assert response.status_code == 201, response.text
    assert response.json()["source"] == {"snapshot_id": snapshot["id"]}
    copy_id = response.json()["id"]
    alice.wait_server(copy_id, "running", timeout=120)
    copy_qmp = server.data_dir / "servers" / str(copy_id) / "qmp.sock"
    assert qh.has_pattern_running(copy_qmp, server.disk(copy_id), 0x5A, 0, 16 * MIB)
    assert qh.has_pattern_running(qmp, server.disk(sid), 0x6B, 0, 16 * MIB)
    assert qh.snapshot_tags(server.disk(copy_id)) == []  # the origin's snapshots stay the origin's
