"""The one base error of the work vpsd does on a host."""

from __future__ import annotations


class HostError(Exception):
    """Work on a host failed: a hypervisor action, an external command, the backup storage.

    ``str(error)`` is a reason fit to show the server's owner. ``detail``, when set, is for
    the operator's log only: a program's own words, host resources, paths and pids, which a
    tenant must never see.
    """

    detail: str | None = None
