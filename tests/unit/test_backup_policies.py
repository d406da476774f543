"""Backup policies on a fake clock: the schedule's slots, catching up after downtime, never
the same slot twice, pruning to ``keep``; and the policy endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.helpers import ApiClient, NoDispatch
from tests.unit.test_hosts_api import add_host
from vpsd.config import Settings
from vpsd.db.models import (
    Account,
    Backup,
    BackupPolicy,
    BackupStatus,
    BackupType,
    Host,
    Operation,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.operations import backup_schedule
from vpsd.operations.backup_schedule import slots_of
from vpsd.schemas import BackupPolicy as PolicyRequest


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class HostSchedule:
    """One host's agent running the policies (``vpsd.operations.backup_schedule``)."""

    def __init__(self, db: Database, host: str) -> None:
        self.db = db
        self.host = host

    def take_due_backups(self, now: datetime) -> int:
        return backup_schedule.take_due_backups(self.db, NoDispatch(), self.host, now)

    def prune(self) -> int:
        return backup_schedule.prune(self.db, NoDispatch(), self.host)


@pytest.fixture
def service(db: Database, settings: Settings) -> HostSchedule:
    return HostSchedule(db, settings.host_name)


def _server(db: Database, status: ServerStatus = ServerStatus.RUNNING) -> tuple[int, int]:
    with db.write() as session:
        account = Account(name="alice")
        session.add(account)
        session.flush()
        server = Server(
            account_id=account.id, name="web", status=status, memory_mb=256, vcpus=1, disk_gb=1,
            host_id=session.scalar(select(Host.id).order_by(Host.id)),  # this host (``db``)
        )  # fmt: skip
        session.add(server)
        session.flush()
        return account.id, server.id


def _set(db: Database, server_id: int, since: datetime, **policy: object) -> None:
    request = PolicyRequest.model_validate(policy)
    with db.write() as session:
        session.add(
            BackupPolicy(
                server_id=server_id,
                enabled=request.enabled,
                frequency=request.frequency,
                hour=request.hour,
                weekday=request.weekday,
                keep=request.keep,
                updated_at=since,
            )
        )


def _automatic(db: Database, server_id: int) -> list[tuple[str, datetime | None, str]]:
    with db.read() as session:
        rows = session.execute(
            select(Backup.name, Backup.slot, Backup.status)
            .where(Backup.server_id == server_id, Backup.type == BackupType.AUTOMATIC)
            .order_by(Backup.id)
        ).all()
        return [(name, slot, status) for name, slot, status in rows]


def test_slots_daily_and_weekly() -> None:
    daily = PolicyRequest(frequency="daily", hour=3)
    assert slots_of(daily).latest(at("2026-11-27T03:00:00")) == at("2026-11-27T03:00:00")
    assert slots_of(daily).latest(at("2026-11-27T02:59:59")) == at("2026-11-26T03:00:00")
    weekly = PolicyRequest(frequency="weekly", hour=2, weekday=6)  # Sundays
    assert slots_of(weekly).latest(at("2026-11-27T12:00:00")) == at("2026-11-22T02:00:00")
    assert slots_of(weekly).latest(at("2026-11-29T02:00:00")) == at("2026-11-29T02:00:00")
    assert slots_of(weekly).latest(at("2026-11-29T01:00:00")) == at("2026-11-22T02:00:00")


def test_one_backup_per_slot_and_none_before_the_policy(
    db: Database, service: HostSchedule
) -> None:
    _, server_id = _server(db)
    _set(db, server_id, since=at("2026-11-27T03:30:00"), hour=3)
    # Today's 03:00 slot predates the policy: nothing until tomorrow's.
    assert service.take_due_backups(at("2026-11-27T04:00:00")) == 0
    assert service.take_due_backups(at("2026-11-28T02:59:00")) == 0
    assert service.take_due_backups(at("2026-11-28T03:00:10")) == 1
    for minute in range(1, 5):  # the scheduler looks again every minute
        assert service.take_due_backups(at(f"2026-11-28T03:0{minute}:10")) == 0
    assert _automatic(db, server_id) == [
        ("auto-20261128-0300", at("2026-11-28T03:00:00"), BackupStatus.IN_PROGRESS)
    ]
    with db.read() as session:
        kinds = session.scalars(select(Operation.kind)).all()
    assert kinds == ["backup.create"]


