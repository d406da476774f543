"""The ASGI application of a process that serves the API: the API and the web panel over
one role's services (``assembly``), and a lifespan that prepares, starts and stops that
role's parts."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vpsd import __version__, logs
from vpsd.api.app import build_api
from vpsd.backups.base import BackupStore
from vpsd.config import Settings, get_settings
from vpsd.hypervisor.base import Driver
from vpsd.runtime import assembly
from vpsd.runtime.assembly import Runtime
from vpsd.runtime.workers import LOG_LEVEL_ENV
from vpsd.web import install_panel

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    driver: Driver | None = None,
    backup_store: BackupStore | None = None,
    *,
    embed_agent: bool | None = None,
    prepare_database: bool = True,
) -> FastAPI:
    """The app of one process: with ``embed_agent`` (default: when no broker is set) the
    embedded role, the API and this host's agent on ``driver`` and ``backup_store`` (the
    settings' when None); else the API alone. Its lifespan migrates the database (unless
    ``prepare_database`` is False: a parent process did it), recovers the agent's host, and
    runs the agent or the broker's publisher until shutdown."""
    settings = settings or get_settings()
    if embed_agent is None:
        embed_agent = not settings.broker_url
    if embed_agent:
        runtime = assembly.embedded(
            settings, driver, backup_store, migrate_database=prepare_database
        )
    else:
        runtime = assembly.api_only(settings, migrate_database=prepare_database)
    return app_for(runtime)


def app_for(runtime: Runtime) -> FastAPI:
    """The API and the panel over ``runtime``'s services, running its parts meanwhile."""
    assert runtime.services is not None, "a role without services serves no API"
    db = runtime.db

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Blocking work (the database, QEMU's monitors), so off the event loop: a QMP session
        # runs an event loop of its own, which cannot run inside this one.
        await asyncio.to_thread(runtime.prepare)
        await db.open_async_reads()
        runtime.start()
        log.info(
            "vpsd %s ready (data dir %s, %s)",
            __version__,
            runtime.settings.data_dir,
            f"driver {runtime.settings.driver}" if runtime.agent is not None else "API only",
        )
        try:
            yield
        finally:
            await db.close_async_reads()
            runtime.stop()

    app = build_api(runtime.services, lifespan)
    app.state.runtime = runtime
    install_panel(app)
    return app


def create_worker_app() -> FastAPI:
    """The app of one ``vpsd serve --workers N`` process (uvicorn's factory): settings and
    log level from the environment, no agent, the database already prepared by the parent."""
    logs.configure(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app(embed_agent=False, prepare_database=False)
