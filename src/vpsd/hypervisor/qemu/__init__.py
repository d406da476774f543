"""The QEMU driver: qemu-system processes, qcow2 disks, internal snapshots, QMP."""

from vpsd.core.commands import CommandError
from vpsd.hypervisor.qemu.driver import QemuDriver

__all__ = ["CommandError", "QemuDriver"]
