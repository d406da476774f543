"""Hostile-input fixtures: the unit suite's in-process app and accounts, and ``live_server``.

The fixtures are imported, not copied, so these tests exercise exactly what the unit and
end-to-end suites do.
"""

from __future__ import annotations

from tests.e2e.conftest import alice_live, live_server
from tests.unit.conftest import alice, bob, client, fake_driver, fake_store

__all__ = ["alice", "alice_live", "bob", "client", "fake_driver", "fake_store", "live_server"]
