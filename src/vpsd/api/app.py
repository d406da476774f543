"""The application factory: the API, with this host's agent in the same process (the embedded
default) or without it (API workers beside agents elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vpsd import __version__, logs
from vpsd.agent import HostAgent
from vpsd.api.deps import Services
from vpsd.api.docs import install_docs
from vpsd.api.errors import install_error_handlers
from vpsd.api.openapi import install_openapi, operation_id
from vpsd.api.pagination import install_slash_redirects
from vpsd.api.routes import backups, hosts, images, servers, snapshots, ssh_keys
from vpsd.api.strict_json import BodySizeLimit
from vpsd.backups import make_backup_store, same_filesystem_warning
from vpsd.backups.base import BackupStore
from vpsd.config import Settings, get_settings
from vpsd.db import migrate
from vpsd.db.session import Database
from vpsd.hypervisor.base import Driver
from vpsd.hypervisor.registry import make_driver
from vpsd.metrics import DatabaseCollector, HttpMetrics, render
from vpsd.operations.broker import OutboxPublisher, make_broker
from vpsd.services import installation
from vpsd.services.backup_policies import BackupPolicyService
from vpsd.services.backups import BackupService
from vpsd.services.hosts import HostService
from vpsd.services.images import ImageService
from vpsd.services.servers import ServerService
from vpsd.services.snapshots import SnapshotService
from vpsd.services.ssh_keys import SshKeyService
from vpsd.services.tokens import TokenAuthenticator
from vpsd.web import install_panel

log = logging.getLogger(__name__)

DESCRIPTION = """\
Point-in-time snapshots and backups of virtual private servers. Every server is a QEMU
virtual machine with qcow2 disks; a snapshot is an internal qcow2 snapshot of all of them,
taken copy-on-write in milliseconds; a backup is a copy of them in a deduplicated restic
repository apart from the host. Authenticate with `Authorization: Bearer <token>`.

Errors share one shape: `{"detail": "...", "errors": [{"field": "...", "message": "..."}]}`.
"""


def create_app(
    settings: Settings | None = None,
    driver: Driver | None = None,
    backup_store: BackupStore | None = None,
    *,
    embed_agent: bool | None = None,
    prepare_database: bool = True,
) -> FastAPI:
    """Build the app. Its lifespan migrates the database (unless ``prepare_database`` is
    False: a parent process did it), then, with ``embed_agent`` (default: when no broker is
    set), runs this machine's host agent (``vpsd.agent``: recovery, then the operation
    runner, the VM monitor, the backup scheduler and the heartbeat) until shutdown. Without
    an agent the app is a stateless API process: with a broker it publishes new operations
    to their hosts' queues; without one, agents find them by polling the database."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.servers_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    if embed_agent is None:
        embed_agent = not settings.broker_url
    agent = None
    if embed_agent:
        driver = driver or make_driver(settings)
        backup_store = backup_store or make_backup_store(settings)
        agent = HostAgent(settings, db, driver, backup_store)
    dispatcher = agent.runner if agent is not None else api_dispatcher(db, settings)
    image_service = ImageService(db, settings)

    def start_up() -> None:
        if prepare_database:
            prepare(db, settings)
        if agent is not None:
            image_service.sync()
            agent.recover()
            if warning := same_filesystem_warning(settings):
                log.warning("%s", warning)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Blocking work (the database, QEMU's monitors), so off the event loop: a QMP session
        # runs an event loop of its own, which cannot run inside this one.
        await asyncio.to_thread(start_up)
        await db.open_async_reads()
        if agent is not None:
            agent.start()
        elif isinstance(dispatcher, OutboxPublisher):
            dispatcher.start()
        log.info(
            "vpsd %s ready (data dir %s, %s)",
            __version__,
            settings.data_dir,
            f"driver {settings.driver}" if agent is not None else "API only",
        )
        try:
            yield
        finally:
            if agent is not None:
                agent.stop()
            elif isinstance(dispatcher, OutboxPublisher):
                dispatcher.stop()
            await db.close_async_reads()
            db.dispose()

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
    app.state.services = Services(
        settings=settings,
        db=db,
        servers=ServerService(db, settings, dispatcher, agent.ctx.driver if agent else None),
        images=image_service,
        snapshots=SnapshotService(db, settings, dispatcher),
        backups=BackupService(db, settings, dispatcher),
        backup_policies=(
            agent.policies if agent is not None else BackupPolicyService(db, dispatcher)
        ),
        ssh_keys=SshKeyService(db),
        hosts=HostService(db, settings),
        authenticate=TokenAuthenticator(db, settings.token_cache_seconds),
    )
    app.state.runner = agent.runner if agent is not None else None
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
    install_docs(app, docs_url="/api/v1/docs", openapi_url="/api/v1/openapi.json")
    install_panel(app)
    install_slash_redirects(app, settings.public_url)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    database_gauges = DatabaseCollector(db, settings)

    # No token, like /healthz: whoever can reach the listener can read it (docs/architecture.md,
    # "Metrics"). A plain def: FastAPI runs it in the threadpool, off the event loop, since
    # the database's gauges are read with blocking queries.
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(render(database_gauges), media_type=CONTENT_TYPE_LATEST)

    return app


def create_worker_app() -> FastAPI:
    """The app of one ``vpsd serve --workers N`` process (uvicorn's factory): settings and
    log level from the environment, no agent, the database already prepared by the parent."""
    from vpsd.serving.workers import LOG_LEVEL_ENV

    logs.configure(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app(embed_agent=False, prepare_database=False)


def prepare(db: Database, settings: Settings) -> None:
    """Migrate the database (once, under an advisory lock on PostgreSQL) and check that it
    and the data dir belong together; before anything acts on the data dir."""
    migrate.upgrade(db)
    installation.verify(db, settings)


class PollingAgents:
    """The dispatcher of an API without agent or broker: agents poll the database."""

    def notify(self) -> None:
        """Nothing to do: the agents find new operations within their poll interval."""


def api_dispatcher(db: Database, settings: Settings) -> OutboxPublisher | PollingAgents:
    """How an API process without an agent hands new operations on."""
    if settings.broker_url:
        return OutboxPublisher(db, settings, make_broker(settings.broker_url))
    return PollingAgents()
