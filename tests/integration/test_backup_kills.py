"""SIGKILL in the middle of an incremental backup: of restic, of the process taking the
backup (vpsd), of QEMU. Afterwards the next backup is correct (it restores exactly), nothing
is left mounted or running, and ``restic check`` finds no error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.helpers import wait_for
from tests.integration.backup_chain import (
    MIB,
    Chain,
    no_mounts_left,
    requires_restic_and_fuse,
    restic_check,
)
from vpsd.backups.base import BackupStoreError
from vpsd.backups.restic import ResticStore
from vpsd.hypervisor.base import DriverError, VmSpec
from vpsd.hypervisor.qemu import QemuDriver

pytestmark = [pytest.mark.qemu, qh.requires_qemu, requires_restic_and_fuse]

ACCEL = os.environ.get("VPSD_TEST_ACCEL", "auto")
SERVER = 1
SPEC = VmSpec(SERVER, 128, 1, 1)
READ_BEFORE_KILL = 48 * MIB
"""Bytes restic has read of the disk when it is killed: well into the backup."""


@pytest.fixture
def root() -> Iterator[Path]:
    path = qh.short_tmpdir()
    try:
        yield path
    finally:
        qh.kill_qemus_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def driver(root: Path) -> QemuDriver:
    driver = QemuDriver(root / "servers", accel=ACCEL, command_timeout=120)
    driver.create_disks(SPEC)
    # Patterns deduplicate: restic takes seconds to hash them, yet stores little.
    for index in range(8):
        qh.write_pattern(driver.disk_paths(SERVER)[0], 0x50 + index, index * 64 * MIB, 64 * MIB)
    return driver


@pytest.fixture
def store(root: Path) -> ResticStore:
    return ResticStore(str(root / "repository"), root / "password", root / "restic-cache")


@pytest.fixture
def chain(driver: QemuDriver, store: ResticStore, root: Path) -> Chain:
    (root / "references").mkdir()
    return Chain(driver, store, SERVER, root / "references")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _processes(root: Path) -> dict[int, list[str]]:
    """restic and qemu-nbd processes working on files below ``root``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if not args or Path(args[0]).name not in ("restic", "qemu-nbd"):
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            environ = b""
        if str(root) in " ".join(args) or str(root).encode() in environ:
            found[int(entry.name)] = args
    return found


def _restic_backup(root: Path) -> int | None:
    for pid, args in _processes(root).items():
        if Path(args[0]).name == "restic" and "backup" in args:
            return pid
    return None


def _bytes_read(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("rchar:")))


