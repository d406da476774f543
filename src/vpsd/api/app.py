"""The API application: routes, the error shape, the OpenAPI document, the docs, the
middleware. ``vpsd.runtime`` builds the services it is given and runs its lifespan."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vpsd import __version__
from vpsd.api.docs import install_docs
from vpsd.api.errors import install_error_handlers
from vpsd.api.openapi import install_openapi, operation_id
from vpsd.api.pagination import install_slash_redirects
from vpsd.api.routes import backups, changes, hosts, images, servers, snapshots, ssh_keys
from vpsd.api.strict_json import BodySizeLimit
from vpsd.metrics import DatabaseCollector, HttpMetrics, render
from vpsd.services.container import Services

DESCRIPTION = """\
Point-in-time snapshots and backups of virtual private servers. Every server is a QEMU
virtual machine with qcow2 disks; a snapshot is an internal qcow2 snapshot of all of them,
taken copy-on-write in milliseconds; a backup is a copy of them in a deduplicated restic
repository apart from the host. Authenticate with `Authorization: Bearer <token>`.

Errors share one shape: `{"detail": "...", "errors": [{"field": "...", "message": "..."}]}`.
"""

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""What runs around the app's life: ``vpsd.runtime`` starts and stops its process's parts."""


def build_api(services: Services, lifespan: Lifespan | None = None) -> FastAPI:
    """The API over ``services``: ``/api/v1/``, its docs and OpenAPI document, ``/healthz``
    and ``/metrics``. Other fronts (the web panel) are installed after it, so its routes
    match first."""
    settings = services.settings
    app = FastAPI(
        title="vpsd",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # vpsd.api.docs serves it, without a CDN
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        generate_unique_id_function=operation_id,
    )
    app.state.services = services
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics)  # outermost: it times the body limit's answers too
    # Routing tries routes in order, so the hot reads' come first: behind the servers'
    # (a fifth of get's time went to matching them; docs/benchmarks.md).
    app.include_router(snapshots.router, prefix="/api/v1")
    app.include_router(servers.router, prefix="/api/v1")
    app.include_router(backups.router, prefix="/api/v1")
    app.include_router(images.router, prefix="/api/v1")
    app.include_router(ssh_keys.router, prefix="/api/v1")
    app.include_router(hosts.router, prefix="/api/v1")
    app.include_router(changes.router, prefix="/api/v1")
    install_docs(app, docs_url="/api/v1/docs", openapi_url="/api/v1/openapi.json")
    install_slash_redirects(app, settings.public_url)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    database_gauges = DatabaseCollector(services.db, settings)

    # No token, like /healthz: whoever can reach the listener can read it (docs/architecture.md,
    # "Metrics"). A plain def: FastAPI runs it in the threadpool, off the event loop, since
    # the database's gauges are read with blocking queries.
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(render(database_gauges), media_type=CONTENT_TYPE_LATEST)

    return app
