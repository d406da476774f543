"""Backups on real QEMU and restic when the storage goes away, turns read-only, or a restore
is cut short, and a stop arrives behind a backup (issue 22, items 4, 5, 6 and 9).

Every check is one a user or an operator could make: the API, ``/metrics``, the service's
log, ``vpsd backups init``, ``restic`` and ``qemu-img``/``qemu-io`` on the files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests import qemu_helpers as qh
from tests.faults.conftest import MIB, Faults
from tests.faults.test_backup_faults import (
    BACKUP_TIMEOUT,
    FIRST,
    HALF,
    LATER,
    SECOND,
    STREAMED,
    _assert_no_streamers_left,
    _assert_repository_clean,
    _backup_in_mid_stream,
    _cmdline,
    _settled_backup,
    _stopped_server_with_data,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]
LIVE_SETTINGS = {"backup_storage_check_seconds": "1"}
MISSING = "the backup storage is missing (the operator's log has the details)"
READ_ONLY = "the backup storage is read-only (the operator's log has the details)"
HOST_PATH = re.compile(r"(?:^|[\s'\"(=:])/[\w.-]+/")


def _repository(faults: Faults) -> Path:
    return faults.live.data_dir / "backups"


def _storage_up(faults: Faults) -> str | None:
    """``vpsd_backup_storage_up`` as ``/metrics`` shows it (None when absent)."""
    text = httpx.get(f"{faults.live.base_url}/metrics", timeout=10).text
    found = re.search(r"^vpsd_backup_storage_up\{host=\"[^\"]+\"\} (\S+)$", text, re.M)
    return found.group(1) if found else None


def _server(faults: Faults, sid: int) -> tuple[str, str | None]:
    body = faults.server(sid)
    return body["status"], body["status_reason"]


def _settled_server(faults: Faults, sid: int) -> tuple[str, str | None]:
    faults.wait_settled(timeout=BACKUP_TIMEOUT)
    return _server(faults, sid)


def _restore(faults: Faults, backup_id: int) -> None:
    response = faults.alice.post(f"/backups/{backup_id}/restore/")
    assert response.status_code == 200, response.text


def _restic_process(*words: str) -> int | None:
    """The pid of a running restic whose command line holds all of ``words``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = _cmdline(int(entry.name))
            if args and os.path.basename(args[0]) == "restic" and all(w in args for w in words):
                return int(entry.name)
    return None


def _bytes_written(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("wchar:")))


# -- item 4: a repository that is gone ---------------------------------------------------------


def test_a_vanished_repository_is_not_made_again(faults: Faults) -> None:
    """It was: ``restic init`` made a new, empty one; new backups reported ``completed``, old
    ones could not be restored, and restoring one stopped the server, then left it in
    ``error``."""
    sid: int = faults.alice.create_server("kept-running")["id"]
    qh.write_pattern_running(faults.qmp(sid), 0x4B, 0, 8 * MIB)
    kept = faults.alice.create_backup(sid, "kept", timeout=BACKUP_TIMEOUT)
    assert kept["status"] == "completed", kept
    pid = faults.qemu_pid(sid)

    # The host restarts without the backup volume mounted: the repository's folder is gone.
    repository = _repository(faults)
    aside = repository.with_name("backups.aside")
    faults.live.stop()
    repository.rename(aside)
    faults.live.restart()
    failed = faults.alice.create_backup(sid, "while-gone", timeout=BACKUP_TIMEOUT)
    assert (failed["status"], failed["status_reason"]) == ("failed", MISSING)
    assert not repository.exists(), "a new repository was made in the old one's place"

    # It shows: on the backups, in /metrics, in the log (with where it was looked for).
    wait_for(lambda: _storage_up(faults) == "0.0", 30, what="the gauge to fall to 0")
    shown = faults.alice.get(f"/backups/{kept['id']}/").json()
    assert shown["status"] == "completed"
    assert "the backup storage is missing" in shown["status_reason"]
    log = faults.live.log()
    assert "the backup storage is missing" in log
    assert str(repository) in log

    # A restore fails before it stops the server: the same VM runs on.
    _restore(faults, kept["id"])
    status, reason = _settled_server(faults, sid)
    assert status == "running"
    assert reason == (
        f"restore from backup {kept['id']} failed: {MISSING}; the server was not changed"
    )
    assert faults.qemu_pid(sid) == pid

    # Back in its place, everything works again, the old backup included.
    aside.rename(repository)
    wait_for(lambda: _storage_up(faults) == "1.0", 30, what="the gauge to rise to 1")
    assert faults.alice.get(f"/backups/{kept['id']}/").json()["status_reason"] is None
    qh.write_pattern_running(faults.qmp(sid), 0x5C, 0, 8 * MIB)
    _restore(faults, kept["id"])
    assert _settled_server(faults, sid) == ("running", None)
    assert qh.has_pattern_running(faults.qmp(sid), faults.disk(sid), 0x4B, 0, 8 * MIB)
    pid = faults.qemu_pid(sid)  # the restore booted it again

    # Gone again, the operator makes a new one: new backups go there, the old are not in it.
    repository.rename(aside)
    made = faults.live.cli("backups", "init")
    assert "made a new, empty backup repository" in made.stderr
    assert "1 completed backups" in made.stderr  # the failed one does not count
    assert faults.live.cli("backups", "init").stderr.strip().endswith("nothing was made")
    again = faults.alice.create_backup(sid, "into-the-new-one", timeout=BACKUP_TIMEOUT)
    assert again["status"] == "completed", again
    _restore(faults, kept["id"])
    status, reason = _settled_server(faults, sid)
    assert status == "running"
    assert "no longer in the backup storage" in reason
    assert faults.qemu_pid(sid) == pid


