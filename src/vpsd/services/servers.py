"""Servers: create, list, start, stop, delete. The VM work itself is an operation."""

from __future__ import annotations

from sqlalchemy import func, select, update

from vpsd.config import Settings
from vpsd.db.models import OperationKind, Server, ServerStatus, Snapshot, SnapshotStatus
from vpsd.db.session import Database
from vpsd.schemas import ServerCreate
from vpsd.services.common import Dispatcher, PageRequest, enqueue, lock_server, transition
from vpsd.services.errors import Invalid, NotFound
from vpsd.services.states import ServerAction


class ServerService:
    """The rules for a customer's servers; every method is one transaction."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher

    def list(self, account_id: int, page: PageRequest) -> tuple[int, list[Server]]:
        """The account's servers (not deleted), newest first: total count and one page."""
        visible = (Server.account_id == account_id, Server.status != ServerStatus.DELETED)
        with self.db.read() as session:
            count = session.scalar(select(func.count()).select_from(Server).where(*visible))
            rows = session.scalars(
                select(Server)
                .where(*visible)
                .order_by(Server.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
        return count or 0, list(rows)

    def get(self, account_id: int, server_id: int) -> Server:
        """One of the account's servers; NotFound for other accounts' and unknown ids."""
        with self.db.read() as session:
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

    def create(self, account_id: int, request: ServerCreate) -> Server:
        """Record a new server as ``starting`` and queue its disk creation and boot."""
        memory_mb = request.memory_mb or self.settings.default_memory_mb
        vcpus = request.vcpus or self.settings.default_vcpus
        limits = (
            ("disk_gb", request.disk_gb, self.settings.max_disk_gb),
            ("memory_mb", memory_mb, self.settings.max_memory_mb),
            ("vcpus", vcpus, self.settings.max_vcpus),
        )
        for field, value, maximum in limits:
            if value > maximum:
                raise Invalid(f"body.{field}", f"must be at most {maximum} on this host")
        with self.db.write() as session:
            server = Server(
                account_id=account_id,
                name=request.name,
                status=ServerStatus.STARTING,
                memory_mb=memory_mb,
                vcpus=vcpus,
                disk_gb=request.disk_gb,
            )
            session.add(server)
            session.flush()
            enqueue(session, OperationKind.SERVER_CREATE, server.id)
        self.dispatcher.notify()
        return server

    def _act(self, account_id: int, server_id: int, action: ServerAction) -> Server:
        kind = {
            ServerAction.STOP: OperationKind.SERVER_STOP,
            ServerAction.START: OperationKind.SERVER_START,
            ServerAction.DELETE: OperationKind.SERVER_DELETE,
        }[action]
        with self.db.write() as session:
            server = lock_server(session, account_id, server_id)
            transition(server, action)
            if action is ServerAction.DELETE:
                # The server's snapshots go with it, and leave the API at once.
                session.execute(
                    update(Snapshot)
                    .where(Snapshot.server_id == server.id)
                    .values(status=SnapshotStatus.DELETING)
                )
            enqueue(session, kind, server.id)
        self.dispatcher.notify()
        return server

    def stop(self, account_id: int, server_id: int) -> Server:
        """``running`` → ``stopping``; the VM is powered down (ACPI, then forced)."""
        return self._act(account_id, server_id, ServerAction.STOP)

    def start(self, account_id: int, server_id: int) -> Server:
        """``stopped``/``error`` → ``starting``; the VM boots."""
        return self._act(account_id, server_id, ServerAction.START)

    def delete(self, account_id: int, server_id: int) -> Server:
        """→ ``deleting``: the VM is killed and its disks, snapshots included, removed."""
        return self._act(account_id, server_id, ServerAction.DELETE)