def test_downtime_catches_up_on_the_latest_missed_slot_once(
    db: Database, service: HostSchedule
) -> None:
    _, server_id = _server(db)
    _set(db, server_id, since=at("2026-11-01T00:00:00"), hour=3)
    assert service.take_due_backups(at("2026-11-02T03:00:00")) == 1
    # vpsd was down for three days; at start the latest missed slot is taken, only it.
    assert service.take_due_backups(at("2026-11-05T17:20:00")) == 1
    assert service.take_due_backups(at("2026-11-05T17:21:00")) == 0
    assert [slot for _, slot, _ in _automatic(db, server_id)] == [
        at("2026-11-02T03:00:00"),
        at("2026-11-05T03:00:00"),
    ]


def test_a_busy_server_is_backed_up_when_it_can_be(db: Database, service: HostSchedule) -> None:
    _, server_id = _server(db, ServerStatus.RESTORING)
    _set(db, server_id, since=at("2026-11-01T00:00:00"), hour=3)
    assert service.take_due_backups(at("2026-11-02T03:00:00")) == 0
    with db.write() as session:
        session.get_one(Server, server_id).status = ServerStatus.STOPPED
    assert service.take_due_backups(at("2026-11-02T03:01:00")) == 1


def test_pruned_to_keep_and_manual_backups_are_never_pruned(
    db: Database, service: HostSchedule
) -> None:
    account_id, server_id = _server(db)
    _set(db, server_id, since=at("2026-11-01T00:00:00"), hour=3, keep=2)
    with db.write() as session:
        session.add(
            Backup(
                account_id=account_id, server_id=server_id, name="mine", type=BackupType.MANUAL,
                status=BackupStatus.COMPLETED, disk_gb=1,
            )
        )  # fmt: skip
    for day in range(2, 7):
        assert service.take_due_backups(at(f"2026-11-0{day}T03:00:00")) == 1
        with db.write() as session:  # the operation ran
            session.execute(
                Backup.__table__.update()
                .where(Backup.status == BackupStatus.IN_PROGRESS)
                .values(status=BackupStatus.COMPLETED)
            )
    service.prune()
    kept = [
        (name, status)
        for name, _, status in _automatic(db, server_id)
        if status != BackupStatus.DELETING
    ]
    assert kept == [
        ("auto-20261105-0300", BackupStatus.COMPLETED),
        ("auto-20261106-0300", BackupStatus.COMPLETED),
    ]
    with db.read() as session:
        manual = session.scalars(select(Backup.status).where(Backup.name == "mine")).one()
        deletes = session.scalars(
            select(Operation.backup_id).where(Operation.kind == "backup.delete")
        ).all()
    assert manual == BackupStatus.COMPLETED
    assert len(deletes) == 3


def test_a_disabled_policy_takes_nothing(db: Database, service: HostSchedule) -> None:
    _, server_id = _server(db)
    _set(db, server_id, since=at("2026-11-01T00:00:00"), enabled=False)
    assert service.take_due_backups(at("2026-11-10T03:00:00")) == 0


def test_policy_endpoints(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    assert alice.get(f"/servers/{sid}/backup-policy/").json() == {
        "enabled": False,
        "frequency": "daily",
        "hour": 3,
        "weekday": 6,
        "keep": 7,
        "next_backup_at": None,
    }
    response = alice.request(
        "PUT",
        f"/servers/{sid}/backup-policy/",
        json={"enabled": True, "frequency": "weekly", "hour": 2, "keep": 4},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("enabled", "frequency", "hour", "weekday", "keep")} == {
        "enabled": True,
        "frequency": "weekly",
        "hour": 2,
        "weekday": 6,
        "keep": 4,
    }
    upcoming = datetime.fromisoformat(body["next_backup_at"].replace("Z", "+00:00"))
    assert upcoming.weekday() == 6 and upcoming.hour == 2
    assert timedelta(0) < upcoming - datetime.now(UTC) <= timedelta(days=7)
    assert alice.get(f"/servers/{sid}/backup-policy/").json() == body
    assert alice.get("/servers/999/backup-policy/").status_code == 404


def test_each_host_takes_its_own_servers_backups(db: Database, settings: Settings) -> None:
    """Every agent runs a scheduler: each takes (and prunes) its own servers' backups only,
    so two never queue or prune the same server's at once."""
    _, server_id = _server(db)
    remote = add_host(db, "kvm-02", memory_mb=64 * 1024)
    with db.write() as session:
        server = session.get(Server, server_id)
        assert server is not None
        server.host_id = remote
    _set(db, server_id, since=at("2026-11-01T00:00:00"), hour=3)
    here = HostSchedule(db, settings.host_name)
    there = HostSchedule(db, "kvm-02")
    assert here.take_due_backups(at("2026-11-02T03:00:00")) == 0
    assert there.take_due_backups(at("2026-11-02T03:00:00")) == 1
    assert len(_automatic(db, server_id)) == 1
