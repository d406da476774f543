"""Helpers for driving the API from tests: an authenticated client and waiting for states."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

TERMINAL_SNAPSHOT = {"completed", "failed"}


def snapshot_tag(database_url: str, snapshot_id: int) -> str:
    """A snapshot's internal tag on disk, read from the service's database (while the
    snapshot's row exists: look it up before deleting it)."""
    from sqlalchemy import select

    from vpsd.db.models import Snapshot
    from vpsd.db.session import Database

    database = Database(database_url)
    try:
        with database.read() as session:
            tag = session.scalar(select(Snapshot.tag).where(Snapshot.id == snapshot_id))
    finally:
        database.dispose()
    assert tag is not None, f"snapshot {snapshot_id} has no row"
    return tag


def store_key_text(database_url: str, key_id: int, text: str) -> None:
    """Put ``text`` in SSH key ``key_id``'s row as is: a key saved by an earlier vpsd, under
    rules that have since changed (the API would refuse it now)."""
    from sqlalchemy import update

    from vpsd.db.models import SshKey
    from vpsd.db.session import Database

    database = Database(database_url)
    try:
        with database.write() as session:
            session.execute(update(SshKey).where(SshKey.id == key_id).values(public_key=text))
    finally:
        database.dispose()


def write_fake_image(
    images_dir: Path, slug: str = "debian-12", version: str = "000000000000", **manifest: Any
) -> Path:
    """A build folder the app registers at start-up, for the fake driver (its files are
    placeholders: nothing boots them). ``manifest`` overrides fields of its manifest."""
    folder = images_dir / f"{slug}-{version}"
    folder.mkdir(parents=True)
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"placeholder")
    fields = {
        "slug": slug, "version": version, "name": "Debian 12", "os": "debian",
        "min_disk_gb": 2, "min_memory_mb": 192, "size_mb": 295, "cmdline": "root=/dev/vda",
        **manifest,
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(fields))
    return folder


class HttpClient(Protocol):
    """What ApiClient needs: TestClient and httpx.Client both fit."""

    def request(self, method: str, url: str, **kwargs: Any) -> Any: ...


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


class ApiClient:
    """One account's client: every request carries its bearer token."""

    def __init__(self, http: HttpClient, token: str, prefix: str = "/api/v1") -> None:
        self.http = http
        self.token = token
        self.prefix = prefix

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request to ``/api/v1`` + ``path`` with this account's token."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.http.request(method, self.prefix + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def server_status(self, server_id: int) -> str | None:
        """The server's status, or None once it is gone."""
        response = self.get(f"/servers/{server_id}/")
        return None if response.status_code == 404 else response.json()["status"]

    def wait_server(self, server_id: int, status: str | None, timeout: float = 60.0) -> None:
        """Wait until the server has ``status`` (None: until it is gone)."""
        wait_for(
            lambda: self.server_status(server_id) == status or None,
            timeout,
            what=f"server {server_id} to be {status}",
        )

    def create_server(self, name: str = "web-1", disk_gb: int = 1, **extra: Any) -> dict[str, Any]:
        """Create a server and wait until it runs; return its object."""
        response = self.post("/servers/", json={"name": name, "disk_gb": disk_gb, **extra})
        assert response.status_code == 201, response.text
        server: dict[str, Any] = response.json()
        self.wait_server(server["id"], "running")
        return server

    def wait_console(self, server_id: int, text: str = "", timeout: float = 30.0) -> str:
        """Wait until the server's console (as its host's agent mirrors it, every monitor
        interval) holds ``text`` (any text when empty); return it."""

        def console() -> str | None:
            shown = str(self.get(f"/servers/{server_id}/console/").text)
            return shown if shown and text in shown else None

        result: str = wait_for(console, timeout, what=f"server {server_id}'s console")
        return result

    def wait_snapshot(self, snapshot_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the snapshot is completed or failed; return it."""

        def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = self.get(f"/snapshots/{snapshot_id}/").json()
            return body if body.get("status") in TERMINAL_SNAPSHOT else None

        result: dict[str, Any] = wait_for(settled, timeout, what=f"snapshot {snapshot_id}")
        return result

    def wait_backup(self, backup_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the backup is completed or failed; return it."""

        def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = self.get(f"/backups/{backup_id}/").json()
            return body if body.get("status") in TERMINAL_SNAPSHOT else None

        result: dict[str, Any] = wait_for(settled, timeout, what=f"backup {backup_id}")
        return result

    def create_backup(
        self, server_id: int, name: str = "backup", timeout: float = 60.0, **extra: Any
    ) -> dict[str, Any]:
        """Create a manual backup and wait until it settles; return it."""
        response = self.post("/backups/", json={"server_id": server_id, "name": name, **extra})
        assert response.status_code == 201, response.text
        return self.wait_backup(response.json()["id"], timeout)

    def create_snapshot(self, server_id: int, name: str = "snap", **extra: Any) -> dict[str, Any]:
        """Create a snapshot and wait until it settles; return it."""
        response = self.post("/snapshots/", json={"server_id": server_id, "name": name, **extra})
        assert response.status_code == 201, response.text
        return self.wait_snapshot(response.json()["id"])


class NoDispatch:
    """A dispatcher that runs nothing: operations stay pending, for tests of the rules."""

    def notify(self) -> None:
        pass


def stopped_server(client: ApiClient, name: str, disk_gb: int = 1) -> int:
    """Create a server, stop it, and return its id once it is ``stopped``."""
    sid: int = client.create_server(name, disk_gb=disk_gb)["id"]
    assert client.post(f"/servers/{sid}/stop/").status_code == 200
    client.wait_server(sid, "stopped")
    return sid


def measure_as(
    monkeypatch: Any, settings: Any, capacity: Any
) -> None:  # (pytest.MonkeyPatch, Settings, HostCapacity): kept light for every tier's import
    """Make this host measure ``capacity`` from now on, and record it at once as its agent's
    heartbeat does: placement reads what the hosts' agents recorded."""
    from vpsd.agent import heartbeat
    from vpsd.db.session import Database

    monkeypatch.setattr(heartbeat, "measure_capacity", lambda _settings: capacity)
    database = Database(settings.effective_database_url)
    try:
        heartbeat.register(database, settings, capacity)
    finally:
        database.dispose()
