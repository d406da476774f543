"""SIGKILL in the middle of a backup: of the ``restic backup`` reading the disk's chunk files
(through vpsd's FUSE view of the snapshot, served by ``qemu-nbd``), and of ``vpsd serve``
itself.

The promises under test: a backup never stays ``in_progress``; it ends ``completed`` (with
the right bytes) or ``failed`` with a reason; the server keeps its state and bytes; the
temporary snapshot the backup read from is gone; the repository passes ``restic check``;
and no ``restic``, ``nbdcopy`` or ``qemu-nbd`` outlives the work it was started for (they
die with vpsd: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.faults.conftest import MIB, Faults
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

# 1 GiB of data in two patterns: restic needs a few seconds to chunk and hash it, so a
# kill lands mid-stream. (Patterns deduplicate to a few chunks: the repository stays small.)
HALF = 512 * MIB
FIRST, SECOND, LATER = 0xC1, 0xC2, 0xD3
STREAMED = 64 * MIB
"""Bytes restic has read of the disk before the kill: the backup is well under way."""
BACKUP_TIMEOUT = 300.0
STREAMERS = ("restic", "nbdcopy", "qemu-nbd")


# -- what an operator can look at ---------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _streamers(data_dir: Path) -> dict[int, list[str]]:
    """The restic, nbdcopy and qemu-nbd processes working for the vpsd on ``data_dir``:
    nbdcopy and qemu-nbd name a disk in it, restic gets its repository in its environment."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = _cmdline(pid)
        if not args or os.path.basename(args[0]) not in STREAMERS:
            continue
        if str(data_dir) in " ".join(args) or str(data_dir).encode() in _environ(pid):
            found[pid] = args
    return found


