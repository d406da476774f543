"""``vpsctl ssh-keys`` and ``client.ssh_keys`` in-process: the SDK's HTTP goes to the app under
test through an ``httpx.MockTransport``, vpsctl runs through its real ``main()``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import ApiClient
from tests.unit.vpsctl_harness import BASE, Run, new_key, one_error_line
from vpsd.client import BadRequestError, Client, NotFoundError


def test_add_from_a_file_then_list_and_show(run: Run, alice: ApiClient, tmp_path: Path) -> None:
    public, _ = new_key("alice@laptop")
    path = tmp_path / "id_ed25519.pub"
    path.write_text(public + "\n")
    added = run("ssh-keys", "add", "--name", "laptop", "--file", str(path))
    assert added.code == 0, added.err
    saved = alice.get("/ssh_keys/").json()["results"]
    assert len(saved) == 1 and saved[0]["public_key"] == public
    key_id, fingerprint = saved[0]["id"], saved[0]["fingerprint"]
    assert f"ssh key {key_id} (laptop) added" in added.err
    assert fingerprint in added.out and public in added.out

    listed = run("ssh-keys", "list")
    assert listed.code == 0
    assert "FINGERPRINT" in listed.out and fingerprint in listed.out
    assert "laptop" in listed.out and "ssh-ed25519" in listed.out and "alice@laptop" in listed.out
    assert json.loads(run("ssh-keys", "list", "-o", "json").out) == alice.get("/ssh_keys/").json()

    shown = run("ssh-keys", "show", str(key_id))
    assert shown.code == 0 and public in shown.out and fingerprint in shown.out
    as_json = json.loads(run("ssh-keys", "show", str(key_id), "-o", "json").out)
    assert as_json == saved[0]


def test_add_from_key_option_and_from_stdin(run: Run, alice: ApiClient) -> None:
    first, _ = new_key("one")
    result = run("ssh-keys", "add", "-n", "one", "--key", first, "-o", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["public_key"] == first
    assert result.err == ""  # -o json: only the body, nothing for people

    second, _ = new_key("two")
    result = run("ssh-keys", "add", "--name", "two", stdin=second + "\n")
    assert result.code == 0, result.err
    names = [k["name"] for k in alice.get("/ssh_keys/").json()["results"]]
    assert names == ["two", "one"]


def test_a_private_key_is_refused_without_sending_it(
    run: Run, alice: ApiClient, tmp_path: Path, sent: list[httpx.Request]
) -> None:
    _, secret = new_key()
    path = tmp_path / "id_ed25519"
    path.write_text(secret)
    result = run("ssh-keys", "add", "--name", "oops", "--file", str(path))
    assert result.code == 2
    line = one_error_line(result)
    assert "private key" in line and f"{path}.pub" in line and "nothing was sent" in line
    assert run("ssh-keys", "add", "--name", "oops", stdin=secret).code == 2
    assert sent == []
    assert alice.get("/ssh_keys/").json()["count"] == 0


def test_usage_problems_exit_2(run: Run, tmp_path: Path, sent: list[httpx.Request]) -> None:
    public, _ = new_key()
    path = tmp_path / "k.pub"
    path.write_text(public)
    both = run("ssh-keys", "add", "--name", "k", "--file", str(path), "--key", public)
    assert both.code == 2 and "not both" in one_error_line(both)
    missing = run("ssh-keys", "add", "--name", "k", "--file", str(tmp_path / "nope.pub"))
    assert missing.code == 2 and "cannot read" in one_error_line(missing)
    assert sent == []


def test_api_refusals_are_one_line_and_exit_1(run: Run, alice: ApiClient) -> None:
    bad = run("ssh-keys", "add", "--name", "k", "--key", "ssh-dss AAAAB3NzaC1kc3M")
    assert bad.code == 1 and "ssh-dss" in one_error_line(bad)
    public, _ = new_key()
    assert run("ssh-keys", "add", "--name", "first", "--key", public).code == 0
    again = run("ssh-keys", "add", "--name", "second", "--key", public)
    assert again.code == 1 and "already saved as first" in one_error_line(again)
    assert alice.get("/ssh_keys/").json()["count"] == 1


def test_delete_asks_unless_yes(run: Run, alice: ApiClient, bob: ApiClient) -> None:
    key_id = alice.post(
        "/ssh_keys/", json={"name": "k", "public_key": new_key()[0]}
    ).json()["id"]  # fmt: skip
    refused = run("ssh-keys", "delete", str(key_id))
    assert refused.code == 2 and "--yes" in one_error_line(refused)
    assert alice.get(f"/ssh_keys/{key_id}/").status_code == 200
    deleted = run("ssh-keys", "delete", str(key_id), "--yes")
    assert deleted.code == 0 and f"ssh key {key_id} deleted" in deleted.err
    assert alice.get(f"/ssh_keys/{key_id}/").status_code == 404
    assert run("ssh-keys", "delete", str(key_id), "--yes").code == 3

    bobs = bob.post("/ssh_keys/", json={"name": "b", "public_key": new_key()[0]}).json()["id"]
    for args in (("show", str(bobs)), ("delete", str(bobs), "--yes")):
        result = run("ssh-keys", *args)
        assert result.code == 3 and "not found" in one_error_line(result)
    assert bob.get(f"/ssh_keys/{bobs}/").status_code == 200


def test_sdk_ssh_keys(alice: ApiClient, transport: httpx.MockTransport) -> None:
    public, _ = new_key("sdk")
    with Client(BASE, alice.token, transport=transport) as api:
        created = api.ssh_keys.create("sdk", public)
        assert created.public_key == public and created.fingerprint.startswith("SHA256:")
        assert api.ssh_keys.get(created.id) == created
        assert [k.id for k in api.ssh_keys.list()] == [created.id]
        assert api.ssh_keys.list_page(page_size=1).count == 1
        with pytest.raises(BadRequestError) as caught:
            api.ssh_keys.create("again", public)
        assert caught.value.errors[0].field == "body.public_key"
        api.ssh_keys.delete(created.id)
        with pytest.raises(NotFoundError):
            api.ssh_keys.get(created.id)
