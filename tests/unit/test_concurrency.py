"""The rules hold under concurrent requests, on SQLite and on PostgreSQL.

Services are called from many threads at once, each with its own transaction, as the API's
worker threads would; a barrier releases them together.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helpers import NoDispatch
from vpsd.config import Settings
from vpsd.db.models import Account, Backup, Server, ServerStatus, Snapshot, SnapshotStatus
from vpsd.db.session import Database
from vpsd.schemas import BackupCreate, SnapshotCreate
from vpsd.services.backups import BackupService
from vpsd.services.errors import DomainError
from vpsd.services.snapshots import SnapshotService


@pytest.fixture
def service(db: Database, settings: Settings) -> SnapshotService:
    return SnapshotService(db, settings, NoDispatch())


def _server(db: Database, completed_snapshots: int = 0) -> tuple[int, int, list[int]]:
    with db.write() as session:
        account = Account(name="alice")
        session.add(account)
        session.flush()
        server = Server(
            account_id=account.id,
            name="web",
            status=ServerStatus.RUNNING,
            memory_mb=256,
            vcpus=1,
            disk_gb=1,
        )
        session.add(server)
        session.flush()
        snapshots = [
            Snapshot(server=server, name=f"s{i}", status=SnapshotStatus.COMPLETED)
            for i in range(completed_snapshots)
        ]
        session.add_all(snapshots)
        session.flush()
        return account.id, server.id, [s.id for s in snapshots]


def _race(calls: list[Callable[[], Any]]) -> Counter[str]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> str:
        barrier.wait()
        try:
            call()
        except DomainError as error:
            return type(error).__name__
        return "ok"

    with ThreadPoolExecutor(len(calls)) as pool:
        return Counter(pool.map(run, calls))


def test_ten_parallel_creates_give_exactly_five(db: Database, service: SnapshotService) -> None:
    account_id, server_id, _ = _server(db)
    outcomes = _race(
        [
            lambda i=i: service.create(
                account_id, SnapshotCreate(server_id=server_id, name=f"n{i}")
            )
            for i in range(10)
        ]
    )
    assert outcomes == Counter({"ok": 5, "LimitReached": 5})
    with db.read() as session:
        assert session.query(Snapshot).filter_by(server_id=server_id).count() == 5


def test_four_concurrent_restores_give_one(db: Database, service: SnapshotService) -> None:
    account_id, server_id, snapshot_ids = _server(db, completed_snapshots=4)
    outcomes = _race([lambda s=s: service.restore(account_id, s) for s in snapshot_ids])
    assert outcomes == Counter({"ok": 1, "InvalidState": 3})
    with db.read() as session:
        assert session.get(Server, server_id).status == ServerStatus.RESTORING  # type: ignore[union-attr]


def test_twenty_parallel_backups_give_exactly_ten(db: Database, settings: Settings) -> None:
    account_id, server_id, _ = _server(db)
    service = BackupService(db, settings, NoDispatch())
    outcomes = _race(
        [
            lambda i=i: service.create(account_id, BackupCreate(server_id=server_id, name=f"b{i}"))
            for i in range(20)
        ]
    )
    assert outcomes == Counter({"ok": 10, "LimitReached": 10})
    with db.read() as session:
        assert session.query(Backup).filter_by(server_id=server_id).count() == 10
