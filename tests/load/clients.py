"""The load test's HTTP clients: each simulated user is an ``httpx.AsyncClient`` of its own.

The load test first ran its 200 users as coroutines sharing one ``httpx.AsyncClient``, and
about 1 request in 6,000 failed with ``httpx.ReadError('')`` while the service logged
nothing. The service was not at fault: httpcore's shared connection pool (1.0.9, the latest
release) hands an idle connection to a request waiting for one, but the connection stays
idle until that request's coroutine runs; when the event loop lags past the keep-alive
expiry meanwhile, another request's pass over the pool closes it as expired, and the
waiting request, if it has started by then, reads from a closed connection
(encode/httpcore#1110, open). docs/load-test.md has the capture.

A client with a pool of one connection, used by one coroutine at a time, never has a request
waiting for a connection that another request can close. That is also what 200 separate
users are: 200 clients, not one pool.
"""

from __future__ import annotations

import ssl

import httpx

KEEPALIVE_EXPIRY = 2.0
"""Seconds a client keeps an idle connection: well below the service's 75 s keep-alive, so
no request races the service closing an idle connection."""


def load_clients(
    base_url: str,
    headers: dict[str, str],
    count: int,
    keepalive_expiry: float = KEEPALIVE_EXPIRY,
) -> list[httpx.AsyncClient]:
    """``count`` clients of ``base_url``, each with one connection of its own (close them)."""
    # Plain HTTP; but each client would load the CA bundle anew, 0.3 s each on a busy host.
    tls = ssl.create_default_context()
    return [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=keepalive_expiry),
            timeout=httpx.Timeout(120.0),
            verify=tls,
        )
        for _ in range(count)
    ]
