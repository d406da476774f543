"""``vpsctl snapshots update`` and ``policy``, ``vpsctl servers delete --force`` and the SDK's
calls for them, through vpsctl's real ``main()`` and the SDK against the app in-process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.helpers import ApiClient
from tests.unit.vpsctl_harness import BASE, Run, one_error_line
from vpsd.client import BadRequestError, Client


def _patches(sent: list[httpx.Request]) -> list[object]:
    return [json.loads(r.content) for r in sent if r.method == "PATCH"]


def _api_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_update_changes_only_what_is_given(
    run: Run, alice: ApiClient, sent: list[httpx.Request]
) -> None:
    server = alice.create_server()["id"]
    sid = alice.create_snapshot(server, "before", description="mine")["id"]

    renamed = run("snapshots", "update", str(sid), "--name", "after")
    assert renamed.code == 0, renamed.err
    assert _patches(sent) == [{"name": "after"}]
    shown = alice.get(f"/snapshots/{sid}/").json()
    assert (shown["name"], shown["description"]) == ("after", "mine")

    protected = run("snapshots", "update", str(sid), "--protect")
    assert protected.code == 0, protected.err
    assert any(line.split()[:2] == ["Protected", "yes"] for line in protected.out.splitlines())

    refused = run("snapshots", "update", str(sid), "--expires-in", "24h")
    assert refused.code == 1
    assert "never expires" in one_error_line(refused)
    assert alice.get(f"/snapshots/{sid}/").json()["expires_at"] is None

    expiring = run(
        "snapshots", "update", str(sid), "--unprotect", "--expires-in", "1d", "-o", "json"
    )
    assert expiring.code == 0, expiring.err
    body = json.loads(expiring.out)
    assert body == alice.get(f"/snapshots/{sid}/").json()
    assert body["protected"] is False
    wanted = datetime.now(UTC) + timedelta(days=1)
    assert abs(_api_time(body["expires_at"]) - wanted) < timedelta(minutes=2)

    cleared = run("snapshots", "update", str(sid), "--no-expiry")
    assert cleared.code == 0, cleared.err
    assert _patches(sent)[-1] == {"expires_at": None}
    assert alice.get(f"/snapshots/{sid}/").json()["expires_at"] is None

    listed = run("snapshots", "list")
    assert "TYPE" in listed.out and "PROTECTED" in listed.out and "EXPIRES" in listed.out
    assert "manual" in next(line for line in listed.out.splitlines() if " after " in line)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "nothing to change"),
        (["--expires-in", "soon"], "give a duration such as 30m"),
        (["--expires-in", "0h"], "give a duration such as 30m"),
        (["--expires-in", "1h", "--no-expiry"], "not both"),
    ],
)
def test_update_refuses_what_it_cannot_send(
    run: Run, alice: ApiClient, sent: list[httpx.Request], args: list[str], words: str
) -> None:
    server = alice.create_server()["id"]
    sid = alice.create_snapshot(server, "before")["id"]
    result = run("snapshots", "update", str(sid), *args)
    assert result.code == 2
    assert words in one_error_line(result)
    assert _patches(sent) == []


def test_snapshot_policy_shows_and_changes_only_what_is_given(
    run: Run, alice: ApiClient, sent: list[httpx.Request]
) -> None:
    server = alice.create_server()["id"]
    shown = run("snapshots", "policy", str(server))
    assert shown.code == 0, shown.err
    assert "disabled" in shown.out

    changed = run(
        "snapshots", "policy", str(server), "--enable", "--frequency", "hourly",
        "--minute", "15", "--keep", "2",
    )  # fmt: skip
    assert changed.code == 0, changed.err
    assert "hourly at minute 15" in changed.out
    kept = run("snapshots", "policy", str(server), "--keep", "3", "-o", "json")
    assert kept.code == 0, kept.err
    body = json.loads(kept.out)
    assert body == alice.get(f"/servers/{server}/snapshot-policy/").json()
    assert (body["frequency"], body["minute"], body["keep"]) == ("hourly", 15, 3)
    puts = [json.loads(r.content) for r in sent if r.method == "PUT"]
    assert puts[-1] == {
        "enabled": True, "frequency": "hourly", "minute": 15, "hour": 3, "weekday": 6, "keep": 3,
    }  # fmt: skip
    too_many = run("snapshots", "policy", str(server), "--keep", "6")
    assert too_many.code == 2


def test_servers_delete_force_names_the_protection_it_removed(run: Run, alice: ApiClient) -> None:
    server = alice.create_server()["id"]
    sid = alice.create_snapshot(server, "keep-me")["id"]
    alice.request("PATCH", f"/snapshots/{sid}/", json={"protected": True})
    refused = run("servers", "delete", str(server), "--yes")
    assert refused.code == 1
    assert "keep-me" in one_error_line(refused) and "force" in one_error_line(refused)
    assert alice.server_status(server) == "running"
    forced = run("servers", "delete", str(server), "--force", "--yes")
    assert forced.code == 0, forced.err
    assert f"protection removed from snapshots {sid} (keep-me)" in forced.err


def test_sdk_snapshot_lifecycle_calls(alice: ApiClient, transport: httpx.MockTransport) -> None:
    server = alice.create_server()["id"]
    with Client(BASE, alice.token, transport=transport, poll_interval=0.05) as api:
        later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
        created = api.snapshots.create(server, "sdk", "note", expires_at=later)
        assert (created.expires_at, created.type, created.protected) == (later, "manual", False)
        with pytest.raises(ValueError, match="zone-aware"):
            api.snapshots.create(server, "naive", expires_at=datetime(2030, 1, 1))
        api.wait_for_snapshot(created.id)
        updated = api.snapshots.update(created.id, description=None, expires_at=None)
        assert (updated.description, updated.expires_at, updated.name) == (None, None, "sdk")
        protected = api.snapshots.update(created.id, protected=True)
        assert protected.protected and protected.description is None
        with pytest.raises(BadRequestError, match="never expires"):
            api.snapshots.update(created.id, expires_at=later)

        policy = api.servers.set_snapshot_policy(server, frequency="weekly", weekday=0, keep=2)
        assert (policy.frequency, policy.weekday, policy.keep, policy.enabled) == (
            "weekly", 0, 2, True,
        )  # fmt: skip
        assert policy.next_run_at is not None and policy.next_run_at.weekday() == 0
        assert api.servers.get_snapshot_policy(server) == policy

        with pytest.raises(BadRequestError, match="protected"):
            api.servers.delete(server)
        deleted = api.servers.delete(server, force=True)
        assert deleted is not None
        assert [(s.id, s.name) for s in deleted.unprotected_snapshots] == [(created.id, "sdk")]
