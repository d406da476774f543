"""The server state machine: which action is allowed from which status.

::

    create ─► starting ─► running ──stop──► stopping ─► stopped ──start──► starting
                  │          │  ▲                          │  ▲
                  ▼          │  └────── restoring ◄────────┘  │   (back to the prior
                error        └─────────► restoring ───────────┘    power state)
    reboot: running | paused ─► rebooting ─► running (a graceful power cycle)
    delete: running | paused | stopped | error ─► deleting ─► deleted (gone from the API)
    start:  stopped | error ─► starting          any failure ─► error (with a reason)
    stop:   paused ─► stopping ─► stopped (forced at once: paused CPUs cannot power down)
    restore: paused | error ─► restoring ─► stopped

The monitor also moves ``running``/``paused`` to ``stopped`` when a VM's process dies outside
vpsd, ``running`` to ``paused`` when QEMU pauses the VM (a full disk), and ``paused`` back to
``running`` once it is continued.
"""

from __future__ import annotations

from enum import StrEnum

from vpsd.db.models import ServerStatus


class ServerAction(StrEnum):
    """User actions on a server, each guarded by ``ALLOWED_FROM``."""

    STOP = "stop"
    START = "start"
    REBOOT = "reboot"
    DELETE = "delete"
    RESTORE = "restore"
    SNAPSHOT = "snapshot"
    BACKUP = "back up"


ALLOWED_FROM: dict[ServerAction, frozenset[ServerStatus]] = {
    ServerAction.STOP: frozenset({ServerStatus.RUNNING, ServerStatus.PAUSED}),
    ServerAction.START: frozenset({ServerStatus.STOPPED, ServerStatus.ERROR}),
    ServerAction.REBOOT: frozenset({ServerStatus.RUNNING, ServerStatus.PAUSED}),
    ServerAction.DELETE: frozenset(
        {ServerStatus.RUNNING, ServerStatus.PAUSED, ServerStatus.STOPPED, ServerStatus.ERROR}
    ),
    # From error too: restoring is the way out for a server whose disk a failed restore
    # left incomplete (its start is refused until then).
    ServerAction.RESTORE: frozenset(
        {ServerStatus.RUNNING, ServerStatus.PAUSED, ServerStatus.STOPPED, ServerStatus.ERROR}
    ),
    ServerAction.SNAPSHOT: frozenset({ServerStatus.RUNNING, ServerStatus.STOPPED}),
    ServerAction.BACKUP: frozenset({ServerStatus.RUNNING, ServerStatus.STOPPED}),
}

RESULTING_STATUS: dict[ServerAction, ServerStatus | None] = {
    ServerAction.STOP: ServerStatus.STOPPING,
    ServerAction.START: ServerStatus.STARTING,
    ServerAction.REBOOT: ServerStatus.REBOOTING,
    ServerAction.DELETE: ServerStatus.DELETING,
    ServerAction.RESTORE: ServerStatus.RESTORING,
    ServerAction.SNAPSHOT: None,  # a snapshot does not change the server's status
    ServerAction.BACKUP: None,  # nor does a backup
}


def is_allowed(action: ServerAction, status: ServerStatus) -> bool:
    """Whether ``action`` may be taken on a server in ``status``."""
    return status in ALLOWED_FROM[action]


def refusal(action: ServerAction, status: ServerStatus) -> str:
    """The message a user sees when ``action`` is refused in ``status``."""
    allowed = " or ".join(sorted(ALLOWED_FROM[action]))
    return f"cannot {action} a server that is {status}; the server must be {allowed}"
