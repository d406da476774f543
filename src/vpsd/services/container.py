"""Every service of one process, built once (``vpsd.runtime``) and shared by the API's and
the panel's requests."""

from __future__ import annotations

from dataclasses import dataclass

from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.operations.outbox import Dispatcher
from vpsd.services.backup_policies import BackupPolicyService
from vpsd.services.backups import BackupService
from vpsd.services.changes import ChangeService
from vpsd.services.hosts import HostService
from vpsd.services.images import ImageService
from vpsd.services.servers import ServerService
from vpsd.services.snapshot_policies import SnapshotPolicyService
from vpsd.services.snapshots import SnapshotService
from vpsd.services.ssh_keys import SshKeyService
from vpsd.services.tokens import TokenAuthenticator


@dataclass(frozen=True, slots=True)
class Services:
    """What a process with an API builds once at start-up and every request shares."""

    settings: Settings
    db: Database
    servers: ServerService
    images: ImageService
    snapshots: SnapshotService
    backups: BackupService
    backup_policies: BackupPolicyService
    changes: ChangeService
    snapshot_policies: SnapshotPolicyService
    ssh_keys: SshKeyService
    hosts: HostService
    authenticate: TokenAuthenticator


def build_services(db: Database, settings: Settings, dispatcher: Dispatcher) -> Services:
    """The services on ``db``, telling ``dispatcher`` of the operations they commit."""
    return Services(
        settings=settings,
        db=db,
        servers=ServerService(db, settings, dispatcher),
        images=ImageService(db, settings),
        snapshots=SnapshotService(db, settings, dispatcher),
        backups=BackupService(db, settings, dispatcher),
        backup_policies=BackupPolicyService(db),
        changes=ChangeService(db, settings, dispatcher),
        snapshot_policies=SnapshotPolicyService(db, settings),
        ssh_keys=SshKeyService(db),
        hosts=HostService(db, settings),
        authenticate=TokenAuthenticator(db, settings.token_cache_seconds),
    )
