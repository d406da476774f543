"""One host on a fake clock, for the snapshot lifecycle's tests: the services called directly,
this host's agent's periodic jobs called with the time a test chooses, and the queued
operations run to their end on the fake driver (``run_pending``), in order, as its runner
would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from tests.helpers import NoDispatch
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.models import Account, Operation, OperationStatus, Snapshot, SnapshotStatus
from vpsd.db.models import SnapshotPolicy as PolicyRow
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations import handlers, leases
from vpsd.operations.context import OperationContext
from vpsd.operations.snapshot_expiry import expire_snapshots
from vpsd.operations.snapshot_schedule import take_due_snapshots
from vpsd.schemas import ServerCreate, SnapshotCreate, SnapshotPolicy, SnapshotUpdate
from vpsd.services.servers import ServerService
from vpsd.services.snapshot_policies import SnapshotPolicyService
from vpsd.services.snapshots import SnapshotService
from vpsd.services.tokens import create_token


def at(text: str) -> datetime:
    """A UTC time from ISO text without its zone."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Host:
    """This host (``settings.host_name``): its services, its agent's periodic jobs on a
    fake clock, and its operations run on demand."""

    def __init__(self, db: Database, settings: Settings, account: str = "alice") -> None:
        self.db = db
        self.settings = settings
        self.driver = FakeDriver()
        self.ctx = OperationContext(
            db=db, driver=self.driver, settings=settings, backups=FakeBackupStore(),
            claimant=leases.new_claimant(settings),
        )  # fmt: skip
        create_token(db, account)
        with db.read() as session:
            self.account_id = session.scalars(
                select(Account.id).where(Account.name == account)
            ).one()
        self.servers = ServerService(db, settings, NoDispatch())
        self.snapshots = SnapshotService(db, settings, NoDispatch())
        self.policies = SnapshotPolicyService(db, settings)

    def run_pending(self) -> int:
        """Run every queued operation to its end, each server's in order; how many ran."""
        ran = 0
        while True:
            with self.db.read() as session:
                pending = session.scalars(
                    select(Operation.id)
                    .where(Operation.status == OperationStatus.PENDING)
                    .order_by(Operation.id)
                ).all()
            claimed = [i for i in pending if leases.claim(self.db, i, self.ctx.claimant)]
            if not claimed:
                return ran
            for operation_id in claimed:
                handlers.execute(self.ctx, operation_id)
            ran += len(claimed)

    def server(self, name: str = "web") -> int:
        """A new running server (blank disk), its create run."""
        view = self.servers.create(self.account_id, ServerCreate(name=name, disk_gb=1))
        self.run_pending()
        return view.id

    def snapshot(self, server_id: int, name: str, **fields: Any) -> int:
        """A manual snapshot, taken (its operation run)."""
        request = SnapshotCreate(server_id=server_id, name=name, **fields)
        snapshot_id = self.snapshots.create(self.account_id, request).id
        self.run_pending()
        return snapshot_id

    def update(self, snapshot_id: int, **fields: Any) -> Snapshot:
        """``PATCH`` the snapshot with ``fields``."""
        request = SnapshotUpdate.model_validate(fields)
        return self.snapshots.update(self.account_id, snapshot_id, request)

    def set_policy(self, server_id: int, since: datetime, **fields: Any) -> None:
        """Set the server's snapshot policy as if at ``since``."""
        self.policies.set(self.account_id, server_id, SnapshotPolicy.model_validate(fields))
        with self.db.write() as session:
            session.execute(
                update(PolicyRow).where(PolicyRow.server_id == server_id).values(updated_at=since)
            )

    def look(self, now: datetime) -> int:
        """The agent's look for due snapshots at ``now``, then its operations run; how many
        snapshots it queued."""
        queued = take_due_snapshots(
            self.db, NoDispatch(), self.settings.host_name, now,
            self.settings.max_snapshots_per_server,
        )  # fmt: skip
        self.run_pending()
        return queued

    def expire(self, now: datetime, run: bool = True) -> int:
        """The agent's look for expired snapshots at ``now`` (their deletions run unless
        ``run`` is false); how many it queued."""
        queued = expire_snapshots(self.db, NoDispatch(), self.settings.host_name, now)
        if run:
            self.run_pending()
        return queued

    def shown(self, server_id: int) -> list[tuple[str, str, str]]:
        """The server's snapshots as its owner sees them, oldest first: name, type, status."""
        with self.db.read() as session:
            rows = session.execute(
                select(Snapshot.name, Snapshot.type, Snapshot.status)
                .where(Snapshot.server_id == server_id, Snapshot.status != SnapshotStatus.DELETING)
                .order_by(Snapshot.id)
            ).all()
        return [(name, str(kind), str(status)) for name, kind, status in rows]

    def on_disk(self, server_id: int) -> int:
        """How many internal snapshots the server's disks hold."""
        return len(self.driver.snapshot_tags(server_id))
