"""Backups of a real Debian guest: taken while it runs, filesystem-consistent; a new server
made from one boots as a machine of its own with the data; restored in place, the guest's
files are back.

Runs on the session's shared server (``conftest.guest``) and leaves it running with SSH
answering.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.guest.conftest import Guest

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.guest]


def _host_key(port: int) -> str:
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return scan.stdout.split()[-1]


def test_backup_restore_and_a_new_server_from_it(guest: Guest) -> None:
    guest.ssh("echo 'in the backup' > /root/backed-up && sync")
    backup = guest.client.create_backup(guest.server_id, "before-migration", timeout=600)
    assert backup["status"] == "completed", backup
    assert backup["consistency"] == "filesystem"
    assert isinstance(backup["size_mb"], int) and backup["size_mb"] > 100
    assert guest.status()["status"] == "running"
    guest.ssh("rm /root/backed-up")

    # A new server from the backup, without ssh_keys: it gets the keys of the one it came from.
    response = guest.client.post(
        "/servers/", json={"name": "from-backup", "disk_gb": 4, "backup_id": backup["id"]}
    )
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["image"] == "debian-12" and new["source"] == {"backup_id": backup["id"]}
    guest.client.wait_server(new["id"], "running", timeout=600)
    copy = Guest(
        guest.client, guest.service, new["id"], "from-backup", new["ssh"]["port"], guest.key
    )
    copy.wait_ssh()
    assert copy.ssh("cat /root/backed-up").strip() == "in the backup"
    assert copy.ssh("hostname").strip() == "from-backup"  # a first boot of its own
    assert _host_key(copy.port) != _host_key(guest.port)
    assert guest.client.delete(f"/servers/{new['id']}/").status_code == 204
    guest.client.wait_server(new["id"], None, timeout=120)

    # Restored in place: the server is stopped, its disk overwritten, and it boots again.
    restore = guest.client.post(f"/backups/{backup['id']}/restore/")
    assert restore.status_code == 200, restore.text
    guest.client.wait_server(guest.server_id, "running", timeout=600)
    guest.wait_ssh()
    assert guest.ssh("cat /root/backed-up").strip() == "in the backup"
    assert guest.ssh("hostname").strip() == guest.name
