"""Polling until an object reaches a state: the engine behind ``Client.wait_for_*``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vpsd.client.errors import WaitTimeout

T = TypeVar("T")


def poll(
    fetch: Callable[[], T],
    settled: Callable[[T], bool],
    *,
    what: str,
    timeout: float,
    interval: float,
    on_progress: Callable[[T], None] | None = None,
    status_of: Callable[[T], str | None] = lambda obj: getattr(obj, "status", None),
) -> T:
    """Fetch until ``settled`` says done; return the last object fetched.

    ``settled`` may raise (``OperationFailed``) to end the wait early. ``on_progress`` sees
    every object fetched, the first one included. At least one fetch is always made; after
    ``timeout`` seconds ``WaitTimeout`` is raised with the status last seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        current = fetch()
        if on_progress is not None:
            on_progress(current)
        if settled(current):
            return current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(what, timeout, status_of(current))
        time.sleep(min(interval, remaining))
