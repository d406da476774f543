"""A VM's QEMU SIGKILLed behind vpsd's back, idle or in the middle of a snapshot or restore.

The server must turn ``stopped`` (or ``error``) with the reason, the operation under way
must end cleanly (never stuck), vpsd must keep serving, and the disk must stay sound.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests import qemu_helpers as qh
from tests.faults.conftest import MIB, Faults
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

DATA = 64 * MIB
OLD, NEW = 0xA5, 0x5B
DELAYS_MS = [0, 20, 80]


def _kill_vm(faults: Faults, sid: int) -> bool:
    """SIGKILL whatever QEMU the server has right now; False if it had none."""
    try:
        pid = faults.qemu_pid(sid)
    except (OSError, ValueError):
        return False
    if pid not in qh.qemu_pids_under(faults.folder(sid)):
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def _wait_not_running(faults: Faults, sid: int) -> dict[str, object]:
    """Wait until the monitor has noticed (a few seconds at most); return the server."""
    server = wait_for(
        lambda: (s := faults.server(sid))["status"] in ("stopped", "error") and s,
        timeout=15,
        interval=0.1,
        what=f"server {sid} to be marked stopped",
    )
    assert server["status_reason"], f"a server that went down says why: {server}"
    return dict(server)


def _still_serving(faults: Faults) -> None:
    assert faults.alice.get("/servers/").status_code == 200
    assert faults.live.process is not None and faults.live.process.poll() is None


def test_idle_vm_killed_is_reported_stopped_and_can_start_again(faults: Faults) -> None:
    sid = faults.alice.create_server("idle")["id"]
    qh.write_pattern_running(faults.qmp(sid), OLD, 0, DATA)
    assert _kill_vm(faults, sid)
    server = _wait_not_running(faults, sid)
    assert server["status"] == "stopped"
    assert "without a stop request" in str(server["status_reason"])
    _still_serving(faults)
    # Data QEMU flushed before it died is still there, and the server boots again.
    faults.assert_disk_clean(sid)
    assert qh.has_pattern(faults.disk(sid), OLD, 0, DATA)
    assert faults.alice.post(f"/servers/{sid}/start/").status_code == 200
    faults.alice.wait_server(sid, "running")


@pytest.mark.parametrize("delay_ms", DELAYS_MS, ids=[f"{d}ms" for d in DELAYS_MS])
def test_vm_killed_while_a_snapshot_is_taken(faults: Faults, delay_ms: int) -> None:
    sid = faults.alice.create_server("snap-victim")["id"]
    qh.write_pattern_running(faults.qmp(sid), OLD, 0, DATA)
    before = faults.alice.create_snapshot(sid, "before")["id"]

    snapshot_id = faults.request_snapshot(sid, "victim")
    time.sleep(delay_ms / 1000)
    assert _kill_vm(faults, sid)

    snapshot = faults.alice.wait_snapshot(snapshot_id, timeout=30)
    if snapshot["status"] == "failed":
        assert snapshot["status_reason"], snapshot
    server = _wait_not_running(faults, sid)
    assert server["status"] == "stopped", server
    faults.wait_settled()
    _still_serving(faults)

    # A completed snapshot really is on the disk; a failed one may have left a tag on it,
    # which deleting the failed snapshot removes (checked below).
    tags = faults.disk_tags(sid)
    tag = faults.tag(snapshot_id)
    if snapshot["status"] == "completed":
        assert tag in tags
    assert faults.tag(before) in tags
    assert faults.snapshot(before)["status"] == "completed"
    # A QEMU killed halfway through allocating snapshot metadata may leak clusters (exit 3:
    # wasted space, no data at risk); anything else is corruption.
    faults.assert_disk_clean(sid, allow_leaks=True)
    assert qh.has_pattern(faults.disk(sid), OLD, 0, DATA)

    # The earlier snapshot still restores, and the server is usable again.
    assert faults.alice.post(f"/snapshots/{before}/restore/").status_code == 200
    faults.alice.wait_server(sid, "stopped")
    if snapshot["status"] == "failed":
        assert faults.alice.delete(f"/snapshots/{snapshot_id}/").status_code == 204
        faults.wait_settled()
        assert tag not in faults.disk_tags(sid)
    assert faults.alice.post(f"/servers/{sid}/start/").status_code == 200
    faults.alice.wait_server(sid, "running")


@pytest.mark.parametrize("delay_ms", DELAYS_MS, ids=[f"{d}ms" for d in DELAYS_MS])
def test_vm_killed_while_it_is_restored(faults: Faults, delay_ms: int) -> None:
    sid = faults.alice.create_server("restore-victim")["id"]
    qh.write_pattern_running(faults.qmp(sid), OLD, 0, DATA)
    before = faults.alice.create_snapshot(sid, "before")["id"]
    qh.write_pattern_running(faults.qmp(sid), NEW, 0, DATA)

    assert faults.alice.post(f"/snapshots/{before}/restore/").status_code == 200
    time.sleep(delay_ms / 1000)
    _kill_vm(faults, sid)  # the old VM, or the one the restore just booted, or none

    faults.wait_settled()
    server = faults.server(sid)
    if server["status"] != "running":
        assert server["status"] in ("stopped", "error"), server
        assert server["status_reason"], server
    _still_serving(faults)
    faults.stop_server(sid)
    faults.assert_disk_clean(sid)
    # Whatever killed the VM, the disk holds exactly the snapshot's bytes.
    assert qh.has_pattern(faults.disk(sid), OLD, 0, DATA)
    assert faults.snapshot(before)["status"] == "completed"
