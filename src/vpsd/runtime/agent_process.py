"""``vpsd agent``: one host's agent alone, in the foreground."""

from __future__ import annotations

import logging
import signal
import threading

from vpsd import __version__
from vpsd.config import Settings
from vpsd.metrics import serve_metrics
from vpsd.runtime import assembly
from vpsd.runtime.instance import StartupError

log = logging.getLogger(__name__)


def run_agent(settings: Settings, metrics: tuple[str, int] | None = None) -> None:
    """Run this host's agent until SIGTERM or SIGINT (operations under way end first),
    serving Prometheus metrics on ``metrics`` (address, port) if given. The caller holds the
    data dir's lock and has prepared the database."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    runtime = assembly.agent_only(settings, migrate_database=False)
    try:
        runtime.prepare()
        if metrics is not None:
            try:
                serve_metrics(*metrics, runtime.db, settings)
            except OSError as error:
                address, port = metrics
                raise StartupError(
                    f"cannot serve metrics on {address}:{port}: {error.strerror or error}"
                ) from None
        runtime.start()
        log.info(
            "vpsd %s agent of host %s ready (data dir %s, driver %s)",
            __version__, settings.host_name, settings.data_dir, settings.driver,
        )  # fmt: skip
        stopping.wait()
        log.info("host %s: stopping; operations under way end first", settings.host_name)
    finally:
        runtime.stop()
