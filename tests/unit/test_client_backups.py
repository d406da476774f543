"""The SDK's backups, backup policies and servers made from a snapshot or a backup, against
``httpx.MockTransport``: the requests sent, the models returned, the waits. No server needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from vpsd.client import (
    BackupCreated,
    BackupOut,
    BackupPolicyOut,
    BackupRestoreStarted,
    BadRequestError,
    Client,
    NotFoundError,
    OperationFailed,
    WaitTimeout,
)
from vpsd.schemas import BackupSource, SnapshotSource

BASE = "http://vpsd.test:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def _backup(backup_id: int, status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {
        "id": backup_id, "server": {"id": 1, "name": "web-1"}, "name": f"b{backup_id}",
        "type": "manual", "status": status, "size_mb": 1800, "stored_mb": 312,
        "created_at": "2025-01-15T18:30:00Z", "description": None, "status_reason": None,
        "consistency": "filesystem", "completed_at": "2025-01-15T18:31:00Z", **fields,
    }  # fmt: skip


def _server(server_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": server_id, "name": f"web-{server_id}", "status": "starting", "status_reason": None,
        "memory_mb": 256, "vcpus": 1, "disk_gb": 4, "image": "debian-12", "ssh": None,
        "source": None, "created_at": "2025-01-15T18:30:00Z", **fields,
    }  # fmt: skip


def _client(handler: Handler, **kwargs: Any) -> Client:
    return Client(BASE, "secret-token", transport=httpx.MockTransport(handler), **kwargs)


def _recording(
    answer: Callable[[httpx.Request], httpx.Response],
) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return seen, handler


def test_list_filters_by_server_and_follows_pages() -> None:
    pages = {"1": ([_backup(3), _backup(2)], "2"), "2": ([_backup(1)], None)}

    def answer(request: httpx.Request) -> httpx.Response:
        results, following = pages[request.url.params.get("page", "1")]
        link = f"{BASE}/api/v1/backups/?server_id=1&page={following}"
        return httpx.Response(
            200, json={"count": 3, "next": link if following else None, "results": results}
        )

    seen, handler = _recording(answer)
    with _client(handler) as client:
        backups = client.backups.list(server_id=1)
        merged = client.backups.list_json(1)
    assert [b.id for b in backups] == [3, 2, 1]
    assert all(isinstance(b, BackupOut) for b in backups)
    assert merged["count"] == 3 and merged["next"] is None and len(merged["results"]) == 3
    assert {r.url.path for r in seen} == {"/api/v1/backups/"}
    assert {r.url.params["server_id"] for r in seen} == {"1"}


def test_list_without_a_server_and_one_page() -> None:
    body = {"count": 1, "next": None, "previous": None, "results": [_backup(1)]}
    seen, handler = _recording(lambda _: httpx.Response(200, json=body))
    with _client(handler) as client:
        assert client.backups.list_json() == body
        page = client.backups.list_page(page=2, page_size=5)
        client.backups.list_page(7)
    assert page.count == 1 and page.results[0].stored_mb == 312
    assert [dict(r.url.params) for r in seen] == [
        {},
        {"page": "2", "page_size": "5"},
        {"server_id": "7", "page": "1", "page_size": "100"},
    ]


def test_get_create_restore_delete_hit_their_endpoints() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path.endswith("/restore/"):
            return httpx.Response(
                200,
                json={
                    "status": "success", "message": "Server is being restored from backup.",
                    "backup": {"id": 3, "name": "b3", "created_at": "2025-01-15T18:30:00Z"},
                    "server": {"id": 1, "name": "web-1", "status": "restoring"},
                },
            )  # fmt: skip
        if request.method == "POST":
            return httpx.Response(
                201, json={**_backup(3, "in_progress", size_mb=None), "message": "taking"}
            )
        return httpx.Response(200, json=_backup(3))

    seen, handler = _recording(answer)
    with _client(handler) as client:
        assert client.backups.get(3).type == "manual"
        created = client.backups.create(1, "weekly", description="offsite")
        client.backups.create(1, "plain")
        restored = client.backups.restore(3)
        assert client.backups.delete(3) is None
    assert isinstance(created, BackupCreated) and created.message == "taking"
    assert created.size_mb is None
    assert isinstance(restored, BackupRestoreStarted)
    assert restored.backup.id == 3 and restored.server.status == "restoring"
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/api/v1/backups/3/"),
        ("POST", "/api/v1/backups/"),
        ("POST", "/api/v1/backups/"),
        ("POST", "/api/v1/backups/3/restore/"),
        ("DELETE", "/api/v1/backups/3/"),
    ]
    assert [json.loads(r.content) for r in seen if r.url.path == "/api/v1/backups/"] == [
        {"server_id": 1, "name": "weekly", "description": "offsite"},
        {"server_id": 1, "name": "plain"},
    ]


def test_the_backup_limit_is_a_bad_request() -> None:
    body = {"detail": "backup limit reached: at most 10 manual backups per server", "errors": []}
    with (
        _client(lambda _: httpx.Response(400, json=body)) as client,
        pytest.raises(BadRequestError, match="at most 10 manual backups"),
    ):
        client.backups.create(1, "one-more")


def test_wait_for_backup_reports_progress_and_returns_completed() -> None:
    statuses = iter(["in_progress", "in_progress", "completed"])
    seen: list[str] = []

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_backup(9, next(statuses)))

    with _client(handler, poll_interval=0) as client:
        done = client.wait_for_backup(9, on_progress=lambda b: seen.append(b.status))
    assert done.status == "completed" and isinstance(done, BackupOut)
    assert seen == ["in_progress", "in_progress", "completed"]


def test_wait_for_a_failed_backup_raises_with_its_reason() -> None:
    failed = _backup(9, "failed", status_reason="backup storage unreachable")
    with (
        _client(lambda _: httpx.Response(200, json=failed), poll_interval=0) as client,
        pytest.raises(OperationFailed) as caught,
    ):
        client.wait_for_backup(9)
    assert caught.value.status_reason == "backup storage unreachable"
    assert str(caught.value) == "backup 9 (b9) failed: backup storage unreachable"


def test_wait_for_backup_times_out_and_notices_deletion() -> None:
    running = _backup(9, "in_progress")
    with (
        _client(lambda _: httpx.Response(200, json=running), poll_interval=0.01) as client,
        pytest.raises(WaitTimeout) as caught,
    ):
        client.wait_for_backup(9, timeout=0.05)
    assert caught.value.last_status == "in_progress" and "backup 9" in str(caught.value)

    gone = httpx.Response(404, json={"detail": "backup not found"})
    with _client(lambda _: gone) as client, pytest.raises(NotFoundError):
        client.wait_for_backup(9)


def test_snapshot_waits_still_say_snapshot() -> None:
    failed = {
        "id": 4, "server": {"id": 1, "name": "web-1"}, "name": "snap", "status": "failed",
        "size_mb": None, "created_at": "2025-01-15T18:30:00Z", "description": None,
        "status_reason": "disk full",
    }  # fmt: skip
    with (
        _client(lambda _: httpx.Response(200, json=failed), poll_interval=0) as client,
        pytest.raises(OperationFailed, match=r"^snapshot 4 \(snap\) failed: disk full$"),
    ):
        client.wait_for_snapshot(4)


def test_backup_policy_get_and_set() -> None:
    policy = {
        "enabled": True, "frequency": "weekly", "hour": 4, "weekday": 5, "keep": 14,
        "next_backup_at": "2025-01-18T04:00:00Z",
    }  # fmt: skip
    seen, handler = _recording(lambda _: httpx.Response(200, json=policy))
    with _client(handler) as client:
        got = client.servers.get_backup_policy(7)
        put = client.servers.set_backup_policy(
            7, enabled=True, frequency="weekly", hour=4, weekday=5, keep=14
        )
        client.servers.set_backup_policy(7, enabled=False)
        assert client.servers.get_backup_policy_json(7) == policy
    assert isinstance(got, BackupPolicyOut) and got == put
    assert got.next_backup_at is not None and got.next_backup_at.hour == 4
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/api/v1/servers/7/backup-policy/"),
        ("PUT", "/api/v1/servers/7/backup-policy/"),
        ("PUT", "/api/v1/servers/7/backup-policy/"),
        ("GET", "/api/v1/servers/7/backup-policy/"),
    ]
    assert [json.loads(r.content) for r in seen if r.method == "PUT"] == [
        {"enabled": True, "frequency": "weekly", "hour": 4, "weekday": 5, "keep": 14},
        {"enabled": False},  # left out: the API's defaults
    ]


def test_servers_create_from_a_snapshot_or_a_backup() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        source = {k: v for k, v in sent.items() if k in ("snapshot_id", "backup_id")} or None
        return httpx.Response(201, json=_server(5, source=source))

    seen, handler = _recording(answer)
    with _client(handler) as client:
        from_snapshot = client.servers.create("clone", 4, snapshot_id=7)
        from_backup = client.servers.create("clone", 4, backup_id=3)
        from_image = client.servers.create("fresh", 4, image="debian-12")
    assert [json.loads(r.content) for r in seen] == [
        {"name": "clone", "disk_gb": 4, "snapshot_id": 7},
        {"name": "clone", "disk_gb": 4, "backup_id": 3},
        {"name": "fresh", "disk_gb": 4, "image": "debian-12"},
    ]
    assert from_snapshot.source == SnapshotSource(snapshot_id=7)
    assert from_backup.source == BackupSource(backup_id=3)
    assert from_image.source is None


def test_a_server_without_source_in_its_body_still_parses() -> None:
    """Servers as older services answer them, without ``source``."""
    body = _server(5)
    del body["source"]
    with _client(lambda _: httpx.Response(200, json=body)) as client:
        assert client.servers.get(5).source is None
