"""The SSH keys API on both databases: shapes, validation, duplicates, limits, tenancy, logs."""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.helpers import ApiClient
from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.models import Account
from vpsd.db.session import Database
from vpsd.schemas import SshKeyCreate
from vpsd.services import ssh_keys as ssh_keys_service
from vpsd.services.errors import DomainError, Invalid, LimitReached, NotFound
from vpsd.sshkeys import parse_public_key

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def new_key(comment: str = "me@laptop") -> str:
    """A fresh ed25519 public key line."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def add(client: ApiClient, name: str = "laptop", key: str | None = None) -> dict[str, Any]:
    response = client.post("/ssh_keys/", json={"name": name, "public_key": key or new_key()})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def field_error(response: Any) -> str:
    """The 400's single field error on body.public_key: its message."""
    assert response.status_code == 400
    body = response.json()
    assert body["errors"][0]["field"] == "body.public_key", body
    message: str = body["errors"][0]["message"]
    assert body["detail"] == message
    return message


def test_create_answers_the_documented_shape(alice: ApiClient) -> None:
    key = new_key("alice@laptop")
    response = alice.post("/ssh_keys/", json={"name": "laptop", "public_key": f"  {key}\n"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "name", "public_key", "fingerprint", "created_at"}
    assert body["name"] == "laptop"
    assert body["public_key"] == key  # normalized: stripped
    assert body["fingerprint"] == parse_public_key(key).fingerprint
    assert body["fingerprint"].startswith("SHA256:")
    assert TIME.match(body["created_at"])
    assert alice.get(f"/ssh_keys/{body['id']}/").json() == body


def test_rsa_2048_is_accepted(alice: ApiClient) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    line = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    assert add(alice, "rsa", line)["public_key"] == line


def test_list_is_newest_first_with_count_and_pages(alice: ApiClient) -> None:
    ids = [add(alice, f"k{i}")["id"] for i in range(5)]
    body = alice.get("/ssh_keys/").json()
    assert body["count"] == 5
    assert [k["id"] for k in body["results"]] == sorted(ids, reverse=True)
    first = alice.get("/ssh_keys/", params={"page_size": 2}).json()
    assert first["count"] == 5 and len(first["results"]) == 2
    assert first["previous"] is None and "page=2" in first["next"]
    last = alice.get("/ssh_keys/", params={"page_size": 2, "page": 3}).json()
    assert len(last["results"]) == 1 and last["next"] is None


def test_delete_removes_the_key(alice: ApiClient) -> None:
    key_id = add(alice)["id"]
    deleted = alice.delete(f"/ssh_keys/{key_id}/")
    assert deleted.status_code == 204 and deleted.content == b""
    assert alice.get(f"/ssh_keys/{key_id}/").status_code == 404
    assert alice.delete(f"/ssh_keys/{key_id}/").status_code == 404
    assert alice.get("/ssh_keys/").json()["count"] == 0


@pytest.mark.parametrize(
    ("public_key", "expected"),
    [
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
         "this is a private key; paste the .pub file"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-dss"),
        ("ssh-ed25519 !!!", "base64"),
        ('command="reboot" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB', "options"),
        ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "several lines"),
        ("hello", "unknown key type"),
    ],
)  # fmt: skip
def test_invalid_keys_are_400_on_body_public_key_and_change_nothing(
    alice: ApiClient, public_key: str, expected: str
) -> None:
    add(alice, "kept")
    response = alice.post("/ssh_keys/", json={"name": "bad", "public_key": public_key})
    assert expected in field_error(response)
    assert alice.get("/ssh_keys/").json()["count"] == 1


def test_mismatched_type_and_control_characters(alice: ApiClient) -> None:
    data = new_key().split()[1]
    assert "does not match" in field_error(
        alice.post("/ssh_keys/", json={"name": "x", "public_key": f"ssh-rsa {data}"})
    )
    assert "control" in field_error(
        alice.post("/ssh_keys/", json={"name": "x", "public_key": f"ssh-ed25519 {data} a\x07"})
    )
    assert alice.get("/ssh_keys/").json()["count"] == 0


