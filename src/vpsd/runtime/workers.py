"""``vpsd serve --workers N``: N API processes on one listening socket, under uvicorn's
supervisor (``supervisor.Supervisor``: it replaces a worker that dies, and logs why).

The workers are stateless (``vpsd.runtime.app.create_worker_app``): the parent has migrated the
database and holds the data dir's locks. With a broker, no process here runs operations:
each host's ``vpsd agent`` does. Without one, this host's agent runs in the parent, and finds
the operations the workers commit by polling the database.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket

from vpsd.config import Settings
from vpsd.runtime.http_protocol import CAP_ENV, HEADER_TIMEOUT_ENV
from vpsd.runtime.instance import BACKLOG

log = logging.getLogger(__name__)

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_LEVEL_ENV = "VPSD_WORKER_LOG_LEVEL"
"""The parent's ``--log-level``: spawned workers set up logging anew (``vpsd.logs``)."""


def prepare_metrics_dir(settings: Settings) -> None:
    """Give the worker processes an empty shared directory for their metrics (prometheus
    client's multiprocess mode), before anything here imports ``prometheus_client``."""
    directory = settings.data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)  # the last run's samples are not this one's
    directory.mkdir(mode=0o700, parents=True)
    os.environ[METRICS_ENV] = str(directory)


def serve_workers(
    settings: Settings,
    sock: socket.socket,
    workers: int,
    connection_cap: int,
    log_level: str,
    access_log: bool,
) -> bool:
    """Serve on ``sock`` with ``workers`` processes until SIGTERM or SIGINT; run this host's
    agent here meanwhile when no broker is set. Call ``prepare_metrics_dir`` first. False
    when the workers' application could not start (their log says why)."""
    import uvicorn

    from vpsd.runtime import assembly  # here: prometheus_client after prepare_metrics_dir
    from vpsd.runtime.supervisor import HEALTH_CHECK_SECONDS, Supervisor

    # The workers' settings come from the environment: the data dir may have been an option.
    os.environ["VPSD_DATA_DIR"] = str(settings.data_dir)
    os.environ[CAP_ENV] = str(connection_cap)
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout_seconds)
    os.environ[LOG_LEVEL_ENV] = log_level
    # With a broker, each host's `vpsd agent` runs its operations, this one's included.
    agent = None if settings.broker_url else assembly.agent_only(settings, migrate_database=False)
    if agent is not None:
        agent.prepare()
        agent.start()
    config = uvicorn.Config(
        "vpsd.runtime.app:create_worker_app",
        factory=True,
        workers=workers,
        http="vpsd.runtime.http_protocol:WorkerProtocol",
        ws="none",
        loop="asyncio",  # as in one process: a bounded overshoot of the connection cap
        backlog=BACKLOG,
        log_level=log_level.lower(),
        access_log=access_log,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_worker_healthcheck=HEALTH_CHECK_SECONDS,
    )
    supervisor = Supervisor(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        if agent is not None:
            log.info("stopping this host's agent; operations under way end first")
            agent.stop()
    return not supervisor.failed_start
