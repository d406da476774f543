"""Snapshots with memory (issue 23, point 1) on the fake driver: the API's rules and shapes,
a restore that resumes instead of booting, and a resume refused without a half-done state.
The real QEMU side is in tests/contract (the driver) and tests/guest (a Debian guest)."""

from __future__ import annotations

import json

import httpx

from tests.helpers import ApiClient
from tests.unit.vpsctl_harness import BASE, Run, one_error_line
from vpsd.client import Client
from vpsd.hypervisor.fake import FakeDriver


def memory_snapshot(alice: ApiClient, server_id: int, name: str = "live") -> dict[str, object]:
    """A snapshot with memory of ``server_id``, completed."""
    return alice.create_snapshot(server_id, name, memory=True)


def boots(fake_driver: FakeDriver, server_id: int) -> int:
    """How many times the server's VM booted (the fake console has a line per boot)."""
    return fake_driver.console_tail(server_id, 1 << 20).count(b"booted")


def test_a_snapshot_with_memory_says_so_and_the_pause_it_cost(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"disk")
    fake_driver.write_memory(sid, b"a process and a tmpfs")
    created = alice.post("/snapshots/", json={"server_id": sid, "name": "live", "memory": True})
    assert created.status_code == 201, created.text
    assert created.json()["memory"] is True and created.json()["pause_ms"] is None
    taken = alice.wait_snapshot(created.json()["id"])
    assert taken["status"] == "completed"
    assert taken["memory"] is True
    assert taken["pause_ms"] == round(fake_driver.pause_seconds * 1000)
    plain = alice.create_snapshot(sid, "plain")
    assert (plain["memory"], plain["pause_ms"]) == (False, None)
    listed = {s["name"]: s for s in alice.get(f"/snapshots/?server_id={sid}").json()["results"]}
    assert listed["live"] == taken and listed["plain"] == plain


def test_memory_needs_a_running_server_and_a_real_boolean(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    refused = alice.post("/snapshots/", json={"server_id": sid, "name": "m", "memory": True})
    assert refused.status_code == 400
    assert "needs a running server" in refused.json()["detail"]
    for bad in ("yes", 1, None):
        body = {"server_id": sid, "name": "m", "memory": bad}
        answer = alice.post("/snapshots/", json=body)
        assert answer.status_code == 400, bad
        assert answer.json()["errors"][0]["field"] == "body.memory"
    # Backups have no memory to keep: the field is unknown there.
    backup = alice.post("/backups/", json={"server_id": sid, "name": "b", "memory": True})
    assert backup.status_code == 400
    assert alice.get("/snapshots/").json()["count"] == 0
    assert alice.get("/backups/").json()["count"] == 0


def test_restoring_memory_resumes_the_guest_without_a_boot(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"before")
    fake_driver.write_memory(sid, b"sleep 1000 & and /dev/shm/marker")
    snapshot = memory_snapshot(alice, sid)
    fake_driver.write(sid, b"after!")
    fake_driver.write_memory(sid, b"other processes")
    booted = boots(fake_driver, sid)
    response = alice.post(f"/snapshots/{snapshot['id']}/restore/")
    assert response.status_code == 200
    assert "resumes where it was" in response.json()["message"]
    alice.wait_server(sid, "running")
    assert fake_driver.read(sid) == b"before"
    assert fake_driver.read_memory(sid) == b"sleep 1000 & and /dev/shm/marker"
    assert boots(fake_driver, sid) == booted  # resumed, never booted


def test_restoring_memory_on_a_stopped_server_brings_it_back_running(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write_memory(sid, b"state")
    snapshot = memory_snapshot(alice, sid)
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    response = alice.post(f"/snapshots/{snapshot['id']}/restore/")
    assert "is started again" in response.json()["message"]
    assert "until its status is running" in response.json()["message"]
    alice.wait_server(sid, "running")
    assert fake_driver.read_memory(sid) == b"state"


def test_a_resume_refused_changes_nothing_and_says_why(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.write(sid, b"saved")
    snapshot = memory_snapshot(alice, sid)
    fake_driver.write(sid, b"now")
    fake_driver.qemu_version = "fake-2"  # the host's QEMU was upgraded since
    assert alice.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
    alice.wait_server(sid, "running")
    server = alice.get(f"/servers/{sid}/").json()
    assert "cannot be resumed" in server["status_reason"]
    assert fake_driver.read(sid) == b"now"  # the running VM was left alone
    # The snapshot is still there for a new server made from its disks.
    assert alice.get(f"/snapshots/{snapshot['id']}/").json()["status"] == "completed"


def test_vpsctl_and_the_sdk_take_snapshots_with_memory(
    run: Run,
    alice: ApiClient,
    fake_driver: FakeDriver,
    transport: httpx.MockTransport,
    sent: list[httpx.Request],
) -> None:
    sid = alice.create_server()["id"]
    taken = run("snapshots", "create", "--server", str(sid), "--name", "live", "--memory", "--wait")
    assert taken.code == 0, taken.err
    paused = round(fake_driver.pause_seconds * 1000)
    assert f"yes (a restore resumes the guest, guest paused {paused} ms)" in taken.out
    listed = run("snapshots", "list", "--server", str(sid), "-o", "json")
    assert [s["memory"] for s in json.loads(listed.out)["results"]] == [True]
    refused = run("backups", "create", "--server", str(sid), "--name", "b", "--memory")
    assert refused.code == 2 and "has no memory to keep" in one_error_line(refused)
    with Client(BASE, alice.token, transport=transport, poll_interval=0.05) as api:
        created = api.snapshots.create(sid, "sdk", memory=True)
        assert created.memory is True
        plain = api.snapshots.create(sid, "plain")
        assert plain.memory is False
    # Without memory the SDK sends the seed page's body, nothing more.
    posted = [r for r in sent if r.method == "POST" and r.url.path.endswith("/snapshots/")]
    assert json.loads(posted[-1].content) == {
        "server_id": sid,
        "name": "plain",
    }
