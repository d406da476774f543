"""Backups of a real disk as the backup handler takes them (driver and store only), and the
checks a user would make of them: each restores to the exact bytes of its point in time."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpsd.backups import fuse
from vpsd.backups.base import SavedDisk
from vpsd.backups.restic import ResticStore
from vpsd.core.disks import DiskChanges
from vpsd.hypervisor.base import VmSpec
from vpsd.hypervisor.qemu import QemuDriver

MIB = 1024 * 1024
COPY_SNAPSHOT = ("qemu-img", "convert", "-U", "-l")
COMPARE = ("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2")


def fuse_mountable() -> bool:
    """True when this process can mount FUSE itself (root) or through fusermount."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False
    return os.getuid() == 0 or bool(shutil.which("fusermount3") or shutil.which("fusermount"))


requires_restic_and_fuse = pytest.mark.skipif(
    shutil.which("restic") is None or shutil.which("nbdinfo") is None or not fuse_mountable(),
    reason="needs restic, nbdinfo (libnbd-bin) and FUSE",
)


@dataclass
class Taken:
    """One backup: its checkpoint, what the driver said, what the store kept, and a copy of
    the disk at its point in time to compare restores with."""

    checkpoint: str
    changes: DiskChanges
    saved: SavedDisk
    reference: Path


class Chain:
    """Backups of ``disk0`` of one server, each based on the previous kept one."""

    def __init__(self, driver: QemuDriver, store: ResticStore, server_id: int, work: Path):
        self.driver = driver
        self.store = store
        self.server_id = server_id
        self.work = work
        self.previous: Taken | None = None
        self.restores = 0

    def take(self, *, base: Taken | bool | None = True, checkpoint: str | None = None) -> Taken:
        """Take a backup based on the previous one (``base=True``), on ``base``, or on none
        (``None``); keep it and make it the previous one. ``checkpoint``: the rerun of an
        interrupted backup of that checkpoint."""
        based_on = self.previous if base is True else (base or None)
        checkpoint = checkpoint or uuid.uuid4().hex
        tag = f"vpsd-backup-{checkpoint}"
        point = self.driver.backup_point_create(
            self.server_id, tag, checkpoint, based_on.checkpoint if based_on else None
        )
        (changes,) = point.disks
        reference = self.work / f"{checkpoint}.qcow2"
        disk = self.driver.disk_paths(self.server_id)[0]
        subprocess.run(
            [*COPY_SNAPSHOT, f"snapshot.name={tag}", "-O", "qcow2", str(disk), str(reference)],
            check=True,
            capture_output=True,
        )
        kept = False
        try:
            with self.driver.backup_source(self.server_id, tag, changes) as source:
                saved = self.store.save_disk(
                    source,
                    {"backup": checkpoint, "disk": "disk0"},
                    checkpoint=checkpoint,
                    parent=based_on.saved.snapshot if based_on else None,
                )
            kept = True
        finally:
            self.driver.backup_point_finish(self.server_id, tag, checkpoint, kept=kept)
        taken = Taken(checkpoint, changes, saved, reference)
        self.previous = taken
        return taken

    def restores_exactly(self, taken: Taken) -> bool:
        """Restore ``taken`` onto a new server's disk and compare it with its reference."""
        self.restores += 1
        target = VmSpec(10_000 + self.restores, 128, 1, 1)
        size = taken.changes.size_bytes
        with self.driver.disk_writer(target, "disk0", size) as sink:
            if taken.saved.layout == "chunks":
                self.store.load_disk(taken.saved.snapshot, "disk0", size, sink)
            else:
                self.store.load(taken.saved.snapshot, "disk0.raw", sink)
        restored = self.driver.disk_paths(target.server_id)[0]
        result = subprocess.run(
            [*COMPARE, str(taken.reference), str(restored)],
            capture_output=True,
            text=True,
        )
        self.driver.destroy(target.server_id)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0


def restic_check(store: ResticStore) -> None:
    """The repository has no error (``restic check``, as the operator runs it)."""
    store.unlock_stale()
    store.check()


def no_mounts_left(store: ResticStore) -> bool:
    """No view of a disk is still mounted below the store's work folder."""
    views = store.work_dir / "views"
    return not any(fuse.is_mounted(path) for path in views.iterdir()) if views.is_dir() else True
