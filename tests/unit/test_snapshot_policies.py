"""Snapshot policies on a fake clock: the shared slots (with hourly), a simulated day of
rotation, skipped slots when manual snapshots fill the five, catching up once after
downtime, protection against rotation; and the policy endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.helpers import ApiClient
from tests.unit.snapshot_harness import Host, at
from vpsd.config import Settings
from vpsd.db.models import Operation, OperationKind
from vpsd.db.session import Database
from vpsd.operations import snapshot_schedule
from vpsd.operations.slots import Slots
from vpsd.schemas import SnapshotPolicy
from vpsd.services.errors import Invalid
from vpsd.services.snapshot_policies import SnapshotPolicyService


@pytest.fixture
def host(db: Database, settings: Settings) -> Host:
    return Host(db, settings)


def _deletions(host: Host) -> list[str]:
    """Why each snapshot deletion was queued, in order."""
    with host.db.read() as session:
        payloads = session.scalars(
            select(Operation.payload)
            .where(Operation.kind == OperationKind.SNAPSHOT_DELETE)
            .order_by(Operation.id)
        ).all()
    return [payload["reason"] for payload in payloads]


def test_slots_hourly_daily_and_weekly_at_a_minute() -> None:
    hourly = Slots("hourly", minute=15)
    assert hourly.latest(at("2026-11-27T10:15:00")) == at("2026-11-27T10:15:00")
    assert hourly.latest(at("2026-11-27T10:14:59")) == at("2026-11-27T09:15:00")
    assert hourly.latest(at("2026-11-27T00:05:00")) == at("2026-11-26T23:15:00")
    assert hourly.following(at("2026-11-27T10:15:00")) == at("2026-11-27T11:15:00")
    daily = Slots("daily", hour=3, minute=30)
    assert daily.latest(at("2026-11-27T03:29:00")) == at("2026-11-26T03:30:00")
    assert daily.following(at("2026-11-27T03:30:00")) == at("2026-11-28T03:30:00")
    weekly = Slots("weekly", hour=2, weekday=6, minute=45)  # Sundays
    assert weekly.latest(at("2026-11-29T02:44:00")) == at("2026-11-22T02:45:00")
    assert weekly.latest(at("2026-11-29T02:45:00")) == at("2026-11-29T02:45:00")
    # A slot before the policy's last change is not due; the first one after it is.
    assert daily.due(at("2026-11-27T04:00:00"), at("2026-11-27T12:00:00")) is None
    assert daily.due(at("2026-11-27T04:00:00"), at("2026-11-28T03:30:00")) == at(
        "2026-11-28T03:30:00"
    )


def test_a_simulated_day_of_hourly_snapshots_rotates_the_oldest_automatic_first(
    host: Host,
) -> None:
    server = host.server()
    host.snapshot(server, "mine")
    host.set_policy(server, at("2026-11-02T00:00:00"), frequency="hourly", minute=0, keep=3)
    taken = 0
    for step in range(24 * 6):  # the agent looks every 10 minutes, from 00:05
        look = at("2026-11-02T00:05:00") + timedelta(minutes=10 * step)
        taken += host.look(look)
        if look.minute == 5:
            continue  # the newest was just taken: the oldest goes once it has completed
        newest = look.replace(minute=0)
        expected = [
            f"auto-{newest - timedelta(hours=back):%Y%m%d-%H%M}"
            for back in (2, 1, 0)
            if newest - timedelta(hours=back) >= at("2026-11-02T00:00:00")
        ]
        assert [name for name, kind, _ in host.shown(server) if kind == "automatic"] == expected
    assert taken == 24
    assert host.shown(server) == [
        ("mine", "manual", "completed"),
        ("auto-20261102-2100", "automatic", "completed"),
        ("auto-20261102-2200", "automatic", "completed"),
        ("auto-20261102-2300", "automatic", "completed"),
    ]
    assert host.on_disk(server) == 4  # the rotated ones are gone from the disks too
    assert _deletions(host) == ["rotated"] * 21


def test_when_manual_snapshots_fill_the_five_the_slot_is_skipped_and_says_why(
    host: Host,
) -> None:
    server = host.server()
    manual = [host.snapshot(server, f"mine-{n}") for n in range(5)]
    host.set_policy(server, at("2026-11-01T00:00:00"), hour=3)
    assert host.look(at("2026-11-02T03:00:00")) == 0
    policy = host.policies.get(host.account_id, server)
    assert policy.skipped_slot == at("2026-11-02T03:00:00")
    assert policy.skipped_reason is not None
    assert "5 snapshots (5 manual)" in policy.skipped_reason
    assert "never a manual one" in policy.skipped_reason
    assert [name for name, _, _ in host.shown(server)] == [f"mine-{n}" for n in range(5)]
    assert host.on_disk(server) == 5
    assert _deletions(host) == []

    # Room made: the same slot is taken at the next look, and the reason is gone.
    host.snapshots.delete(host.account_id, manual[0])
    host.run_pending()
    assert host.look(at("2026-11-02T03:01:00")) == 1
    policy = host.policies.get(host.account_id, server)
    assert (policy.skipped_slot, policy.skipped_reason) == (None, None)

    # Full again (4 manual, 1 automatic): the next slot rotates the automatic one out.
    assert host.look(at("2026-11-03T03:00:00")) == 1
    assert host.shown(server) == [
        *[(f"mine-{n}", "manual", "completed") for n in range(1, 5)],
        ("auto-20261103-0300", "automatic", "completed"),
    ]
    assert _deletions(host) == ["requested", "rotated"]


def test_downtime_catches_up_on_the_latest_missed_slot_once(host: Host) -> None:
    server = host.server()
    host.set_policy(server, at("2026-11-01T00:00:00"), hour=3, minute=30)
    assert host.look(at("2026-11-02T03:30:00")) == 1
    # The agent was down for three days: at its first look the latest slot is taken, once.
    assert host.look(at("2026-11-05T17:20:00")) == 1
    assert host.look(at("2026-11-05T17:21:00")) == 0
    assert host.look(at("2026-11-05T17:20:00")) == 0  # the same slot, never twice
    assert [name for name, _, _ in host.shown(server)] == [
        "auto-20261102-0330",
        "auto-20261105-0330",
    ]


def test_a_protected_automatic_snapshot_is_never_rotated(host: Host) -> None:
    server = host.server()
    host.set_policy(server, at("2026-11-02T00:00:00"), frequency="hourly", keep=2)
    host.look(at("2026-11-02T00:00:00"))
    [(first_id, _)] = _automatic_ids(host, server)
    host.update(first_id, protected=True)
    for hour in range(1, 6):
        host.look(at(f"2026-11-02T0{hour}:00:00"))
    host.look(at("2026-11-02T05:01:00"))  # rotation once the newest has completed
    assert [name for name, _, _ in host.shown(server)] == [
        "auto-20261102-0000",  # protected: kept, and not one of the two it keeps
        "auto-20261102-0400",
        "auto-20261102-0500",
    ]
    # With the five held by manual and protected ones, the slot is skipped.
    for n in range(2):
        host.update(_automatic_ids(host, server)[1 + n][0], protected=True)
    host.snapshot(server, "mine-1")
    host.snapshot(server, "mine-2")
    assert host.look(at("2026-11-02T06:00:00")) == 0
    reason = host.policies.get(host.account_id, server).skipped_reason
    assert reason is not None and "2 manual, 3 protected automatic" in reason
    assert len(host.shown(server)) == 5


def _automatic_ids(host: Host, server: int) -> list[tuple[int, str]]:
    from vpsd.db.models import Snapshot, SnapshotStatus, SnapshotType

    with host.db.read() as session:
        rows = session.execute(
            select(Snapshot.id, Snapshot.name)
            .where(
                Snapshot.server_id == server,
                Snapshot.type == SnapshotType.AUTOMATIC,
                Snapshot.status != SnapshotStatus.DELETING,
            )
            .order_by(Snapshot.id)
        ).all()
    return [(snapshot_id, name) for snapshot_id, name in rows]


def test_a_failed_automatic_snapshot_goes_once_a_newer_one_completed(host: Host) -> None:
    server = host.server()
    host.set_policy(server, at("2026-11-02T00:00:00"), frequency="hourly", keep=3)
    host.driver.fail_next("snapshot_create", "disk full")
    host.look(at("2026-11-02T00:00:00"))
    assert host.shown(server) == [("auto-20261102-0000", "automatic", "failed")]
    host.look(at("2026-11-02T01:00:00"))
    host.look(at("2026-11-02T01:01:00"))  # rotation after the new one completed
    assert host.shown(server) == [("auto-20261102-0100", "automatic", "completed")]


def test_keep_is_at_most_the_snapshots_a_server_may_have(host: Host, settings: Settings) -> None:
    server = host.server()
    fewer = SnapshotPolicyService(
        host.db, settings.model_copy(update={"max_snapshots_per_server": 3})
    )
    with pytest.raises(Invalid, match="at most 3 snapshots"):
        fewer.set(host.account_id, server, SnapshotPolicy(keep=4))
    assert fewer.get(host.account_id, server).enabled is False  # nothing stored


def test_policy_endpoints(alice: ApiClient, bob: ApiClient) -> None:
    sid = alice.create_server()["id"]
    default = {
        "enabled": False,
        "frequency": "daily",
        "minute": 0,
        "hour": 3,
        "weekday": 6,
        "keep": 3,
        "next_run_at": None,
        "last_skipped": None,
    }
    assert alice.get(f"/servers/{sid}/snapshot-policy/").json() == default
    response = alice.request(
        "PUT", f"/servers/{sid}/snapshot-policy/", json={"frequency": "hourly", "minute": 30}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == list(default)
    assert {k: body[k] for k in ("enabled", "frequency", "minute", "keep")} == {
        "enabled": True,
        "frequency": "hourly",
        "minute": 30,
        "keep": 3,
    }
    upcoming = datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00"))
    assert upcoming.minute == 30
    assert timedelta(0) < upcoming - datetime.now(UTC) <= timedelta(hours=1)
    assert alice.get(f"/servers/{sid}/snapshot-policy/").json() == body

    for wrong, words in (
        ({"keep": 6}, "less than or equal to 5"),
        ({"frequency": "monthly"}, "'hourly', 'daily' or 'weekly'"),
        ({"minute": 60}, "less than or equal to 59"),
        ({"enabled": "yes"}, "valid boolean"),
    ):
        refused = alice.request("PUT", f"/servers/{sid}/snapshot-policy/", json=wrong)
        assert refused.status_code == 400, wrong
        assert words in refused.json()["detail"], refused.json()
    assert alice.get(f"/servers/{sid}/snapshot-policy/").json() == body  # nothing changed
    assert bob.get(f"/servers/{sid}/snapshot-policy/").status_code == 404
    assert bob.request("PUT", f"/servers/{sid}/snapshot-policy/", json={}).status_code == 404


def test_a_policy_changed_after_the_look_read_it_takes_nothing(host: Host) -> None:
    """The look reads the due slots, then takes each under the server's lock: a policy
    disabled or moved in between takes nothing."""
    server = host.server()
    host.set_policy(server, at("2026-11-01T00:00:00"), hour=3)
    slot, now = at("2026-11-02T03:00:00"), at("2026-11-02T03:00:30")
    host.policies.set(host.account_id, server, SnapshotPolicy(enabled=False))
    assert snapshot_schedule._take(host.db, server, slot, now, 5) is False
    host.set_policy(server, at("2026-11-01T00:00:00"), hour=4)
    assert snapshot_schedule._take(host.db, server, slot, now, 5) is False
    assert host.shown(server) == []
    host.set_policy(server, at("2026-11-01T00:00:00"), hour=3)
    assert snapshot_schedule._take(host.db, server, slot, now, 5) is True
