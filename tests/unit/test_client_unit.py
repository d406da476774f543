"""The SDK against ``httpx.MockTransport``: paging, error mapping, waits. No server needed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from vpsd.client import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    Client,
    ConnectionFailed,
    NotFoundError,
    OperationFailed,
    WaitTimeout,
)

BASE = "http://vpsd.test:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def _server(server_id: int, status: str = "running", reason: str | None = None) -> dict[str, Any]:
    return {
        "id": server_id, "name": f"web-{server_id}", "status": status, "status_reason": reason,
        "memory_mb": 256, "vcpus": 1, "disk_gb": 1, "image": "blank", "ssh": None,
        "created_at": "2025-01-15T18:30:00Z",
    }  # fmt: skip


def _snapshot(snapshot_id: int, status: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "id": snapshot_id, "server": {"id": 1, "name": "web-1"}, "name": "snap",
        "status": status, "size_mb": None, "created_at": "2025-01-15T18:30:00Z",
        "description": None, "status_reason": reason,
    }  # fmt: skip


def _client(handler: Handler, **kwargs: Any) -> Client:
    return Client(BASE, "secret-token", transport=httpx.MockTransport(handler), **kwargs)


def test_importing_the_sdk_pulls_in_no_server_code() -> None:
    code = (
        "import sys, vpsd.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'fastapi')"
        " or m.startswith(('vpsd.api', 'vpsd.services', 'vpsd.db', 'vpsd.operations',"
        " 'vpsd.hypervisor'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_requests_carry_the_token_under_api_v1() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_server(7))

    with _client(handler) as client:
        assert client.servers.get(7).name == "web-7"
        assert "secret-token" not in repr(client)
    assert str(seen[0].url) == f"{BASE}/api/v1/servers/7/"
    assert seen[0].headers["Authorization"] == "Bearer secret-token"


@pytest.mark.parametrize("given", [BASE, f"{BASE}/", f"{BASE}/api/v1", f"{BASE}/api/v1/"])
def test_base_url_may_include_the_api_prefix(given: str) -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200, json={"count": 0, "results": []})

    with Client(given, "t", transport=httpx.MockTransport(handler)) as client:
        client.servers.list()
    assert urls == [f"{BASE}/api/v1/servers/"]


def test_unusable_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid API URL"):
        Client("127.0.0.1:8000", "t")


def test_list_follows_next_links_on_its_own_host() -> None:
    """Three pages; the server's links name another host, which must never get the token."""
    pages = {
        "1": ([_snapshot(5, "completed"), _snapshot(4, "completed")], "2"),
        "2": ([_snapshot(3, "completed"), _snapshot(2, "completed")], "3"),
        "3": ([_snapshot(1, "completed")], None),
    }
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        assert request.url.params["server_id"] == "1"
        results, following = pages[request.url.params.get("page", "1")]
        link = f"http://elsewhere.example/api/v1/snapshots/?server_id=1&page={following}"
        return httpx.Response(
            200, json={"count": 5, "next": link if following else None, "results": results}
        )

    with _client(handler) as client:
        snapshots = client.snapshots.list(server_id=1)
        merged = client.snapshots.list_json(server_id=1)
    assert [s.id for s in snapshots] == [5, 4, 3, 2, 1]
    assert merged["count"] == 5 and merged["next"] is None and len(merged["results"]) == 5
    assert set(hosts) == {"vpsd.test"}


def test_single_page_list_json_is_the_body_unchanged() -> None:
    body = {"count": 1, "next": None, "previous": None, "results": [_server(1)], "extra": 1}

    with _client(lambda _: httpx.Response(200, json=body)) as client:
        assert client.servers.list_json() == body


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (404, NotFoundError), (500, ApiError)],
)
def test_error_statuses_raise_typed_errors(status: int, cls: type[ApiError]) -> None:
    body = {"detail": "invalid parameters", "errors": [{"field": "body.name", "message": "bad"}]}

    with (
        _client(lambda _: httpx.Response(status, json=body)) as client,
        pytest.raises(cls) as caught,
    ):
        client.servers.create("x y", disk_gb=1)
    assert type(caught.value) is cls
    assert caught.value.status == status
    assert caught.value.errors[0].field == "body.name"
    assert str(caught.value) == "invalid parameters (body.name: bad)"


def test_error_without_the_api_shape_still_says_what_happened() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with _client(handler) as client, pytest.raises(ApiError, match="HTTP 502: <html>Bad"):
        client.snapshots.get(1)


def test_connection_problems_name_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with _client(handler) as client, pytest.raises(ConnectionFailed) as caught:
        client.servers.list()
    assert str(caught.value) == f"cannot connect to {BASE}: Connection refused"


