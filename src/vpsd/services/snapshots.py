"""Snapshots: the rules of the seed page (5 per server, completed-only restore, tenancy),
and edits: a name, a description, protection, an expiry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select, text
from sqlalchemy.orm import Session, joinedload

from vpsd.config import Settings
from vpsd.db.base import StoredTime, utcnow
from vpsd.db.models import (
    OperationKind,
    Server,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
    SnapshotType,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher
from vpsd.operations.snapshot_records import counted, enqueue_deletion, enqueue_snapshot, in_use
from vpsd.schemas import SnapshotCreate, SnapshotUpdate, format_time
from vpsd.services.common import PageRequest, lock_server, transition
from vpsd.services.errors import Invalid, InvalidState, LimitReached, NotFound
from vpsd.services.restores import RestoreView, begin_restore, ensure_completed
from vpsd.services.states import ServerAction

VISIBLE = (SnapshotStatus.IN_PROGRESS, SnapshotStatus.COMPLETED, SnapshotStatus.FAILED)


@dataclass(frozen=True, slots=True)
class ServerName:
    """The server a snapshot belongs to, as the snapshot shows it."""

    id: int
    name: str


class SnapshotView(NamedTuple):
    """A snapshot as the read endpoints show it: a plain value, not an ORM object, made
    straight from a row of the read statements (the columns in this order).

    Reads run one precompiled SQL statement per query (``Database.fetch``) and keep
    ``created_at`` as the database returns it (``StoredTime``): building ORM objects, and
    parsing then formatting each row's time, were most of a list request's time (see
    docs/benchmarks.md).
    """

    id: int
    name: str
    status: SnapshotStatus
    size_mb: int | None
    created_at: StoredTime
    description: str | None
    status_reason: str | None
    consistency: str | None
    memory: bool
    pause_ms: int | None
    type: SnapshotType
    protected: bool | int
    """``int`` as SQLite returns it (0 or 1) to the read statements."""
    expires_at: StoredTime | None
    server_id: int
    server_name: str


_VISIBLE_SQL = ", ".join(f"'{status.value}'" for status in VISIBLE)
_FROM = (
    "FROM snapshots JOIN servers ON servers.id = snapshots.server_id "
    f"WHERE servers.account_id = :account AND snapshots.status IN ({_VISIBLE_SQL})"
)
_COLUMNS = (
    "SELECT snapshots.id, snapshots.name, snapshots.status, snapshots.size_mb, "
    "snapshots.created_at, snapshots.description, snapshots.status_reason, "
    "snapshots.consistency, snapshots.memory, snapshots.pause_ms, snapshots.type, "
    "snapshots.protected, snapshots.expires_at, servers.id, servers.name "
)
_BY_SERVER = " AND snapshots.server_id = :server"
_PAGE = " ORDER BY snapshots.id DESC LIMIT :limit OFFSET :offset"
LIST_SQL = text(_COLUMNS + _FROM + _PAGE)
LIST_COUNT_SQL = text("SELECT count(*) " + _FROM)
SERVER_LIST_SQL = text(_COLUMNS + _FROM + _BY_SERVER + _PAGE)
SERVER_COUNT_SQL = text("SELECT count(*) " + _FROM + _BY_SERVER)
# On PostgreSQL a page's rows carry the count of all matches (a window, computed before
# LIMIT): one statement, one round trip instead of four (BEGIN, count, page, ROLLBACK), 1.0
# against 1.6 ms here. SQLite materializes such a window: there the count is its own
# statement (0.9 + 0.1 ms against 1.7 ms).
_COUNTED = ", count(*) OVER () "
COUNTED_LIST_SQL = text(_COLUMNS.rstrip() + _COUNTED + _FROM + _PAGE)
COUNTED_SERVER_LIST_SQL = text(_COLUMNS.rstrip() + _COUNTED + _FROM + _BY_SERVER + _PAGE)
GET_SQL = text(_COLUMNS + _FROM + " AND snapshots.id = :snapshot")


_view = SnapshotView._make


class SnapshotService:
    """The rules for snapshots of a customer's servers; every method is one transaction."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher

    async def list(
        self, account_id: int, page: PageRequest, server_id: int | None = None
    ) -> tuple[int, list[SnapshotView]]:
        """The account's snapshots, newest first, optionally of one server only.

        Async, like ``get``: short indexed queries, cheaper on the event loop than through a
        worker thread; PostgreSQL's round trips are awaited (``Database.afetch``)."""
        params: dict[str, Any] = {"account": account_id}
        if server_id is not None:
            params["server"] = server_id
        mine = server_id is None
        count_sql = LIST_COUNT_SQL if mine else SERVER_COUNT_SQL
        paged = {**params, "limit": page.page_size, "offset": page.offset}
        if self.db.is_sqlite:
            counted, rows = await self.db.afetch(
                (count_sql, params), (LIST_SQL if mine else SERVER_LIST_SQL, paged)
            )
            return counted[0][0], list(map(_view, rows))
        [rows] = await self.db.afetch(
            (COUNTED_LIST_SQL if mine else COUNTED_SERVER_LIST_SQL, paged)
        )
        if rows:
            return rows[0][-1], [_view(row[:-1]) for row in rows]
        if page.offset == 0:
            return 0, []
        [[(count,)]] = await self.db.afetch((count_sql, params))  # a page past the last one
        return count, []

    async def get(self, account_id: int, snapshot_id: int) -> SnapshotView:
        """One of the account's snapshots; NotFound for others' and unknown ids."""
        [rows] = await self.db.afetch((GET_SQL, {"account": account_id, "snapshot": snapshot_id}))
        if not rows:
            raise NotFound("snapshot not found")
        return _view(rows[0])

    def create(self, account_id: int, request: SnapshotCreate) -> Snapshot:
        """Record an ``in_progress`` snapshot and queue taking it.

        Raises NotFound for an unknown server, InvalidState when the server is not running
        or stopped (running, for a snapshot with memory), LimitReached when it already has
        the maximum of snapshots (automatic ones count too), Invalid for an ``expires_at``
        that is not in the future.
        """
        if request.expires_at is not None:
            _ensure_future(request.expires_at)
        with self.db.write() as session:
            server = lock_server(session, account_id, request.server_id)
            transition(server, ServerAction.SNAPSHOT)
            if request.memory and server.status != ServerStatus.RUNNING:
                raise InvalidState(
                    f"a snapshot with memory needs a running server, and this one is "
                    f"{server.status}: start it first, or take a snapshot without memory"
                )
            limit = self.settings.max_snapshots_per_server
            if counted(session, server.id) >= limit:
                raise LimitReached(
                    f"snapshot limit reached: a server can have at most {limit} snapshots; "
                    "delete one first"
                )
            snapshot = enqueue_snapshot(
                session,
                server,
                request.name,
                request.description,
                SnapshotType.MANUAL,
                expires_at=request.expires_at,
                memory=request.memory,
            )
        self.dispatcher.notify()
        return snapshot

    def update(self, account_id: int, snapshot_id: int, request: SnapshotUpdate) -> Snapshot:
        """Change the fields the request gives (``null`` clears ``description`` and
        ``expires_at``); the snapshot as it now is.

        Raises NotFound; Invalid (nothing changed) for an ``expires_at`` that is not in the
        future, or one on a snapshot that is, or becomes, protected: a protected snapshot
        never expires.
        """
        given = request.model_fields_set
        if request.expires_at is not None:
            _ensure_future(request.expires_at)
        with self.db.write() as session:
            server_id = find_snapshot(session, account_id, snapshot_id).server_id
            lock_server(session, account_id, server_id)
            snapshot = find_snapshot(session, account_id, snapshot_id)
            protected = request.protected if "protected" in given else snapshot.protected
            expires_at = request.expires_at if "expires_at" in given else snapshot.expires_at
            if protected and expires_at is not None:
                raise _protection_conflict(snapshot, "expires_at" in given, expires_at)
            if request.name is not None:
                snapshot.name = request.name
            if "description" in given:
                snapshot.description = request.description
            snapshot.protected = bool(protected)
            snapshot.expires_at = expires_at
        return snapshot

    def restore(self, account_id: int, snapshot_id: int) -> RestoreView:
        """Put the server in ``restoring`` and queue: hard stop, revert disks, prior power.

        Raises NotFound, or InvalidState when the snapshot is not completed, the server is
        not running or stopped, or another operation on the server is under way.
        """
        with self.db.write() as session:
            server_id = find_snapshot(session, account_id, snapshot_id).server_id
            server = lock_server(session, account_id, server_id)
            snapshot = find_snapshot(session, account_id, snapshot_id)  # re-read under the lock
            ensure_completed("snapshot", snapshot.status)
            prior = begin_restore(
                session,
                server,
                OperationKind.SNAPSHOT_RESTORE,
                snapshot_id=snapshot.id,
                # with memory the guest resumes, running, whatever the server did before
                returns_to="running" if snapshot.memory else None,
            )
            view = RestoreView(
                snapshot.id,
                snapshot.name,
                snapshot.created_at,
                server.id,
                server.name,
                prior,
                memory=snapshot.memory,
            )
        self.dispatcher.notify()
        return view

    def delete(self, account_id: int, snapshot_id: int) -> None:
        """Hide the snapshot at once and queue removing it from the disks.

        Raises NotFound; InvalidState for a protected snapshot, or while a restore from this
        snapshot, or a new server from it, is queued or running.
        """
        with self.db.write() as session:
            server_id = find_snapshot(session, account_id, snapshot_id).server_id
            lock_server(session, account_id, server_id)
            snapshot = find_snapshot(session, account_id, snapshot_id)
            if snapshot.protected:
                raise InvalidState(
                    f"snapshot {snapshot.name} is protected: remove its protection first "
                    f'(PATCH /api/v1/snapshots/{snapshot.id}/ with {{"protected": false}})'
                )
            if in_use(session, snapshot.id):
                raise InvalidState(
                    "this snapshot is being restored, copied to a new server or guarding a "
                    "change; delete it when that has finished"
                )
            enqueue_deletion(session, snapshot)
        self.dispatcher.notify()


