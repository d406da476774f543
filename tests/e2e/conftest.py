"""End-to-end fixtures: ``vpsd serve`` as a subprocess on the real QEMU driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ApiClient
from tests.live_server import LiveServer, serving


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    """A running ``vpsd serve`` (SQLite, QEMU) in its own data dir; every VM it started is
    killed and the data dir removed at teardown, even when the test fails."""
    with serving() as server:
        yield server


@pytest.fixture
def alice_live(live_server: LiveServer) -> ApiClient:
    """An account on the live server, with a token made by ``vpsd token create``."""
    return live_server.client(live_server.create_token("alice"))
