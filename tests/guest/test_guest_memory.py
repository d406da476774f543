"""A snapshot with memory of a real Debian guest (issue 23, point 1): its restore resumes
the guest where it was, with its processes, its tmpfs and its clock set right, instead of
booting it. Runs on the package's one booted guest and leaves it running, SSH answering."""

from __future__ import annotations

import secrets
import time

from tests.guest.conftest import Guest


def test_a_memory_restore_resumes_processes_tmpfs_and_the_clock(guest: Guest) -> None:
    marker = secrets.token_hex(8)
    sleeper = guest.ssh(
        f"echo {marker} > /dev/shm/vpsd-marker; nohup sleep 100000 >/dev/null 2>&1 & echo $!"
    ).strip()
    snapshot = guest.client.create_snapshot(guest.server_id, "with-memory", memory=True)
    assert snapshot["status"] == "completed", snapshot
    assert snapshot["memory"] is True
    assert isinstance(snapshot["pause_ms"], int) and snapshot["pause_ms"] > 0
    assert snapshot["consistency"] == "filesystem"  # frozen while its memory was saved
    guest.ssh("touch /root/written-after-the-snapshot")  # thawed: the guest writes on

    guest.ssh(f"kill {sleeper}; rm /dev/shm/vpsd-marker")
    time.sleep(3)  # a clock left at the snapshot's moment would now be 3 s late
    restore = guest.client.post(f"/snapshots/{snapshot['id']}/restore/")
    assert restore.status_code == 200, restore.text
    guest.client.wait_server(guest.server_id, "running", timeout=120)
    guest.wait_ssh(timeout=120)

    assert guest.ssh("cat /dev/shm/vpsd-marker").strip() == marker
    assert guest.ssh(f"kill -0 {sleeper} && echo alive").strip() == "alive"
    assert guest.ssh("test -e /root/written-after-the-snapshot || echo gone").strip() == "gone"
    skew = abs(int(guest.ssh("date +%s")) - time.time())
    assert skew <= 2, f"the guest's clock is {skew:.0f} s off after the resume"
    guest.ssh("touch /root/written-after-the-resume")  # its filesystems are thawed
    assert guest.client.delete(f"/snapshots/{snapshot['id']}/").status_code == 204
