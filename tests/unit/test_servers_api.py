"""The servers API on the fake driver: lifecycle, state machine, shapes, tenancy."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ApiClient
from vpsd.hypervisor.base import PowerState
from vpsd.hypervisor.fake import FakeDriver

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_create_boots_the_vm(alice: ApiClient, fake_driver: FakeDriver) -> None:
    response = alice.post("/servers/", json={"name": "web-1", "disk_gb": 2})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "web-1"
    assert body["status"] == "starting"
    assert body["disk_gb"] == 2 and body["memory_mb"] == 256 and body["vcpus"] == 1
    assert TIME.match(body["created_at"])
    alice.wait_server(body["id"], "running")
    assert fake_driver.info(body["id"]).power_state is PowerState.RUNNING


def test_list_is_newest_first_with_count(alice: ApiClient) -> None:
    ids = [
        alice.post("/servers/", json={"name": f"s{i}", "disk_gb": 1}).json()["id"] for i in range(3)
    ]
    body = alice.get("/servers/").json()
    assert body["count"] == 3
    assert [s["id"] for s in body["results"]] == sorted(ids, reverse=True)


def test_list_pages(alice: ApiClient) -> None:
    for i in range(5):
        alice.post("/servers/", json={"name": f"s{i}", "disk_gb": 1})
    first = alice.get("/servers/", params={"page_size": 2}).json()
    assert first["count"] == 5 and len(first["results"]) == 2
    assert first["previous"] is None and "page=2" in first["next"]
    last = alice.get("/servers/", params={"page_size": 2, "page": 3}).json()
    assert len(last["results"]) == 1 and last["next"] is None


def test_stop_start_delete(alice: ApiClient, fake_driver: FakeDriver) -> None:
    server = alice.create_server()
    sid = server["id"]
    stopped = alice.post(f"/servers/{sid}/stop/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopping"
    alice.wait_server(sid, "stopped")
    assert fake_driver.info(sid).power_state is PowerState.STOPPED
    assert alice.post(f"/servers/{sid}/start/").json()["status"] == "starting"
    alice.wait_server(sid, "running")
    deleted = alice.delete(f"/servers/{sid}/")
    assert deleted.status_code == 204 and deleted.content == b""
    alice.wait_server(sid, None)
    assert not fake_driver.exists(sid)
    assert alice.get("/servers/").json()["count"] == 0


def test_forbidden_transitions_answer_400_and_change_nothing(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    response = alice.post(f"/servers/{sid}/start/")
    assert response.status_code == 400
    assert "running" in response.json()["detail"]
    assert alice.server_status(sid) == "running"
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    assert alice.post(f"/servers/{sid}/stop/").status_code == 400
    assert alice.server_status(sid) == "stopped"


def test_boot_failure_puts_server_in_error_with_reason(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    fake_driver.fail_next("start", "qemu-system-x86_64 failed: out of memory")
    sid = alice.post("/servers/", json={"name": "doomed", "disk_gb": 1}).json()["id"]
    alice.wait_server(sid, "error")
    assert "out of memory" in alice.get(f"/servers/{sid}/").json()["status_reason"]
    # error → start retries the boot
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "running")


def test_vm_that_dies_turns_stopped_with_reason(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server()["id"]
    fake_driver.kill(sid)  # as if its qemu process died outside vpsd
    alice.wait_server(sid, "stopped", timeout=10)
    assert "without a stop request" in alice.get(f"/servers/{sid}/").json()["status_reason"]


def test_other_accounts_servers_are_not_found(alice: ApiClient, bob: ApiClient) -> None:
    sid = alice.create_server()["id"]
    missing = bob.get("/servers/999999/")
    for method, path in [
        ("GET", f"/servers/{sid}/"),
        ("POST", f"/servers/{sid}/stop/"),
        ("POST", f"/servers/{sid}/start/"),
        ("DELETE", f"/servers/{sid}/"),
    ]:
        response = bob.request(method, path)
        assert response.status_code == 404
        assert response.json() == missing.json()
    assert bob.get("/servers/").json()["count"] == 0
    assert alice.server_status(sid) == "running"


def test_an_unexpected_error_is_a_500_in_the_error_shape(
    alice: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vpsd.services.servers import ServerService

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ServerService, "list", broken)
    response = alice.get("/servers/")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error; the service log has the details",
        "errors": [],
    }
    assert "a bug" not in response.text
