"""Which host's work is whose: every host's agent runs, recovers and watches the servers of
its own host only."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select

from vpsd.db.models import Host, Operation, Server


def on_host(name: str) -> ColumnElement[bool]:
    """A condition on ``Server``: the server belongs to host ``name``."""
    return Server.host_id == select(Host.id).where(Host.name == name).scalar_subquery()


def operations_on_host(name: str) -> ColumnElement[bool]:
    """A condition on ``Operation``: its server belongs to host ``name``."""
    return Operation.server_id.in_(select(Server.id).where(on_host(name)))
