"""SignInThrottle on a fake clock, on SQLite and PostgreSQL: failures per key within a
window, then a wait; counted in the database, so every process counts the same ones."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from vpsd.db.models import SignInFailure
from vpsd.db.session import Database
from vpsd.services.sign_in_throttle import SignInThrottle


class Clock:
    """A clock the test moves by hand: ``now`` seconds after an epoch."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(db: Database, clock: Clock) -> SignInThrottle:
    """3 failures per 60 seconds."""
    return SignInThrottle(db, attempts=3, window=60.0, clock=clock)


def stored(db: Database) -> list[str]:
    """The key hashes of every failure in the table."""
    with db.read() as session:
        return list(session.scalars(select(SignInFailure.key_hash)))


def test_a_key_may_fail_attempts_times_then_waits(throttle: SignInThrottle, clock: Clock) -> None:
    for _ in range(2):
        throttle.failed("address:1.2.3.4")
        assert throttle.retry_after("address:1.2.3.4") == 0
        clock.now += 10
    throttle.failed("address:1.2.3.4")  # the third, at +20 s
    # Until the first failure (at +0 s) leaves the window: 60 - 20 = 40 s.
    assert throttle.retry_after("address:1.2.3.4") == pytest.approx(40.0)
    clock.now += 15
    assert throttle.retry_after("address:1.2.3.4") == pytest.approx(25.0)


def test_failures_leave_the_window_one_by_one(throttle: SignInThrottle, clock: Clock) -> None:
    for _ in range(3):
        throttle.failed("k")
        clock.now += 10  # failures at 1000, 1010, 1020; now 1030
    assert throttle.retry_after("k") == pytest.approx(30.0)
    clock.now = 1060  # the first is exactly a window old: gone
    assert throttle.retry_after("k") == 0
    throttle.failed("k")  # 1010, 1020, 1060: limited again until 1010 leaves
    assert throttle.retry_after("k") == pytest.approx(10.0)
    clock.now = 1070
    assert throttle.retry_after("k") == 0
    clock.now = 1200  # all gone: a full set of attempts again
    throttle.failed("k")
    throttle.failed("k")
    assert throttle.retry_after("k") == 0


def test_keys_are_counted_independently(throttle: SignInThrottle) -> None:
    for _ in range(3):
        throttle.failed("address:1.2.3.4", "account:alice")
    assert throttle.retry_after("address:1.2.3.4") > 0
    assert throttle.retry_after("account:alice") > 0
    assert throttle.retry_after("address:5.6.7.8") == 0
    assert throttle.retry_after("account:bob") == 0
    assert throttle.retry_after("address:5.6.7.8", "account:bob") == 0
    # Any limited key among those asked about is enough to wait.
    assert throttle.retry_after("address:5.6.7.8", "account:alice") > 0
    # Alice's account from other addresses, and other accounts from her address, wait too.
    assert throttle.retry_after("address:9.9.9.9", "account:alice") > 0
    assert throttle.retry_after("address:1.2.3.4", "account:bob") > 0


def test_the_longest_wait_of_the_keys_is_the_answer(throttle: SignInThrottle, clock: Clock) -> None:
    for _ in range(3):
        throttle.failed("early")
    clock.now += 30
    for _ in range(3):
        throttle.failed("late")
    assert throttle.retry_after("early") == pytest.approx(30.0)
    assert throttle.retry_after("late") == pytest.approx(60.0)
    assert throttle.retry_after("early", "late") == pytest.approx(60.0)


def test_a_success_clears_its_keys_only(throttle: SignInThrottle) -> None:
    for _ in range(2):
        throttle.failed("address:1.2.3.4", "account:alice")
        throttle.failed("address:5.6.7.8", "account:bob")
    throttle.succeeded("address:1.2.3.4", "account:alice")
    # Alice starts over: two more failures are still allowed.
    throttle.failed("address:1.2.3.4", "account:alice")
    throttle.failed("address:1.2.3.4", "account:alice")
    assert throttle.retry_after("address:1.2.3.4", "account:alice") == 0
    # Bob's count was not touched: one more and he waits.
    throttle.failed("address:5.6.7.8", "account:bob")
    assert throttle.retry_after("address:5.6.7.8") > 0
    assert throttle.retry_after("account:bob") > 0
    throttle.succeeded("never-failed")  # nothing to forget: no error


def test_asking_counts_nothing(throttle: SignInThrottle) -> None:
    for _ in range(100):
        assert throttle.retry_after("k") == 0
    throttle.failed("k")
    throttle.failed("k")
    assert throttle.retry_after("k") == 0


def test_every_process_counts_the_same_failures(db: Database, clock: Clock) -> None:
    """Two API workers (two throttles, each with its own connections to the database): a
    guesser alternating between them gets no more attempts."""
    other = Database(db.url)
    try:
        workers = [
            SignInThrottle(db, attempts=3, window=60.0, clock=clock),
            SignInThrottle(other, attempts=3, window=60.0, clock=clock),
        ]
        for attempt in range(3):
            assert workers[attempt % 2].retry_after("account:alice") == 0
            workers[attempt % 2].failed("account:alice")
        assert all(worker.retry_after("account:alice") > 0 for worker in workers)
        workers[1].succeeded("account:alice")
        assert workers[0].retry_after("account:alice") == 0
    finally:
        other.dispose()


def test_old_failures_are_removed_as_new_ones_come(
    throttle: SignInThrottle, clock: Clock, db: Database
) -> None:
    for number in range(50):
        throttle.failed(f"address:{number}")
    assert len(stored(db)) == 50
    clock.now += 61  # all out of the window: the next failure removes them
    throttle.failed("address:new")
    assert len(stored(db)) == 1


def test_keys_are_stored_as_hashes_only(throttle: SignInThrottle, db: Database) -> None:
    throttle.failed("address:203.0.113.7", "account:alice")
    hashes = stored(db)
    assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)
    assert not any("203.0.113.7" in h or "alice" in h for h in hashes)


def test_any_text_is_a_key(throttle: SignInThrottle) -> None:
    """Account names come from a form: NUL, lone surrogates or 200 accents are still keys."""
    for key in ("account:\x00", "account:\ud800", "account:" + "é" * 200):
        for _ in range(3):
            throttle.failed(key)
        assert throttle.retry_after(key) > 0


def test_concurrent_failures_are_all_counted(db: Database, clock: Clock) -> None:
    throttle = SignInThrottle(db, attempts=100, window=60.0, clock=clock)

    def fail() -> None:
        for _ in range(25):
            throttle.failed("shared")

    threads = [threading.Thread(target=fail) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(SignInFailure)) == 100
    assert throttle.retry_after("shared") == pytest.approx(60.0)


def test_the_real_clock(db: Database) -> None:
    throttle = SignInThrottle(db, attempts=1, window=300.0)
    throttle.failed("k")
    assert 299.0 < throttle.retry_after("k") <= 300.0
