"""The HTTP protocol ``vpsd serve`` serves with: uvicorn's, guarded against hostile clients.

``GuardedHttpProtocol`` is uvicorn's httptools protocol with what uvicorn lacks against
slow or hostile clients: a request header must arrive within ``header_timeout_seconds``,
and its body within as long again (else ``408``); a header is at most ``MAX_HEAD_BYTES``
(else ``431``); open connections are capped below the descriptor limit (the oldest idle
connection is closed to make room, else the new request gets ``503``); and malformed
requests get the API's JSON error shape instead of uvicorn's plain-text ``400``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 32 * 1024
"""The largest request line and headers accepted (nginx: 4 x 8 KiB, h11: 16 KiB)."""

TOO_MANY_CONNECTIONS = "the server has too many open connections; try again shortly"


def _error_body(detail: str) -> bytes:
    return json.dumps({"detail": detail, "errors": []}, separators=(",", ":")).encode()


async def over_capacity(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The answer to a request beyond the connection cap: ``503`` in the API's shape."""
    body = _error_body(TOO_MANY_CONNECTIONS)
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _parse_error_detail(error: httptools.HttpParserError) -> str:
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return "malformed HTTP request: unknown method"
    reason = str(error).strip().rstrip(".") or "unparsable"
    return f"malformed HTTP request: {reason[:1].lower()}{reason[1:]}"


@dataclass
class ConnectionGuard:
    """The connections of one server: all open ones, and the idle ones (waiting for a
    request header, or kept alive between requests) by how long they have been idle."""

    limit: int
    header_timeout: float
    open: set[GuardedHttpProtocol] = field(default_factory=set)
    idle: dict[GuardedHttpProtocol, None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _report: asyncio.TimerHandle | None = None

    def make_room(self, but: GuardedHttpProtocol) -> bool:
        """Close the longest-idle connection other than ``but``; False when all are busy."""
        victim = next((c for c in self.idle if c is not but), None)
        if victim is None:
            return False
        victim.shed()
        return True

    def count(self, loop: asyncio.AbstractEventLoop, event: str) -> None:
        """Count a closed connection; the counts are logged at most every 10 s, so a flood
        costs a log line, not one per connection."""
        self.counts[event] = self.counts.get(event, 0) + 1
        if self._report is None:
            self._report = loop.call_later(10, self.report)

    def report(self) -> None:
        """Log and reset the counts."""
        self._report = None
        counts, self.counts = self.counts, {}
        if counts:
            log.warning(
                "HTTP connections closed in the last 10 s (limit %d, header timeout %g s): %s",
                self.limit,
                self.header_timeout,
                ", ".join(f"{n} {event}" for event, n in sorted(counts.items())),
            )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size limit, a
    connection cap and JSON answers to requests it cannot parse. See the module's doc."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # read while a header is under way (it may not be complete)
        self._head_size = 0  # of the header being parsed: request line and header fields
        self._head_too_large = False
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection life --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.open.add(self)
        self._begin_head()
        if len(self.guard.open) > self.guard.limit:
            self.guard.make_room(but=self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def _forget(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._cancel_body_timer()
        self.guard.open.discard(self)
        self.guard.idle.pop(self, None)

    def _busy(self) -> bool:
        """A request's header was read and its response is not complete yet."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _begin_head(self) -> None:
        """Wait for a request header: from now on it must come within the timeout."""
        self._head_bytes = 0
        self.guard.idle.setdefault(self, None)
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.header_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.guard.count(self.loop, "header timeouts")
            self._reply_and_close(
                408, f"the request header did not arrive within {self.guard.header_timeout:g} s"
            )

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_late(self) -> None:
        """The body did not arrive within the timeout after the header: the application,
        still waiting for it, sees the client gone; the client gets 408."""
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        self.guard.count(self.loop, "body timeouts")
        started = cycle.response_started
        cycle.disconnected = True  # nothing the application sends goes out any more
        cycle.message_event.set()
        if started:
            self._forget()
            self.transport.close()
        else:
            self._reply_and_close(
                408, f"the request body did not arrive within {self.guard.header_timeout:g} s"
            )

    def shed(self) -> None:
        """Close to make room for another connection: a request header under way (or not
        begun on a new connection) gets ``503``; a kept-alive idle connection is just
        closed, as its keep-alive timeout would."""
        if self._head_timer is not None:
            self.guard.count(self.loop, "shed at the connection limit")
            self._reply_and_close(503, TOO_MANY_CONNECTIONS)
        else:
            self._forget()
            if not self.transport.is_closing():
                self.transport.close()

    def _reply_and_close(self, status: int, detail: str) -> None:
        body = _error_body(detail)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"retry-after: 1\r\n" if status == 503 else b"",
            b"connection: close\r\n\r\n",
            body,
        ]
        self._forget()
        if not self.transport.is_closing():
            self.transport.write(b"".join(content))
            self.transport.close()

    # -- parsing --

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._head_timer is None and not self._busy():
            self._begin_head()  # the first bytes of a request on a kept-alive connection
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # served as plain HTTP: vpsd has no WebSocket endpoint (ws="none")
        except httptools.HttpParserError as error:
            if self._head_too_large:
                self._reply_too_large()
            elif self._busy():  # garbage after a pipelined request: no answer can fit in
                self._forget()
                self.transport.close()
            else:
                self._reply_and_close(400, _parse_error_detail(error))
            return
        if self._head_timer is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._reply_too_large()

    def _reply_too_large(self) -> None:
        self._reply_and_close(431, f"the request header is larger than {MAX_HEAD_BYTES} bytes")

    def _count_head(self, size: int) -> None:
        """Count header bytes as the parser delivers them: a whole header read at once
        is measured too. Past the limit the parser is stopped (data_received answers)."""
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise ValueError("request header too large")

    def on_message_begin(self) -> None:
        self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.guard.idle.pop(self, None)
        if len(self.guard.open) > self.guard.limit and not self.guard.make_room(but=self):
            self.guard.count(self.loop, "answered 503 at the connection limit")
            app, self.app = self.app, over_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and not self.pipeline:
            # Cancelled by on_message_complete, at once for a request without a body (a
            # pipelined request's body is not read before its turn: it gets no deadline).
            self._cancel_body_timer()
            self._body_timer = self.loop.call_later(self.guard.header_timeout, self._body_late)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._busy():
            self.guard.idle.pop(self, None)
            self.guard.idle[self] = None  # idle from now: the last to be shed

    def send_400_response(self, msg: str) -> None:
        self._reply_and_close(400, "malformed HTTP request")


def guarded_protocol(limit: int, header_timeout: float) -> type[GuardedHttpProtocol]:
    """A ``GuardedHttpProtocol`` class for one server (uvicorn's ``Config(http=...)``)."""

    class Protocol(GuardedHttpProtocol):
        guard = ConnectionGuard(limit, header_timeout)

    return Protocol


CAP_ENV = "VPSD_WORKER_CONNECTION_CAP"
HEADER_TIMEOUT_ENV = "VPSD_WORKER_HEADER_TIMEOUT"


class WorkerProtocol(GuardedHttpProtocol):
    """The protocol of ``vpsd serve --workers N``'s processes, which uvicorn imports by name:
    its cap and header timeout come from the environment their parent set."""

    guard = ConnectionGuard(
        int(os.environ.get(CAP_ENV, "1024")), float(os.environ.get(HEADER_TIMEOUT_ENV, "10"))
    )