def _kill_when_reading(root: Path, target: Callable[[int], int]) -> threading.Thread:
    """In a thread: once restic has read ``READ_BEFORE_KILL`` bytes, SIGKILL the process
    ``target`` picks from restic's pid."""

    def kill() -> None:
        pid = wait_for(lambda: _restic_backup(root), 60, interval=0.01, what="restic backup")
        wait_for(lambda: _bytes_read(pid) >= READ_BEFORE_KILL, 60, interval=0.01)
        os.kill(target(pid), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _settled(root: Path, store: ResticStore) -> None:
    """Nothing of the killed backup runs or is mounted any more."""
    wait_for(lambda: not _processes(root), 15, interval=0.1, what="no restic or qemu-nbd left")
    assert no_mounts_left(store)


def test_restic_killed_mid_backup_fails_it_and_the_next_one_is_right(
    driver: QemuDriver, store: ResticStore, chain: Chain, root: Path
) -> None:
    first = chain.take()
    qh.write_pattern(driver.disk_paths(SERVER)[0], 0x61, 0, 256 * MIB)
    killer = _kill_when_reading(root, lambda restic: restic)
    with pytest.raises(BackupStoreError):
        chain.take()
    killer.join()
    _settled(root, store)
    assert chain.previous is first
    assert qh.snapshot_tags(driver.disk_paths(SERVER)[0]) == []

    store.unlock_stale()  # as the rerun of the operation does
    after = chain.take()
    assert after.saved.incremental and after.changes.since == first.checkpoint
    assert after.saved.read_bytes == 256 * MIB  # what was written, not the whole disk
    assert chain.restores_exactly(after)
    restic_check(store)


_BACKUP_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from vpsd.backups.restic import ResticStore
    from vpsd.hypervisor.qemu import QemuDriver
    args = json.loads(sys.argv[1])
    root = Path(args["root"])
    driver = QemuDriver(root / "servers", command_timeout=120)
    store = ResticStore(str(root / "repository"), root / "password", root / "restic-cache")
    point = driver.backup_point_create(1, args["tag"], args["checkpoint"], args["since"])
    with driver.backup_source(1, args["tag"], point.disks[0]) as source:
        store.save_disk(
            source, {"backup": args["checkpoint"], "disk": "disk0"},
            checkpoint=args["checkpoint"], parent=args["parent"],
        )
""")


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_the_backup_process_killed_mid_backup_leaves_nothing_wrong(
    driver: QemuDriver, store: ResticStore, chain: Chain, root: Path, running: bool
) -> None:
    if running:
        driver.start(SPEC)
    first = chain.take()
    if running:
        qh.write_pattern_running(driver.qmp_socket_path(SERVER), 0x62, 0, 256 * MIB)
    else:
        qh.write_pattern(driver.disk_paths(SERVER)[0], 0x62, 0, 256 * MIB)
    checkpoint = "killed" + "0" * 26
    arguments = {
        "root": str(root),
        "tag": f"vpsd-backup-{checkpoint}",
        "checkpoint": checkpoint,
        "since": first.checkpoint,
        "parent": first.saved.snapshot,
    }
    backup = subprocess.Popen(
        [sys.executable, "-c", _BACKUP_SCRIPT, json.dumps(arguments)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killer = _kill_when_reading(root, lambda _: backup.pid)
    killer.join()
    backup.wait()
    # restic and qemu-nbd die with the process (PR_SET_PDEATHSIG); its view is left dead.
    wait_for(lambda: not _processes(root), 15, interval=0.1, what="no restic or qemu-nbd left")

    # The rerun replaces what the killed attempt left: its snapshot, its record, its view.
    store.unlock_stale()
    after = chain.take(checkpoint=checkpoint)
    assert after.saved.incremental and after.changes.since == first.checkpoint
    assert after.saved.read_bytes == 256 * MIB
    assert chain.restores_exactly(after)
    _settled(root, store)
    assert qh.snapshot_tags(driver.disk_paths(SERVER)[0]) == []
    assert not list((store.work_dir / "views").iterdir())
    if running:
        driver.kill(SERVER)
    assert [b.name for b in qh.bitmaps(driver.disk_paths(SERVER)[0])] == [
        f"vpsd-changes.{after.checkpoint}.{1024 * MIB}"
    ]
    restic_check(store)


def test_qemu_killed_mid_backup_then_the_next_backup_is_right(
    driver: QemuDriver, store: ResticStore, chain: Chain, root: Path
) -> None:
    driver.start(SPEC)
    chain.take()
    qh.write_pattern_running(driver.qmp_socket_path(SERVER), 0x63, 0, 256 * MIB)
    qemu = driver.info(SERVER).pid
    assert qemu is not None
    killer = _kill_when_reading(root, lambda _: qemu)
    try:
        interrupted = chain.take()
    except (BackupStoreError, DriverError):
        interrupted = None  # the backup may fail, or finish from the snapshot on file
    killer.join()
    _settled(root, store)
    if interrupted is not None:
        assert chain.restores_exactly(interrupted)

    qh.write_pattern(driver.disk_paths(SERVER)[0], 0x64, 512 * MIB, MIB)
    started = time.monotonic()
    after = chain.take()
    # The record QEMU held died with it: this backup reads everything, and says why.
    assert not after.saved.incremental and after.changes.chain_break is not None
    assert chain.restores_exactly(after)
    print(f"backup after QEMU's death: {time.monotonic() - started:.1f} s")
    restic_check(store)
