"""``vpsd serve`` on PostgreSQL instead of the embedded SQLite: the same behaviour."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import qemu_helpers as qh
from tests.conftest import fresh_pg_database
from tests.live_server import LiveServer, serving

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]


@pytest.fixture
def pg_live_server() -> Iterator[LiveServer]:
    """vpsd serve on a new PostgreSQL database, which it migrates at start."""
    with fresh_pg_database() as url, serving(database_url=url) as server:
        yield server


def test_snapshot_restore_and_crash_on_postgresql(pg_live_server: LiveServer) -> None:
    client = pg_live_server.client(pg_live_server.create_token("alice"))
    sid = client.create_server("pg-server")["id"]
    snapshot = client.create_snapshot(sid, "on-postgres")
    assert snapshot["status"] == "completed"
    assert client.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
    client.wait_server(sid, "running")

    pg_live_server.kill()
    pg_live_server.restart()
    assert client.server_status(sid) == "running"
    listed = client.get("/snapshots/", params={"server_id": sid}).json()
    assert [s["id"] for s in listed["results"]] == [snapshot["id"]]
    assert not (pg_live_server.data_dir / "vpsd.db").exists()  # nothing went to SQLite
