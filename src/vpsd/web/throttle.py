"""Failed sign-ins, counted per client address and per account name, so a password cannot
be guessed at speed from one address, nor one account's from many."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class SignInThrottle:
    """At most ``attempts`` failures per key within ``window`` seconds; then the key is
    refused until its oldest failure leaves the window.

    Counted in this process: behind ``vpsd serve --workers N`` a client gets up to N times
    the attempts (docs/panel.md). Memory is bounded: at most ``MAX_KEYS`` keys are tracked;
    beyond, the keys whose last failure is oldest are forgotten first: a key still failing
    (an account under attack) is kept however many new keys flood in.
    """

    MAX_KEYS = 100_000

    def __init__(
        self, attempts: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        """By last failure, oldest first."""
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
            for key in keys:
                failures = self._recent(key, now)
                failures.append(now)
                self._failures[key] = failures
                self._failures.move_to_end(key)
            while len(self._failures) > self.MAX_KEYS:
                self._failures.popitem(last=False)

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
