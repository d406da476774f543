"""SignInThrottle on a fake clock: failures per key within a window, then a wait."""

from __future__ import annotations

import threading

import pytest

from vpsd.web.throttle import SignInThrottle


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> SignInThrottle:
    """3 failures per 60 seconds."""
    return SignInThrottle(attempts=3, window=60.0, clock=clock)


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


def test_memory_is_bounded_and_the_oldest_last_failure_goes_first(
    throttle: SignInThrottle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SignInThrottle, "MAX_KEYS", 3)
    for key in ("a", "b", "c"):
        throttle.failed(key)
    throttle.failed("a")  # a failed again: now b's last failure is the oldest
    throttle.failed("d")
    assert list(throttle._failures) == ["c", "a", "d"]
    assert throttle.retry_after("a") == 0 and len(throttle._failures["a"]) == 2


def test_a_flood_of_new_keys_stays_bounded_and_keeps_a_key_still_failing(
    throttle: SignInThrottle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SignInThrottle, "MAX_KEYS", 10)
    for number in range(10_000):
        # As the panel counts them, two keys a failure; the account under attack among them.
        throttle.failed(f"address:{number}", "account:alice")
        assert len(throttle._failures) <= SignInThrottle.MAX_KEYS
    assert throttle.retry_after("account:alice") > 0


def test_the_real_bound_is_100_000() -> None:
    assert SignInThrottle.MAX_KEYS == 100_000


def test_concurrent_failures_are_all_counted(clock: Clock) -> None:
    throttle = SignInThrottle(attempts=400, window=60.0, clock=clock)

    def fail() -> None:
        for _ in range(100):
            throttle.failed("shared")

    threads = [threading.Thread(target=fail) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttle.retry_after("shared") == pytest.approx(60.0)


def test_the_real_clock_is_monotonic() -> None:
    throttle = SignInThrottle(attempts=1, window=300.0)
    throttle.failed("k")
    assert 299.0 < throttle.retry_after("k") <= 300.0
