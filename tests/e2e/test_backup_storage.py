"""Backups on real storage: an SFTP repository on a separate storage host, that host going
away, and a repository whose filesystem fills up.

The storage host is Debian's own ``sshd`` on 127.0.0.1 (``tests/storage_host.py``); restic
reaches it through ``VPSD_BACKUP_SFTP_COMMAND``, as it would an offsite host. Every check is
one a user or an operator could make: the API, ``qemu-img``/``qemu-io`` on the disk files,
and the files on the storage host.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, stopped_server
from tests.live_server import LiveServer, serving
from tests.storage_host import StorageHost, storage_host

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]
MIB = qh.MIB
BACKUP_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def host() -> Iterator[StorageHost]:
    """The storage host: sshd serving SFTP, the repository in its own dir."""
    with storage_host() as started:
        yield started


@pytest.fixture(scope="module")
def server(host: StorageHost) -> Iterator[LiveServer]:
    """One ``vpsd serve`` for the module, its backups on the storage host over SFTP."""
    with serving(backup_repository=host.repository, backup_sftp_command=host.sftp_command) as live:
        yield live


@pytest.fixture
def alice(server: LiveServer, host: StorageHost) -> Iterator[ApiClient]:
    yield server.client(server.create_token("alice"), timeout=60.0)
    host.start()  # a test that failed while the host was down leaves it up for the next


def _assert_tenant_safe(reason: str, *secrets: str) -> None:
    """A failure reason names what went wrong, never where: no path, host, port or ssh."""
    lowered = reason.lower()
    for secret in ("/", "ssh", "sftp:", "127.0.0.1", "restic", *secrets):
        assert secret.lower() not in lowered, f"{secret!r} leaks in {reason!r}"


def _state(alice: ApiClient, sid: int) -> tuple[str, str | None]:
    info = alice.get(f"/servers/{sid}/").json()
    return info["status"], info["status_reason"]


def _assert_untouched(
    server: LiveServer, alice: ApiClient, sid: int, state: tuple[str, str | None]
) -> None:
    """The server kept its power state (and reason): no temporary backup snapshot is left
    on it, and none of the user's."""
    assert _state(alice, sid) == state
    assert alice.get(f"/snapshots/?server_id={sid}").json()["count"] == 0
    assert not [tag for tag in qh.snapshot_tags(server.disk(sid)) if tag.startswith("vpsd-backup-")]


# -- (a) an SFTP repository on another host ------------------------------------------------------


def test_backup_to_sftp_storage_host_and_restore_in_place(
    server: LiveServer, host: StorageHost, alice: ApiClient
) -> None:
    sid = stopped_server(alice, "offsite")
    disk = server.disk(sid)
    qh.write_pattern(disk, 0x3C, 0, 48 * MIB)
    qh.write_pattern(disk, 0x4D, 512 * MIB, 8 * MIB)

    backup = alice.create_backup(sid, "offsite", timeout=BACKUP_TIMEOUT)
    assert backup["status"] == "completed", backup
    assert backup["size_mb"] == 56
    assert 0 < backup["stored_mb"] <= 56
    assert qh.snapshot_tags(disk) == []

    # The backup is on the storage host, none of it in the data dir; the password stays here.
    assert (host.repo_dir / "config").is_file()
    assert list((host.repo_dir / "snapshots").iterdir())
    assert not (server.data_dir / "backups").exists()
    password = server.data_dir / "backup-password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert password.read_text().strip()

    qh.write_pattern(disk, 0x5E, 0, 16 * MIB)
    qh.write_pattern(disk, 0x6F, 256 * MIB, 8 * MIB)  # zeros when backed up
    assert alice.post(f"/backups/{backup['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped", timeout=BACKUP_TIMEOUT)
    assert qh.has_pattern(disk, 0x3C, 0, 48 * MIB)
    assert qh.has_pattern(disk, 0x00, 256 * MIB, 8 * MIB)
    assert qh.has_pattern(disk, 0x4D, 512 * MIB, 8 * MIB)
    assert qh.image_check(disk).returncode == 0


# -- (b) the storage host goes away ----------------------------------------------------------------


