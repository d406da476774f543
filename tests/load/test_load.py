"""A bounded load test: many concurrent clients against ``vpsd serve`` on real QEMU.

``VPSD_LOAD_CLIENTS`` clients (default 200), each an HTTP client of its own, share
``VPSD_LOAD_SERVERS`` servers (default 3, 1 GiB disks) for ``VPSD_LOAD_SECONDS`` (default
60), mixing snapshot lists, gets, creates, restores and deletes over loopback. A poller
watches every server's snapshot count and the service's RSS throughout. Afterwards, once
everything has settled, the test asserts:

- no 5xx and no failed connection, ever (a failure names the error's causes down to the
  socket's, so a reset by the peer is told from a connection the client closed itself);
- no observation ever showed more than 5 live snapshots on a server;
- no operation was lost: every 201/200/204 the clients got is exactly one operation in
  the database, every operation ended, every snapshot is completed or failed, every server
  is running again (restores return it to its prior power state);
- memory is flat: the RSS after settling is below twice the RSS after warm-up (a gross-leak
  check, not a timing assertion).

``VPSD_LOAD_REPORT=1`` writes the figures to ``docs/load-test.md`` (see ``report.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests import qemu_helpers as qh
from tests.cluster import Cluster, cluster, worker_pids
from tests.helpers import wait_for
from tests.live_server import LiveServer
from tests.load import report
from tests.load.clients import load_clients
from vpsd.db.session import normalize_url

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

SECONDS = float(os.environ.get("VPSD_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("VPSD_LOAD_CLIENTS", "200"))
SERVERS = int(os.environ.get("VPSD_LOAD_SERVERS", "3"))
SETTLE_SECONDS = 300.0
LIMIT = 5
MIX = {"list": 30, "get": 25, "create": 20, "delete": 15, "restore": 10}
"""Relative weights of the request kinds each client picks from at random."""


@dataclass
class Tally:
    """Everything the clients and the poller saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    transport_details: list[str] = field(default_factory=list)
    """When, which request and the error with its causes: to match against the service's
    log and a packet capture."""
    created: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    known: list[int] = field(default_factory=list)
    max_live: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    over_limit: list[tuple[int, list[Any]]] = field(default_factory=list)
    observations: int = 0
    rss_kb: list[tuple[float, int]] = field(default_factory=list)


TCP_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPAbortOnData",
    "TCPAbortOnClose",
    "TCPAbortOnMemory",
    "TCPAbortOnTimeout",
    "TCPAbortFailed",
)
"""The kernel's counts of refused connections and of resets it sent (``nstat``'s TcpExt):
printed for the run, so a reset can be told apart from a full listen queue or a socket
closed with unread data. They count the whole network namespace: the client's sockets and
any other program's too, not only the service's."""


def tcp_counters() -> Counter[str]:
    """This network namespace's ``TCP_COUNTERS``, from /proc/net/netstat."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            pairs = zip(names.split()[1:], values.split()[1:], strict=True)
            return Counter({name: int(value) for name, value in pairs if name in TCP_COUNTERS})
    return Counter()


def rss_kb(pid: int) -> int:
    """The process's resident set size in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _request(kind: str, servers: list[int], tally: Tally, rng: random.Random, n: int) -> Any:
    snapshot = rng.choice(tally.known) if tally.known else 1
    if kind == "list":
        query = {"server_id": rng.choice(servers)} if rng.random() < 0.5 else {}
        return "GET", "/api/v1/snapshots/", {"params": query}
    if kind == "get":
        return "GET", f"/api/v1/snapshots/{snapshot}/", {}
    if kind == "create":
        body = {"server_id": rng.choice(servers), "name": f"load-{n}", "description": "load"}
        return "POST", "/api/v1/snapshots/", {"json": body}
    if kind == "restore":
        return "POST", f"/api/v1/snapshots/{snapshot}/restore/", {}
    return "DELETE", f"/api/v1/snapshots/{snapshot}/", {}


def causes(error: BaseException) -> str:
    """``error`` and what caused it, down to the socket's error: ``httpx.ReadError('',) <-
    httpcore.ReadError(ClosedResourceError(),) <- anyio.ClosedResourceError() <- ...`` is a
    connection the client closed itself, ``... <- builtins.ConnectionResetError(104, ...)``
    one the peer reset."""
    chain: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 8:
        chain.append(f"{type(cause).__module__.split('.')[0]}.{type(cause).__name__}{cause.args!r}")
        # __context__ too: httpcore's pool re-raises its error "from None", hiding the cause
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(chain)


