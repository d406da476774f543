"""Operations' leases: which agent runs an operation, and whether that agent is still alive.

An agent claims a pending operation with one conditional UPDATE (``claim``) that writes its
name (``claimed_by``) and the time (``heartbeat_at``). While it runs, the agent renews the
lease with its host's heartbeat (``renew``). An operation is taken back (put back to
``pending``, or failed after ``recovery.MAX_ATTEMPTS``: ``recovery.take_back_expired``) only
when its lease expired: not renewed for ``host_down_after_seconds``, or held by an earlier
process of this very agent, which is gone for certain since this one holds the data dir's
lock. So two agents
never run the same operation, and a restarted agent resumes its own work at once.

The claim also keeps each server's operations in order: it succeeds only when no other
operation of the server is running and none older is pending, whoever asks, so FIFO per
server holds with any number of threads, agents or duplicate broker messages.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import aliased

from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Operation, OperationStatus
from vpsd.db.session import Database
from vpsd.operations.scope import operations_on_host

_BACK_TO_PENDING = {
    "status": OperationStatus.PENDING,
    "claimed_by": None,
    "heartbeat_at": None,
    "dispatched_at": None,  # with a broker: published again at once
}


class LeaseLost(Exception):
    """The operation's lease was taken back while it ran: its result is not recorded (the
    agent now holding it runs it again; handlers are idempotent)."""


def agent_prefix(settings: Settings) -> str:
    """What every claim of this data dir's agent starts with: host, machine and data dir.
    Only one process at a time holds a data dir's lock, so a claim with this prefix made by
    another process is an earlier, dead one."""
    return f"{settings.host_name}@{socket.gethostname()}:{settings.data_dir}#"


def new_claimant(settings: Settings) -> str:
    """A name for this process's claims, unique across restarts (``claimed_by``)."""
    return f"{agent_prefix(settings)}{os.getpid()}.{secrets.token_hex(4)}"


def next_in_line() -> ColumnElement[bool]:
    """A condition on ``Operation``: pending, with no other operation of its server running
    and none older pending: the one its server runs next."""
    other = aliased(Operation)
    in_the_way = exists().where(
        other.server_id == Operation.server_id,
        other.id != Operation.id,
        or_(
            other.status == OperationStatus.RUNNING,
            and_(other.status == OperationStatus.PENDING, other.id < Operation.id),
        ),
    )
    return and_(Operation.status == OperationStatus.PENDING, ~in_the_way)


def claim(db: Database, operation_id: int, claimant: str) -> bool:
    """Make a pending operation ``running`` under ``claimant``'s lease; False when it is not
    pending, or its server has another operation running or an older one pending."""
    now = utcnow()
    with db.write() as session:
        claimed = session.execute(
            update(Operation)
            .where(Operation.id == operation_id, next_in_line())
            .values(
                status=OperationStatus.RUNNING,
                started_at=now,
                attempts=Operation.attempts + 1,
                claimed_by=claimant,
                heartbeat_at=now,
            )
        )
        return bool(claimed.rowcount)  # type: ignore[attr-defined]


def next_pending(db: Database, server_id: int) -> int | None:
    """The oldest pending operation of a server, the next to claim; None when there is none."""
    with db.read() as session:
        return session.scalar(
            select(Operation.id)
            .where(Operation.server_id == server_id, Operation.status == OperationStatus.PENDING)
            .order_by(Operation.id)
            .limit(1)
        )


def renew(db: Database, claimant: str) -> int:
    """Renew the leases of every operation ``claimant`` is running; how many."""
    with db.write() as session:
        renewed = session.execute(
            update(Operation)
            .where(Operation.status == OperationStatus.RUNNING, Operation.claimed_by == claimant)
            .values(heartbeat_at=utcnow())
        )
        return int(renewed.rowcount)  # type: ignore[attr-defined]


def release(db: Database, operation_id: int, claimant: str) -> bool:
    """Hand a claimed operation back to ``pending`` (its result could not be recorded);
    False when the lease is no longer ``claimant``'s."""
    return _back_to_pending(db, operation_id, Operation.claimed_by == claimant)


def expired_leases(db: Database, settings: Settings, claimant: str) -> list[tuple[int, int]]:
    """``(id, attempts)`` of this host's running operations whose lease expired: not renewed
    for ``host_down_after_seconds``, held by an earlier process of this agent, or never
    recorded (rows from before leases)."""
    with db.read() as session:
        rows = session.execute(
            select(Operation.id, Operation.attempts).where(
                Operation.status == OperationStatus.RUNNING,
                operations_on_host(settings.host_name),
                _expired(settings, claimant),
            )
        ).all()
    return [(row.id, row.attempts) for row in rows]


def requeue_expired(db: Database, settings: Settings, claimant: str, operation_id: int) -> bool:
    """Put an operation whose lease expired back to ``pending``; False when its lease was
    renewed (or it ended) meanwhile."""
    return _back_to_pending(db, operation_id, _expired(settings, claimant))


def _back_to_pending(db: Database, operation_id: int, condition: ColumnElement[bool]) -> bool:
    """A running operation back to ``pending``, its lease cleared, if ``condition`` holds."""
    with db.write() as session:
        changed = session.execute(
            update(Operation)
            .where(
                Operation.id == operation_id, Operation.status == OperationStatus.RUNNING, condition
            )
            .values(**_BACK_TO_PENDING)
        )
        return bool(changed.rowcount)  # type: ignore[attr-defined]


def _expired(settings: Settings, claimant: str) -> ColumnElement[bool]:
    cutoff = utcnow() - timedelta(seconds=settings.host_down_after_seconds)
    prefix = agent_prefix(settings)
    return and_(
        or_(Operation.claimed_by.is_(None), Operation.claimed_by != claimant),
        or_(
            Operation.heartbeat_at.is_(None),
            Operation.heartbeat_at < cutoff,
            # startswith escapes LIKE's wildcards, which a data dir path may hold
            Operation.claimed_by.startswith(prefix, autoescape=True),
        ),
    )
