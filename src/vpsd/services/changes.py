"""Changes: an update that rolls itself back, the page's own best practice in one request
("create a snapshot before major system updates", "delete old snapshots after successful
updates"). The work is one operation, ``change.apply`` (``operations.change_handler``):
a snapshot, the command in the guest, a health check, and a restore of the snapshot when
the command or the check fails."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from vpsd.config import Settings
from vpsd.db.changes import Change, ChangePhase, ChangeStatus
from vpsd.db.models import (
    OperationKind,
    Server,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
    SnapshotType,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, enqueue
from vpsd.operations.payloads import ApplyChange
from vpsd.operations.snapshot_records import counted
from vpsd.schemas import ChangeCreate
from vpsd.services.common import PageRequest, ensure_idle, lock_server
from vpsd.services.errors import InvalidState, LimitReached, NotFound
from vpsd.services.snapshots import ServerName


@dataclass(frozen=True, slots=True)
class ChangeView:
    """A change as the API shows it."""

    id: int
    server: ServerName
    status: ChangeStatus
    phase: ChangePhase
    status_reason: str | None
    command: str
    health_check: dict[str, Any]
    timeout_seconds: int
    keep_snapshot_hours: int
    snapshot_id: int | None
    exit_code: int | None
    output: str
    output_length: int
    health: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class ChangeService:
    """The rules for changes; every method is one transaction."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher

    def create(self, account_id: int, request: ChangeCreate) -> ChangeView:
        """Reserve a snapshot slot and queue the change: snapshot, command, check, and a
        restore of the snapshot if either fails.

        Raises NotFound for an unknown server; InvalidState when it is not running, has no
        guest (a blank server) or is busy with another operation; LimitReached when its
        snapshots fill the limit (nothing runs: a change never goes without its snapshot).
        """
        with self.db.write() as session:
            server = lock_server(session, account_id, request.server_id)
            if server.status != ServerStatus.RUNNING:
                raise InvalidState(
                    f"a change runs its command in the running guest, and this server is "
                    f"{server.status}; start it first"
                )
            if server.image_id is None:
                raise InvalidState("a blank server has no guest to run a command in")
            ensure_idle(session, server)
            limit = self.settings.max_snapshots_per_server
            if counted(session, server.id) >= limit:
                raise LimitReached(
                    f"snapshot limit reached: a change needs a free snapshot slot to roll back "
                    f"to, and this server has {limit}; delete one first"
                )
            change = Change(
                account_id=account_id,
                server_id=server.id,
                command=request.command,
                health_check=request.health_check.model_dump(exclude_none=True),
                timeout_seconds=request.timeout_seconds,
                keep_snapshot_hours=request.keep_snapshot_hours,
                status=ChangeStatus.IN_PROGRESS,
                phase=ChangePhase.SNAPSHOT,
                output="",
                output_length=0,
            )
            session.add(change)
            session.flush()
            snapshot = Snapshot(
                server=server,
                name=f"before-change-{change.id}",
                description=f"taken by change {change.id} before: {request.command[:200]}",
                status=SnapshotStatus.IN_PROGRESS,
                type=SnapshotType.MANUAL,  # the change's user asked for it: never rotated
                # with memory, a rollback resumes the guest in seconds instead of booting it
                memory=True,
            )
            session.add(snapshot)
            session.flush()
            change.snapshot_id = snapshot.id
            enqueue(
                session,
                OperationKind.CHANGE_APPLY,
                server.id,
                snapshot_id=snapshot.id,
                payload=ApplyChange(change_id=change.id),
            )
            view = _view(change, ServerName(server.id, server.name))
        self.dispatcher.notify()
        return view

    def get(self, account_id: int, change_id: int) -> ChangeView:
        """One of the account's changes; NotFound for others' and unknown ids."""
        with self.db.read() as session:
            found = _find(session, account_id, change_id)
            if found is None:
                raise NotFound("change not found")
            return found

    def list(
        self, account_id: int, page: PageRequest, server_id: int | None = None
    ) -> tuple[int, list[ChangeView]]:
        """The account's changes, newest first, optionally of one server."""
        conditions = [Change.account_id == account_id]
        if server_id is not None:
            conditions.append(Change.server_id == server_id)
        with self.db.read() as session:
            count = session.scalar(select(func.count()).select_from(Change).where(*conditions))
            rows = session.execute(
                _with_server()
                .where(*conditions)
                .order_by(Change.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
            return count or 0, [_view(change, ServerName(sid, name)) for change, sid, name in rows]


def _with_server() -> Select[Change, int, str]:
    return select(Change, Server.id, Server.name).join(Server, Server.id == Change.server_id)


def _find(session: Session, account_id: int, change_id: int) -> ChangeView | None:
    row = session.execute(
        _with_server().where(Change.id == change_id, Change.account_id == account_id)
    ).first()
    if row is None:
        return None
    change, server_id, server_name = row
    return _view(change, ServerName(server_id, server_name))


def _view(change: Change, server: ServerName) -> ChangeView:
    return ChangeView(
        id=change.id,
        server=server,
        status=ChangeStatus(change.status),
        phase=ChangePhase(change.phase),
        status_reason=change.status_reason,
        command=change.command,
        health_check=dict(change.health_check),
        timeout_seconds=change.timeout_seconds,
        keep_snapshot_hours=change.keep_snapshot_hours,
        snapshot_id=change.snapshot_id,
        exit_code=change.exit_code,
        output=change.output or "",
        output_length=change.output_length or 0,
        health=dict(change.health) if change.health is not None else None,
        created_at=change.created_at,
        finished_at=change.finished_at,
    )