async def client(
    http: httpx.AsyncClient, servers: list[int], tally: Tally, deadline: float, seed: int
) -> None:
    """One client: random requests from ``MIX`` back to back until ``deadline``."""
    rng = random.Random(seed)
    names = itertools.count(seed * 1_000_000)
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        method, url, kwargs = _request(kind, servers, tally, rng, next(names))
        started = time.perf_counter()
        try:
            response = await http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            tally.transport_errors[f"{kind}: {type(error).__name__}"] += 1
            tally.transport_details.append(f"{time.time():.3f} {method} {url}: {causes(error)}")
            continue
        tally.latencies[kind].append(time.perf_counter() - started)
        tally.statuses[kind, response.status_code] += 1
        if kind == "create" and response.status_code == 201:
            tally.created.append(response.json()["id"])
            tally.known.append(response.json()["id"])
        elif kind == "restore" and response.status_code == 200:
            tally.restored.append(response.json()["snapshot"]["id"])
        elif kind == "delete" and response.status_code == 204:
            tally.deleted.append(int(url.rstrip("/").rsplit("/", 1)[1]))


async def poller(
    http: httpx.AsyncClient, servers: list[int], tally: Tally, pid: int, stop: asyncio.Event
) -> None:
    """Watch every server's live snapshot count, and the service's RSS, until ``stop``."""
    last_rss = 0.0
    while not stop.is_set():
        for server_id in servers:
            response = await http.get("/api/v1/snapshots/", params={"server_id": server_id})
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            live = [s for s in results if s["status"] != "failed"]
            tally.observations += 1
            tally.max_live[server_id] = max(tally.max_live[server_id], len(live))
            if len(live) > LIMIT:
                tally.over_limit.append((server_id, [(s["id"], s["status"]) for s in live]))
        if time.monotonic() - last_rss >= 1.0:
            last_rss = time.monotonic()
            tally.rss_kb.append((last_rss, rss_kb(pid)))
        await asyncio.sleep(0.25)


async def run_load(base_url: str, token: str, servers: list[int], pid: int) -> Tally:
    """Run ``CLIENTS`` clients and the poller for ``SECONDS``; return what they saw. Each,
    the poller too, is an HTTP client of its own (``clients.load_clients`` says why)."""
    tally = Tally()
    headers = {"Authorization": f"Bearer {token}"}
    async with AsyncExitStack() as open_clients:
        https = load_clients(base_url, headers, CLIENTS + 1)
        for http in https:
            await open_clients.enter_async_context(http)
        watch, users = https[0], https[1:]
        stop = asyncio.Event()
        watching = asyncio.create_task(poller(watch, servers, tally, pid, stop))
        deadline = time.monotonic() + SECONDS
        await asyncio.gather(
            *(client(http, servers, tally, deadline, n) for n, http in enumerate(users))
        )
        stop.set()
        await watching
    return tally


