"""Takes the automatic backups that policies make due, in a background thread."""

from __future__ import annotations

import logging
import threading

from vpsd.db.base import utcnow
from vpsd.services.backup_policies import BackupPolicyService

log = logging.getLogger(__name__)


class BackupScheduler:
    """Runs ``BackupPolicyService.take_due_backups`` at start and every ``interval`` s."""

    def __init__(self, policies: BackupPolicyService, interval: float) -> None:
        self.policies = policies
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vpsd-scheduler", daemon=True)

    def start(self) -> None:
        """Start looking (the first look is at once: it catches up after downtime)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop looking and wait for the thread to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            try:
                self.policies.take_due_backups(utcnow())
            except Exception:
                log.exception("taking the due automatic backups failed")
            if self._stopping.wait(self.interval):
                return
