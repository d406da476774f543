"""``vpsd serve`` as a user runs it: real QEMU VMs behind the HTTP API."""

from __future__ import annotations

import subprocess

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]


def _qemu_running(server: LiveServer, server_id: int) -> bool:
    """Whether ``ps`` shows this live server's QEMU process for ``server_id``."""
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True)
    folder = f"{server.data_dir}/servers/{server_id}/"
    return any(
        f"-name vpsd-server-{server_id} " in line and folder in line
        for line in ps.stdout.splitlines()
    )


def test_server_lifecycle_is_a_real_vm(live_server: LiveServer, alice_live: ApiClient) -> None:
    server = alice_live.create_server("web-server-01", disk_gb=2)
    sid = server["id"]
    assert _qemu_running(live_server, sid)
    disk = live_server.data_dir / "servers" / str(sid) / "disk0.qcow2"
    assert disk.exists()

    assert alice_live.post(f"/servers/{sid}/stop/").status_code == 200
    alice_live.wait_server(sid, "stopped")
    assert not _qemu_running(live_server, sid)
    assert "forced off" in alice_live.get(f"/servers/{sid}/").json()["status_reason"]

    assert alice_live.post(f"/servers/{sid}/start/").status_code == 200
    alice_live.wait_server(sid, "running")
    assert _qemu_running(live_server, sid)

    assert alice_live.delete(f"/servers/{sid}/").status_code == 204
    alice_live.wait_server(sid, None)
    assert not _qemu_running(live_server, sid)
    assert not disk.parent.exists()


def test_vms_and_status_survive_kill_9_of_vpsd(
    live_server: LiveServer, alice_live: ApiClient
) -> None:
    running = alice_live.create_server("keeps-running")["id"]
    stopped = alice_live.create_server("stays-stopped")["id"]
    alice_live.post(f"/servers/{stopped}/stop/")
    alice_live.wait_server(stopped, "stopped")

    live_server.kill()
    assert _qemu_running(live_server, running), "the VM must outlive vpsd"
    live_server.restart()

    assert alice_live.server_status(running) == "running"
    assert alice_live.server_status(stopped) == "stopped"
    assert _qemu_running(live_server, running) and not _qemu_running(live_server, stopped)
    # and it still obeys: the surviving VM is stopped through the restarted vpsd
    alice_live.post(f"/servers/{running}/stop/")
    alice_live.wait_server(running, "stopped")
    assert not _qemu_running(live_server, running)


def test_vm_killed_outside_vpsd_turns_stopped(
    live_server: LiveServer, alice_live: ApiClient
) -> None:
    sid = alice_live.create_server()["id"]
    pid = int((live_server.data_dir / "servers" / str(sid) / "qemu.pid").read_text())
    subprocess.run(["kill", "-9", str(pid)], check=True)
    alice_live.wait_server(sid, "stopped", timeout=20)
    reason = alice_live.get(f"/servers/{sid}/").json()["status_reason"]
    assert "without a stop request" in reason
    assert alice_live.get("/servers/").status_code == 200


def test_token_cli_works_while_serving(live_server: LiveServer) -> None:
    token = live_server.create_token("carol")
    client = live_server.client(token)
    assert client.get("/servers/").json() == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }
    listed = live_server.cli("token", "list").stdout
    assert "carol" in listed and token not in listed
    token_id = next(line.split()[1] for line in listed.splitlines() if "carol" in line)
    live_server.cli("token", "revoke", token_id)
    # A revocation takes effect within VPSD_TOKEN_CACHE_SECONDS (2 s by default).
    wait_for(lambda: client.get("/servers/").status_code == 401, 10, what="revocation")
    response = client.get("/servers/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert token not in live_server.log()


def test_requests_are_not_logged_unless_asked(live_server: LiveServer) -> None:
    """Polling clients would drown the log: no line per request by default (the token
    secrecy test runs with VPSD_ACCESS_LOG=true and finds them)."""
    client = live_server.client(live_server.create_token("dave"))
    for _ in range(3):
        assert client.get("/servers/").status_code == 200
    log = live_server.log()
    assert "ready" in log  # the log is there, and written as the service runs
    assert "GET /api/v1/servers/" not in log


def test_an_admin_token_from_the_cli_sees_this_host(live_server: LiveServer) -> None:
    created = live_server.cli("token", "create", "--account", "ops", "--admin")
    assert "admin account 'ops'" in created.stderr
    admin = live_server.client(created.stdout.strip().splitlines()[-1])
    [host] = admin.get("/hosts/").json()["results"]
    assert host["state"] == "up" and host["servers"] == 0
    tenant = live_server.client(live_server.create_token("erin"))
    assert tenant.get("/hosts/").status_code == 404