def operations(database_url: str) -> list[tuple[str, str, int | None]]:
    """(kind, status, snapshot_id) of every operation, read from the service's database."""
    engine = create_engine(normalize_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT kind, status, snapshot_id FROM operations"))
            return [(kind, status, snapshot_id) for kind, status, snapshot_id in rows]
    finally:
        engine.dispose()


def settled(api: httpx.Client, database_url: str, servers: list[int]) -> bool:
    """True when every operation has ended and nothing is in a transient state."""
    ops = operations(database_url)
    if any(status in ("pending", "running") for _, status, _ in ops):
        return False
    snapshots = api.get("/api/v1/snapshots/", params={"page_size": 1000}).json()["results"]
    if any(s["status"] == "in_progress" for s in snapshots):
        return False
    statuses = [api.get(f"/api/v1/servers/{sid}/").json()["status"] for sid in servers]
    return all(status in ("running", "stopped", "error") for status in statuses)


def test_load(live_server: LiveServer) -> None:
    """One ``vpsd serve`` on SQLite: the API and the host's agent in one process."""
    assert live_server.process is not None
    figures = load_and_check(live_server, live_server.process.pid, live_server.data_dir)
    if os.environ.get("VPSD_LOAD_REPORT") == "1":
        report.write(figures)


def test_load_on_two_workers_and_three_hosts() -> None:
    """``vpsd serve --workers 2`` and three agents on PostgreSQL and RabbitMQ, real QEMU:
    one server per host. The memory watched is one API worker's."""
    with cluster(VPSD_QUOTA_VCPUS="16") as running:
        for n in (1, 2, 3):
            running.add_agent(n)
        token = running.api.cli("token", "create", "--account", "ops", "--admin").stdout
        running.wait_hosts_up(running.api.client(token.split()[-1]), 3)
        assert running.api.process is not None
        worker = min(worker_pids(running.api.process))
        load_and_check(running.api, worker, running.root)
        hosts = {running.host_of(server_id) for server_id in servers_of(running)}
        assert hosts == set(running.agents)  # one server per host: every host took load


def servers_of(running: Cluster) -> list[int]:
    """The ids of the cluster's servers."""
    return [row.id for row in running.query("SELECT id FROM servers")]


def _warnings(log: str) -> list[str]:
    """The service's warnings and errors, with their tracebacks, for a failure's message:
    what it saw when a client's connection failed."""
    kept: list[str] = []
    keeping = False
    for line in log.splitlines():
        if line[:4].isdigit():  # a new log record: "2026-11-28 00:25:10,008 LEVEL name: ..."
            keeping = " WARNING " in line or " ERROR " in line or " CRITICAL " in line
        elif line.startswith(("ERROR:", "WARNING:", "INFO:", "DEBUG:")):  # uvicorn's format
            keeping = line.startswith(("ERROR:", "WARNING:"))
        if keeping:
            kept.append(line)
    return kept[-80:]


def load_and_check(live_server: LiveServer, pid: int, accel_dir: Path) -> report.Figures:
    """Run the load against ``live_server`` (``pid``'s memory watched), wait until it has
    settled, and check the promises of the module's doc; the figures."""
    database_url = live_server.database_url
    token = live_server.create_token("load")
    api = live_server.client(token, timeout=120)
    servers = [api.create_server(f"load-{i}", disk_gb=1)["id"] for i in range(SERVERS)]
    rss_before = rss_kb(pid)

    started = time.monotonic()
    counters_before = tcp_counters()
    cpu_before = report.cpu_seconds(os.getpid()), report.cpu_seconds(pid)
    tally = asyncio.run(run_load(live_server.base_url, token, servers, pid))
    elapsed = time.monotonic() - started
    generator_cpu = report.cpu_seconds(os.getpid()) - cpu_before[0]
    service_cpu = report.cpu_seconds(pid) - cpu_before[1]
    kernel = dict(tcp_counters() - counters_before)
    print(f"kernel TCP counters during the load: {kernel or 'all 0'}")

    http = httpx.Client(
        base_url=live_server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    with http:
        wait_for(
            lambda: settled(http, database_url, servers),
            SETTLE_SECONDS,
            interval=1.0,
            what="every operation to end after the load",
        )
        final_servers = {sid: http.get(f"/api/v1/servers/{sid}/").json() for sid in servers}
        final_snapshots = http.get("/api/v1/snapshots/", params={"page_size": 1000}).json()
    rss_end = rss_kb(pid)
    ops = operations(database_url)

    warm_up = started + min(10.0, SECONDS * 0.2)
    rss_warm = next((kb for t, kb in tally.rss_kb if t >= warm_up), rss_end)
    figures = report.Figures(
        clients=CLIENTS,
        servers=SERVERS,
        seconds=SECONDS,
        elapsed=elapsed,
        statuses=tally.statuses,
        transport_errors=tally.transport_errors,
        latencies=tally.latencies,
        observations=tally.observations,
        max_live=dict(tally.max_live),
        rss_before=rss_before,
        rss_warm=rss_warm,
        rss_peak=max([kb for _, kb in tally.rss_kb] + [rss_end]),
        rss_end=rss_end,
        operations=Counter((kind, status) for kind, status, _ in ops),
        accel=report.accel_of(accel_dir),
        generator_cpu=generator_cpu,
        service_cpu=service_cpu,
    )
    print(report.render(figures))

    server_errors = {key: n for key, n in tally.statuses.items() if key[1] >= 500}
    assert not server_errors, server_errors
    assert not tally.transport_errors, (
        tally.transport_errors,
        tally.transport_details,
        kernel,
        _warnings(live_server.log()),
    )
    assert sum(tally.statuses.values()) > 0
    assert tally.observations > 0 and not tally.over_limit, tally.over_limit[:5]

    # no operation lost: each 201/200/204 is exactly one operation, every operation was
    # answered, and every operation ended
    by_kind: dict[str, Counter[int | None]] = defaultdict(Counter)
    for kind, status, snapshot_id in ops:
        assert status in ("completed", "failed"), (kind, status, snapshot_id)
        by_kind[kind][snapshot_id] += 1
    answered = {"create": tally.created, "restore": tally.restored, "delete": tally.deleted}
    for kind, ids in answered.items():
        recorded, told = by_kind[f"snapshot.{kind}"], Counter[int | None](ids)
        # (answers with no operation, operations no client was told of)
        assert recorded == told, (kind, told - recorded, recorded - told)
    failed_ops = [(k, s) for k, s, _ in ops if s == "failed"]
    assert not failed_ops, failed_ops

    # every snapshot a client created is either still there, settled, or was deleted
    visible = {s["id"]: s["status"] for s in final_snapshots["results"]}
    accounted_for = set(visible) | set(tally.deleted)
    assert accounted_for == set(tally.created), accounted_for ^ set(tally.created)
    assert set(visible).isdisjoint(tally.deleted), set(visible) & set(tally.deleted)
    assert all(status == "completed" for status in visible.values()), visible
    for server_id in servers:
        live = [s for s in final_snapshots["results"] if s["server"]["id"] == server_id]
        assert len(live) <= LIMIT
    assert all(s["status"] == "running" for s in final_servers.values()), final_servers

    assert rss_end < 2 * rss_warm, (rss_warm, rss_end)
    return figures
