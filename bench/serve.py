"""``vpsd serve`` for the benchmarks (the tests' ``LiveServer``) and a client timing operations."""

from __future__ import annotations

import time
from typing import Any

import httpx
from tests.live_server import LiveServer
from tests.qemu_helpers import kill_qemus_under

POLL = 0.002
"""Seconds between polls while waiting for a state: the resolution of the API timings."""


# The same launcher and clean-up the end-to-end tests use.
Serve = LiveServer
__all__ = ["POLL", "Api", "Serve", "kill_qemus_under"]


class Api:
    """One account's HTTP client with the waits the timings need."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{base_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        """Send a request; fail unless the status is ``expect``; return the JSON body."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def wait(self, path: str, key: str, wanted: str, timeout: float = 600) -> None:
        """Poll ``GET path`` until its ``key`` is ``wanted``; fail on ``error``/``failed``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.call("GET", path, 200)[key]
            if value == wanted:
                return
            if value in ("error", "failed"):
                raise RuntimeError(f"{path} went {value} waiting for {wanted}")
            time.sleep(POLL)
        raise RuntimeError(f"timed out waiting for {path} to be {wanted}")

    def server_to(self, server_id: int, action: str, final: str) -> float:
        """POST a server action (``start``/``stop``) and time it until ``final``."""
        start = time.perf_counter()
        self.call("POST", f"/servers/{server_id}/{action}/", 200)
        self.wait(f"/servers/{server_id}/", "status", final)
        return time.perf_counter() - start

    def snapshot(self, server_id: int, name: str) -> tuple[int, float]:
        """Take a snapshot; return its id and the time from request to ``completed``."""
        start = time.perf_counter()
        snapshot_id: int = self.call(
            "POST", "/snapshots/", 201, json={"server_id": server_id, "name": name}
        )["id"]
        self.wait(f"/snapshots/{snapshot_id}/", "status", "completed")
        return snapshot_id, time.perf_counter() - start

    def restore(self, snapshot_id: int, server_id: int, final: str) -> float:
        """Restore; the time from request until the server is ``final`` again."""
        start = time.perf_counter()
        self.call("POST", f"/snapshots/{snapshot_id}/restore/", 200)
        self.wait(f"/servers/{server_id}/", "status", final)
        return time.perf_counter() - start

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()