def _restic_backup(uuid: str) -> int | None:
    """The pid of the ``restic backup`` storing backup ``uuid``, once it runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = _cmdline(int(entry.name))
            if args and "backup" in args and f"backup={uuid}" in args:
                return int(entry.name)
    return None


def _bytes_read(pid: int) -> int:
    """Bytes the process has read so far (``/proc/<pid>/io``: the chunk files, for restic)."""
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("rchar:")))


def _restic(faults: Faults, *args: str) -> subprocess.CompletedProcess[str]:
    """``restic ARGS`` on vpsd's repository, as the operator would run it."""
    data_dir = faults.live.data_dir
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(data_dir / "backups"),
        "RESTIC_PASSWORD_FILE": str(data_dir / "backup-password"),
    }
    return subprocess.run(
        ["restic", "--no-cache", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _assert_repository_clean(faults: Faults) -> None:
    """``restic check`` finds no error, and no lock is left for anyone to remove by hand."""
    locks = list((faults.live.data_dir / "backups" / "locks").iterdir())
    assert not locks, f"locks left in the repository: {locks}"
    check = _restic(faults, "check")
    assert check.returncode == 0, f"restic check failed:\n{check.stdout}{check.stderr}"
    assert "no errors were found" in check.stdout, check.stdout


def _assert_no_streamers_left(faults: Faults) -> None:
    data_dir = faults.live.data_dir
    wait_for(
        lambda: not _streamers(data_dir),
        15,
        interval=0.1,
        what=f"the backup's streams to end (left: {_streamers(data_dir)})",
    )


# -- setup and waiting --------------------------------------------------------------------------


def _stopped_server_with_data(faults: Faults) -> int:
    """A stopped server whose 1 GiB disk is full of two patterns."""
    sid: int = faults.alice.create_server("backed-up")["id"]
    faults.stop_server(sid)
    qh.write_pattern(faults.disk(sid), FIRST, 0, HALF)
    qh.write_pattern(faults.disk(sid), SECOND, HALF, HALF)
    return sid


def _backup_in_mid_stream(faults: Faults, sid: int) -> tuple[int, int]:
    """Request a backup; return its id and its restic's pid once restic has read
    ``STREAMED`` bytes of the disk."""
    response = faults.alice.post("/backups/", json={"server_id": sid, "name": "interrupted"})
    assert response.status_code == 201, response.text
    backup_id: int = response.json()["id"]
    ((uuid,),) = faults.sql("SELECT uuid FROM backups WHERE id = ?", backup_id)
    pid = wait_for(lambda: _restic_backup(uuid), 60, interval=0.02, what="restic backup to run")
    wait_for(
        lambda: _bytes_read(pid) >= STREAMED, 60, interval=0.02, what="restic to read the disk"
    )
    assert faults.alice.get(f"/backups/{backup_id}/").json()["status"] == "in_progress"
    return backup_id, pid


def _settled_backup(faults: Faults, backup_id: int) -> dict[str, Any]:
    backup = faults.alice.wait_backup(backup_id, timeout=BACKUP_TIMEOUT)
    faults.wait_settled(timeout=BACKUP_TIMEOUT)
    assert not faults.sql("SELECT id FROM backups WHERE status = 'in_progress'")
    assert backup["status"] in ("completed", "failed"), backup
    if backup["status"] == "failed":
        reason = backup["status_reason"]
        assert reason, f"a failed backup says why: {backup}"
        assert "/" not in reason and "restic" not in reason.lower(), reason  # no host detail
    return backup


def _assert_server_untouched(faults: Faults, sid: int) -> None:
    """Still stopped, the same bytes, no temporary backup snapshot (nor any other)."""
    assert faults.server(sid)["status"] == "stopped"
    assert faults.disk_tags(sid) == set()
    faults.assert_disk_clean(sid)
    assert qh.has_pattern(faults.disk(sid), FIRST, 0, HALF)
    assert qh.has_pattern(faults.disk(sid), SECOND, HALF, HALF)


def _assert_restores_the_bytes(faults: Faults, sid: int, backup_id: int) -> None:
    qh.write_pattern(faults.disk(sid), LATER, 0, 8 * MIB)
    qh.write_pattern(faults.disk(sid), LATER, HALF + 8 * MIB, 8 * MIB)
    response = faults.alice.post(f"/backups/{backup_id}/restore/")
    assert response.status_code == 200, response.text
    faults.alice.wait_server(sid, "stopped", timeout=BACKUP_TIMEOUT)
    _assert_server_untouched(faults, sid)


# -- the tests -----------------------------------------------------------------------------------


def test_restic_killed_mid_backup_fails_it_cleanly(faults: Faults) -> None:
    sid = _stopped_server_with_data(faults)
    backup_id, restic = _backup_in_mid_stream(faults, sid)
    os.kill(restic, signal.SIGKILL)

    backup = _settled_backup(faults, backup_id)
    print(f"restic killed: {backup['status']} ({backup['status_reason']})")
    _assert_no_streamers_left(faults)
    _assert_server_untouched(faults, sid)
    if backup["status"] == "completed":
        _assert_restores_the_bytes(faults, sid, backup_id)

    # vpsd goes on using the repository, exclusive commands too (a delete prunes), and
    # leaves it as ``restic check`` wants it, with nothing for an operator to unlock.
    again = faults.alice.create_backup(sid, "again", timeout=BACKUP_TIMEOUT)
    assert again["status"] == "completed", again
    _assert_restores_the_bytes(faults, sid, again["id"])
    started = time.monotonic()
    assert faults.alice.delete(f"/backups/{again['id']}/").status_code == 204
    faults.wait_settled(timeout=BACKUP_TIMEOUT)
    assert not faults.sql("SELECT status, status_reason FROM backups WHERE id = ?", again["id"])
    print(f"deleted in {time.monotonic() - started:.1f} s")
    _assert_no_streamers_left(faults)
    _assert_repository_clean(faults)


def test_vpsd_killed_mid_backup_settles_after_restart(faults: Faults) -> None:
    sid = _stopped_server_with_data(faults)
    backup_id, restic = _backup_in_mid_stream(faults, sid)
    streams = _streamers(faults.live.data_dir)
    assert restic in streams, streams
    assert {os.path.basename(args[0]) for args in streams.values()} >= {"restic", "qemu-nbd"}

    faults.live.kill()
    # Its restic and qemu-nbd die with it (PR_SET_PDEATHSIG); its FUSE view is left dead,
    # for the rerun to detach.
    _assert_no_streamers_left(faults)
    assert faults.sql("SELECT status FROM backups WHERE id = ?", backup_id) == [("in_progress",)]
    faults.live.restart()

    backup = _settled_backup(faults, backup_id)
    print(f"vpsd killed: {backup['status']} ({backup['status_reason']})")
    _assert_no_streamers_left(faults)
    _assert_server_untouched(faults, sid)
    if backup["status"] == "completed":
        assert backup["size_mb"] == 1024
        _assert_restores_the_bytes(faults, sid, backup_id)
    _assert_repository_clean(faults)
