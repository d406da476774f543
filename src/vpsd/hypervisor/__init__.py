"""Hypervisor drivers: the ``Driver`` protocol, the qemu driver and an in-memory fake."""

from vpsd.hypervisor.base import Driver, DriverError, PowerState, StopResult, VmInfo, VmSpec
from vpsd.hypervisor.registry import make_driver

__all__ = ["Driver", "DriverError", "PowerState", "StopResult", "VmInfo", "VmSpec", "make_driver"]
