"""The lean twin of vpsd's snapshot reads: what one Python process can do for the same work.

A raw ASGI app (no framework) for uvicorn with uvloop and httptools, serving
``GET /api/v1/snapshots/``, ``GET /api/v1/snapshots/?server_id=N`` and
``GET /api/v1/snapshots/{id}/`` from vpsd's own database (SQLite with the stdlib ``sqlite3``,
PostgreSQL with psycopg 3), with the very SQL statements vpsd issues (imported from
``vpsd.services.snapshots``: the tenancy filter, the visible statuses, ORDER BY/LIMIT/OFFSET
and the count query), the same token check (SHA-256 of the bearer token, looked up joined
to its account, live tokens cached for ``VPSD_TOKEN_CACHE_SECONDS``, 2 s by default) and
byte-identical bodies (tests/bench/test_twin.py holds it to that), rendered with orjson.

It caches no response: every request runs its queries. It only answers what the benchmark
and the test ask; anything else (other methods, routes, malformed parameters) gets a plain
error, not vpsd's exact one.

Run: ``python -m bench.twin --database-url URL [--host 127.0.0.1] [--port 8001]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from vpsd.services import snapshots as snapshot_reads

PREFIX = "/api/v1/snapshots/"
TOKEN_PREFIX = "vpsd_"  # a marker, not a secret
MAX_ID = 2**63 - 1
MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 1000
TOKEN_CACHE_ENTRIES = 10_000
_PATH_SAFE = "/:@!$&'()*+,;=-._~"  # as vpsd.api.pagination

# The statements vpsd sends: its own, imported, so the two can never drift apart.
SQL = {
    "count": snapshot_reads.LIST_COUNT_SQL.text,
    "list": snapshot_reads.LIST_SQL.text,
    "count_server": snapshot_reads.SERVER_COUNT_SQL.text,
    "list_server": snapshot_reads.SERVER_LIST_SQL.text,
    "counted_list": snapshot_reads.COUNTED_LIST_SQL.text,
    "counted_list_server": snapshot_reads.COUNTED_SERVER_LIST_SQL.text,
    "get": snapshot_reads.GET_SQL.text,
    "token": "SELECT api_tokens.token_hash, api_tokens.revoked_at, accounts.id, accounts.name "
    "FROM api_tokens JOIN accounts ON accounts.id = api_tokens.account_id "
    "WHERE api_tokens.token_hash = :digest",
}

Row = tuple[Any, ...]


def api_time(value: Any) -> str:
    """A stored time as vpsd shows it, ``2025-01-15T18:30:00Z`` (UTC, whole seconds).

    SQLite keeps SQLAlchemy's text ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (UTC), PostgreSQL a naive
    UTC timestamp; integer epoch seconds are accepted too, should vpsd store those.
    """
    if isinstance(value, str):
        return f"{value[:10]}T{value[11:19]}Z"
    if isinstance(value, int):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


class SqliteStore:
    """One stdlib connection in autocommit mode, as vpsd's engine configures its own."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3_connect(path)

    async def token(self, digest: str) -> Row | None:
        row: Row | None = self.conn.execute(SQL["token"], {"digest": digest}).fetchone()
        return row

    async def page(
        self, account: int, server: int | None, limit: int, offset: int
    ) -> tuple[int, list[Row]]:
        # As vpsd on SQLite: the count and the page in one read transaction.
        conn = self.conn
        args: dict[str, Any] = {"account": account}
        if server is not None:
            args["server"] = server
        mine = server is None
        conn.execute("BEGIN")
        try:
            count = conn.execute(SQL["count" if mine else "count_server"], args).fetchone()[0]
            page = {**args, "limit": limit, "offset": offset}
            rows = conn.execute(SQL["list" if mine else "list_server"], page).fetchall()
        finally:
            conn.execute("ROLLBACK")
        return count, rows

    async def get(self, account: int, snapshot: int) -> Row | None:
        args = {"account": account, "snapshot": snapshot}
        row: Row | None = self.conn.execute(SQL["get"], args).fetchone()
        return row

    async def close(self) -> None:
        self.conn.close()