def test_unreachable_storage_fails_the_backup_and_leaves_the_server_alone(
    server: LiveServer, host: StorageHost, alice: ApiClient
) -> None:
    running = alice.create_server("online", disk_gb=1)["id"]
    qmp = server.data_dir / "servers" / str(running) / "qmp.sock"
    qh.write_pattern_running(qmp, 0x71, 0, 16 * MIB)
    stopped = stopped_server(alice, "offline")
    qh.write_pattern(server.disk(stopped), 0x72, 0, 16 * MIB)

    states = {sid: _state(alice, sid) for sid in (running, stopped)}
    assert [status for status, _ in states.values()] == ["running", "stopped"]

    host.stop()
    for sid, state in states.items():
        failed = alice.create_backup(sid, "while-down", timeout=BACKUP_TIMEOUT)
        assert failed["status"] == "failed", failed
        reason = failed["status_reason"]
        assert "cannot be reached" in reason, reason
        _assert_tenant_safe(reason, str(host.port), str(host.root))
        _assert_untouched(server, alice, sid, state)
    assert qh.has_pattern_running(qmp, server.disk(running), 0x71, 0, 16 * MIB)
    assert qh.has_pattern(server.disk(stopped), 0x72, 0, 16 * MIB)
    assert "cannot be reached" in server.log()  # the operator's log has the details...
    assert str(host.port) in server.log()  # ...where the storage was

    host.start()
    backup = alice.create_backup(running, "back-online", timeout=BACKUP_TIMEOUT)
    assert backup["status"] == "completed", backup
    assert backup["size_mb"] == 16
    _assert_untouched(server, alice, running, states[running])


# -- (c) the repository's filesystem is full -----------------------------------------------------


@pytest.fixture
def small_repository() -> Iterator[Path]:
    """A 24 MiB tmpfs for a local repository (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs for the repository needs root and mount(8)")
    mountpoint = qh.short_tmpdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        shutil.rmtree(mountpoint, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)


def _same_bytes(disk: Path, reference: Path) -> bool:
    """True when the qcow2 ``disk`` holds exactly the raw ``reference``'s bytes."""
    compared = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", str(disk), str(reference)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compared.returncode in (0, 1), compared.stderr
    return compared.returncode == 0


def _used_bytes(mountpoint: Path) -> int:
    fs = os.statvfs(mountpoint)
    return (fs.f_blocks - fs.f_bfree) * fs.f_frsize


def test_full_repository_fails_the_backup_and_leaves_the_server_alone(
    small_repository: Path, tmp_path: Path
) -> None:
    with serving(backup_repository=str(small_repository / "repo")) as live:
        alice = live.client(live.create_token("alice"), timeout=60.0)
        sid = stopped_server(alice, "too-big")
        disk = live.disk(sid)
        # 64 MiB that neither deduplicates nor compresses, for 24 MiB of storage; the same
        # bytes in a raw reference image of the disk's size, to compare with afterwards.
        data = tmp_path / "random"
        data.write_bytes(os.urandom(64 * MIB))
        reference = tmp_path / "reference.raw"
        shutil.copyfile(data, reference)
        os.truncate(reference, 1024 * MIB)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -s {data} 0 {64 * MIB}", str(disk)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert _same_bytes(disk, reference)
        state = _state(alice, sid)

        failed = alice.create_backup(sid, "does-not-fit", timeout=BACKUP_TIMEOUT)
        assert failed["status"] == "failed", failed
        reason: str = failed["status_reason"]
        assert "full" in reason, reason
        _assert_tenant_safe(reason, str(small_repository))
        _assert_untouched(live, alice, sid, state)
        assert _same_bytes(disk, reference)
        assert qh.image_check(disk).returncode == 0
        assert "no space left on device" in live.log().lower()  # the operator's details
        assert (small_repository / "repo" / "config").is_file()  # it was made; only full

        # What restic had uploaded stays as unused packs: harmless, reclaimed by a prune.
        env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(small_repository / "repo"),
            "RESTIC_PASSWORD_FILE": str(live.data_dir / "backup-password"),
        }
        for command in ("check", "prune"):
            done = subprocess.run(
                ["restic", "--no-cache", command], env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"restic {command}:\n{done.stdout}{done.stderr}"
        assert _used_bytes(small_repository) < 2 * MIB
