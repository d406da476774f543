"""Byte-pattern probes for the contract suite: write/check a server's disk the way each
driver allows (in memory for the fake, qemu-io for QEMU)."""

from __future__ import annotations

from typing import Protocol

from tests import qemu_helpers as qh
from vpsd.hypervisor.base import PowerState
from vpsd.hypervisor.fake import FakeDriver
from vpsd.hypervisor.qemu import QemuDriver
from vpsd.hypervisor.qemu.qmp import qmp_call

PATTERN_LENGTH = qh.MIB


class DiskProbe(Protocol):
    def write(self, server_id: int, pattern: int) -> None:
        """Fill the first MiB of the server's disk with ``pattern`` (VM running or not)."""

    def has(self, server_id: int, pattern: int) -> bool:
        """True when the first MiB of the server's disk is all ``pattern``."""

    def pause(self, server_id: int) -> None:
        """Pause the running VM's CPUs from outside vpsd (QMP ``stop``)."""


class FakeProbe:
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    def write(self, server_id: int, pattern: int) -> None:
        self.driver.write(server_id, bytes([pattern]) * PATTERN_LENGTH)

    def has(self, server_id: int, pattern: int) -> bool:
        return self.driver.read(server_id) == bytes([pattern]) * PATTERN_LENGTH

    def pause(self, server_id: int) -> None:
        self.driver.pause(server_id)


class QemuProbe:
    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def _running(self, server_id: int) -> bool:
        return self.driver.info(server_id).power_state is PowerState.RUNNING

    def write(self, server_id: int, pattern: int) -> None:
        if self._running(server_id):
            qh.write_pattern_running(self.driver.qmp_socket_path(server_id), pattern)
        else:
            qh.write_pattern(self.driver.disk_paths(server_id)[0], pattern)

    def has(self, server_id: int, pattern: int) -> bool:
        disk = self.driver.disk_paths(server_id)[0]
        if self._running(server_id):
            return qh.has_pattern_running(self.driver.qmp_socket_path(server_id), disk, pattern)
        return qh.has_pattern(disk, pattern)

    def pause(self, server_id: int) -> None:
        qmp_call(self.driver.qmp_socket_path(server_id), "stop")
