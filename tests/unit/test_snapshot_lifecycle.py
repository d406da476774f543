"""Snapshots' edits, protection and expiry: the rules with the services called directly and
the agent's expiry on a fake clock; the HTTP shapes; and expiry once on the real clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.helpers import ApiClient, wait_for
from tests.unit.snapshot_harness import Host, at
from vpsd.config import Settings
from vpsd.db.models import Operation, OperationKind, OperationStatus, Snapshot, SnapshotStatus
from vpsd.db.session import Database
from vpsd.schemas import ServerCreate, SnapshotCreate
from vpsd.services.errors import Invalid, InvalidState


@pytest.fixture
def host(db: Database, settings: Settings) -> Host:
    return Host(db, settings)


def _row(host: Host, snapshot_id: int) -> dict[str, Any]:
    with host.db.read() as session:
        snapshot = session.get_one(Snapshot, snapshot_id)
        return {
            "name": snapshot.name,
            "description": snapshot.description,
            "protected": snapshot.protected,
            "expires_at": snapshot.expires_at,
            "status": snapshot.status,
        }


def _expire_at(host: Host, snapshot_id: int, when: datetime, **values: Any) -> None:
    """Give the snapshot an expiry the API would refuse now (in the past, or with
    protection): the agent must still get it right."""
    with host.db.write() as session:
        session.execute(
            update(Snapshot).where(Snapshot.id == snapshot_id).values(expires_at=when, **values)
        )


def _deletion_reasons(host: Host) -> list[tuple[int | None, str]]:
    with host.db.read() as session:
        rows = session.execute(
            select(Operation.snapshot_id, Operation.payload)
            .where(Operation.kind == OperationKind.SNAPSHOT_DELETE)
            .order_by(Operation.id)
        ).all()
    return [(snapshot_id, payload["reason"]) for snapshot_id, payload in rows]


# Edits


def test_an_update_changes_only_the_fields_it_gives(host: Host) -> None:
    server = host.server()
    sid = host.snapshot(server, "before", description="first try")
    later = datetime.now(UTC) + timedelta(days=1)
    host.update(sid, name="after")
    assert _row(host, sid) | {"status": None} == {
        "name": "after", "description": "first try", "protected": False, "expires_at": None,
        "status": None,
    }  # fmt: skip
    host.update(sid, expires_at=later.isoformat())
    assert _row(host, sid)["expires_at"] == later
    host.update(sid, description=None, expires_at=None)  # null clears
    assert (_row(host, sid)["description"], _row(host, sid)["expires_at"]) == (None, None)
    host.update(sid, protected=True)
    assert _row(host, sid)["protected"] is True


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"name": "renamed", "expires_at": "2000-01-01T00:00:00Z"}, "body.expires_at", "future"),
        ({"name": "renamed", "protected": True}, "body.protected", "clear its expiry"),
    ],
)
def test_a_refused_update_changes_nothing(
    host: Host, fields: dict[str, Any], field: str, words: str
) -> None:
    server = host.server()
    soon = datetime.now(UTC) + timedelta(hours=1)
    sid = host.snapshot(server, "before", expires_at=soon)
    before = _row(host, sid)
    with pytest.raises(Invalid, match=words) as refused:
        host.update(sid, **fields)
    assert refused.value.field == field
    assert _row(host, sid) == before


def test_protection_and_expiry_exclude_each_other(host: Host) -> None:
    server = host.server()
    sid = host.snapshot(server, "keep-me")
    host.update(sid, protected=True)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(Invalid, match="never expires: remove its protection first"):
        host.update(sid, expires_at=soon)
    # Unprotecting and giving an expiry in one request is fine, and so is the way back.
    host.update(sid, protected=False, expires_at=soon)
    host.update(sid, protected=True, expires_at=None)
    assert _row(host, sid)["protected"] is True


# Protection


def test_a_protected_snapshot_refuses_delete_until_unprotected(host: Host) -> None:
    server = host.server()
    sid = host.snapshot(server, "keep-me")
    host.update(sid, protected=True)
    with pytest.raises(InvalidState, match="keep-me is protected: remove its protection"):
        host.snapshots.delete(host.account_id, sid)
    assert _row(host, sid)["status"] == SnapshotStatus.COMPLETED
    assert host.run_pending() == 0 and host.on_disk(server) == 1
    host.update(sid, protected=False)
    host.snapshots.delete(host.account_id, sid)
    host.run_pending()
    assert host.on_disk(server) == 0


def test_deleting_a_server_needs_its_snapshots_unprotected_or_force(host: Host) -> None:
    server = host.server()
    kept = host.snapshot(server, "keep-me")
    host.snapshot(server, "other")
    host.update(kept, protected=True)
    with pytest.raises(InvalidState, match=r"protected snapshots: keep-me \(\d+\).*force=true"):
        host.servers.delete(host.account_id, server)
    assert host.servers.get(host.account_id, server).status == "running"
    assert _row(host, kept)["protected"] is True

    deletion = host.servers.delete(host.account_id, server, force=True)
    assert [(s.id, s.name) for s in deletion.unprotected] == [(kept, "keep-me")]
    assert deletion.server.status == "deleting"
    assert _row(host, kept) | {"name": None} == {
        "name": None, "description": None, "protected": False, "expires_at": None,
        "status": SnapshotStatus.DELETING,
    }  # fmt: skip


# Expiry on a fake clock


def test_expired_snapshots_are_deleted_at_their_time_and_never_protected_ones(
    host: Host,
) -> None:
    server = host.server()
    first, second, _, protected = (
        host.snapshot(server, name) for name in ("first", "second", "never", "protected")
    )
    _expire_at(host, first, at("2026-11-02T10:00:00"))
    _expire_at(host, second, at("2026-11-02T11:00:00"))
    _expire_at(host, protected, at("2026-11-02T10:00:00"), protected=True)
    assert host.expire(at("2026-11-02T09:59:59")) == 0
    assert host.expire(at("2026-11-02T10:00:00")) == 1
    assert [name for name, _, _ in host.shown(server)] == ["second", "never", "protected"]
    assert host.expire(at("2026-11-02T10:30:00")) == 0
    assert host.expire(at("2026-11-02T11:00:30")) == 1
    assert host.expire(at("2027-01-01T00:00:00")) == 0
    assert [name for name, _, _ in host.shown(server)] == ["never", "protected"]
    assert host.on_disk(server) == 2
    # Each deletion is an operation of its own, saying why, and it completed.
    assert _deletion_reasons(host) == [(first, "expired"), (second, "expired")]
    with host.db.read() as session:
        statuses = session.scalars(
            select(Operation.status).where(Operation.kind == OperationKind.SNAPSHOT_DELETE)
        ).all()
    assert statuses == [OperationStatus.COMPLETED] * 2


def test_an_expired_snapshot_waits_for_a_restore_under_way(host: Host) -> None:
    server = host.server()
    sid = host.snapshot(server, "before")
    _expire_at(host, sid, at("2026-11-02T10:00:00"))
    # Still there until its agent looks: a restore may start, and is not blocked.
    host.snapshots.restore(host.account_id, sid)
    assert host.expire(at("2026-11-02T10:00:10"), run=False) == 0
    assert _row(host, sid)["status"] == SnapshotStatus.COMPLETED
    host.run_pending()
    assert host.servers.get(host.account_id, server).status == "running"  # restored
    assert host.expire(at("2026-11-02T10:01:00")) == 1
    assert host.shown(server) == []


def test_an_expired_snapshot_waits_for_a_copy_under_way(host: Host) -> None:
    server = host.server()
    sid = host.snapshot(server, "golden")
    _expire_at(host, sid, at("2026-11-02T10:00:00"))
    copy = host.servers.create(
        host.account_id, ServerCreate(name="copy", disk_gb=1, snapshot_id=sid)
    )
    assert host.expire(at("2026-11-02T10:00:10"), run=False) == 0
    host.run_pending()
    assert host.servers.get(host.account_id, copy.id).status == "running"  # copied
    assert host.expire(at("2026-11-02T10:01:00")) == 1
    assert host.shown(server) == []


def test_a_snapshot_still_being_taken_expires_once_taken(host: Host) -> None:
    server = host.server()
    soon = datetime.now(UTC) + timedelta(seconds=30)
    request = SnapshotCreate(server_id=server, name="quick", expires_at=soon)
    host.snapshots.create(host.account_id, request)
    assert host.expire(soon + timedelta(seconds=1), run=False) == 0  # in progress
    host.run_pending()
    assert host.expire(soon + timedelta(seconds=2)) == 1
    assert host.on_disk(server) == 0


# HTTP shapes


def test_patch_answers_the_snapshot_and_refuses_in_words(alice: ApiClient, bob: ApiClient) -> None:
    sid_server = alice.create_server()["id"]
    snapshot = alice.create_snapshot(sid_server, "before")
    path = f"/snapshots/{snapshot['id']}/"
    changed = alice.request("PATCH", path, json={"name": "after", "protected": True})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert {**snapshot, "name": "after", "protected": True} == body
    assert alice.get(path).json() == body

    for wrong, words in (
        ({"name": None}, "must not be null"),
        ({"name": "has space"}, "only letters"),
        ({"protected": "yes"}, "valid boolean"),
        ({"expires_at": 1893456000}, "ISO 8601"),
        ({"expires_at": "2030-01-01T00:00:00"}, "needs a time zone"),
        ({"expires_at": "2030-01-01T00:00:00Z"}, "a protected snapshot never expires"),
        ({"size_mb": 1}, "unknown field"),
    ):
        refused = alice.request("PATCH", path, json=wrong)
        assert refused.status_code == 400, (wrong, refused.text)
        assert words in refused.json()["detail"], refused.json()
    assert alice.get(path).json() == body  # nothing changed
    assert bob.request("PATCH", path, json={"name": "mine"}).status_code == 404

    deleted = alice.delete(path)
    assert deleted.status_code == 400
    assert "protected" in deleted.json()["detail"]
    assert alice.get(path).status_code == 200


def test_create_takes_an_expiry_and_the_list_shows_it(alice: ApiClient) -> None:
    server = alice.create_server()["id"]
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    shown = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    response = alice.post(
        "/snapshots/",
        json={"server_id": server, "name": "temp", "expires_at": when.isoformat()},
    )
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"] == shown
    [listed] = alice.get("/snapshots/", params={"server_id": server}).json()["results"]
    assert (listed["expires_at"], listed["type"], listed["protected"]) == (shown, "manual", False)
    past = alice.post(
        "/snapshots/",
        json={"server_id": server, "name": "late", "expires_at": "2020-01-01T00:00:00Z"},
    )
    assert past.status_code == 400
    assert "must be in the future" in past.json()["detail"]
    assert alice.get("/snapshots/").json()["count"] == 1


def test_force_delete_says_what_protection_it_removed(alice: ApiClient) -> None:
    server = alice.create_server()["id"]
    kept = alice.create_snapshot(server, "keep-me")
    alice.request("PATCH", f"/snapshots/{kept['id']}/", json={"protected": True})
    refused = alice.delete(f"/servers/{server}/")
    assert refused.status_code == 400
    assert "keep-me" in refused.json()["detail"] and "force=true" in refused.json()["detail"]
    assert alice.server_status(server) == "running"
    forced = alice.delete(f"/servers/{server}/", params={"force": "true"})
    assert forced.status_code == 200, forced.text
    body = forced.json()
    assert body["unprotected_snapshots"] == [{"id": kept["id"], "name": "keep-me"}]
    assert "keep-me" in body["message"]
    alice.wait_server(server, None)
    other = alice.create_server("plain")["id"]
    assert alice.delete(f"/servers/{other}/").status_code == 204  # the seed's answer


# Expiry on the real clock


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The agent looks for expired snapshots every half second."""
    return settings.model_copy(update={"snapshot_expiry_interval": 0.5})


