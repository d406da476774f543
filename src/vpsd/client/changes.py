"""``client.changes``: updates that roll themselves back (``/api/v1/changes/``)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from vpsd.client.resources import _Objects
from vpsd.client.waiting import poll
from vpsd.schemas import ChangeOut, Page

ENDED = ("succeeded", "rolled_back", "failed")


class ChangesApi(_Objects[ChangeOut]):
    """A command run in a server's guest between a snapshot and a health check, rolled back
    to the snapshot when either fails."""

    path = "changes/"
    model = ChangeOut
    page_model = Page[ChangeOut]

    def create(
        self,
        server_id: int,
        command: str,
        *,
        health_check: dict[str, Any] | None = None,
        timeout_seconds: int | None = None,
        keep_snapshot_hours: int | None = None,
    ) -> ChangeOut:
        """Start a change (``in_progress``); ``health_check`` is one of ``{"ssh": True}``
        (the default), ``{"tcp_port": 80}`` or ``{"command": "..."}``; see ``follow``."""
        body: dict[str, Any] = {"server_id": server_id, "command": command}
        for name, value in (
            ("health_check", health_check),
            ("timeout_seconds", timeout_seconds),
            ("keep_snapshot_hours", keep_snapshot_hours),
        ):
            if value is not None:
                body[name] = value
        return ChangeOut.model_validate(self._client.request("POST", self.path, json=body))

    def list(self, server_id: int | None = None) -> builtins.list[ChangeOut]:
        """The account's changes (only ``server_id``'s if given), newest first, all pages."""
        return self._list({"server_id": server_id} if server_id is not None else None)

    def follow(
        self,
        change_id: int,
        *,
        on_output: Callable[[str], None] | None = None,
        timeout: float = 24 * 3600.0,
    ) -> ChangeOut:
        """Wait for the change's end, handing ``on_output`` its command's output as it
        comes (a gap too long to have been kept is marked ``[... N characters skipped ...]``);
        the change, ended."""
        shown = 0

        def show_new(change: ChangeOut) -> None:
            nonlocal shown
            new = change.output_length - shown
            if on_output is not None and new > 0:
                if new > len(change.output):
                    on_output(f"[... {new - len(change.output)} characters skipped ...]\n")
                    new = len(change.output)
                on_output(change.output[-new:])
            shown = change.output_length

        return poll(
            lambda: self.get(change_id),
            lambda change: change.status in ENDED,
            what=f"change {change_id}",
            timeout=timeout,
            interval=self._client.poll_interval,
            on_progress=show_new,
        )
