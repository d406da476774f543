"""Host ports for servers' SSH forwards: allocated once, kept across restarts, freed on delete.

A port is taken by a server row (``servers.ssh_port``, unique) from creation until the
server is deleted. A port something else on the host already listens on is skipped, so a
server's VM does not fail to start over a conflict that was visible at creation.
"""

from __future__ import annotations

import socket

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.config import Settings
from vpsd.db.models import Server
from vpsd.services.errors import LimitReached


def allocate_ssh_port(session: Session, settings: Settings) -> int:
    """The lowest port of ``settings.ssh_ports`` no server holds and nothing listens on.

    Call inside the write transaction that stores it; the unique constraint on
    ``servers.ssh_port`` catches a concurrent transaction that chose the same one.
    Raises LimitReached when the range is exhausted.
    """
    held = set(session.scalars(select(Server.ssh_port).where(Server.ssh_port.is_not(None))))
    for port in settings.ssh_port_range:
        if port not in held and port_is_free(settings.ssh_listen_address, port):
            return port
    raise LimitReached(
        "this host cannot take more servers right now (no SSH port is free); try again later"
    )


def port_is_free(address: str, port: int) -> bool:
    """True when nothing on this host listens on ``address:port`` (TCP)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True
