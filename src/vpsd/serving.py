"""What ``vpsd serve`` sets up before the API runs, and the HTTP protocol it serves with.

Before anything touches the database (migrations, recovery), ``claim_instance`` makes this
process the only vpsd on its data dir and binds its listening socket, so that a second
``vpsd serve`` exits with a one-line message instead of re-running the first one's work:

- an exclusive ``flock`` on ``<data dir>/vpsd.lock``, held for the life of the process (the
  file says which pid holds it; it is never deleted);
- on PostgreSQL, also a session advisory lock keyed by the data dir's path, on a connection
  of its own, for instances on other hosts given the same database and data dir path;
- the listening socket, bound before recovery, so a taken port is reported first too.

``GuardedHttpProtocol`` is uvicorn's httptools protocol with what uvicorn lacks against
slow or hostile clients: a request header must arrive within ``header_timeout_seconds``,
and its body within as long again (else ``408``); a header is at most ``MAX_HEAD_BYTES``
(else ``431``); open connections are capped
below the descriptor limit (the oldest idle connection is closed to make room, else the new
request gets ``503``); and malformed requests get the API's JSON error shape instead of
uvicorn's plain-text ``400``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import resource
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httptools
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from vpsd.config import Settings
from vpsd.db.session import SQLITE_POOL_SIZE, normalize_url

log = logging.getLogger(__name__)

LOCK_FILE = "vpsd.lock"
"""The data dir's instance lock; its one line is ``PID URL`` of the vpsd holding it."""

BACKLOG = 128
"""The listening socket's queue, and so the most connections asyncio accepts at one wake-up
(``loop.create_server(backlog=...)``): a flood overshoots the connection cap by at most this
many descriptors before the protocol sheds them; the descriptor reserve covers it."""

MAX_HEAD_BYTES = 32 * 1024
"""The largest request line and headers accepted (nginx: 4 x 8 KiB, h11: 16 KiB)."""

NOFILE_TARGET = 65536
"""The soft descriptor limit ``vpsd serve`` raises itself to, within the hard limit."""

MIN_CONNECTIONS = 16
"""The connection cap never goes below this, however low the descriptor limit."""


class StartupError(Exception):
    """``vpsd serve`` cannot start; the message is one line for the operator."""


# -- one instance per data dir --------------------------------------------------------------


def _lock_holder(fd: int) -> str:
    """Who holds the lock, from the lock file: ``pid 123, http://...`` when it says."""
    try:
        line = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        line = ""
    pid, _, url = line.partition(" ")
    if not pid.isdigit():
        return "another vpsd"
    return f"vpsd pid {pid}" + (f", serving {url}" if url else "")


