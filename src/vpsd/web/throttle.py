"""Failed sign-ins, counted per client address and per account name, so a password cannot
be guessed at speed from one address, nor one account's from many."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SignInThrottle:
    """At most ``attempts`` failures per key within ``window`` seconds; then the key is
    refused until its oldest failure leaves the window.

    Counted in this process: behind ``vpsd serve --workers N`` a client gets up to N times
    the attempts (docs/panel.md). Memory is bounded: at most ``MAX_KEYS`` keys are tracked,
    the ones whose failures are all older than the window are dropped first.
    """

    MAX_KEYS = 100_000

    def __init__(
        self, attempts: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again; 0 when all may now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                if len(failures) >= self.attempts:
                    wait = max(wait, failures[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        """Count a failed sign-in against each of ``keys``."""
        now = self.clock()
        with self._lock:
            if len(self._failures) >= self.MAX_KEYS:
                self._forget_old(now)
            for key in keys:
                failures = self._recent(key, now)
                failures.append(now)
                self._failures[key] = failures

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of ``keys`` (a successful sign-in)."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def _forget_old(self, now: float) -> None:
        for key in [k for k, f in self._failures.items() if not f or f[-1] <= now - self.window]:
            del self._failures[key]
        if len(self._failures) >= self.MAX_KEYS:  # a flood of live keys: start over
            self._failures.clear()
