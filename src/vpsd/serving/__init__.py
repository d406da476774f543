"""What ``vpsd serve`` sets up before the API runs (``instance``), and the HTTP protocol it
serves with (``protocol``)."""

from vpsd.serving.instance import (
    BACKLOG,
    StartupError,
    claim_instance,
    connection_cap,
    lock_database,
    raise_descriptor_limit,
    tighten_permissions,
)
from vpsd.serving.protocol import guarded_protocol

__all__ = [
    "BACKLOG",
    "StartupError",
    "claim_instance",
    "connection_cap",
    "guarded_protocol",
    "lock_database",
    "raise_descriptor_limit",
    "tighten_permissions",
]
