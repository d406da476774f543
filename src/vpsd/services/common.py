"""Helpers every service shares: locking a server, its state transitions, paging.

Helpers never commit: the calling service owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from vpsd.db.models import Operation, Server, ServerStatus
from vpsd.operations.outbox import ACTIVE_OPERATION, BLOCKING_KINDS
from vpsd.services.errors import InvalidState, NotFound
from vpsd.services.states import RESULTING_STATUS, ServerAction, is_allowed, refusal


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which slice of a list to return (1-based ``page``)."""

    page: int = 1
    page_size: int = 100

    @property
    def offset(self) -> int:
        """Rows to skip."""
        return (self.page - 1) * self.page_size


def find_server(session: Session, account_id: int, server_id: int) -> Server:
    """The caller's server (not deleted), read without a lock; NotFound otherwise."""
    server = session.scalar(
        select(Server).where(
            Server.id == server_id,
            Server.account_id == account_id,
            Server.status != ServerStatus.DELETED,
        )
    )
    if server is None:
        raise NotFound("server not found")
    return server


def lock_server(session: Session, account_id: int, server_id: int) -> Server:
    """The caller's server, locked for the rest of the transaction; NotFound otherwise.

    Every rule about one server (its status, its snapshot count, its running operations)
    is checked after this lock, so two requests can never both pass a check.
    """
    server = session.scalar(
        select(Server)
        .where(
            Server.id == server_id,
            Server.account_id == account_id,
            Server.status != ServerStatus.DELETED,
        )
        .with_for_update()
        # An earlier query in this transaction may have loaded it before the lock.
        .execution_options(populate_existing=True)
    )
    if server is None:
        raise NotFound("server not found")
    return server


def transition(server: Server, action: ServerAction) -> None:
    """Move ``server`` to the status ``action`` leads to, or raise InvalidState."""
    if not is_allowed(action, server.status):
        raise InvalidState(refusal(action, server.status))
    target = RESULTING_STATUS[action]
    if target is not None:
        server.status = target
        server.status_reason = None


def ensure_idle(session: Session, server: Server) -> None:
    """Raise InvalidState if an operation (other than a snapshot delete) is under way."""
    busy = session.scalar(
        select(
            exists().where(
                Operation.server_id == server.id,
                Operation.status.in_(ACTIVE_OPERATION),
                Operation.kind.in_(BLOCKING_KINDS),
            )
        )
    )
    if busy:
        raise InvalidState(
            "another operation on this server is still in progress; try again when it ends"
        )
