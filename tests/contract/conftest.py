"""Fixtures for the driver contract suite: one ``driver`` per implementation, plus a
``disk`` probe that writes and checks byte patterns on a server's disk the way each driver
allows (in memory for the fake, qemu-io for QEMU)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests import qemu_helpers as qh
from tests.contract.driver_probes import DiskProbe, FakeProbe, QemuProbe
from vpsd.hypervisor.base import Driver
from vpsd.hypervisor.fake import FakeDriver
from vpsd.hypervisor.qemu import QemuDriver


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
