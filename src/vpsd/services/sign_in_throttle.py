"""Failed sign-ins, counted per client address and per account name, so a password cannot
be guessed at speed from one address, nor one account's from many.

The failures are rows of the database (``sign_in_failures``), not a process's memory: every
API process (``vpsd serve --workers N``, or API hosts behind a load balancer) counts the
same ones, so more processes give a guesser no more attempts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from vpsd.db.base import utcnow
from vpsd.db.models import SignInFailure
from vpsd.db.session import Database


def key_hash(key: str) -> str:
    """How ``key`` is stored: its SHA-256, so the table shows no address or typed name at a
    glance. Unsalted, it is not anonymous (an IPv4 address is found by trying all 2^32): rows
    live only for the window."""
    return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


class SignInThrottle:
    """At most ``attempts`` failures per key within ``window`` seconds; then the key is
    refused until enough of its failures have left the window.

    Rows older than the window are removed whenever a failure is recorded, and a refused key
    records no more: the table holds at most ``attempts`` rows per key and window.
    """

    def __init__(
        self,
        db: Database,
        attempts: int,
        window: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.attempts = attempts
        self.window = timedelta(seconds=window)
        self.clock = clock

    def retry_after(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again; 0 when all may now."""
        now = self.clock()
        wait = 0.0
        with self.db.read() as session:
            for key in keys:
                recent = session.scalars(
                    select(SignInFailure.failed_at)
                    .where(
                        SignInFailure.key_hash == key_hash(key),
                        SignInFailure.failed_at > now - self.window,
                    )
                    .order_by(SignInFailure.failed_at.desc())
                    .limit(self.attempts)
                ).all()
                if len(recent) >= self.attempts:
                    # Below the limit again once the oldest of the latest `attempts` leaves.
                    wait = max(wait, (recent[-1] + self.window - now).total_seconds())
        return wait

    def failed(self, *keys: str) -> None:
        """Count a failed sign-in against each of ``keys``."""
        now = self.clock()
        expired = SignInFailure.failed_at <= now - self.window
        with self.db.write() as session:
            session.execute(delete(SignInFailure).where(expired))
            session.add_all(SignInFailure(key_hash=key_hash(key), failed_at=now) for key in keys)

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of ``keys`` (a successful sign-in)."""
        hashes = [key_hash(key) for key in keys]
        with self.db.write() as session:
            session.execute(delete(SignInFailure).where(SignInFailure.key_hash.in_(hashes)))