def test_a_comment_that_smuggles_a_second_key_is_refused_in_words(alice: ApiClient) -> None:
    """Issue 22, item 2: the backslashes are typed literally; a guest's ``echo`` made the
    comment a second line holding another key with a forced command."""
    carrier, smuggled = new_key("").split()[1], new_key("").split()[1]
    smuggling = f'ssh-ed25519 {carrier} a\\n command="/usr/bin/id" ssh\\0055ed25519 {smuggled} evil'
    message = field_error(alice.post("/ssh_keys/", json={"name": "x", "public_key": smuggling}))
    assert "backslash" in message and carrier not in message
    assert alice.get("/ssh_keys/").json()["count"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name", "public_key": "ssh-ed25519 AAAA"}, "body.name"),
        ({"name": "k"}, "body.public_key"),
        ({"name": "k", "public_key": ""}, "body.public_key"),
        ({"name": "k", "public_key": 5}, "body.public_key"),
        ({"name": "k", "public_key": "x" * 20_000}, "body.public_key"),
        ({"name": "k", "public_key": "ssh-ed25519 AAAA", "extra": 1}, "body.extra"),
    ],
)
def test_schema_errors_are_400_never_422(
    alice: ApiClient, body: dict[str, object], field: str
) -> None:
    response = alice.post("/ssh_keys/", json=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_the_same_key_twice_is_refused_naming_the_first(alice: ApiClient, bob: ApiClient) -> None:
    key = new_key("first")
    first = add(alice, "laptop", key)
    # The same key with another comment and spacing is still the same key.
    again = alice.post("/ssh_keys/", json={"name": "other", "public_key": f"{key[:-5]}  second"})
    assert field_error(again) == f"this key is already saved as laptop (id {first['id']})"
    assert alice.get("/ssh_keys/").json()["count"] == 1
    # Another account may save the same key: accounts never see each other's.
    assert add(bob, "shared", key)["fingerprint"] == first["fingerprint"]


def test_at_most_the_limit_of_keys_per_account(
    alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_keys_service, "MAX_SSH_KEYS_PER_ACCOUNT", 3)
    for i in range(3):
        add(alice, f"k{i}")
    response = alice.post("/ssh_keys/", json={"name": "k3", "public_key": new_key()})
    assert response.status_code == 400
    assert "at most 3 keys" in response.json()["detail"]
    assert alice.get("/ssh_keys/").json()["count"] == 3
    add(bob, "bobs")  # the limit is per account


def test_the_real_limit_is_100() -> None:
    assert ssh_keys_service.MAX_SSH_KEYS_PER_ACCOUNT == 100


def test_other_accounts_keys_are_not_found(alice: ApiClient, bob: ApiClient) -> None:
    key_id = add(alice)["id"]
    missing_get = bob.get("/ssh_keys/999999/")
    missing_delete = bob.delete("/ssh_keys/999999/")
    assert missing_get.status_code == missing_delete.status_code == 404
    for method, path, missing in [
        ("GET", f"/ssh_keys/{key_id}/", missing_get),
        ("DELETE", f"/ssh_keys/{key_id}/", missing_delete),
    ]:
        response = bob.request(method, path)
        assert response.status_code == 404
        assert response.json() == missing.json()
    assert bob.get("/ssh_keys/").json()["count"] == 0
    assert alice.get(f"/ssh_keys/{key_id}/").status_code == 200


@pytest.mark.parametrize("bad_id", ["0", "-1", "1.0", "abc", str(2**63)])
def test_bad_ids_are_400(alice: ApiClient, bad_id: str) -> None:
    assert alice.get(f"/ssh_keys/{bad_id}/").status_code == 400


def test_unauthenticated_is_401(client: TestClient) -> None:
    response = client.get("/api/v1/ssh_keys/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_keys_never_reach_the_logs(alice: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_key("secret-comment@host")
    created = add(alice, "laptop", key)
    alice.post("/ssh_keys/", json={"name": "again", "public_key": key})
    alice.post("/ssh_keys/", json={"name": "bad", "public_key": f"ssh-rsa {key.split()[1]}"})
    alice.get("/ssh_keys/")
    alice.delete(f"/ssh_keys/{created['id']}/")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"ssh key {created['id']}" in logged  # something was logged, by id
    assert key.split()[1] not in logged
    assert "secret-comment" not in logged


def test_resolve_returns_lines_in_order_once_each(
    alice: ApiClient, bob: ApiClient, settings: Settings
) -> None:
    one, two = add(alice, "one")["id"], add(alice, "two")["id"]
    bobs = add(bob, "bobs")["id"]
    database = Database(settings.effective_database_url)
    try:
        with database.read() as session:
            account_id = _account_id(session, "alice")
            lines = ssh_keys_service.resolve(session, account_id, [two, one, two])
            public = {k["id"]: k["public_key"] for k in alice.get("/ssh_keys/").json()["results"]}
            assert lines == [public[two], public[one]]
            assert ssh_keys_service.resolve(session, account_id, []) == []
            for foreign in (bobs, 999_999):
                with pytest.raises(NotFound, match=f"ssh key {foreign} not found"):
                    ssh_keys_service.resolve(session, account_id, [one, foreign])
    finally:
        database.dispose()


def _account_id(session: Session, name: str) -> int:
    account_id = session.scalar(select(Account.id).where(Account.name == name))
    assert account_id is not None
    return account_id


def _race(settings: Settings, keys: list[str]) -> list[str]:
    """Create ``keys`` for one account from as many threads at once; each one's outcome."""
    database = Database(settings.effective_database_url)
    migrate.upgrade(database)
    with database.write() as session:
        account = Account(name="racer")
        session.add(account)
        session.flush()
        account_id = account.id
    service = ssh_keys_service.SshKeyService(database)
    barrier = threading.Barrier(len(keys))

    def create(i: int) -> str:
        barrier.wait()
        try:
            service.create(account_id, SshKeyCreate(name=f"k{i}", public_key=keys[i]))
        except DomainError as error:
            return type(error).__name__
        return "created"

    try:
        with ThreadPoolExecutor(len(keys)) as pool:
            return list(pool.map(create, range(len(keys))))
    finally:
        database.dispose()


def test_the_same_key_at_once_is_saved_once(settings: Settings) -> None:
    key = new_key()
    outcomes = _race(settings, [key] * 8)
    assert Counter(outcomes) == {"created": 1, Invalid.__name__: 7}


def test_the_limit_holds_under_concurrent_creates(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_keys_service, "MAX_SSH_KEYS_PER_ACCOUNT", 3)
    outcomes = _race(settings, [new_key() for _ in range(8)])
    assert Counter(outcomes) == {"created": 3, LimitReached.__name__: 5}
