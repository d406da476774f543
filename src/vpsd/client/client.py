"""``Client``: the vpsd API over httpx, with typed errors, paging and waits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

from vpsd import __version__
from vpsd.client.changes import ChangesApi
from vpsd.client.errors import ApiError, ConnectionFailed, NotFoundError, OperationFailed, api_error
from vpsd.client.resources import BackupsApi, ImagesApi, ServersApi, SnapshotsApi, SshKeysApi
from vpsd.client.waiting import poll
from vpsd.schemas import BackupOut, ServerOut, ServerStatusName, SnapshotOut

API_PREFIX = "/api/v1"
MAX_PAGES = 10_000
"""A bound on link following, should a server ever answer with a ``next`` loop."""
SETTLED_SERVER = frozenset({"running", "stopped"})


def normalize_base_url(base_url: str) -> str:
    """``http://host:port`` without a trailing slash or ``/api/v1``; ValueError if unusable."""
    url = base_url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ValueError(f"invalid API URL {base_url!r}: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid API URL {base_url!r}: expected http(s)://host[:port]")
    return url


class Client:
    """An authenticated client of one vpsd API (``base_url`` like ``http://127.0.0.1:8000``).

    ``timeout`` bounds each HTTP request; ``poll_interval`` is the pause between polls of a
    wait. Use it as a context manager, or call ``close()``. ``transport`` is for tests
    (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        poll_interval: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.poll_interval = poll_interval
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX + "/",
            timeout=timeout,
            transport=transport,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": user_agent or f"vpsd-client/{__version__}",
            },
        )
        self.servers = ServersApi(self)
        self.snapshots = SnapshotsApi(self)
        self.backups = BackupsApi(self)
        self.ssh_keys = SshKeysApi(self)
        self.images = ImagesApi(self)
        self.changes = ChangesApi(self)

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"  # never the token

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections; the client cannot be used afterwards."""
        self._http.close()

    # --- HTTP ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one request to ``/api/v1/<path>``; return the decoded JSON body (None if empty).

        Error statuses raise ``ApiError`` subclasses; network trouble raises
        ``ConnectionFailed`` naming the URL.
        """
        response = self._send(method, path, params=params, json=json)
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                if response.is_success:
                    raise ApiError(
                        response.status_code,
                        f"the answer from {self.base_url} is not JSON; is it a vpsd API?",
                    ) from None
        if not response.is_success:
            raise api_error(response.status_code, body, response.text)
        return body

    def request_text(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None
    ) -> str:
        """Like ``request``, for endpoints that answer plain text (the console): the body
        decoded as text (undecodable bytes replaced). Errors are raised as by ``request``."""
        response = self._send(method, path, params=params, accept="text/plain, application/json")
        if not response.is_success:
            body: Any = None
            with contextlib.suppress(ValueError):
                body = response.json()
            raise api_error(response.status_code, body, response.text)
        return response.content.decode(response.encoding or "utf-8", errors="replace")

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        accept: str | None = None,
    ) -> httpx.Response:
        """Send one request; network trouble raises ``ConnectionFailed`` naming the URL."""
        headers = {"Accept": accept} if accept is not None else None
        try:
            return self._http.request(method, path, params=params, json=json, headers=headers)
        except httpx.TimeoutException:
            timeout = self._http.timeout.read
            raise ConnectionFailed(self.base_url, f"no answer within {timeout:g} s") from None
        except httpx.TransportError as error:
            raise ConnectionFailed(self.base_url, str(error) or type(error).__name__) from None

    def list_all(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Fetch a list and every page its ``next`` links lead to, merged into one body.

        With a single page the body is returned unchanged. Links are followed on this
        client's own base URL (only their query is used), so the token never leaves it.
        """
        body: dict[str, Any] = self.request("GET", path, params=params)
        results: list[Any] = list(body.get("results", []))
        seen = {item.get("id") for item in results if isinstance(item, dict)}
        page, next_url = body, body.get("next")
        for _ in range(MAX_PAGES):
            if not next_url:
                break
            page = self.request("GET", path, params=httpx.URL(next_url).params)
            fresh = [
                item
                for item in page.get("results", [])
                # new objects push older ones onto the next page: skip what we already have
                if not (isinstance(item, dict) and item.get("id") in seen)
            ]
            if not page.get("results"):
                break
            results += fresh
            seen.update(item.get("id") for item in fresh if isinstance(item, dict))
            next_url = page.get("next")
        if page is body:
            return body
        return {**body, "count": page.get("count"), "next": None, "results": results}

    # --- waits -----------------------------------------------------------------------------

    def wait_for_snapshot(
        self,
        snapshot_id: int,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[SnapshotOut], None] | None = None,
    ) -> SnapshotOut:
        """Poll until the snapshot is ``completed`` and return it.

        Raises ``OperationFailed`` (with ``status_reason``) if it ``failed``, ``WaitTimeout``
        after ``timeout`` seconds, ``NotFoundError`` if it was deleted meanwhile.
        """
        return self.snapshots.wait_completed(snapshot_id, timeout=timeout, on_progress=on_progress)

    def wait_for_backup(
        self,
        backup_id: int,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[BackupOut], None] | None = None,
    ) -> BackupOut:
        """Poll until the backup is ``completed`` and return it; fails as
        ``wait_for_snapshot`` does."""
        return self.backups.wait_completed(backup_id, timeout=timeout, on_progress=on_progress)

    def wait_for_server(
        self,
        server_id: int,
        status: ServerStatusName,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[ServerOut], None] | None = None,
    ) -> ServerOut:
        """Poll until the server has ``status`` and return it.

        Every other status but ``error`` is taken as work in progress (``starting``,
        ``stopping``, ``rebooting``, ``restoring``...): a reboot's ``rebooting`` is waited
        through to ``running``. Fails fast with ``OperationFailed`` (carrying
        ``status_reason``) when the server lands in ``error`` instead; ``WaitTimeout`` after
        ``timeout`` seconds.
        """
        return poll(
            lambda: self.servers.get(server_id),
            lambda server: _server_reached(server, lambda s: s == status),
            what=f"server {server_id} to be {status}",
            timeout=timeout,
            interval=self.poll_interval,
            on_progress=on_progress,
        )

    def wait_for_restore(
        self,
        server_id: int,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[ServerOut], None] | None = None,
    ) -> ServerOut:
        """Poll a server being restored until it is back ``running`` or ``stopped`` (its power
        state before the restore); ``OperationFailed`` if the restore put it in ``error``."""
        return poll(
            lambda: self.servers.get(server_id),
            lambda server: _server_reached(server, SETTLED_SERVER.__contains__),
            what=f"server {server_id} to be restored",
            timeout=timeout,
            interval=self.poll_interval,
            on_progress=on_progress,
        )

    def wait_for_server_deleted(
        self,
        server_id: int,
        *,
        timeout: float = 300.0,
        on_progress: Callable[[ServerOut | None], None] | None = None,
    ) -> None:
        """Poll until the server is gone (404); ``OperationFailed`` if deletion ends in
        ``error``, ``WaitTimeout`` after ``timeout`` seconds."""

        def fetch() -> ServerOut | None:
            try:
                return self.servers.get(server_id)
            except NotFoundError:
                return None

        poll(
            fetch,
            lambda server: server is None or _server_reached(server, lambda s: False),
            what=f"server {server_id} to be deleted",
            timeout=timeout,
            interval=self.poll_interval,
            on_progress=on_progress,
            status_of=lambda server: server.status if server else "deleted",
        )


def _server_reached(server: ServerOut, wanted: Callable[[str], bool]) -> bool:
    if wanted(server.status):
        return True
    if server.status == "error":
        raise OperationFailed(f"server {server.id} ({server.name})", server.status_reason, server)
    return False