# -- item 5: a restore cut short ---------------------------------------------------------------


def test_a_restore_whose_restic_is_killed_puts_the_disk_back(faults: Faults) -> None:
    """It left the disk partly overwritten and the server in ``error``; ``start`` booted the
    mix."""
    sid = _stopped_server_with_data(faults)
    backup = faults.alice.create_backup(sid, "whole", timeout=BACKUP_TIMEOUT)
    assert backup["status"] == "completed", backup
    qh.write_pattern(faults.disk(sid), LATER, 0, 8 * MIB)
    qh.write_pattern(faults.disk(sid), LATER, HALF + 8 * MIB, 8 * MIB)

    _restore(faults, backup["id"])
    dump = wait_for(lambda: _restic_process("dump"), 60, interval=0.02, what="restic dump")
    wait_for(lambda: _bytes_written(dump) >= STREAMED, 60, interval=0.02, what="the restore")
    os.kill(dump, signal.SIGKILL)

    status, reason = _settled_server(faults, sid)
    print(f"restic dump killed: {status} ({reason})")
    assert status == "stopped"
    assert reason is not None and reason.endswith("its disks were put back as they were")
    assert not HOST_PATH.search(reason)
    _assert_no_streamers_left(faults)
    disk = faults.disk(sid)
    assert qh.has_pattern(disk, LATER, 0, 8 * MIB)
    assert qh.has_pattern(disk, FIRST, 8 * MIB, HALF - 8 * MIB)
    assert qh.has_pattern(disk, LATER, HALF + 8 * MIB, 8 * MIB)
    assert faults.disk_tags(sid) == set()  # nothing kept to fall back to any more
    # qemu-nbd, killed with the stream, may leave a cluster leaked: space, no harm to data.
    faults.assert_disk_clean(sid, allow_leaks=True)

    assert faults.alice.post(f"/servers/{sid}/start/").status_code == 200
    faults.alice.wait_server(sid, "running")


# -- item 9: read-only storage, and a stop behind a backup --------------------------------------


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """A read-only bind mount over ``folder`` for the body (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    for args in (["--bind"], ["-o", "remount,bind,ro"]):
        done = subprocess.run(
            ["mount", *args, str(folder), str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True, check=False)
            pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=True)


def test_a_read_only_repository_fails_the_backup_at_once(faults: Faults) -> None:
    """It left the backup ``in_progress`` for 87 s of restic's retries, then said only that
    the storage failed."""
    sid: int = faults.alice.create_server("read-only")["id"]
    faults.alice.create_backup(sid, "first", timeout=BACKUP_TIMEOUT)  # the repository exists
    with _read_only(_repository(faults)):
        started = time.monotonic()
        backup = _settled_backup(faults, faults.alice.post(
            "/backups/", json={"server_id": sid, "name": "refused"}
        ).json()["id"])  # fmt: skip
        took = time.monotonic() - started
    print(f"a backup to a read-only repository failed in {took:.1f} s")
    assert (backup["status"], backup["status_reason"]) == ("failed", READ_ONLY)
    assert took < 60  # restic gave up at its first refused write, not after its retries
    assert _server(faults, sid) == ("running", None)
    assert "read-only file system" in faults.live.log()


def test_a_stop_cancels_the_backup_it_would_wait_for(faults: Faults) -> None:
    """It waited: operations on a server run one at a time, and the backup was first."""
    sid = _stopped_server_with_data(faults)
    assert faults.alice.post(f"/servers/{sid}/start/").status_code == 200
    faults.alice.wait_server(sid, "running")
    backup_id, restic = _backup_in_mid_stream(faults, sid)

    started = time.monotonic()
    assert faults.alice.post(f"/servers/{sid}/stop/").status_code == 200
    faults.alice.wait_server(sid, "stopped", timeout=BACKUP_TIMEOUT)
    print(f"stopped {time.monotonic() - started:.1f} s after the request")
    backup = _settled_backup(faults, backup_id)
    assert (backup["status"], backup["status_reason"]) == (
        "failed",
        "cancelled: the server was stopped",
    )
    assert _restic_process("--stdin") != restic
    _assert_no_streamers_left(faults)
    assert faults.disk_tags(sid) == set()  # the backup's temporary snapshot is gone
    _assert_repository_clean(faults)
    reason = faults.server(sid)["status_reason"]
    assert reason is None or reason.startswith("forced off"), reason  # a blank VM: forced
    assert qh.has_pattern(faults.disk(sid), FIRST, 0, HALF)
    assert qh.has_pattern(faults.disk(sid), SECOND, HALF, HALF)


# -- item 6: no host path in a failure reason ---------------------------------------------------


def test_a_failed_snapshot_names_no_host_path(faults: Faults) -> None:
    """It showed qemu-img's "Could not open '/…/servers/13/disk0.qcow2'"."""
    sid: int = faults.alice.create_server("unreadable")["id"]
    faults.stop_server(sid)
    disk = faults.disk(sid)
    aside = disk.with_name("disk0.aside")
    disk.rename(aside)
    disk.mkdir()  # what qemu-img finds there cannot be opened
    try:
        snapshot = faults.alice.create_snapshot(sid, "fails")
    finally:
        disk.rmdir()
        aside.rename(disk)
    reason = snapshot["status_reason"]
    assert snapshot["status"] == "failed"
    assert not HOST_PATH.search(reason), reason
    assert reason.startswith("the snapshot could not be taken"), reason
    assert f"Could not open '{disk}'" in faults.live.log()  # the operator's details