@dataclass
class InstanceLock:
    """The data dir's lock file, ``flock``-ed for the life of the process (close releases it;
    so does the process's death, however it dies)."""

    path: Path
    fd: int

    def record(self, url: str = "") -> None:
        """Write ``PID URL`` into the lock file, for the message a second instance prints.
        Best effort: on a full filesystem the lock still holds without it."""
        line = f"{os.getpid()} {url}".strip() + "\n"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, line.encode(), 0)
        except OSError as error:
            log.warning("could not write %s: %s", self.path, error)

    def release(self) -> None:
        """Unlock (the file stays: removing it would race with a starting instance)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_data_dir(data_dir: Path) -> InstanceLock:
    """Take ``<data_dir>/vpsd.lock`` or raise ``StartupError`` naming the data dir and the
    pid holding it. The descriptor is close-on-exec, so VMs and helpers never inherit it."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StartupError(f"cannot open the lock file {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise StartupError(
            f"data dir {data_dir} is in use by {holder}: stop it first, or give this one "
            "another --data-dir"
        ) from None
    lock = InstanceLock(path, fd)
    lock.record()
    return lock


def advisory_lock_key(data_dir: Path) -> int:
    """The PostgreSQL advisory lock key of a data dir: 64 bits of a hash of its path."""
    digest = hashlib.sha256(f"vpsd data dir {data_dir}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pg_lock_holder(connection: Connection, key: int) -> str:
    """The ``application_name`` and address of the session holding the advisory lock."""
    row = connection.execute(
        text(
            "SELECT a.application_name, host(a.client_addr) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = :high AND l.objid::bigint = :low "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "another vpsd"
    name, address = row
    return (name or "another session") + (f" from {address}" if address else "")


def lock_database(database_url: str, data_dir: Path) -> Connection | None:
    """On PostgreSQL, take the data dir's session advisory lock on a connection of its own
    and return that connection (keep it open: closing it releases the lock); ``None`` on
    SQLite, whose file lives in the data dir or is named by the configuration.

    Raises ``StartupError`` when another session holds the lock or the database is down.
    """
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "postgresql":
        return None
    shown = make_url(database_url).render_as_string(hide_password=True)
    name = f"vpsd pid {os.getpid()} on {socket.gethostname()}"[:63]
    engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": name})
    key = advisory_lock_key(data_dir)
    try:
        connection = engine.connect()
        locked = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
        if not locked.scalar_one():
            holder = _pg_lock_holder(connection, key)
            connection.close()
            raise StartupError(
                f"data dir {data_dir} is in use on database {shown} by {holder}: "
                "stop it first, or give this one another --data-dir"
            )
        connection.commit()  # the lock is the session's: it outlives the transaction
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise StartupError(f"cannot lock the database {shown}: {reason}") from None
    return connection


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """Bind and listen on ``host:port`` now, before recovery; raise ``StartupError`` naming
    the address when it is taken or cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say TCP (with proto 0
    # Nagle's algorithm holds each response's body behind its headers for 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        reason = (error.strerror or str(error)).lower()
        raise StartupError(f"cannot listen on {shown}: {reason}") from None
    return sock


@dataclass
class Instance:
    """What makes this process the one ``vpsd serve`` of its data dir."""

    lock: InstanceLock
    database_lock: Connection | None
    socket: socket.socket
    url: str

    def release(self) -> None:
        """Close the socket and release both locks (process exit does it too)."""
        self.socket.close()
        if self.database_lock is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.database_lock.close()
        self.lock.release()


def claim_instance(settings: Settings, host: str, port: int) -> Instance:
    """Lock the data dir (and the PostgreSQL database), then bind ``host:port``; raise
    ``StartupError`` with a one-line reason when another instance or program is in the way.
    Nothing is migrated or recovered yet."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(
            f"cannot create data dir {settings.data_dir}: {error.strerror}"
        ) from None
    lock = lock_data_dir(settings.data_dir)
    try:
        database_lock = lock_database(settings.effective_database_url, settings.data_dir)
        try:
            sock = listen(host, port)
        except StartupError:
            if database_lock is not None:
                database_lock.close()
            raise
    except BaseException:
        lock.release()
        raise
    bound_port = sock.getsockname()[1]
    url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
    lock.record(url)
    return Instance(lock, database_lock, sock, url)


# -- files and descriptors ------------------------------------------------------------------


def _sqlite_files(database_url: str) -> list[Path]:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return []
    database = Path(url.database)
    return [
        database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")
    ]


PRIVATE_TREES = ("servers", "images")
"""The data dir's folders vpsd owns entirely: servers' disks, logs and sockets; images."""


def tighten_permissions(settings: Settings) -> int:
    """Take group and other permissions off what vpsd keeps: the data dir itself, its
    ``servers`` and ``images`` trees, ``vpsd.lock`` and the SQLite files wherever they are
    (anything else an operator put in the data dir is left alone). Returns how many entries
    were changed. Symlinks are neither followed nor changed."""
    changed = 0

    def tighten(path: Path) -> None:
        nonlocal changed
        try:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not mode & 0o077:
                return
            path.chmod(stat.S_IMODE(mode) & ~0o077)
            changed += 1
        except FileNotFoundError:
            return
        except OSError as error:  # not ours: say so, keep going
            log.warning("could not restrict the permissions of %s: %s", path, error)

    tighten(settings.data_dir)
    tighten(settings.data_dir / LOCK_FILE)
    for tree in PRIVATE_TREES:
        tighten(settings.data_dir / tree)
        for folder, folders, files in os.walk(settings.data_dir / tree):
            for name in folders + files:
                tighten(Path(folder) / name)
    for path in _sqlite_files(settings.effective_database_url):
        tighten(path)
    if changed:
        log.info("restricted the permissions of %d files and folders to their owner", changed)
    return changed


def raise_descriptor_limit(target: int = NOFILE_TARGET) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``target``, within the hard limit (as Go
    programs do at start); return the soft limit now in force. Never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            log.warning("could not raise the open files limit from %d: %s", soft, error)
    return soft if soft != resource.RLIM_INFINITY else target


def descriptor_reserve(settings: Settings) -> int:
    """Descriptors kept out of the connection cap for everything else vpsd opens: the
    database pool (a SQLite connection holds the database and its WAL), the runner threads'
    QMP sockets, qemu-img pipes and pidfds, 64 for the listening socket, the event loop,
    logs, the lock file and the monitor's ``/proc`` reads, and ``BACKLOG`` for connections
    accepted in one go before the protocol sheds the excess."""
    if make_url(settings.effective_database_url).get_backend_name() == "sqlite":
        database = 2 * 2 * SQLITE_POOL_SIZE  # pool_size + max_overflow, two files each
    else:
        database = 10 + 20 + 1  # pool_size + max_overflow, and the advisory lock's
    return database + 8 * settings.runner_threads + 64 + BACKLOG


def connection_cap(settings: Settings, nofile: int) -> int:
    """The most HTTP connections open at once: ``max_connections``, lowered to what the
    descriptor limit ``nofile`` leaves after ``descriptor_reserve``."""
    room = nofile - descriptor_reserve(settings)
    cap = min(settings.max_connections, max(MIN_CONNECTIONS, room))
    if cap < settings.max_connections:
        log.warning(
            "serving at most %d connections, not VPSD_MAX_CONNECTIONS=%d: the open files "
            "limit is %d and %d are kept for the database, VMs and logs (raise `ulimit -n`)",
            cap,
            settings.max_connections,
            nofile,
            descriptor_reserve(settings),
        )
    return cap


# -- the HTTP protocol ----------------------------------------------------------------------


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
