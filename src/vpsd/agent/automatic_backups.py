"""Takes the automatic backups that this host's policies make due, in a background thread."""

from __future__ import annotations

from vpsd.agent.periodic import Periodic
from vpsd.db.base import utcnow
from vpsd.db.session import Database
from vpsd.operations.backup_schedule import take_due_backups
from vpsd.operations.outbox import Dispatcher


class AutomaticBackups(Periodic):
    """Runs ``take_due_backups`` for ``host`` at start (catching up after downtime) and every
    ``interval`` seconds."""

    def __init__(self, db: Database, dispatcher: Dispatcher, host: str, interval: float) -> None:
        super().__init__(
            "vpsd-automatic-backups",
            "taking the due automatic backups",
            lambda: take_due_backups(db, dispatcher, host, utcnow()),
            interval,
            at_start=True,
        )
