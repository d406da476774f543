"""Incremental backups on real qemu-img, qemu-io, qemu-nbd, QEMU and restic: a backup reads
only what the guest wrote since the previous one, and each restores, on its own, to the
exact bytes of its point in time (``qemu-img compare``)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.integration.backup_chain import (
    MIB,
    Chain,
    no_mounts_left,
    requires_restic_and_fuse,
    restic_check,
)
from vpsd.backups import fuse
from vpsd.backups.restic import ResticStore
from vpsd.hypervisor.base import VmSpec
from vpsd.hypervisor.qemu import QemuDriver

pytestmark = [pytest.mark.qemu, qh.requires_qemu, requires_restic_and_fuse]

ACCEL = os.environ.get("VPSD_TEST_ACCEL", "auto")
SERVER = 1
DISK_GB = 1


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
    driver.create_disks(VmSpec(SERVER, 128, 1, DISK_GB))
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


def test_a_second_backup_reads_only_the_chunks_written_and_each_restores_exactly(
    driver: QemuDriver, store: ResticStore, chain: Chain
) -> None:
    qh.write_pattern(disk(driver), 0x11, 0, 48 * MIB)
    qh.write_pattern(disk(driver), 0x12, 700 * MIB, 16 * MIB)
    first = chain.take()
    assert not first.saved.incremental and first.changes.chain_break is None
    # Only the 64 MiB holding data is read: the rest of the 1 GiB disk is zeros.
    assert first.saved.read_bytes == 64 * MIB

    qh.write_pattern(disk(driver), 0x21, 10 * MIB + 4096, 3 * MIB)  # across 4 chunks
    second = chain.take()
    assert second.saved.incremental
    assert second.changes.since == first.checkpoint
    assert second.saved.read_bytes == 4 * MIB

    third = chain.take()  # nothing written
    assert third.saved.incremental and third.saved.read_bytes == 0

    assert all(chain.restores_exactly(taken) for taken in (first, second, third))
    restic_check(store)
    assert no_mounts_left(store)


def test_backups_of_a_running_vm_hold_their_point_in_time(
    driver: QemuDriver, store: ResticStore, chain: Chain
) -> None:
    driver.start(VmSpec(SERVER, 128, 1, DISK_GB))
    qmp = driver.qmp_socket_path(SERVER)
    qh.write_pattern_running(qmp, 0x31, 0, 32 * MIB)
    first = chain.take()
    # Written after the first point: in the second backup, not in the first.
    qh.write_pattern_running(qmp, 0x32, 5 * MIB, 2 * MIB)
    qh.write_pattern_running(qmp, 0x33, 900 * MIB, 1 * MIB)
    second = chain.take()
    qh.write_pattern_running(qmp, 0x34, 0, 1 * MIB)
    third = chain.take()

    assert not first.saved.incremental
    assert second.saved.incremental and second.saved.read_bytes == 3 * MIB
    assert third.saved.incremental and third.saved.read_bytes == 1 * MIB
    assert all(chain.restores_exactly(taken) for taken in (first, second, third))
    # The VM kept exactly one change record, the third backup's, and no snapshot.
    assert qh.snapshot_tags(disk(driver)) == []
    driver.kill(SERVER)
    assert [b.name for b in qh.bitmaps(disk(driver))] == [
        f"vpsd-changes.{third.checkpoint}.{DISK_GB * 1024 * MIB}"
    ]
    restic_check(store)


def test_thirty_backups_with_random_rewrites_restore_exactly_and_survive_any_pruning(
    driver: QemuDriver, store: ResticStore, chain: Chain
) -> None:
    rng = random.Random(21)
    qh.write_pattern(disk(driver), 0x01, 0, 32 * MIB)
    taken = []
    for index in range(30):
        for _ in range(rng.randint(0, 4)):
            offset = rng.randrange(0, 256 * MIB // 4096) * 4096
            length = rng.choice((4096, 64 * 1024, MIB + 512 * 1024, 3 * MIB))
            qh.write_pattern(disk(driver), rng.randrange(1, 256), offset, length)
        taken.append(chain.take())
        assert taken[-1].saved.incremental == (index > 0)
    assert all(chain.restores_exactly(backup) for backup in taken)

    # Forget any backups, the first and the parents of later ones among them: every
    # other one still restores whole.
    forgotten = set(rng.sample(range(30), 12)) | {0, 14}
    store.forget([taken[i].saved.snapshot for i in sorted(forgotten)])
    kept = [backup for i, backup in enumerate(taken) if i not in forgotten]
    assert all(chain.restores_exactly(backup) for backup in kept)
    restic_check(store)


def test_without_fuse_a_backup_stores_the_whole_disk_and_restores_exactly(
    driver: QemuDriver, store: ResticStore, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    qh.write_pattern(disk(driver), 0x71, 0, 8 * MIB)
    qh.write_pattern(disk(driver), 0x72, 600 * MIB, 8 * MIB)
    chain.take()

    def no_fuse(mountpoint: Path) -> tuple[int, bool]:
        raise fuse.FuseError("FUSE is not available on this host: (test)")

    monkeypatch.setattr(fuse, "_mount", no_fuse)
    qh.write_pattern(disk(driver), 0x73, 0, MIB)
    whole = chain.take()
    assert whole.saved.layout == "raw" and not whole.saved.incremental
    assert whole.saved.read_bytes == 16 * MIB  # the zeros are not read, only streamed
    assert whole.saved.size_bytes == DISK_GB * 1024 * MIB
    assert chain.restores_exactly(whole)


def test_without_its_kept_chunk_times_a_backup_reads_them_from_the_parent(
    driver: QemuDriver, store: ResticStore, chain: Chain
) -> None:
    qh.write_pattern(disk(driver), 0x81, 0, 16 * MIB)
    first = chain.take()
    # As on another host, or after the work folder was lost.
    shutil.rmtree(store.work_dir / "chunk-times")
    qh.write_pattern(disk(driver), 0x82, 3 * MIB, MIB)
    second = chain.take()
    assert second.saved.incremental and second.saved.read_bytes == MIB
    assert chain.restores_exactly(second) and chain.restores_exactly(first)
