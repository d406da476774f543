"""Tenancy matrix: another account's objects answer exactly as ids that never existed.

For every endpoint that takes an id, alice's request for one of bob's objects (running,
stopped, completed, failed), for a deleted object (hers or bob's) and for an id nobody ever
used must give the same status, the same body and the same headers (all of them but
``date``). Lists never show bob's objects, and nothing of bob's changes.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import ApiClient
from vpsd.backups.fake import FakeBackupStore
from vpsd.hypervisor.fake import FakeDriver
from vpsd.schemas import MAX_ID

NEVER_USED = [999_999, MAX_ID]


class Estate:
    """Alice's and bob's objects, and the ids that name nothing alice can see."""

    def __init__(
        self, alice: ApiClient, bob: ApiClient, driver: FakeDriver, store: FakeBackupStore
    ) -> None:
        self.alice_server = alice.create_server("alice-web")["id"]
        self.alice_snapshot = alice.create_snapshot(self.alice_server, "alice-snap")["id"]
        self.alice_backup = alice.create_backup(self.alice_server, "alice-backup")["id"]

        bob_running = bob.create_server("bob-web")["id"]
        bob_stopped = bob.create_server("bob-db")["id"]
        bob.post(f"/servers/{bob_stopped}/stop/")
        bob.wait_server(bob_stopped, "stopped")
        bob_completed = bob.create_snapshot(bob_running, "bob-snap")["id"]
        driver.fail_next("snapshot_create", "injected failure")
        bob_failed = bob.create_snapshot(bob_stopped, "bob-failed")["id"]
        assert bob.get(f"/snapshots/{bob_failed}/").json()["status"] == "failed"

        bob_backup = bob.create_backup(bob_running, "bob-backup")["id"]
        store.fail_next("save", "injected failure")
        bob_failed_backup = bob.create_backup(bob_stopped, "bob-failed")["id"]
        bob_gone_backup = bob.create_backup(bob_running, "bob-gone")["id"]
        assert bob.delete(f"/backups/{bob_gone_backup}/").status_code == 204

        bob_gone_snapshot = bob.create_snapshot(bob_running, "bob-gone")["id"]
        assert bob.delete(f"/snapshots/{bob_gone_snapshot}/").status_code == 204
        bob_gone_server = bob.create_server("bob-gone")["id"]
        bob_gone_server_snapshot = bob.create_snapshot(bob_gone_server, "with-server")["id"]
        bob_orphan_backup = bob.create_backup(bob_gone_server, "outlives")["id"]
        assert bob.delete(f"/servers/{bob_gone_server}/").status_code == 204
        bob.wait_server(bob_gone_server, None)

        alice_gone_server = alice.create_server("alice-gone")["id"]
        alice_gone_snapshot = alice.create_snapshot(alice_gone_server, "alice-gone")["id"]
        alice_gone_backup = alice.create_backup(alice_gone_server, "alice-gone")["id"]
        assert alice.delete(f"/snapshots/{alice_gone_snapshot}/").status_code == 204
        assert alice.delete(f"/backups/{alice_gone_backup}/").status_code == 204
        assert alice.delete(f"/servers/{alice_gone_server}/").status_code == 204
        alice.wait_server(alice_gone_server, None)

        self.foreign_servers = {
            "bob-running": bob_running,
            "bob-stopped": bob_stopped,
            "bob-deleted": bob_gone_server,
            "alice-deleted": alice_gone_server,
        }
        self.foreign_snapshots = {
            "bob-completed": bob_completed,
            "bob-failed": bob_failed,
            "bob-deleted": bob_gone_snapshot,
            "bob-of-deleted-server": bob_gone_server_snapshot,
            "alice-deleted": alice_gone_snapshot,
        }
        self.foreign_backups = {
            "bob-completed": bob_backup,
            "bob-failed": bob_failed_backup,
            "bob-deleted": bob_gone_backup,
            "bob-of-deleted-server": bob_orphan_backup,
            "alice-deleted": alice_gone_backup,
        }
        self.bob = bob
        self.bob_before = self.bob_state()

    def bob_state(self) -> tuple[Any, ...]:
        policies = [
            self.bob.get(f"/servers/{sid}/{policy}/").json()
            for sid in (self.foreign_servers["bob-running"], self.foreign_servers["bob-stopped"])
            for policy in ("backup-policy", "snapshot-policy")
        ]
        return (
            self.bob.get("/servers/").json(),
            self.bob.get("/snapshots/").json(),
            self.bob.get("/backups/").json(),
            policies,
        )


@pytest.fixture
def estate(
    alice: ApiClient, bob: ApiClient, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> Estate:
    return Estate(alice, bob, fake_driver, fake_store)


def fingerprint(response: Any) -> tuple[int, bytes, dict[str, str]]:
    """What a client can observe of a response, but the ``date`` header."""
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, response.content, headers


SERVER_ENDPOINTS = [
    ("GET", "/servers/{}/"),
    ("POST", "/servers/{}/stop/"),
    ("POST", "/servers/{}/start/"),
    ("DELETE", "/servers/{}/"),
    ("DELETE", "/servers/{}/?force=true"),
]
SNAPSHOT_ENDPOINTS = [
    ("GET", "/snapshots/{}/"),
    ("POST", "/snapshots/{}/restore/"),
    ("DELETE", "/snapshots/{}/"),
]
BACKUP_ENDPOINTS = [
    ("GET", "/backups/{}/"),
    ("POST", "/backups/{}/restore/"),
    ("DELETE", "/backups/{}/"),
]
POLICY = {"enabled": True, "frequency": "daily", "hour": 1, "keep": 2}


def _assert_like_never_used(request: Any, foreign: dict[str, int]) -> None:
    reference = fingerprint(request(NEVER_USED[0]))
    assert reference[0] == 404, reference
    others = {f"never-used-{i}": i for i in NEVER_USED[1:]} | foreign
    for case, object_id in others.items():
        assert fingerprint(request(object_id)) == reference, case


@pytest.mark.parametrize(("method", "template"), SERVER_ENDPOINTS, ids=lambda x: str(x))
def test_server_endpoints(alice: ApiClient, estate: Estate, method: str, template: str) -> None:
    _assert_like_never_used(
        lambda object_id: alice.request(method, template.format(object_id)),
        estate.foreign_servers,
    )
    assert estate.bob_state() == estate.bob_before


@pytest.mark.parametrize(("method", "template"), SNAPSHOT_ENDPOINTS, ids=lambda x: str(x))
def test_snapshot_endpoints(alice: ApiClient, estate: Estate, method: str, template: str) -> None:
    _assert_like_never_used(
        lambda object_id: alice.request(method, template.format(object_id)),
        estate.foreign_snapshots,
    )
    assert estate.bob_state() == estate.bob_before


@pytest.mark.parametrize(("method", "template"), BACKUP_ENDPOINTS, ids=lambda x: str(x))
def test_backup_endpoints(alice: ApiClient, estate: Estate, method: str, template: str) -> None:
    _assert_like_never_used(
        lambda object_id: alice.request(method, template.format(object_id)),
        estate.foreign_backups,
    )
    assert estate.bob_state() == estate.bob_before


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("policy", ["backup-policy", "snapshot-policy"])
def test_policy_of_anothers_server(
    alice: ApiClient, estate: Estate, method: str, policy: str
) -> None:
    _assert_like_never_used(
        lambda sid: alice.request(method, f"/servers/{sid}/{policy}/", json=POLICY),
        estate.foreign_servers,
    )
    assert estate.bob_state() == estate.bob_before


@pytest.mark.parametrize("body", [{"name": "mine"}, {"protected": True}, {"expires_at": None}])
def test_editing_anothers_snapshot(alice: ApiClient, estate: Estate, body: dict[str, Any]) -> None:
    _assert_like_never_used(
        lambda object_id: alice.request("PATCH", f"/snapshots/{object_id}/", json=body),
        estate.foreign_snapshots,
    )
    assert estate.bob_state() == estate.bob_before


def test_backup_of_anothers_server(alice: ApiClient, estate: Estate) -> None:
    _assert_like_never_used(
        lambda sid: alice.post("/backups/", json={"server_id": sid, "name": "intruder"}),
        estate.foreign_servers,
    )
    assert estate.bob_state() == estate.bob_before


@pytest.mark.parametrize(
    ("field", "foreign"), [("snapshot_id", "foreign_snapshots"), ("backup_id", "foreign_backups")]
)
def test_new_server_from_anothers_copy(
    alice: ApiClient, estate: Estate, field: str, foreign: str
) -> None:
    def create(object_id: int) -> Any:
        return alice.post("/servers/", json={"name": "copy", "disk_gb": 1, field: object_id})

    _assert_like_never_used(create, getattr(estate, foreign))
    assert alice.get("/servers/").json()["count"] == 1
    assert estate.bob_state() == estate.bob_before


def test_backup_list_filtered_by_anothers_server(alice: ApiClient, estate: Estate) -> None:
    reference = fingerprint(alice.get(f"/backups/?server_id={NEVER_USED[0]}"))
    assert reference[0] == 200
    for case, server_id in estate.foreign_servers.items():
        if case == "alice-deleted":
            continue  # her own deleted server: its backups are hers to list (none left here)
        assert fingerprint(alice.get(f"/backups/?server_id={server_id}")) == reference, case


@pytest.mark.parametrize("description", [None, "x"])
def test_create_snapshot_of_anothers_server(
    alice: ApiClient, estate: Estate, description: str | None
) -> None:
    def create(server_id: int) -> Any:
        body = {"server_id": server_id, "name": "intruder", "description": description}
        return alice.post("/snapshots/", json=body)

    _assert_like_never_used(create, estate.foreign_servers)
    assert estate.bob_state() == estate.bob_before


def test_snapshot_list_filtered_by_anothers_server(alice: ApiClient, estate: Estate) -> None:
    def listing(server_id: int) -> Any:
        return alice.get(f"/snapshots/?server_id={server_id}")

    reference = fingerprint(listing(NEVER_USED[0]))
    assert reference[0] == 200 and listing(NEVER_USED[0]).json()["count"] == 0
    for case, server_id in estate.foreign_servers.items():
        assert fingerprint(listing(server_id)) == reference, case


def test_lists_show_only_ones_own(alice: ApiClient, estate: Estate) -> None:
    servers = alice.get("/servers/").json()
    snapshots = alice.get("/snapshots/").json()
    assert servers["count"] == 1 and [s["id"] for s in servers["results"]] == [estate.alice_server]
    assert snapshots["count"] == 1
    assert [s["id"] for s in snapshots["results"]] == [estate.alice_snapshot]
    # and bob's own view is the mirror image: his live objects, none of alice's
    backups = alice.get("/backups/").json()
    assert [b["id"] for b in backups["results"]] == [estate.alice_backup]
    bob_servers, bob_snapshots, bob_backups, _ = estate.bob_before
    assert bob_backups["count"] == 3  # completed, failed, and the deleted server's
    assert bob_servers["count"] == 2 and bob_snapshots["count"] == 2
    assert estate.alice_server not in [s["id"] for s in bob_servers["results"]]


def test_create_server_never_reveals_others(alice: ApiClient, estate: Estate) -> None:
    """A new server is alice's alone: bob's list and hers each change by exactly their own."""
    created = alice.post("/servers/", json={"name": "bob-web", "disk_gb": 1})
    assert created.status_code == 201
    assert alice.get("/servers/").json()["count"] == 2
    assert estate.bob_state()[0]["count"] == estate.bob_before[0]["count"]
