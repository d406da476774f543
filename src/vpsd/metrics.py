"""Prometheus metrics: HTTP requests, operations, and gauges read from the database.

Three sources, one exposition (``render``, served at ``GET /metrics``; ``serve_metrics`` for
an agent without an API):

- ``HttpMetrics``, a pure ASGI middleware: ``vpsd_http_request_duration_seconds`` by method,
  route template and status.
- ``observe_operation``, called by whoever runs operations: ``vpsd_operations_total`` and
  ``vpsd_operation_duration_seconds`` by kind and outcome.
- ``DatabaseCollector``, read at scrape time with a few aggregate queries: operations queued
  and running per host, hosts' heartbeat age and whether they are up, servers by state,
  whether each host's agent found its backup storage usable.

Multiprocess: when ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is first imported
(the parent of the API's worker processes sets it, and empties the directory, before
starting them), the counters and histograms of every process go to files there and a scrape,
answered by any one worker, sums them (``prometheus_client.multiprocess``). The database's
gauges are not per process: each scrape reads them once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vpsd.backups.base import StorageHealth, StorageState
from vpsd.config import Settings, get_settings
from vpsd.db.models import (
    BackupStorageCheck,
    Host,
    HostState,
    Operation,
    OperationStatus,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.services.hosts import shown_state

log = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
"""The ``route`` of a request no route took (a ``404``, a trailing-slash redirect)."""
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods labelled as they are; any other (a client may send anything) is ``other``, so
strangers cannot grow the number of series."""

