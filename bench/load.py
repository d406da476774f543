"""HTTP load: wrk for the saturation rate, a small constant-rate generator for latencies.

Plain wrk cannot hold a fixed rate, so fixed-rate latencies come from ``constant_rate``:
request ``i`` is due at ``start + i / rate`` and its latency counts from that due time, not
from when it was sent, so a slow server cannot hide queueing (the wrk2 correction).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

WRK_INSTALL = "apt-get install -y wrk"


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def constant_rate(
    url: str, headers: dict[str, str], rate: float, duration: float, connections: int = 64
) -> dict[str, Any]:
    """Send GET ``url`` at ``rate`` requests/s for ``duration`` s; latencies in seconds."""
    try:
        import uvloop  # the generator's own overhead is smaller on it

        return uvloop.run(_constant_rate(url, headers, rate, duration, connections))
    except ImportError:
        return asyncio.run(_constant_rate(url, headers, rate, duration, connections))


async def _constant_rate(
    url: str, headers: dict[str, str], rate: float, duration: float, connections: int
) -> dict[str, Any]:
    # Raw HTTP/1.1 on asyncio streams, not an HTTP client library: at a few hundred
    # requests a second a Python client's own cost would be what is measured (httpx fell
    # behind at ~150 req/s on this machine while the server idled).
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))

    async def fetch(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return status

    warm = await idle.get()
    await fetch(warm)  # warm the route up
    idle.put_nowait(warm)
    latencies: list[float] = []
    errors = 0
    total = int(rate * duration)
    start = time.perf_counter()

    async def one(index: int) -> None:
        nonlocal errors
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        try:
            if await fetch(conn) != 200:
                errors += 1
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn[1].close()
            idle.put_nowait(await asyncio.open_connection(host, port))
        latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait()[1].close()
    return {
        "rate": rate,
        "sent": total,
        "achieved": total / elapsed,
        "errors": errors,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
    }


def closed_loop(
    url: str, headers: dict[str, str], duration: float, workers: int = 8
) -> dict[str, Any]:
    """Requests/s with ``workers`` clients each sending as soon as the last answer came
    (the fallback when wrk is not installed; Python's client then eats much of the CPU)."""

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            await client.get(url)
            end = time.perf_counter() + duration

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    sent = time.perf_counter()
                    response = await client.get(url)
                    errors += response.status_code != 200
                    latencies.append(time.perf_counter() - sent)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            elapsed = time.perf_counter() - start
        return {
            "tool": f"httpx, {workers} connections",
            "rps": len(latencies) / elapsed,
            "errors": errors,
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
        }

    return asyncio.run(main())


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def saturation(
    url: str, headers: dict[str, str], duration: float, connections: int = 8
) -> dict[str, Any]:
    """Requests/s at saturation with wrk (1 thread), or the closed-loop fallback."""
    if shutil.which("wrk") is None:
        result = closed_loop(url, headers, duration, connections)
        result["note"] = f"wrk not found (install it: {WRK_INSTALL}); used the Python fallback"
        return result
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=duration + 60).stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    except (AttributeError, ValueError) as exc:
        raise RuntimeError(f"unexpected wrk output for {url}:\n{out}") from exc
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "tool": f"wrk -t1 -c{connections}",
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
    }
