"""When a schedule's slots are: every hour, every day, or one weekday, at a minute (and hour)
UTC. The backup and the snapshot policies share these rules.

A slot is due when it is the latest at or before the time of the look and not older than
the policy's last change: a look after downtime finds only the latest missed slot, so it is
caught up on once. Each caller keeps a slot from being taken twice (a unique key on server
and slot).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.db.models import BackupPolicy, Server, ServerStatus, SnapshotPolicy
from vpsd.operations.scope import on_host

Frequency = Literal["hourly", "daily", "weekly"]
PERIODS: dict[str, timedelta] = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
}
TAKEN_FROM = (ServerStatus.RUNNING, ServerStatus.STOPPED)
"""A server in another state at its slot is tried again at the next look."""
PolicyRow = TypeVar("PolicyRow", BackupPolicy, SnapshotPolicy)


@dataclass(frozen=True, slots=True)
class Slots:
    """A schedule: ``hourly`` at ``minute``; ``daily`` at ``hour``:``minute``; ``weekly`` on
    ``weekday`` (0: Monday) at ``hour``:``minute``. Fields a frequency does not use are
    ignored."""

    frequency: str
    hour: int = 0
    weekday: int = 0
    minute: int = 0

    def latest(self, now: datetime) -> datetime:
        """The most recent slot at or before ``now`` (UTC)."""
        slot = now.replace(minute=self.minute, second=0, microsecond=0)
        if self.frequency != "hourly":
            slot = slot.replace(hour=self.hour)
        if self.frequency == "weekly":
            slot -= timedelta(days=(slot.weekday() - self.weekday) % 7)
        if slot > now:
            slot -= PERIODS[self.frequency]
        return slot

    def following(self, now: datetime) -> datetime:
        """The first slot after ``now``."""
        return self.latest(now) + PERIODS[self.frequency]

    def due(self, since: datetime, now: datetime) -> datetime | None:
        """The slot to take at ``now`` for a policy last changed at ``since``: the latest
        one, unless it predates the change (slots before a change are not caught up on)."""
        slot = self.latest(now)
        return slot if slot >= since else None


def due_slots(
    session: Session,
    model: type[PolicyRow],
    host: str,
    now: datetime,
    slots_of: Callable[[PolicyRow], Slots],
) -> list[tuple[int, datetime]]:
    """``(server id, slot)`` for every enabled policy (``model``'s rows) of ``host``'s servers
    that can be taken from whose slot is due at ``now``."""
    policies = session.scalars(
        select(model)
        .join(Server, Server.id == model.server_id)
        .where(model.enabled, Server.status.in_(TAKEN_FROM), on_host(host))
    ).all()
    return [
        (policy.server_id, slot)
        for policy in policies
        if (slot := slots_of(policy).due(policy.updated_at, now)) is not None
    ]