HTTP_REQUEST_DURATION = Histogram(
    "vpsd_http_request_duration_seconds",
    "HTTP requests, by method, route template and status code: from the request reaching "
    "vpsd to its response sent",
    ["method", "route", "status"],
    # The hot reads take a fraction of a millisecond: buckets from 0.5 ms.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OPERATIONS = Counter(
    "vpsd_operations",  # exposed as vpsd_operations_total
    "Operations finished, by kind and outcome (completed or failed)",
    ["kind", "outcome"],
)
OPERATION_DURATION = Histogram(
    "vpsd_operation_duration_seconds",
    "How long finished operations ran, by kind and outcome (completed or failed)",
    ["kind", "outcome"],
    # Snapshots take milliseconds, boots seconds, backups and restores minutes.
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def multiprocess_dir() -> str | None:
    """The directory the processes' metrics are shared in, None in single-process mode."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def observe_operation(kind: str, outcome: str, seconds: float) -> None:
    """Count an operation that ended: ``kind`` as stored (``snapshot.create``), ``outcome``
    ``completed`` or ``failed``, ``seconds`` from its start to its end."""
    OPERATIONS.labels(kind, outcome).inc()
    OPERATION_DURATION.labels(kind, outcome).observe(seconds)


class _Forward:
    """A collector yielding another registry's metrics: the default registry's, beside the
    database's gauges, in a registry of a single app's own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def scrape_registry(database: Collector | None = None) -> CollectorRegistry:
    """A registry of what a scrape shows: this process's metrics (the default registry:
    also its CPU, memory and GC), or in multiprocess mode every process's counters and
    histograms; and ``database``'s gauges, once."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir() is not None:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    if database is not None:
        registry.register(database)
    return registry


def render(database: Collector | None = None) -> bytes:
    """The metrics in Prometheus's text format (``CONTENT_TYPE_LATEST``), read now. Blocks
    on the database: call it off the event loop."""
    return generate_latest(scrape_registry(database))


def serve_metrics(address: str, port: int, db: Database, settings: Settings | None = None) -> None:
    """Serve ``render``'s metrics (the operations' and ``db``'s gauges) at
    ``http://address:port/metrics`` from a daemon thread, for an agent with no API.
    ``settings`` (default: from the environment) tells when a host shows ``down``."""
    collector = DatabaseCollector(db, settings or get_settings())
    start_http_server(port, addr=address, registry=scrape_registry(collector))
    log.info("metrics at http://%s:%s/metrics", address, port)


class DatabaseCollector:
    """Gauges read from the database at each scrape, with four queries:

    - ``vpsd_operations_queued{host}``, ``vpsd_operations_running{host}``: operations
      ``pending`` and ``running``, by their server's host (every host, 0 when none);
    - ``vpsd_host_heartbeat_age_seconds{host}``: now less the host's last heartbeat;
    - ``vpsd_host_up{host}``: 1 when it shows ``up`` or ``draining`` (heard from within
      ``VPSD_HOST_DOWN_AFTER_SECONDS``), 0 when ``down``;
    - ``vpsd_servers{state}``: servers by status, deleted ones left out (every status, 0
      when none);
    - ``vpsd_backup_storage_up{host}``: 1 when the host's agent last found its backup
      storage usable, 0 when missing or unavailable (hosts that never looked: absent);
    - ``vpsd_database_up``: 1, or 0 when the queries failed (the gauges above are then
      absent from that scrape; the other metrics are still served).
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """The families, without reading the database (registries call it at registration)."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Read the database now and yield the gauges."""
        try:
            hosts, operations, servers, storage = self._read()
        except SQLAlchemyError as error:
            log.warning("metrics could not read the database: %s", error)
            yield _gauge("vpsd_database_up", "1 when this scrape read the database", 0)
            return
        now = datetime.now(UTC)
        queued, running, age, up, by_state, storage_up = self._families()
        for host in hosts:
            queued.add_metric([host.name], operations.get((host.id, OperationStatus.PENDING), 0))
            running.add_metric([host.name], operations.get((host.id, OperationStatus.RUNNING), 0))
            age.add_metric([host.name], (now - host.last_heartbeat_at).total_seconds())
            shown = shown_state(host, self.settings, now)
            up.add_metric([host.name], 0 if shown == HostState.DOWN else 1)
            if host.id in storage:
                usable = StorageHealth(StorageState(storage[host.id])).usable
                storage_up.add_metric([host.name], 1 if usable else 0)
        counts = {status.value: 0 for status in ServerStatus if status != ServerStatus.DELETED}
        counts.update(servers)
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield from (queued, running, age, up, by_state, storage_up)
        yield _gauge("vpsd_database_up", "1 when this scrape read the database", 1)

    def _read(
        self,
    ) -> tuple[list[Host], dict[tuple[int, str], int], dict[str, int], dict[int, str]]:
        active = (OperationStatus.PENDING, OperationStatus.RUNNING)
        with self.db.read() as session:
            hosts = list(session.scalars(select(Host).order_by(Host.name)))
            operations = {
                (host_id, str(status)): int(count)
                for host_id, status, count in session.execute(
                    select(Server.host_id, Operation.status, func.count())
                    .join(Server, Server.id == Operation.server_id)
                    .where(Operation.status.in_(active), Server.host_id.is_not(None))
                    .group_by(Server.host_id, Operation.status)
                )
                if host_id is not None
            }
            servers = {
                str(status): int(count)
                for status, count in session.execute(
                    select(Server.status, func.count())
                    .where(Server.status != ServerStatus.DELETED)
                    .group_by(Server.status)
                )
            }
            storage = {
                int(host_id): str(state)
                for host_id, state in session.execute(
                    select(BackupStorageCheck.host_id, BackupStorageCheck.state)
                )
            }
        return hosts, operations, servers, storage

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        def family(name: str, documentation: str, label: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=[label])

        return [
            family("vpsd_operations_queued", "Operations pending, by their server's host", "host"),
            family("vpsd_operations_running", "Operations running, by their server's host", "host"),
            family(
                "vpsd_host_heartbeat_age_seconds",
                "Seconds since the host's last heartbeat",
                "host",
            ),
            family(
                "vpsd_host_up",
                "1 when the host shows up or draining (its heartbeat is fresh), 0 when down",
                "host",
            ),
            family("vpsd_servers", "Servers by state, deleted ones left out", "state"),
            family(
                "vpsd_backup_storage_up",
                "1 when the host's agent last found its backup storage usable, 0 when it is "
                "missing or cannot be used",
                "host",
            ),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _route_contexts(routes: Sequence[BaseRoute]) -> Iterable[Any]:
    """Every route with its whole path, included routers' prefixes in: FastAPI's
    ``iter_route_contexts`` (0.137 on: an included router is one entry, its routes keep the
    path they were declared with), else the routes themselves (earlier FastAPI copied them,
    prefix in)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI
        return routes
    return iter_route_contexts(routes)


class _Templates:
    """Route templates (``/api/v1/snapshots/{snapshot_id}/``) of an app's routes.

    FastAPI puts the matched ``APIRoute`` in ``scope["route"]``: the route as declared, its
    path without the prefix it was included with, hence this map from route to whole path,
    made at the first request (and again when a route added later shows up). Routes that
    set no ``scope["route"]`` (Starlette's own: the OpenAPI document, the docs' static
    files) are matched again by path, for requests no ``APIRoute`` took only.
    """

    def __init__(self) -> None:
        self.by_route: dict[int, str] = {}
        self.plain: list[tuple[Any, str]] = []
        self.built = False

    def of_route(self, scope: Scope, route: Any) -> str:
        """The template of ``route``, the ``APIRoute`` that took the request."""
        template = self.by_route.get(id(route))
        if template is None:
            self._build(scope)
            template = self.by_route.get(id(route))
            if template is None:  # not found among the app's routes: its own path
                template = self.by_route[id(route)] = str(getattr(route, "path", UNMATCHED))
        return template

    def of_path(self, scope: Scope, root_path: str) -> str:
        """The template of the route no ``APIRoute`` took the request of (``scope``, its
        ``root_path`` before routing changed it), or ``unmatched``."""
        if not self.built:
            self._build(scope)
        # A fresh scope: a Mount that took the request moved its path into root_path.
        fresh = {
            "type": "http",
            "method": scope["method"],
            "path": scope["path"],
            "root_path": root_path,
        }
        partial = None
        for route, template in self.plain:
            match, _ = route.matches(fresh)
            if match is Match.FULL:
                return template
            if match is Match.PARTIAL and partial is None:
                partial = template
        return partial or UNMATCHED

    def _build(self, scope: Scope) -> None:
        from fastapi.routing import APIRoute

        routes: Sequence[BaseRoute] = getattr(scope.get("app"), "routes", ())
        plain = []
        for context in _route_contexts(routes):
            original = getattr(context, "original_route", context)
            # path_format: a Mount's ends in /{path}, a converter's type is left out.
            path = getattr(context, "path_format", None) or getattr(context, "path", None)
            if path is None:
                continue
            if isinstance(original, APIRoute):
                # A route included twice keeps its first inclusion's template.
                self.by_route.setdefault(id(original), path)
            else:
                plain.append((context, path))
        self.plain = plain
        self.built = True


class HttpMetrics:
    """ASGI middleware observing ``vpsd_http_request_duration_seconds`` for every HTTP
    request, ``/metrics`` included. Per request: two clock reads, a wrapped ``send`` to see
    the status, one dictionary look-up and the histogram's observation (the route template
    is looked up once per route, method and status). A request that raised is a ``500``
    unless its response had started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, int | str, int], Histogram] = {}
        self._templates = _Templates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        root_path = scope.get("root_path", "")

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"]
            if method not in METHODS:
                method = OTHER_METHOD
            route = scope.get("route")
            if route is not None:
                key: tuple[str, int | str, int] = (method, id(route), status)
            else:  # rare: a 404, or one of Starlette's own routes; matched again
                key = (method, self._templates.of_path(scope, root_path), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._child(scope, method, route, key[1], status)
            child.observe(elapsed)

    def _child(
        self, scope: Scope, method: str, route: Any, template: int | str, status: int
    ) -> Histogram:
        if route is not None:
            template = self._templates.of_route(scope, route)
        return HTTP_REQUEST_DURATION.labels(method, template, str(status))
