"""Engines and transactions for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg import AsyncConnection, InterfaceError, OperationalError
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, TextClause, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_POOL_SIZE = 48
ASYNC_READ_POOL_SIZE = 8
"""PostgreSQL connections the event loop's reads share (``Database.afetch``): enough to
overlap the round trips of a busy process's concurrent reads, few beside the server's 100."""


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers and processes; writers take the lock up front.

    pysqlite's own transaction handling is switched off so that a write transaction can
    start with ``BEGIN IMMEDIATE``: it then waits for the write lock instead of failing
    with "database is locked" when it upgrades from a read half-way through.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("vpsd_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One engine, and the two kinds of session services use: read and write."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            # A file on the same host cannot drop the connection: no ping (a SELECT 1 per
            # checkout, about a tenth of a short read's time).
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            # Keep a connection per concurrent request thread (anyio runs up to 40): an
            # overflow connection is opened and closed per request, and opening one costs
            # the PRAGMAs below, about as much as the request itself.
            kwargs.update(pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._compiled: dict[TextClause, tuple[str, tuple[str, ...] | None]] = {}
        self._local = threading.local()
        self._kept: list[Any] = []
        self._kept_lock = threading.Lock()
        dbapi = self.engine.dialect.dbapi
        self._disconnects: tuple[type[Exception], ...] = (
            (dbapi.OperationalError, dbapi.InterfaceError) if dbapi is not None else ()
        )
        self._async_reads: AsyncReadPool | None = None
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(vpsd_write=True), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite database."""
        return self.url.startswith("sqlite")

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; whatever it did is rolled back at the end."""
        with self._read() as session:
            yield session

    def fetch(self, *queries: tuple[TextClause, Mapping[str, Any]]) -> list[list[Sequence[Any]]]:
        """Run read-only ``queries`` (one snapshot of the database: a transaction when there
        are several) on this thread's own DB-API connection; each one's rows, as tuples.

        The hot reads' path: a statement compiled once per dialect, no ``Connection`` or
        ``Result`` objects, no type processing (a ``text()`` statement has none anyway), no
        pool checkout, no ``BEGIN`` for a single statement. About a tenth of
        ``Connection.execute``'s time here. A PostgreSQL connection found broken (a server
        restart) is replaced and the queries run again, once: reads can be.
        """
        try:
            return self._fetch(self._thread_connection(), queries)
        except self._disconnects:
            if self.is_sqlite:
                raise
            self._drop_thread_connection()
            return self._fetch(self._thread_connection(), queries)

    async def afetch(
        self, *queries: tuple[TextClause, Mapping[str, Any]]
    ) -> list[list[Sequence[Any]]]:
        """``fetch`` for async code: on PostgreSQL the round trips are awaited on a pool of
        async connections (``open_async_reads``), so concurrent requests' queries overlap
        instead of each one holding the event loop. SQLite runs in this process and has no
        round trip to await: its queries run at once, as ``fetch``'s. Without a pool for the
        running loop (an app not started through its lifespan) it is ``fetch``.
        """
        reads = self._async_reads
        if reads is None or not reads.serves_running_loop():
            return self.fetch(*queries)
        return await reads.fetch([(*self._driver_sql(s), p) for s, p in queries])

    async def open_async_reads(self) -> None:
        """Start ``afetch``'s pool of PostgreSQL connections on the running event loop
        (nothing on SQLite). Close it with ``close_async_reads`` on the same loop."""
        if self.is_sqlite or self._async_reads is not None:
            return
        conninfo = make_url(self.url).set(drivername="postgresql")
        reads = AsyncReadPool(conninfo.render_as_string(hide_password=False))
        await reads.open()
        self._async_reads = reads

    async def close_async_reads(self) -> None:
        """Close ``afetch``'s pool; reads fall back to ``fetch``."""
        reads, self._async_reads = self._async_reads, None
        if reads is not None:
            await reads.close()

    def _fetch(
        self, raw: Any, queries: tuple[tuple[TextClause, Mapping[str, Any]], ...]
    ) -> list[list[Sequence[Any]]]:
        cursor = raw.cursor()
        several = len(queries) > 1
        try:
            if several:
                cursor.execute("BEGIN")
            results: list[list[Sequence[Any]]] = []
            for statement, params in queries:
                sql, names = self._driver_sql(statement)
                cursor.execute(sql, [params[n] for n in names] if names else params)
                results.append(list(cursor.fetchall()))
            return results
        finally:
            if several:
                cursor.execute("ROLLBACK")
            cursor.close()

    def _thread_connection(self) -> Any:
        """This thread's own connection for ``fetch``, in autocommit mode, taken from the
        pool once and kept: a checkout (with PostgreSQL's ping) and return cost more than
        the query itself."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            raw = self.engine.raw_connection()
            if not self.is_sqlite:  # SQLite's already is (see _configure_sqlite)
                connection: Any = raw.dbapi_connection
                connection.autocommit = True
            self._local.raw = raw
            with self._kept_lock:
                self._kept.append(raw)
        return raw

    def _drop_thread_connection(self) -> None:
        raw = self._local.raw
        self._local.raw = None
        with self._kept_lock:
            if raw in self._kept:
                self._kept.remove(raw)
        raw.invalidate()  # closed, never handed out again

    def _driver_sql(self, statement: TextClause) -> tuple[str, tuple[str, ...] | None]:
        """The statement as this database's driver takes it, and the order of its
        parameters when they are positional (SQLite's ``?``)."""
        found = self._compiled.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            names = tuple(compiled.positiontup) if compiled.positiontup else None
            found = self._compiled[statement] = (compiled.string, names)
        return found

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction, committed when the block ends and rolled back on error.

        Lock the rows a rule depends on (``with_for_update``) before reading them: that
        serializes writers on PostgreSQL, and SQLite's ``BEGIN IMMEDIATE`` already has.
        """
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection, and the ones threads kept for ``fetch``."""
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for raw in kept:
            raw.close()
        self._local = threading.local()
        self.engine.dispose()


class AsyncReadPool:
    """psycopg's async pool of autocommit connections for ``Database.afetch``, bound to the
    event loop that opened it."""

    def __init__(self, conninfo: str) -> None:
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo,
            min_size=2,
            max_size=ASYNC_READ_POOL_SIZE,
            kwargs={"autocommit": True},
            open=False,
            name="vpsd-reads",
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Connect, on the running loop (the first connections in the background)."""
        self._loop = asyncio.get_running_loop()
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        await self._pool.close()

    def serves_running_loop(self) -> bool:
        """True when called on the loop that opened the pool (its connections' loop)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def fetch(
        self, queries: list[tuple[str, tuple[str, ...] | None, Mapping[str, Any]]]
    ) -> list[list[Sequence[Any]]]:
        """Run compiled ``queries`` as ``Database.fetch`` does. A connection found broken (a
        server restart) is dropped with every other broken one, and the reads run again."""
        try:
            return await self._run(queries)
        except (OperationalError, InterfaceError):
            await self._pool.check()  # drops the idle connections the restart broke too
            return await self._run(queries)

    async def _run(
        self, queries: list[tuple[str, tuple[str, ...] | None, Mapping[str, Any]]]
    ) -> list[list[Sequence[Any]]]:
        async with self._pool.connection() as connection:
            several = len(queries) > 1
            results: list[list[Sequence[Any]]] = []
            cursor = connection.cursor()
            try:
                if several:
                    await cursor.execute("BEGIN")
                for sql, names, params in queries:
                    await cursor.execute(sql, [params[n] for n in names] if names else params)
                    results.append(await cursor.fetchall())
            finally:
                if several:
                    await cursor.execute("ROLLBACK")
                await cursor.close()
            return results