def test_a_snapshot_expiring_in_two_seconds_is_gone_within_the_agents_interval(
    alice: ApiClient, settings: Settings
) -> None:
    server = alice.create_server()["id"]
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    created = alice.post(
        "/snapshots/",
        json={"server_id": server, "name": "brief", "expires_at": expires_at.isoformat()},
    )
    assert created.status_code == 201, created.text
    path = f"/snapshots/{created.json()['id']}/"
    assert alice.wait_snapshot(created.json()["id"])["status"] == "completed"
    left = (expires_at - datetime.now(UTC)).total_seconds()
    assert left > 0.5, "the test machine is too slow to see the snapshot before it expired"
    assert alice.get(path).status_code == 200
    slack = 5.0  # the deletion operation itself, on a shared machine
    gone_at: datetime = wait_for(
        lambda: alice.get(path).status_code == 404 and datetime.now(UTC),
        timeout=left + settings.snapshot_expiry_interval + slack,
        interval=0.05,
        what="the expired snapshot to be deleted",
    )
    assert gone_at >= expires_at  # never before its time
    db = Database(settings.effective_database_url)
    try:
        with db.read() as session:
            payloads = session.scalars(
                select(Operation.payload).where(Operation.kind == OperationKind.SNAPSHOT_DELETE)
            ).all()
    finally:
        db.dispose()
    assert payloads == [{"reason": "expired"}]
