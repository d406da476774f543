"""The load test's clients (``clients.py``) through event-loop stalls longer than their
keep-alive expiry: no request fails. Their first form, one ``httpx.AsyncClient`` shared by
every simulated user, failed here in 4 runs of 4 (1 to 8 requests of about 900) with
``httpx.ReadError('')``, the load test's rare reset, against a server that did nothing
wrong."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope

from tests.helpers import wait_for
from tests.live_server import free_port
from tests.load.clients import load_clients
from tests.load.test_load import causes


async def ok(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """An ASGI app that answers every request ``200 ok``."""
    assert scope["type"] == "http"
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving_ok() -> Iterator[str]:
    """``ok`` served by uvicorn in a process of its own (its 75 s keep-alive, as vpsd's) on
    a free loopback port; its base URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "tests.load.test_clients:ok"),
            *("--port", str(port), "--lifespan", "off", "--log-level", "warning"),
            *("--timeout-keep-alive", "75"),
        ],
        cwd=Path(__file__).parents[2],
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base_url), 60, interval=0.2, what="the test server")
        yield base_url
    finally:
        server.terminate()
        server.wait(30)


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(base_url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


async def through_stalls(
    base_url: str, users: int, seconds: float, expiry: float
) -> tuple[int, list[str]]:
    """``users`` load clients with keep-alive ``expiry`` send requests back to back for
    ``seconds`` while the event loop stalls, now and then, for longer than ``expiry`` (as a
    starved load generator does); how many were answered, and each failure's causes."""
    answered = 0
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def user(http: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal answered
        while time.monotonic() < deadline:
            try:
                response = await http.get("/")
            except httpx.TransportError as error:
                failures.append(causes(error))
            else:
                assert response.status_code == 200
                answered += 1
            if rng.random() < 0.02:
                time.sleep(expiry * 1.5)  # blocks the loop: every idle connection expires

    async with AsyncExitStack() as open_clients:
        https = load_clients(base_url, {}, users, keepalive_expiry=expiry)
        for http in https:
            await open_clients.enter_async_context(http)
        await asyncio.gather(*(user(http, random.Random(n)) for n, http in enumerate(https)))
    return answered, failures


def test_no_request_fails_when_the_load_generator_lags() -> None:
    with serving_ok() as base_url:
        answered, failures = asyncio.run(through_stalls(base_url, 200, 15.0, expiry=0.1))
    assert answered > 0
    assert not failures, (len(failures), answered, failures[:3])
