"""The Snapshots API of the seed page on the fake driver: shapes, rules, failures, tenancy."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiClient, snapshot_tag, wait_for
from vpsd.config import Settings
from vpsd.db.models import Snapshot
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SEED_KEYS = ["id", "server", "name", "status", "size_mb", "created_at", "description"]
SNAPSHOT_KEYS = [
    *SEED_KEYS,
    *("status_reason", "consistency", "memory", "pause_ms", "type", "protected", "expires_at"),
]
"""The seed page's fields first, in its order; ours after."""


def test_create_answers_the_pages_shape(alice: ApiClient) -> None:
    server = alice.create_server("web-server-01")
    response = alice.post(
        "/snapshots/",
        json={
            "server_id": server["id"],
            "name": "before-update-snapshot",
            "description": "Snapshot before system update",
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert list(body) == [*SNAPSHOT_KEYS, "message"]
    assert body["server"] == {"id": server["id"], "name": "web-server-01"}
    assert body["name"] == "before-update-snapshot"
    assert body["status"] == "in_progress"
    assert body["size_mb"] is None
    assert body["consistency"] is None
    assert body["description"] == "Snapshot before system update"
    assert (body["type"], body["protected"], body["expires_at"]) == ("manual", False, None)
    assert TIME.match(body["created_at"])
    assert "3-10 minutes" not in body["message"]
    assert f"/api/v1/snapshots/{body['id']}/" in body["message"]


def test_snapshot_completes_with_a_size(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"x" * (3 * 1024 * 1024))
    snapshot = alice.create_snapshot(sid, "with-data")
    assert snapshot["status"] == "completed"
    assert snapshot["size_mb"] == 3
    assert snapshot["description"] is None


def test_list_filters_by_server_newest_first(alice: ApiClient) -> None:
    first = alice.create_server("a")["id"]
    second = alice.create_server("b")["id"]
    a1 = alice.create_snapshot(first, "a1")["id"]
    b1 = alice.create_snapshot(second, "b1")["id"]
    a2 = alice.create_snapshot(first, "a2")["id"]
    everything = alice.get("/snapshots/").json()
    assert everything["count"] == 3
    assert [s["id"] for s in everything["results"]] == [a2, b1, a1]
    only_first = alice.get("/snapshots/", params={"server_id": first}).json()
    assert only_first["count"] == 2
    assert [s["id"] for s in only_first["results"]] == [a2, a1]
    assert list(only_first["results"][0]) == SNAPSHOT_KEYS


def test_limit_of_five_counts_in_progress_and_completed(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    for i in range(5):
        alice.create_snapshot(sid, f"s{i}")
    response = alice.post("/snapshots/", json={"server_id": sid, "name": "sixth"})
    assert response.status_code == 400
    assert "limit" in response.json()["detail"]
    assert alice.get("/snapshots/", params={"server_id": sid}).json()["count"] == 5


def test_delete_then_recreate_within_the_limit(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    sid = alice.create_server()["id"]
    ids = [alice.create_snapshot(sid, f"s{i}")["id"] for i in range(5)]
    doomed = snapshot_tag(settings.effective_database_url, ids[0])
    deleted = alice.delete(f"/snapshots/{ids[0]}/")
    assert deleted.status_code == 204 and deleted.content == b""
    # gone from the API at once, before the disk work is done
    assert alice.get(f"/snapshots/{ids[0]}/").status_code == 404
    assert alice.get("/snapshots/").json()["count"] == 4
    assert alice.create_snapshot(sid, "replacement")["status"] == "completed"
    tags = fake_driver.snapshot_tags(sid)
    assert doomed not in tags and len(tags) == 5


def test_a_deleted_snapshots_id_is_never_given_to_another(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    """A client still holding a deleted snapshot's id (to retry the delete, to restore) must
    get 404, not reach a newer snapshot: the newest one's id was reused on SQLite once."""
    sid = alice.create_server()["id"]
    newest = alice.create_snapshot(sid, "newest")["id"]
    tag = snapshot_tag(settings.effective_database_url, newest)
    assert alice.delete(f"/snapshots/{newest}/").status_code == 204
    wait_for(lambda: tag not in fake_driver.snapshot_tags(sid), what="the delete to run")
    wait_for(lambda: not _has_row(settings, newest), what="the snapshot's row to go")

    after = alice.create_snapshot(sid, "after")["id"]
    assert after > newest
    assert alice.get(f"/snapshots/{newest}/").status_code == 404
    assert alice.delete(f"/snapshots/{newest}/").status_code == 404
    assert alice.get(f"/snapshots/{after}/").json()["name"] == "after"


def _has_row(settings: Settings, snapshot_id: int) -> bool:
    database = Database(settings.effective_database_url)
    try:
        with database.read() as session:
            return session.get(Snapshot, snapshot_id) is not None
    finally:
        database.dispose()


def test_failed_snapshot_says_why_and_is_not_counted(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.fail_next("snapshot_create", "qemu-img: No space left on device")
    failed = alice.create_snapshot(sid, "doomed")
    assert failed["status"] == "failed"
    assert failed["size_mb"] is None
    assert "No space left on device" in failed["status_reason"]
    for i in range(5):
        assert alice.create_snapshot(sid, f"ok{i}")["status"] == "completed"
    assert alice.delete(f"/snapshots/{failed['id']}/").status_code == 204


def test_restore_returns_the_pages_body_and_brings_bytes_back(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    server = alice.create_server("web-server-01")
    sid = server["id"]
    fake_driver.write(sid, b"before")
    snapshot = alice.create_snapshot(sid, "pre-migration-snapshot")
    fake_driver.write(sid, b"after!")
    response = alice.post(f"/snapshots/{snapshot['id']}/restore/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["snapshot"] == {
        "id": snapshot["id"],
        "name": "pre-migration-snapshot",
        "created_at": snapshot["created_at"],
    }
    assert body["server"] == {"id": sid, "name": "web-server-01", "status": "restoring"}
    assert "5-15 minutes" not in body["message"] and "started again" in body["message"]
    alice.wait_server(sid, "running")
    assert fake_driver.read(sid) == b"before"


def test_restore_keeps_a_stopped_server_stopped_and_newer_snapshots_usable(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"one")
    old = alice.create_snapshot(sid, "old")
    fake_driver.write(sid, b"two")
    new = alice.create_snapshot(sid, "new")
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    response = alice.post(f"/snapshots/{old['id']}/restore/")
    assert "stays stopped" in response.json()["message"]
    alice.wait_server(sid, "stopped")
    assert fake_driver.read(sid) == b"one"
    alice.post(f"/snapshots/{new['id']}/restore/")
    alice.wait_server(sid, "stopped")
    assert fake_driver.read(sid) == b"two"


def test_only_completed_snapshots_can_be_restored(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.fail_next("snapshot_create", "boom")
    failed = alice.create_snapshot(sid, "failed-one")
    response = alice.post(f"/snapshots/{failed['id']}/restore/")
    assert response.status_code == 400
    assert "completed" in response.json()["detail"]
    assert alice.server_status(sid) == "running"


def test_restore_while_a_snapshot_is_in_progress_is_refused(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    done = alice.create_snapshot(sid, "done")
    fake_driver.delay("snapshot_create", 1.0)
    slow = alice.post("/snapshots/", json={"server_id": sid, "name": "slow"}).json()
    response = alice.post(f"/snapshots/{done['id']}/restore/")
    assert response.status_code == 400
    assert "in progress" in response.json()["detail"]
    assert alice.server_status(sid) == "running"
    fake_driver.delay("snapshot_create", 0)
    assert alice.wait_snapshot(slow["id"])["status"] == "completed"


def test_restore_failure_puts_server_in_error_with_reason(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    snapshot = alice.create_snapshot(sid, "s")
    fake_driver.fail_next("snapshot_restore", "qemu-img: Could not open disk0.qcow2")
    alice.post(f"/snapshots/{snapshot['id']}/restore/")
    alice.wait_server(sid, "error")
    assert "Could not open" in alice.get(f"/servers/{sid}/").json()["status_reason"]


def test_snapshot_of_server_in_wrong_state_is_refused(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.delay("stop", 1.0)
    alice.post(f"/servers/{sid}/stop/")  # stopping: neither running nor stopped
    response = alice.post("/snapshots/", json={"server_id": sid, "name": "s"})
    assert response.status_code == 400
    assert "stopping" in response.json()["detail"]
    assert alice.get("/snapshots/").json()["count"] == 0


def test_deleting_a_server_deletes_its_snapshots(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server()["id"]
    snapshot = alice.create_snapshot(sid, "s")
    alice.delete(f"/servers/{sid}/")
    assert alice.get(f"/snapshots/{snapshot['id']}/").status_code == 404
    assert alice.get("/snapshots/").json()["count"] == 0
    alice.wait_server(sid, None)
    assert not fake_driver.exists(sid)


def test_unknown_server_is_404(alice: ApiClient) -> None:
    response = alice.post("/snapshots/", json={"server_id": 424242, "name": "s"})
    assert response.status_code == 404
    assert response.json()["detail"] == "server not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/snapshots/{id}/"),
        ("POST", "/snapshots/{id}/restore/"),
        ("DELETE", "/snapshots/{id}/"),
    ],
)
def test_other_accounts_snapshots_are_not_found(
    alice: ApiClient, bob: ApiClient, method: str, path: str
) -> None:
    sid = alice.create_server()["id"]
    snapshot = alice.create_snapshot(sid, "private")
    theirs = bob.request(method, path.format(id=snapshot["id"]))
    missing = bob.request(method, path.format(id=987654))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert bob.get("/snapshots/").json()["count"] == 0
    assert bob.get("/snapshots/", params={"server_id": sid}).json()["count"] == 0
    create = bob.post("/snapshots/", json={"server_id": sid, "name": "sneaky"})
    assert create.status_code == 404
    assert alice.get(f"/snapshots/{snapshot['id']}/").json()["status"] == "completed"
    assert alice.server_status(sid) == "running"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/snapshots/not-a-number/", None),
        ("GET", "/api/v1/snapshots/?server_id=1.0&page=0", None),
        ("POST", "/api/v1/snapshots/", b"{not json"),
        ("POST", "/api/v1/snapshots/1/restore/", b"[]"),
        ("DELETE", "/api/v1/servers/0/", None),
    ],
)
def test_no_token_is_401_before_any_other_error(
    client: TestClient, method: str, path: str, body: bytes | None
) -> None:
    """A stranger learns nothing of the API's rules: a missing or bad token is refused
    before the parameters or the body are looked at."""
    for headers in ({}, {"Authorization": "Bearer vpsd_unknown"}):
        response = client.request(
            method, path, content=body, headers={**headers, "Content-Type": "text/plain"}
        )
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/snapshots/", "/backups/"])
def test_a_description_with_nul_is_refused_in_words(alice: ApiClient, path: str) -> None:
    # PostgreSQL's text cannot hold NUL: it was a 500 there, found by the panel's form tests.
    server_id = alice.create_server("nul")["id"]
    body = {"server_id": server_id, "name": "n", "description": "before\u0000after"}
    response = alice.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [
        {"field": "body.description", "message": "must not contain NUL characters (\\u0000)"}
    ]
    assert alice.get(path).json()["count"] == 0
