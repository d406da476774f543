"""What a tenant is told when an operation fails: words, never the host's details.

A driver or store error's text is usually fit to show (``HostError``'s contract), but
some carry a program's own output (``CommandError``: qemu-img's "Could not open
'/var/lib/vpsd/servers/13/disk0.qcow2'"), or a path slipped into a message. Those are
replaced by what failed, in words; the operator's log keeps the whole error (``execute``
logs it beside the reason).
"""

from __future__ import annotations

import re

from vpsd.core.commands import CommandError
from vpsd.core.errors import HostError
from vpsd.db.models import OperationKind
from vpsd.hypervisor.base import BootFailed, LivenessUnknown

BOOT_FAILED = (
    "the VM could not be started on this host; try again later, or with a smaller size "
    "(the operator's log has the details)"
)
HOST_PROBLEM = "a problem on the host; the operator's log has the details"

WHAT_FAILED: dict[OperationKind, str] = {
    OperationKind.SERVER_CREATE: "the server could not be created",
    OperationKind.SERVER_START: "the server could not be started",
    OperationKind.SERVER_STOP: "the server could not be stopped",
    OperationKind.SERVER_REBOOT: "the server could not be rebooted",
    OperationKind.SERVER_DELETE: "the server could not be deleted",
    OperationKind.SNAPSHOT_CREATE: "the snapshot could not be taken",
    OperationKind.SNAPSHOT_RESTORE: "the snapshot could not be restored",
    OperationKind.SNAPSHOT_DELETE: "the snapshot could not be deleted",
    OperationKind.BACKUP_CREATE: "the backup could not be taken",
    OperationKind.BACKUP_RESTORE: "the backup could not be restored",
    OperationKind.BACKUP_DELETE: "the backup could not be deleted",
    OperationKind.CHANGE_APPLY: "the change could not be carried out",
}

SERVER_KINDS = frozenset(
    {
        OperationKind.SERVER_CREATE,
        OperationKind.SERVER_START,
        OperationKind.SERVER_STOP,
        OperationKind.SERVER_REBOOT,
        OperationKind.SERVER_DELETE,
        OperationKind.SNAPSHOT_RESTORE,
        OperationKind.BACKUP_RESTORE,
    }
)
"""Kinds whose failure puts the server in ``error``."""

_HOST_PATH = re.compile(r"(?:^|[\s'\"`(\[=:,])/[\w.@+-]+/")
"""An absolute path of two or more parts (``/var/lib/...``, ``'/tmp/x/disk0.qcow2'``);
not a slash inside a word (``read/write``)."""


def shows_host_details(text: str) -> bool:
    """Whether ``text`` names a host path."""
    return _HOST_PATH.search(text) is not None


def tenant_reason(kind: OperationKind, error: HostError) -> str:
    """What the server's owner is told of ``error``, which failed an operation of ``kind``:
    never QEMU's own words on a failed boot, a program's output, a host path, nor the
    error's ``detail``; those are for the log only."""
    if isinstance(error, BootFailed):
        return BOOT_FAILED
    if isinstance(error, LivenessUnknown) and kind in SERVER_KINDS:
        return f"{error}; start the server again to find out, or delete it"
    reason = str(error)
    if isinstance(error, CommandError) or shows_host_details(reason):
        return f"{WHAT_FAILED.get(kind, 'the operation failed')} ({HOST_PROBLEM})"
    return reason
