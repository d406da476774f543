"""Replay of issue 10, finding 1: a new tenant adopted the previous tenant's VM and data.

With the database deleted while vpsd ran and vpsd restarted, a new account's first server got
id 1 and was ``running`` at once on the old tenant's QEMU, its disk still holding the old
bytes, and its first snapshot was ``completed`` at once because tag ``vpsd-snap-1`` existed.

Now a database that is not the data dir's own is refused at start; a database restored from
an older backup of the same installation starts, but every folder and VM it does not know is
stopped and moved to quarantine (never adopted, never deleted), and snapshot tags are never
made from ids, so an id handed out again cannot meet an old tag. Real QEMU, blank servers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, snapshot_tag
from tests.live_server import VPSD, LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]


@pytest.fixture
def service() -> Iterator[LiveServer]:
    """``vpsd serve`` on the QEMU driver in a short data dir; its VMs are killed after."""
    root = qh.short_tmpdir()
    server = LiveServer(root)
    try:
        server.start()
        yield server
    finally:
        server.close()
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _disk(service: LiveServer, server_id: int) -> Path:
    return service.data_dir / "servers" / str(server_id) / "disk0.qcow2"


def _qmp(service: LiveServer, server_id: int) -> Path:
    return service.data_dir / "servers" / str(server_id) / "qmp.sock"


def _remove_database(service: LiveServer) -> None:
    for path in service.data_dir.glob("vpsd.db*"):
        path.unlink()


def _serve_again(service: LiveServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VPSD, "serve", "--port", str(service.port)],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_new_database_on_an_old_data_dir_is_refused(service: LiveServer) -> None:
    alice = service.client(service.create_token("alice"))
    sid = alice.create_server("old-tenant")["id"]
    qh.write_pattern_running(_qmp(service, sid), 0xAB)
    pids = qh.qemu_pids_under(service.data_dir)
    service.stop()  # VMs keep running
    _remove_database(service)  # the database deleted, as in the attack

    refused = _serve_again(service)
    assert refused.returncode != 0
    assert "not made together" in refused.stdout + refused.stderr
    # Nothing was touched: the old VM runs on, its disk holds its bytes, no new database
    # content (the refused start made an empty one at most) knows any server.
    assert qh.qemu_pids_under(service.data_dir) == pids
    assert qh.has_pattern_running(_qmp(service, sid), _disk(service, sid), 0xAB)


def test_a_database_restored_from_an_older_backup_adopts_nothing(service: LiveServer) -> None:
    alice = service.client(service.create_token("alice"))
    first = alice.create_server("kept")["id"]
    service.stop()
    backup = service.data_dir.parent / f"{service.data_dir.name}.backup.db"
    shutil.copyfile(service.data_dir / "vpsd.db", backup)

    # After the backup: a server the restored database will not know, and a snapshot of
    # the server it knows, whose id the restored database will hand out again.
    service.start()
    second = alice.create_server("lost")["id"]
    qh.write_pattern_running(_qmp(service, second), 0xCD)
    qh.write_pattern_running(_qmp(service, first), 0x22)
    old = alice.create_snapshot(first, "after-backup")
    old_tag = snapshot_tag(service.database_url, old["id"])
    service.stop()
    try:
        _remove_database(service)
        shutil.copyfile(backup, service.data_dir / "vpsd.db")
    finally:
        backup.unlink()

    service.start()
    # The unknown server's VM was stopped and its folder quarantined, bytes and all.
    assert not (service.data_dir / "servers" / str(second)).exists()
    (quarantined,) = (service.data_dir / "quarantine").glob(f"*-server-{second}")
    assert qh.has_pattern(quarantined / "disk0.qcow2", 0xCD)
    assert not any(f"/servers/{second}/" in _cmdline(pid) for pid in _pids(service))
    assert "no record in the database" in service.log()

    # A new tenant's server gets the same id: a fresh disk and a VM of its own.
    bob = service.client(service.create_token("bob"))
    again = bob.create_server("new-tenant")
    assert again["id"] == second
    assert qh.has_pattern_running(_qmp(service, second), _disk(service, second), 0x00)

    # The known server's next snapshot reuses the old snapshot's id, not its tag.
    qh.write_pattern_running(_qmp(service, first), 0x33)
    new = _snapshot(alice, first)
    assert new["id"] == old["id"]
    new_tag = snapshot_tag(service.database_url, new["id"])
    assert new_tag != old_tag
    alice.post(f"/servers/{first}/stop/")
    alice.wait_server(first, "stopped")
    qh.write_pattern(_disk(service, first), 0x44)
    assert alice.post(f"/snapshots/{new['id']}/restore/").status_code == 200
    alice.wait_server(first, "stopped")
    assert qh.has_pattern(_disk(service, first), 0x33)  # taken now, not the old 0x22
    assert "internal snapshots no record knows" in service.log()


def _snapshot(client: ApiClient, server_id: int) -> dict[str, object]:
    snapshot = client.create_snapshot(server_id, "after-restore")
    assert snapshot["status"] == "completed", snapshot
    return snapshot


def _pids(service: LiveServer) -> list[int]:
    return qh.qemu_pids_under(service.data_dir)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
