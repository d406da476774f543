"""Snapshot policies: when a server's automatic snapshots are taken and how many are kept.

Each host's agent runs them (``vpsd.operations.snapshot_schedule``: the slots, rotation,
skipped slots); here they are read and set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import SnapshotPolicy
from vpsd.db.session import Database
from vpsd.operations.snapshot_schedule import slots_of
from vpsd.schemas import SnapshotPolicy as PolicyRequest
from vpsd.services.common import find_server, lock_server
from vpsd.services.errors import Invalid

DEFAULT = SnapshotPolicy(
    enabled=False,
    frequency="daily",
    minute=0,
    hour=3,
    weekday=6,
    keep=3,
)
"""What a server without a policy shows (never stored)."""


@dataclass(frozen=True, slots=True)
class SnapshotPolicyView:
    """A snapshot policy as the API shows it."""

    enabled: bool
    frequency: str
    minute: int
    hour: int
    weekday: int
    keep: int
    next_run_at: datetime | None
    skipped_slot: datetime | None
    skipped_reason: str | None


def _view(policy: SnapshotPolicy, now: datetime) -> SnapshotPolicyView:
    return SnapshotPolicyView(
        policy.enabled, policy.frequency, policy.minute, policy.hour, policy.weekday,
        policy.keep, slots_of(policy).following(now) if policy.enabled else None,
        policy.skipped_slot, policy.skipped_reason,
    )  # fmt: skip


class SnapshotPolicyService:
    """Reading and setting servers' snapshot policies."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def get(self, account_id: int, server_id: int) -> SnapshotPolicyView:
        """The server's policy (disabled defaults when none was set); NotFound as servers."""
        with self.db.read() as session:
            find_server(session, account_id, server_id)
            return _view(session.get(SnapshotPolicy, server_id) or DEFAULT, utcnow())

    def set(self, account_id: int, server_id: int, request: PolicyRequest) -> SnapshotPolicyView:
        """Replace the server's policy. Slots before this moment are not caught up on.

        Raises NotFound as servers; Invalid when ``keep`` is beyond the snapshots a server
        may have.
        """
        limit = self.settings.max_snapshots_per_server
        if request.keep > limit:
            raise Invalid(
                "body.keep",
                f"a server can have at most {limit} snapshots, manual and automatic together: "
                f"keep at most {limit}",
            )
        with self.db.write() as session:
            lock_server(session, account_id, server_id)
            policy = session.get(SnapshotPolicy, server_id)
            if policy is None:
                policy = SnapshotPolicy(server_id=server_id)
                session.add(policy)
            for field, value in request.model_dump().items():  # the same names as the columns
                setattr(policy, field, value)
            policy.updated_at = utcnow()
            return _view(policy, utcnow())