def sqlite3_connect(path: str) -> Any:
    """A connection with vpsd's PRAGMAs (``vpsd.db.session._configure_sqlite``)."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    for pragma in (
        "busy_timeout = 30000",
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "foreign_keys = ON",
    ):
        conn.execute(f"PRAGMA {pragma}")
    return conn


class PostgresStore:
    """A small pool of psycopg 3 async connections in autocommit mode, as vpsd's hot reads
    use: each read is one statement (and so one snapshot)."""

    def __init__(self, url: str, size: int = 10) -> None:
        self.url = url
        self.size = size
        self.pool: asyncio.Queue[Any] = asyncio.Queue()
        self.sql = {key: re.sub(r":(\w+)", r"%(\1)s", sql) for key, sql in SQL.items()}

    async def open(self) -> None:
        import psycopg

        for _ in range(self.size):
            self.pool.put_nowait(await psycopg.AsyncConnection.connect(self.url, autocommit=True))

    async def _run(self, queries: list[tuple[str, dict[str, Any], bool]]) -> list[Any]:
        conn = await self.pool.get()
        try:
            out = []
            for key, args, many in queries:
                cursor = await conn.execute(self.sql[key], args)
                out.append(await cursor.fetchall() if many else await cursor.fetchone())
            return out
        finally:
            self.pool.put_nowait(conn)

    async def token(self, digest: str) -> Row | None:
        row: Row | None = (await self._run([("token", {"digest": digest}, False)]))[0]
        return row

    async def page(
        self, account: int, server: int | None, limit: int, offset: int
    ) -> tuple[int, list[Row]]:
        args: dict[str, Any] = {"account": account}
        if server is not None:
            args["server"] = server
        # As vpsd on PostgreSQL: the rows carry the count (a window), one statement.
        key = "counted_list" if server is None else "counted_list_server"
        [rows] = await self._run([(key, {**args, "limit": limit, "offset": offset}, True)])
        if rows:
            return rows[0][-1], rows
        if offset == 0:
            return 0, rows
        key = "count" if server is None else "count_server"
        [count] = await self._run([(key, args, False)])
        return count[0], rows

    async def get(self, account: int, snapshot: int) -> Row | None:
        args = {"account": account, "snapshot": snapshot}
        row: Row | None = (await self._run([("get", args, False)]))[0]
        return row

    async def close(self) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()


def make_store(database_url: str) -> SqliteStore | PostgresStore:
    """The store for a vpsd database URL (``sqlite:///path`` or ``postgresql[+psycopg]://``)."""
    if database_url.startswith("sqlite:///"):
        return SqliteStore(database_url.removeprefix("sqlite:///"))
    scheme, rest = database_url.split("://", 1)
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError(f"unsupported database URL: {database_url}")
    return PostgresStore(f"postgresql://{rest}")


def snapshot_json(row: Row) -> dict[str, Any]:
    """A row of the snapshot statements as vpsd's ``SnapshotOut``, in its key order."""
    sid, name, status, size_mb, created, description, reason, consistency = row[:8]
    memory, pause_ms, snapshot_type, protected, expires_at, server, sname = row[8:15]
    return {
        "id": sid,
        "server": {"id": server, "name": sname},
        "name": name,
        "status": status,
        "size_mb": size_mb,
        "created_at": api_time(created),
        "description": description,
        "status_reason": reason,
        "consistency": consistency,
        "memory": bool(memory),
        "pause_ms": pause_ms,
        "type": snapshot_type,
        "protected": bool(protected),
        "expires_at": None if expires_at is None else api_time(expires_at),
    }


Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]
UNAUTHORIZED_HEADERS = [*JSON_HEADERS, (b"www-authenticate", b"Bearer")]


class Invalid(Exception):
    """A parameter the twin does not accept (vpsd answers 400 with its own detail)."""


def _digits(value: str, low: int, high: int, field: str) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise Invalid(field)
    return int(value)


