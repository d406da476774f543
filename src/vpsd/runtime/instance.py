"""What ``vpsd serve`` claims before the API runs: the data dir, the port, descriptors.

Before anything touches the database (migrations, recovery), ``claim_instance`` makes this
process the only vpsd on its data dir and binds its listening socket, so that a second
``vpsd serve`` exits with a one-line message instead of re-running the first one's work:

- an exclusive ``flock`` on ``<data dir>/vpsd.lock``, held for the life of the process (the
  file says which pid holds it; it is never deleted);
- on PostgreSQL, also a session advisory lock keyed by the data dir's path, on a connection
  of its own, for instances on other hosts given the same database and data dir path;
- the listening socket, bound before recovery, so a taken port is reported first too.

It also makes the data dir private (``tighten_permissions``) and sizes the connection cap to
the descriptor limit (``connection_cap``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import resource
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from vpsd.config import Settings
from vpsd.db.session import SQLITE_POOL_SIZE, normalize_url

log = logging.getLogger(__name__)

LOCK_FILE = "vpsd.lock"
"""The data dir's instance lock; its one line is ``PID URL`` of the vpsd holding it."""

BACKLOG = 128
"""The listening socket's queue, and so the most connections asyncio accepts at one wake-up
(``loop.create_server(backlog=...)``): a flood overshoots the connection cap by at most this
many descriptors before the protocol sheds them; the descriptor reserve covers it."""


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
    """What makes this process the one ``vpsd serve`` (or ``vpsd agent``) of its data dir."""

    lock: InstanceLock
    database_lock: Connection | None
    socket: socket.socket | None
    """The listening socket; None for an agent, which serves no HTTP."""
    url: str

    def release(self) -> None:
        """Close the socket and release both locks (process exit does it too)."""
        if self.socket is not None:
            self.socket.close()
        if self.database_lock is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.database_lock.close()
        self.lock.release()


def claim_instance(settings: Settings, host: str | None, port: int = 0) -> Instance:
    """Lock the data dir (and the PostgreSQL database), then bind ``host:port`` (nothing
    when ``host`` is None: an agent); raise ``StartupError`` with a one-line reason when
    another instance or program is in the way. Nothing is migrated or recovered yet."""
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
            sock = None if host is None else listen(host, port)
        except StartupError:
            if database_lock is not None:
                database_lock.close()
            raise
    except BaseException:
        lock.release()
        raise
    if sock is None or host is None:
        url = f"(the agent of host {settings.host_name})"
    else:
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
