"""Choosing the driver by name from settings (``VPSD_DRIVER``)."""

from __future__ import annotations

import os
from collections.abc import Callable

from vpsd.config import Settings
from vpsd.hypervisor.base import Driver


def _qemu(settings: Settings) -> Driver:
    from vpsd.hypervisor.qemu import QemuDriver

    return QemuDriver(
        settings.servers_dir, accel=settings.accel, quarantine_dir=settings.quarantine_dir
    )


def _fake(settings: Settings) -> Driver:
    from vpsd.hypervisor.fake import FakeDriver

    return FakeDriver(state_file=settings.data_dir / "fake-vms.pickle", delays=_fake_delays())


def _fake_delays() -> dict[str, float]:
    """``VPSD_FAKE_DELAYS``, ``method=seconds,...``: how long the fake driver's calls take."""
    spec = os.environ.get("VPSD_FAKE_DELAYS", "")
    pairs = (item.split("=", 1) for item in spec.split(",") if item.strip())
    return {name.strip(): float(seconds) for name, seconds in pairs}


DRIVERS: dict[str, Callable[[Settings], Driver]] = {"qemu": _qemu, "fake": _fake}
"""Driver name -> factory. Factories import lazily so unused drivers cost nothing."""


def make_driver(settings: Settings) -> Driver:
    """Build the driver ``settings.driver`` names; raises ``ValueError`` for unknown names."""
    try:
        factory = DRIVERS[settings.driver]
    except KeyError:
        raise ValueError(
            f"unknown driver {settings.driver!r}; known: {', '.join(sorted(DRIVERS))}"
        ) from None
    return factory(settings)
