"""Servers: create, list, start, stop, reboot, delete, console. The VM work is an operation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from vpsd.config import Settings
from vpsd.db.models import (
    BackupPolicy,
    OperationKind,
    Server,
    ServerConsole,
    ServerStatus,
    Snapshot,
    SnapshotStatus,
)
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher, enqueue
from vpsd.operations.payloads import CreateServer
from vpsd.schemas import BLANK_IMAGE, ServerCreate
from vpsd.services import hosts, quotas, sources, ssh_keys
from vpsd.services.common import PageRequest, lock_server, transition
from vpsd.services.errors import Invalid, InvalidState, NotFound
from vpsd.services.images import resolve_image
from vpsd.services.ports import allocate_ssh_port
from vpsd.services.states import ServerAction

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5
"""Creates retried when a concurrent create took the same SSH port first (PostgreSQL)."""

ACTION_KINDS = {
    ServerAction.STOP: OperationKind.SERVER_STOP,
    ServerAction.START: OperationKind.SERVER_START,
    ServerAction.REBOOT: OperationKind.SERVER_REBOOT,
    ServerAction.DELETE: OperationKind.SERVER_DELETE,
}


HOST_NOT_RESPONDING = (
    "its host is not responding: the status shown may be out of date, and what you ask of "
    "this server waits until the host is back"
)
"""A server's ``status_reason`` while its host is ``down`` (no host name: tenants never see
hosts)."""


@dataclass(frozen=True, slots=True)
class ServerView:
    """A server as the API shows it: a plain value, built inside the transaction."""

    id: int
    name: str
    status: ServerStatus
    status_reason: str | None
    memory_mb: int
    vcpus: int
    disk_gb: int
    image: str
    """The image's slug, or ``blank``."""
    ssh_host: str | None
    ssh_port: int | None
    created_at: datetime
    source_snapshot_id: int | None = None
    source_backup_id: int | None = None


