"""Every change of a disk that its change record does not see breaks the chain: the next
backup reads the whole disk, says why, and restores to the exact bytes of its point."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.integration.backup_chain import MIB, Chain, requires_restic_and_fuse, restic_check
from vpsd.backups.restic import ResticStore
from vpsd.hypervisor.base import VmSpec
from vpsd.hypervisor.qemu import QemuDriver

pytestmark = [pytest.mark.qemu, qh.requires_qemu, requires_restic_and_fuse]

ACCEL = os.environ.get("VPSD_TEST_ACCEL", "auto")
SERVER = 1
SPEC = VmSpec(SERVER, 128, 1, 1)


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
    qh.write_pattern(driver.disk_paths(SERVER)[0], 0x41, 0, 16 * MIB)
    return driver


@pytest.fixture
def store(root: Path) -> ResticStore:
    return ResticStore(str(root / "repository"), root / "password", root / "restic-cache")


@pytest.fixture
def chain(driver: QemuDriver, store: ResticStore, root: Path) -> Chain:
    (root / "references").mkdir()
    return Chain(driver, store, SERVER, root / "references")


def disk(driver: QemuDriver) -> Path:
    return driver.disk_paths(SERVER)[0]


def assert_read_whole(chain: Chain, why: str) -> None:
    """The next backup reads all the data, says ``why``, and restores exactly."""
    taken = chain.take()
    assert not taken.saved.incremental
    assert taken.changes.since is None
    assert taken.changes.chain_break is not None and why in taken.changes.chain_break
    assert taken.saved.read_bytes is not None and taken.saved.read_bytes >= 16 * MIB
    assert chain.restores_exactly(taken)


def test_a_snapshot_restore_breaks_the_chain(driver: QemuDriver, chain: Chain) -> None:
    driver.snapshot_create(SERVER, "before")
    qh.write_pattern(disk(driver), 0x42, 0, 8 * MIB)
    chain.take()
    # The revert changes half of the data back without a guest write.
    driver.snapshot_restore(SERVER, "before")
    assert_read_whole(chain, "restored from a snapshot")
    # And the chain goes on from there.
    qh.write_pattern(disk(driver), 0x43, 0, MIB)
    after = chain.take()
    assert after.saved.incremental and after.saved.read_bytes == MIB
    assert chain.restores_exactly(after)


def test_a_backup_restore_breaks_the_chain(driver: QemuDriver, chain: Chain) -> None:
    first = chain.take()
    qh.write_pattern(disk(driver), 0x44, 0, 8 * MIB)
    chain.take()
    with driver.disk_writer(SPEC, "disk0", first.changes.size_bytes) as sink:
        chain.store.load_disk(first.saved.snapshot, "disk0", first.changes.size_bytes, sink)
    assert_read_whole(chain, "restored from a backup")


def test_a_resize_breaks_the_chain(driver: QemuDriver, chain: Chain) -> None:
    chain.take()
    subprocess.run(["qemu-img", "resize", str(disk(driver)), "+256M"], check=True)
    qh.write_pattern(disk(driver), 0x45, 1024 * MIB, MIB)
    assert_read_whole(chain, "resized")


def kill_9(driver: QemuDriver) -> None:
    pid = driver.info(SERVER).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    qh.wait_gone(pid)


def test_a_qemu_killed_with_9_loses_a_record_it_started(driver: QemuDriver, chain: Chain) -> None:
    driver.start(SPEC)
    chain.take()  # the record starts in QEMU's memory; QEMU writes it to the file on exit
    qh.write_pattern_running(driver.qmp_socket_path(SERVER), 0x46, 4 * MIB, MIB)
    kill_9(driver)
    assert qh.bitmaps(disk(driver)) == []
    assert_read_whole(chain, "no record of changes")


def test_a_qemu_killed_with_9_leaves_its_record_in_use(driver: QemuDriver, chain: Chain) -> None:
    chain.take()
    driver.start(SPEC)  # loads the record from the file, flagged in use while open
    qh.write_pattern_running(driver.qmp_socket_path(SERVER), 0x46, 4 * MIB, MIB)
    kill_9(driver)
    assert [bitmap.flags for bitmap in qh.bitmaps(disk(driver))] == [("in-use", "auto")]
    assert_read_whole(chain, "the VM was killed")


def test_a_record_removed_by_hand_breaks_the_chain(driver: QemuDriver, chain: Chain) -> None:
    chain.take()
    for bitmap in qh.bitmaps(disk(driver)):
        subprocess.run(
            ["qemu-img", "bitmap", "--remove", str(disk(driver)), bitmap.name], check=True
        )
    qh.write_pattern(disk(driver), 0x47, 0, MIB)
    assert_read_whole(chain, "no record of changes")


def test_a_record_paused_by_hand_breaks_the_chain(driver: QemuDriver, chain: Chain) -> None:
    chain.take()
    for bitmap in qh.bitmaps(disk(driver)):
        subprocess.run(
            ["qemu-img", "bitmap", "--disable", str(disk(driver)), bitmap.name], check=True
        )
    qh.write_pattern(disk(driver), 0x48, 0, MIB)  # unrecorded
    assert_read_whole(chain, "paused")


def test_a_server_made_from_a_snapshot_or_a_backup_has_no_chain(
    driver: QemuDriver, store: ResticStore, chain: Chain, root: Path
) -> None:
    first = chain.take()
    driver.snapshot_create(SERVER, "source")
    clone = VmSpec(2, 128, 1, 1)
    driver.snapshot_clone(SERVER, "source", clone)
    restored = VmSpec(3, 128, 1, 1)
    with driver.disk_writer(restored, "disk0", first.changes.size_bytes) as sink:
        store.load_disk(first.saved.snapshot, "disk0", first.changes.size_bytes, sink)
    for made in (clone, restored):
        # Even asked to go on from the source's backup, the new disk has no record of it.
        other = Chain(driver, store, made.server_id, root / "references")
        other.previous = first
        assert_read_whole(other, "no record of changes")
    restic_check(store)
