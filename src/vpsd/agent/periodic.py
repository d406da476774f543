"""A background thread that runs one task every few seconds until it is stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``task`` every ``interval`` seconds (first at once when ``at_start``) in a
    daemon thread; a task that raises is logged (as ``what`` failed) and run again at the
    next interval."""

    def __init__(
        self,
        thread_name: str,
        what: str,
        task: Callable[[], object],
        interval: float,
        *,
        at_start: bool = False,
    ) -> None:
        self.what = what
        self.task = task
        self.interval = interval
        self.at_start = at_start
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        if not self.at_start and self._stopping.wait(self.interval):
            return
        while True:
            try:
                self.task()
            except Exception:
                log.exception("%s failed", self.what)
            if self._stopping.wait(self.interval):
                return
