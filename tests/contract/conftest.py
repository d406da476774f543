"""Fixtures for the contract suites: one ``driver`` per implementation, plus a ``disk``
probe that writes and checks byte patterns on a server's disk the way each driver allows
(in memory for the fake, qemu-io for QEMU); one backup ``store`` per implementation, plus a
``repository`` probe (move it away, bring it back, make it read-only, measure it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.contract.driver_probes import DiskProbe, FakeProbe, QemuProbe
from tests.contract.store_probes import FakeStoreProbe, ResticProbe, StoreProbe
from vpsd.backups.base import BackupStore
from vpsd.backups.fake import FakeBackupStore
from vpsd.backups.restic import ResticStore
from vpsd.hypervisor.base import Driver
from vpsd.hypervisor.fake import FakeDriver
from vpsd.hypervisor.qemu import QemuDriver

requires_restic = pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic")


@pytest.fixture(
    params=[
        "fake",
        pytest.param("qemu", marks=[pytest.mark.qemu, qh.requires_qemu]),
    ]
)
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """Each driver implementation in turn; QEMU ones run in a short /tmp dir and every VM
    they started is killed at teardown, even when the test fails."""
    if request.param == "fake":
        yield FakeDriver()
        return
    root = qh.short_tmpdir()
    accel = os.environ.get("VPSD_TEST_ACCEL", "auto")
    try:
        yield QemuDriver(root / "servers", accel=accel, command_timeout=120)
    finally:
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def disk(driver: Driver) -> DiskProbe:
    """The byte-pattern probe matching ``driver``."""
    if isinstance(driver, FakeDriver):
        return FakeProbe(driver)
    assert isinstance(driver, QemuDriver)
    return QemuProbe(driver)


@pytest.fixture(params=["fake", pytest.param("restic", marks=requires_restic)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    """Each backup store in turn: the fake in memory, restic on a local folder (its
    password file beside it; neither exists before first use)."""
    if request.param == "fake":
        return FakeBackupStore()
    return ResticStore(
        str(tmp_path / "repository"), tmp_path / "backup-password", tmp_path / "restic-cache"
    )


@pytest.fixture
def repository(store: BackupStore) -> StoreProbe:
    """What an operator can do to ``store``'s repository."""
    if isinstance(store, FakeBackupStore):
        return FakeStoreProbe(store)
    assert isinstance(store, ResticStore)
    return ResticProbe(Path(store.repository))