def test_wait_for_snapshot_reports_progress_and_returns_completed() -> None:
    statuses = iter(["in_progress", "in_progress", "completed"])
    seen: list[str] = []

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_snapshot(9, next(statuses)))

    with _client(handler, poll_interval=0) as client:
        done = client.wait_for_snapshot(9, on_progress=lambda s: seen.append(s.status))
    assert done.status == "completed"
    assert seen == ["in_progress", "in_progress", "completed"]


def test_wait_for_failed_snapshot_raises_with_its_reason() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_snapshot(9, "failed", "qemu-img: not a qcow2 image"))

    with _client(handler, poll_interval=0) as client, pytest.raises(OperationFailed) as caught:
        client.wait_for_snapshot(9)
    assert caught.value.status_reason == "qemu-img: not a qcow2 image"
    assert "not a qcow2 image" in str(caught.value)


def test_wait_times_out_with_the_last_status() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_server(3, "stopping"))

    with _client(handler, poll_interval=0.01) as client, pytest.raises(WaitTimeout) as caught:
        client.wait_for_server(3, "stopped", timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.last_status == "stopping"


def test_wait_for_server_fails_fast_on_error() -> None:
    calls = 0

    def handler(_: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=_server(3, "error", "qemu exited: no such file"))

    with _client(handler) as client, pytest.raises(OperationFailed) as caught:
        client.wait_for_server(3, "running", timeout=60)
    assert caught.value.status_reason == "qemu exited: no such file"
    assert calls == 1


def test_wait_for_server_deleted_ends_on_404() -> None:
    answers = iter([httpx.Response(200, json=_server(3, "deleting"))])

    def handler(_: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(404, json={"detail": "server not found"}))

    with _client(handler, poll_interval=0) as client:
        client.wait_for_server_deleted(3)


def test_create_sends_only_given_fields() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={**_snapshot(1, "in_progress"), "message": "taking"})

    with _client(handler) as client:
        created = client.snapshots.create(1, "snap")
    assert bodies == [{"server_id": 1, "name": "snap"}]
    assert created.message == "taking"


def test_create_sends_image_and_ssh_keys_only_when_given() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        server = {**_server(1, "starting"), "image": "debian-12"}
        return httpx.Response(201, json={**server, "ssh": {"host": "127.0.0.1", "port": 22013}})

    with _client(handler) as client:
        created = client.servers.create("web-1", 2, image="debian-12", ssh_keys=[4, 5])
        client.servers.create("web-2", 1)
    assert bodies == [
        {"name": "web-1", "disk_gb": 2, "image": "debian-12", "ssh_keys": [4, 5]},
        {"name": "web-2", "disk_gb": 1},
    ]
    assert created.image == "debian-12"
    assert created.ssh is not None and (created.ssh.host, created.ssh.port) == ("127.0.0.1", 22013)


def test_reboot_posts_to_the_reboot_endpoint() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_server(3, "rebooting"))

    with _client(handler) as client:
        assert client.servers.reboot(3).status == "rebooting"
        assert client.servers.reboot_json(3)["status"] == "rebooting"
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/api/v1/servers/3/reboot/")] * 2


def test_wait_for_running_waits_through_rebooting() -> None:
    statuses = iter(["rebooting", "rebooting", "running"])
    seen: list[str] = []

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_server(3, next(statuses)))

    with _client(handler, poll_interval=0) as client:
        done = client.wait_for_server(3, "running", on_progress=lambda s: seen.append(s.status))
    assert done.status == "running"
    assert seen == ["rebooting", "rebooting", "running"]


def test_console_returns_the_plain_text() -> None:
    seen: list[httpx.Request] = []
    tail = "[    0.000000] Linux version 6.1\nDebian GNU/Linux 12 web-1 ttyS0\n\nweb-1 login: "

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=tail, headers={"content-type": "text/plain"})

    with _client(handler) as client:
        assert client.servers.console(3) == tail
        assert client.servers.console(3, max_bytes=100) == tail
    assert seen[0].url.path == "/api/v1/servers/3/console/"
    assert [r.url.params["bytes"] for r in seen] == ["65536", "100"]


def test_console_errors_are_typed() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "server not found"})

    with _client(handler) as client, pytest.raises(NotFoundError, match="server not found"):
        client.servers.console(3)


def test_images_list() -> None:
    image = {
        "id": 1, "slug": "debian-12", "name": "Debian 12", "os": "debian", "size_mb": 295,
        "min_disk_gb": 2, "min_memory_mb": 192, "status": "available",
    }  # fmt: skip
    body = {"count": 1, "next": None, "previous": None, "results": [image]}
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json=body)

    with _client(handler) as client:
        images = client.images.list()
        assert client.images.list_json() == body
        assert client.images.list_page(page_size=1).count == 1
    assert [(i.slug, i.min_disk_gb, i.min_memory_mb) for i in images] == [("debian-12", 2, 192)]
    assert set(paths) == {"/api/v1/images/"}
