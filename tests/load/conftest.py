"""Load-test fixtures: the end-to-end suite's ``live_server`` (vpsd serve on real QEMU)."""

from __future__ import annotations

from tests.e2e.conftest import live_server

__all__ = ["live_server"]