class Twin:
    """The ASGI app. ``public_url``: absolute page links, as ``VPSD_PUBLIC_URL``."""

    def __init__(
        self,
        database_url: str,
        public_url: str | None = None,
        token_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database_url = database_url
        self.public_url = public_url.rstrip("/") if public_url else None
        self.token_ttl = token_ttl
        self.clock = clock
        self.store: SqliteStore | PostgresStore | None = None
        self._live: dict[str, tuple[tuple[int, str], float]] = {}

    async def open(self) -> None:
        """Connect to the database (at ASGI start-up)."""
        store = make_store(self.database_url)
        if isinstance(store, PostgresStore):
            await store.open()
        self.store = store

    async def close(self) -> None:
        """Close the connections (at ASGI shutdown)."""
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body, headers = await self._answer(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _answer(self, scope: dict[str, Any]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        if scope["method"] != "GET":
            return _error(405, "Method Not Allowed")
        if path == "/healthz":
            return 200, b'{"status":"ok"}', JSON_HEADERS
        if not path.startswith(PREFIX):
            return _error(404, "Not Found")
        rest = path[len(PREFIX) :]
        if rest and (not rest.endswith("/") or "/" in rest[:-1]):
            return _error(404, "Not Found")
        account = await self._authenticate(scope)
        if isinstance(account, bytes):
            return 401, account, UNAUTHORIZED_HEADERS
        assert self.store is not None
        try:
            if rest:
                snapshot = _digits(rest[:-1], 1, MAX_ID, "path.snapshot_id")
                row = await self.store.get(account, snapshot)
                if row is None:
                    return _error(404, "snapshot not found")
                return 200, orjson.dumps(snapshot_json(row)), JSON_HEADERS
            return await self._list(scope, path, account)
        except Invalid as exc:
            return _error(400, f"invalid parameters: {exc} (the twin does not mirror 400s)")

    async def _list(
        self, scope: dict[str, Any], path: str, account: int
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        assert self.store is not None
        query: str = scope["query_string"].decode("latin-1")
        params = parse_qsl(query, keep_blank_values=True)
        given = dict(params)  # the last value of a repeated name, as FastAPI takes it
        page = _digits(given.get("page", "1"), 1, MAX_PAGE, "query.page")
        size = _digits(given.get("page_size", "100"), 1, MAX_PAGE_SIZE, "query.page_size")
        server = given.get("server_id")
        server_id = None if server is None else _digits(server, 1, MAX_ID, "query.server_id")
        count, rows = await self.store.page(account, server_id, size, (page - 1) * size)
        last = max(1, -(-count // size))
        # vpsd.api.pagination.page_links: Starlette's include_query_params drops every
        # ``page`` and appends the new one; the path is escaped; absolute on a public URL.
        kept = [(key, value) for key, value in params if key != "page"]
        target = "/" + quote(path, safe=_PATH_SAFE).lstrip("/")
        base = f"{self.public_url}{target}" if self.public_url else target

        def link(number: int) -> str:
            encoded = urlencode([*kept, ("page", str(number))])
            return f"{base}?{encoded}" if encoded else base

        body = {
            "count": count,
            "next": link(page + 1) if page < last else None,
            "previous": link(min(page - 1, last)) if page > 1 else None,
            "results": [snapshot_json(row) for row in rows],
        }
        return 200, orjson.dumps(body), JSON_HEADERS

    async def _authenticate(self, scope: dict[str, Any]) -> int | bytes:
        """The token's account id, or the 401 body (vpsd.api.deps.get_principal)."""
        header = None
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, secret = (header or "").partition(" ")
        secret = secret.strip()
        if not (header and scheme and secret) or scheme.lower() != "bearer":
            return _error(401, "authentication required: send 'Authorization: Bearer <token>'")[1]
        account = await self._principal(secret)
        if account is None:
            return _error(401, "invalid or revoked token")[1]
        return account

    async def _principal(self, secret: str) -> int | None:
        """vpsd.services.tokens.TokenAuthenticator: live tokens cached ``token_ttl`` s."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
            return None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = self.clock()
        if self.token_ttl > 0:
            cached = self._live.get(digest)
            if cached is not None and cached[1] > now:
                return cached[0][0]
        assert self.store is not None
        row = await self.store.token(digest)
        if row is None or not hmac.compare_digest(row[0], digest) or row[1]:
            self._live.pop(digest, None)
            return None
        if self.token_ttl > 0:
            if len(self._live) >= TOKEN_CACHE_ENTRIES:
                self._live.clear()
            self._live[digest] = ((row[2], row[3]), now + self.token_ttl)
        account: int = row[2]
        return account


def _error(status: int, detail: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return status, orjson.dumps({"detail": detail, "errors": []}), JSON_HEADERS


def from_environment(database_url: str) -> Twin:
    """A twin configured as ``vpsd serve`` would be by the same environment."""
    ttl = float(os.environ.get("VPSD_TOKEN_CACHE_SECONDS", "2"))
    return Twin(database_url, os.environ.get("VPSD_PUBLIC_URL") or None, ttl)


def main(argv: list[str] | None = None) -> None:
    """Serve the twin with uvicorn, uvloop and httptools."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.twin", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    print(f"twin on http://{args.host}:{args.port} ({started:%H:%M:%S} UTC)", flush=True)
    uvicorn.run(
        from_environment(args.database_url),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
