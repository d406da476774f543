"""Operations' leases: a claim keeps each server's operations in order, a live lease is left
alone, an expired one (or one of this agent's dead earlier process) is taken back, and a
result is not recorded once the lease was taken back."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from vpsd.agent.recovery import take_back_expired
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import (
    Account,
    Host,
    Operation,
    OperationKind,
    OperationStatus,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import execute
from vpsd.operations.leases import LeaseLost
from vpsd.operations.outbox import enqueue

ME = "this-agent"


def server_with_operations(
    db: Database, settings: Settings, kinds: list[OperationKind]
) -> tuple[int, list[int]]:
    """A running server of this host with pending operations of ``kinds``, oldest first."""
    with db.write() as session:
        account = Account(name="carol")
        session.add(account)
        session.flush()
        server = Server(
            account_id=account.id, name="web", status=ServerStatus.RUNNING,
            memory_mb=256, vcpus=1, disk_gb=1,
            host_id=session.scalar(select(Host.id).where(Host.name == settings.host_name)),
        )  # fmt: skip
        session.add(server)
        session.flush()
        operations = [enqueue(session, kind, server.id) for kind in kinds]
        session.flush()
        return server.id, [operation.id for operation in operations]


def row(db: Database, operation_id: int) -> Operation:
    with db.read() as session:
        operation = session.get(Operation, operation_id)
        assert operation is not None
        session.expunge(operation)
        return operation


def set_lease(db: Database, operation_id: int, claimed_by: str, age: float) -> None:
    """Make the operation ``running`` under ``claimed_by``, last renewed ``age`` s ago."""
    with db.write() as session:
        session.execute(
            update(Operation)
            .where(Operation.id == operation_id)
            .values(
                status=OperationStatus.RUNNING, claimed_by=claimed_by, attempts=1,
                heartbeat_at=utcnow() - timedelta(seconds=age),
            )
        )  # fmt: skip


def context(
    db: Database, settings: Settings, driver: FakeDriver, store: FakeBackupStore, claimant: str
) -> OperationContext:
    return OperationContext(db, driver, settings, store, claimant=claimant)


def test_a_claim_takes_each_servers_operations_in_order(db: Database, settings: Settings) -> None:
    _, (first, second) = server_with_operations(
        db, settings, [OperationKind.SERVER_STOP, OperationKind.SERVER_START]
    )
    assert not leases.claim(db, second, ME)  # an older one is pending
    assert leases.claim(db, first, ME)
    assert not leases.claim(db, first, "another-agent")  # taken
    assert not leases.claim(db, second, ME)  # its server is busy
    claimed = row(db, first)
    assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("running", ME, 1)
    with db.write() as session:
        session.execute(update(Operation).where(Operation.id == first).values(status="completed"))
    assert leases.next_pending(db, claimed.server_id) == second
    assert leases.claim(db, second, ME)


def test_concurrent_claims_of_one_operation_give_it_to_one(
    db: Database, settings: Settings
) -> None:
    _, (operation_id,) = server_with_operations(db, settings, [OperationKind.SERVER_STOP])
    won: list[str] = []
    barrier = threading.Barrier(8)

    def race(name: str) -> None:
        barrier.wait()
        if leases.claim(db, operation_id, name):
            won.append(name)

    threads = [threading.Thread(target=race, args=(f"agent-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert row(db, operation_id).claimed_by == won[0]


def test_a_live_lease_is_left_and_an_expired_one_taken_back(
    db: Database, settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    _, (operation_id,) = server_with_operations(db, settings, [OperationKind.SERVER_STOP])
    ctx = context(db, settings, fake_driver, fake_store, leases.new_claimant(settings))
    set_lease(db, operation_id, "kvm-02@elsewhere:/var/lib/vpsd#77.ab", age=1)
    assert take_back_expired(ctx) == 0
    assert row(db, operation_id).status == "running"

    set_lease(db, operation_id, "kvm-02@elsewhere:/var/lib/vpsd#77.ab", age=31)
    assert take_back_expired(ctx) == 1
    back = row(db, operation_id)
    assert (back.status, back.claimed_by, back.heartbeat_at) == ("pending", None, None)


def test_an_earlier_process_of_this_agent_is_known_dead_at_once(
    db: Database, settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    _, (operation_id,) = server_with_operations(db, settings, [OperationKind.SERVER_STOP])
    ctx = context(db, settings, fake_driver, fake_store, leases.new_claimant(settings))
    set_lease(db, operation_id, leases.new_claimant(settings), age=0)  # a killed process's
    assert take_back_expired(ctx) == 1
    set_lease(db, operation_id, ctx.claimant, age=3600)  # its own: never taken back
    assert take_back_expired(ctx) == 0
    assert row(db, operation_id).status == "running"


def test_renewing_keeps_only_the_claimants_leases_fresh(db: Database, settings: Settings) -> None:
    _, (mine, theirs) = server_with_operations(
        db, settings, [OperationKind.SERVER_STOP, OperationKind.SNAPSHOT_DELETE]
    )
    set_lease(db, mine, ME, age=20)
    set_lease(db, theirs, "another-agent", age=20)
    assert leases.renew(db, ME) == 1
    assert utcnow() - row(db, mine).heartbeat_at < timedelta(seconds=5)  # type: ignore[operator]
    assert utcnow() - row(db, theirs).heartbeat_at > timedelta(seconds=15)  # type: ignore[operator]


def test_a_result_is_not_recorded_once_the_lease_was_taken_back(
    db: Database, settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    server_id, (operation_id,) = server_with_operations(db, settings, [OperationKind.SERVER_STOP])
    ctx = context(db, settings, fake_driver, fake_store, ME)
    assert leases.claim(db, operation_id, ME)
    set_lease(db, operation_id, "the-agent-that-took-it-back", age=0)
    with pytest.raises(LeaseLost):
        execute(ctx, operation_id)
    left = row(db, operation_id)
    assert (left.status, left.claimed_by) == ("running", "the-agent-that-took-it-back")
    with db.read() as session:
        assert session.get(Server, server_id).status == ServerStatus.RUNNING  # type: ignore[union-attr]