def _ensure_future(expires_at: datetime) -> None:
    now = utcnow()
    if expires_at <= now:
        raise Invalid(
            "body.expires_at",
            f"must be in the future (it is now {format_time(now)}); "
            "null keeps the snapshot until it is deleted",
        )


def _protection_conflict(snapshot: Snapshot, setting_expiry: bool, expires_at: datetime) -> Invalid:
    if setting_expiry:
        return Invalid(
            "body.expires_at",
            'a protected snapshot never expires: remove its protection first ("protected": false)',
        )
    return Invalid(
        "body.protected",
        f"snapshot {snapshot.name} expires at {format_time(expires_at)}: a protected snapshot "
        'never expires, so clear its expiry in the same request ("expires_at": null)',
    )


def find_snapshot(session: Session, account_id: int, snapshot_id: int) -> Snapshot:
    """The account's visible snapshot, its server loaded and re-read (use under a lock);
    NotFound for others' and unknown ids."""
    snapshot = session.scalar(
        select(Snapshot)
        .join(Snapshot.server)
        .options(joinedload(Snapshot.server))
        .where(
            Snapshot.id == snapshot_id,
            Server.account_id == account_id,
            Snapshot.status.in_(VISIBLE),
        )
        .execution_options(populate_existing=True)
    )
    if snapshot is None:
        raise NotFound("snapshot not found")
    return snapshot