@dataclass(frozen=True, slots=True)
class SnapshotName:
    """A snapshot, named (in a server deletion's answer)."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class ServerDeletion:
    """A server being deleted, and the snapshots whose protection a forced delete removed."""

    server: ServerView
    unprotected: list[SnapshotName]


Unprotected = list[SnapshotName]
"""The snapshots a forced delete removed the protection of (``ServerService`` has a ``list``)."""


def _release_protected_snapshots(
    session: Session, server: Server, force: bool
) -> list[SnapshotName]:
    """The server's protected snapshots, their protection removed when ``force``; else
    InvalidState if it has any."""
    protected = session.scalars(
        select(Snapshot)
        .where(
            Snapshot.server_id == server.id,
            Snapshot.protected,
            Snapshot.status != SnapshotStatus.DELETING,
        )
        .order_by(Snapshot.id)
    ).all()
    if protected and not force:
        names = ", ".join(f"{s.name} ({s.id})" for s in protected)
        raise InvalidState(
            f"server {server.name} has protected snapshots: {names}. Remove their protection "
            "first, or delete the server with ?force=true, which removes it"
        )
    for snapshot in protected:
        snapshot.protected = False
    return [SnapshotName(s.id, s.name) for s in protected]


class ServerService:
    """The rules for a customer's servers; every method is one transaction."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher

    def list(self, account_id: int, page: PageRequest) -> tuple[int, list[ServerView]]:
        """The account's servers (not deleted), newest first: total count and one page."""
        visible = (Server.account_id == account_id, Server.status != ServerStatus.DELETED)
        with self.db.read() as session:
            count = session.scalar(select(func.count()).select_from(Server).where(*visible))
            rows = session.scalars(
                _with_image(select(Server))
                .where(*visible)
                .order_by(Server.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
            return count or 0, [self._view(server) for server in rows]

    def get(self, account_id: int, server_id: int) -> ServerView:
        """One of the account's servers; NotFound for other accounts' and unknown ids."""
        with self.db.read() as session:
            server = self._find(session, account_id, server_id)
            return self._view(server)

    def create(self, account_id: int, request: ServerCreate) -> ServerView:
        """Record a new server as ``starting`` and queue making its disk and booting it.

        Raises Invalid for sizes beyond what one server of the account may have or below the
        image's minimums, an unknown image, SSH keys on a blank server; NotFound for an SSH
        key id that is not the account's; LimitReached when no SSH port is free, when the
        account's quota would be exceeded (``vpsd.services.quotas``) or no host can take it.

        With ``snapshot_id`` or ``backup_id`` the disk is made from that completed snapshot
        or backup of the account's (NotFound otherwise): the server gets its image and, when
        the request names no SSH keys, the keys of the server it came from.
        """
        memory_mb = request.memory_mb or self.settings.default_memory_mb
        vcpus = request.vcpus or self.settings.default_vcpus
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                view = self._insert(account_id, request, memory_mb, vcpus)
                break
            except IntegrityError:
                if attempt == CREATE_ATTEMPTS:
                    raise
                log.info("SSH port taken by a concurrent create; trying again")
        self.dispatcher.notify()
        return view

    def _insert(
        self,
        account_id: int,
        request: ServerCreate,
        memory_mb: int,
        vcpus: int,
    ) -> ServerView:
        wanted = quotas.Resources(1, vcpus, memory_mb, request.disk_gb)
        with self.db.write() as session:
            quotas.check_sizes(session, self.settings, account_id, wanted)
            source = sources.resolve(session, account_id, request)
            if source is None:
                image = resolve_image(session, self.settings, request.image)
            else:
                image = source.image
                source.check(request)
            keys: list[str] = []
            if image is None:
                if request.ssh_keys:
                    raise Invalid(
                        "body.ssh_keys", f"a {BLANK_IMAGE} server has no guest to log in to"
                    )
            else:
                if request.disk_gb < image.min_disk_gb:
                    raise Invalid(
                        "body.disk_gb",
                        f"image {image.slug!r} needs a disk of at least {image.min_disk_gb} GiB",
                    )
                if memory_mb < image.min_memory_mb:
                    raise Invalid(
                        "body.memory_mb",
                        f"image {image.slug!r} needs at least {image.min_memory_mb} MiB of memory",
                    )
                keys = ssh_keys.resolve(session, account_id, request.ssh_keys or [])
                if source is not None and not request.ssh_keys:
                    keys = source.authorized_keys
            quotas.admit(session, self.settings, account_id, wanted)
            host = hosts.place(session, self.settings, wanted)
            server = Server(
                host_id=host.id,
                account_id=account_id,
                name=request.name,
                status=ServerStatus.STARTING,
                memory_mb=memory_mb,
                vcpus=vcpus,
                disk_gb=request.disk_gb,
                image=image,
                ssh_port=allocate_ssh_port(session, self.settings) if image else None,
                authorized_keys="\n".join(keys) if image else None,
                source_snapshot_id=request.snapshot_id,
                source_backup_id=request.backup_id,
            )
            session.add(server)
            session.flush()
            enqueue(
                session,
                OperationKind.SERVER_CREATE,
                server.id,
                snapshot_id=request.snapshot_id,
                backup_id=request.backup_id,
                payload=CreateServer(source=source.payload if source is not None else None),
            )
            return self._view(server)

    def _act(
        self, account_id: int, server_id: int, action: ServerAction, force: bool = False
    ) -> tuple[ServerView, Unprotected]:
        unprotected: Unprotected = []
        with self.db.write() as session:
            server = lock_server(session, account_id, server_id)
            transition(server, action)
            if action is ServerAction.START:
                self._ensure_made(server)
            if action is ServerAction.DELETE:
                unprotected = _release_protected_snapshots(session, server, force)
                # The server's snapshots go with it, and leave the API at once; its backups
                # stay, but no new automatic one is taken.
                session.execute(
                    update(Snapshot)
                    .where(Snapshot.server_id == server.id)
                    .values(status=SnapshotStatus.DELETING)
                )
                session.execute(
                    update(BackupPolicy)
                    .where(BackupPolicy.server_id == server.id)
                    .values(enabled=False)
                )
            enqueue(session, ACTION_KINDS[action], server.id)
            view = self._view(server)
        self.dispatcher.notify()
        return view, unprotected

    def stop(self, account_id: int, server_id: int) -> ServerView:
        """``running`` → ``stopping``; the VM is powered down (ACPI, then forced)."""
        return self._act(account_id, server_id, ServerAction.STOP)[0]

    def start(self, account_id: int, server_id: int) -> ServerView:
        """``stopped``/``error`` → ``starting``; the VM boots.

        Raises InvalidState for a server made from a snapshot or a backup whose disk never
        was (its create failed): a start would give it its image's empty disk instead.
        """
        return self._act(account_id, server_id, ServerAction.START)[0]

    def _ensure_made(self, server: Server) -> None:
        source = (
            f"snapshot {server.source_snapshot_id}"
            if server.source_snapshot_id is not None
            else f"backup {server.source_backup_id}"
            if server.source_backup_id is not None
            else None
        )
        # As its host's agent recorded it (``Server.disks_made``); the host's start handler
        # checks the disk itself too.
        if source is not None and not server.disks_made:
            raise InvalidState(
                f"this server's disk was never made from {source} (its creation failed); "
                "delete the server and create it again"
            )

    def reboot(self, account_id: int, server_id: int) -> ServerView:
        """``running`` → ``rebooting``: a graceful power cycle (ACPI, forced after the
        timeout), then the VM boots again."""
        return self._act(account_id, server_id, ServerAction.REBOOT)[0]

    def delete(self, account_id: int, server_id: int, force: bool = False) -> ServerDeletion:
        """→ ``deleting``: the VM is killed and its disks, snapshots included, removed.

        Raises InvalidState while any of its snapshots is protected, unless ``force``: then
        their protection is removed first, and the answer names them.
        """
        view, unprotected = self._act(account_id, server_id, ServerAction.DELETE, force)
        return ServerDeletion(view, unprotected)

    def console(self, account_id: int, server_id: int, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of the server's serial console, as its host's agent last
        mirrored it (at most ``CONSOLE_MIRROR_BYTES``, every monitor interval); NotFound as
        ``get``."""
        self.get(account_id, server_id)
        with self.db.read() as session:
            tail = session.scalar(
                select(ServerConsole.tail).where(ServerConsole.server_id == server_id)
            )
        return (tail or b"")[-max_bytes:]

    def _find(self, session: Session, account_id: int, server_id: int) -> Server:
        server = session.scalar(
            _with_image(select(Server)).where(
                Server.id == server_id,
                Server.account_id == account_id,
                Server.status != ServerStatus.DELETED,
            )
        )
        if server is None:
            raise NotFound("server not found")
        return server

    def _view(self, server: Server) -> ServerView:
        reason = server.status_reason
        if server.host is not None and hosts.is_down(server.host, self.settings):
            reason = HOST_NOT_RESPONDING
        return ServerView(
            id=server.id,
            name=server.name,
            status=server.status,
            status_reason=reason,
            memory_mb=server.memory_mb,
            vcpus=server.vcpus,
            disk_gb=server.disk_gb,
            image=server.image.slug if server.image is not None else BLANK_IMAGE,
            ssh_host=_ssh_host(server, self.settings) if server.ssh_port is not None else None,
            ssh_port=server.ssh_port,
            created_at=server.created_at,
            source_snapshot_id=server.source_snapshot_id,
            source_backup_id=server.source_backup_id,
        )


def _with_image(query: Select[Server]) -> Select[Server]:
    return query.options(joinedload(Server.image), joinedload(Server.host))


def _ssh_host(server: Server, settings: Settings) -> str:
    """Where the server's SSH forward is reached: its host's address, as that host's agent
    recorded it (``VPSD_SSH_PUBLIC_HOST`` there), else this process's setting."""
    if server.host is not None and server.host.ssh_host:
        return server.host.ssh_host
    return settings.ssh_host
