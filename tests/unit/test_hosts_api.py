"""Hosts: the local host registers at start, admins list, drain and undrain hosts (tenants
get 404), and new servers are placed on an up host where they fit."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.helpers import ApiClient
from vpsd.agent.heartbeat import measure_capacity, register
from vpsd.agent.recovery import recover
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import (
    Account,
    Host,
    HostState,
    Operation,
    OperationKind,
    OperationStatus,
    Server,
    ServerStatus,
)
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations.context import OperationContext
from vpsd.operations.outbox import enqueue
from vpsd.services.tokens import create_token

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def admin(client: TestClient, db: Database) -> ApiClient:
    """An admin account's view of the API."""
    return ApiClient(client, create_token(db, "root-ops", admin=True)[1])


def add_host(
    db: Database, name: str, *, memory_mb: int, vcpus: int = 8, seen: datetime | None = None
) -> int:
    """A host as another machine's ``vpsd agent`` would register it: alive now, no
    overcommit; its id."""
    with db.write() as session:
        host = Host(
            name=name, state=HostState.UP, vcpus=vcpus, memory_mb=memory_mb, disk_gb=1000,
            cpu_overcommit=1.0, memory_overcommit=1.0, disk_overcommit=1.0,
            last_heartbeat_at=seen or utcnow(),
        )  # fmt: skip
        session.add(host)
        session.flush()
        return host.id


def host_of(db: Database, server_id: int) -> str:
    with db.read() as session:
        return session.scalar(
            select(Host.name).join(Server, Server.host_id == Host.id).where(Server.id == server_id)
        )


def post_server(api: ApiClient, name: str) -> dict[str, Any]:
    """Create a server without waiting for it: on another host it waits for that host."""
    response = api.post("/servers/", json={"name": name, "disk_gb": 1})
    assert response.status_code == 201, response.text
    server: dict[str, Any] = response.json()
    return server


def only_remote_hosts(admin: ApiClient, settings: Settings) -> None:
    """Drain this machine's host, so placement chooses among the added ones."""
    [local] = [h for h in admin.get("/hosts/").json()["results"] if h["name"] == settings.host_name]
    assert admin.post(f"/hosts/{local['id']}/drain/").status_code == 200


def test_the_local_host_registers_at_start_and_admins_see_it(
    admin: ApiClient, alice: ApiClient, settings: Settings
) -> None:
    alice.create_server("web-1")
    body = admin.get("/hosts/").json()
    assert body["count"] == 1 and body["next"] is None
    [host] = body["results"]
    assert host["name"] == settings.host_name
    assert host["state"] == "up"
    assert host["servers"] == 1
    assert TIME.match(host["last_heartbeat_at"])
    assert set(host["capacity"]) == {"vcpus", "memory_mb", "disk_gb"}
    assert host["capacity"]["vcpus"] >= 1 and host["capacity"]["memory_mb"] > 0


def test_tenants_never_see_hosts(admin: ApiClient, alice: ApiClient, client: TestClient) -> None:
    [host] = admin.get("/hosts/").json()["results"]
    assert alice.get("/hosts/").status_code == 404
    for action in ("drain", "undrain"):
        assert alice.post(f"/hosts/{host['id']}/{action}/").status_code == 404
    assert admin.get("/hosts/").json()["results"][0]["state"] == "up"  # nothing changed
    assert client.get("/api/v1/hosts/").status_code == 401
    server = alice.create_server("web-1")
    assert "host" not in str(sorted(server)) and "host" not in alice.get("/servers/").text


def test_new_servers_go_to_the_host_with_most_free_memory(
    admin: ApiClient, alice: ApiClient, db: Database, settings: Settings
) -> None:
    assert settings.default_memory_mb == 256  # the servers' size below
    add_host(db, "kvm-small", memory_mb=1024)
    add_host(db, "kvm-big", memory_mb=2048)
    only_remote_hosts(admin, settings)
    placed = [host_of(db, post_server(alice, f"web-{i}")["id"]) for i in range(6)]
    # kvm-big has the most memory left until it holds 4 servers; then both would have 768
    # MiB left and kvm-small, with fewer servers, wins the tie; then kvm-big has more again.
    assert placed == ["kvm-big"] * 4 + ["kvm-small", "kvm-big"]
    counts = {h["name"]: h["servers"] for h in admin.get("/hosts/").json()["results"]}
    assert counts == {settings.host_name: 0, "kvm-big": 5, "kvm-small": 1}


def test_draining_and_silent_hosts_get_no_new_servers(
    admin: ApiClient, alice: ApiClient, db: Database, settings: Settings
) -> None:
    silent = utcnow() - timedelta(seconds=settings.host_down_after_seconds + 1)
    add_host(db, "kvm-silent", memory_mb=64 * 1024, seen=silent)
    drained_id = add_host(db, "kvm-drained", memory_mb=64 * 1024)
    add_host(db, "kvm-small", memory_mb=1024)
    only_remote_hosts(admin, settings)
    drained = admin.post(f"/hosts/{drained_id}/drain/")
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    states = {h["name"]: h["state"] for h in admin.get("/hosts/").json()["results"]}
    assert states["kvm-silent"] == "down" and states["kvm-drained"] == "draining"
    first = post_server(alice, "web-1")
    assert host_of(db, first["id"]) == "kvm-small"
    # Undrained, it takes new servers again (it has the most memory left).
    undrained = admin.post(f"/hosts/{drained_id}/undrain/")
    assert undrained.status_code == 200 and undrained.json()["state"] == "up"
    assert host_of(db, post_server(alice, "web-2")["id"]) == "kvm-drained"


def test_an_operation_runs_only_on_its_servers_host(
    admin: ApiClient, alice: ApiClient, client: TestClient, db: Database, settings: Settings
) -> None:
    local = alice.create_server("here")  # booted by this host's runner
    add_host(db, "kvm-02", memory_mb=64 * 1024)
    only_remote_hosts(admin, settings)
    remote = post_server(alice, "there")
    assert host_of(db, remote["id"]) == "kvm-02"
    # This host's runner finds nothing to run: the boot waits for kvm-02's own agent.
    assert client.app.state.runtime.agent.runner.claim_ready() == 0
    assert alice.get(f"/servers/{remote['id']}/").json()["status"] == "starting"
    # ...while this host's servers keep working (a draining host keeps its servers).
    assert alice.post(f"/servers/{local['id']}/stop/").status_code == 200
    alice.wait_server(local["id"], "stopped")
    assert alice.get(f"/servers/{remote['id']}/").json()["status"] == "starting"


def test_no_host_that_fits_is_a_clear_400_that_changes_nothing(
    admin: ApiClient, alice: ApiClient, db: Database, settings: Settings
) -> None:
    add_host(db, "kvm-tiny", memory_mb=512)
    only_remote_hosts(admin, settings)
    too_big = alice.post("/servers/", json={"name": "big", "disk_gb": 1, "memory_mb": 1024})
    assert too_big.status_code == 400
    assert "cannot run a server of that size" in too_big.json()["detail"]
    assert "kvm-tiny" not in too_big.text  # tenants never learn host names
    for host in admin.get("/hosts/").json()["results"]:
        admin.post(f"/hosts/{host['id']}/drain/")
    none_up = alice.post("/servers/", json={"name": "web", "disk_gb": 1})
    assert none_up.status_code == 400
    assert "no host is taking new servers" in none_up.json()["detail"]
    assert alice.get("/servers/").json()["count"] == 0


def test_drain_of_an_unknown_host_is_404(admin: ApiClient) -> None:
    assert admin.post("/hosts/999/drain/").status_code == 404
    assert admin.post("/hosts/abc/drain/").status_code == 400


def test_admin_flag_comes_from_token_create(db: Database) -> None:
    create_token(db, "ops", admin=True)
    create_token(db, "ops")  # another token of an admin account: it stays an admin
    create_token(db, "tenant")
    with db.read() as session:
        flags = {
            name: flag for name, flag in session.execute(select(Account.name, Account.is_admin))
        }
    assert flags == {"ops": True, "tenant": False}


def test_servers_from_before_hosts_are_adopted_by_the_host_that_registers(
    db: Database, settings: Settings
) -> None:
    with db.write() as session:  # as migration 0006 leaves a server made before it
        account = Account(name="old-timer")
        session.add(account)
        session.flush()
        server = Server(
            account_id=account.id, name="legacy", status="stopped",
            memory_mb=256, vcpus=1, disk_gb=1, host_id=None,
        )  # fmt: skip
        session.add(server)
        session.flush()
        server_id = server.id
    host_id = register(db, settings, measure_capacity(settings))
    with db.read() as session:
        assert session.get(Server, server_id).host_id == host_id
        assert session.scalar(select(Host.name).where(Host.id == host_id)) == settings.host_name


def test_a_silent_hosts_servers_say_their_host_is_not_responding(
    admin: ApiClient, alice: ApiClient, client: TestClient, db: Database, settings: Settings
) -> None:
    remote_id = add_host(db, "kvm-02", memory_mb=64 * 1024)
    only_remote_hosts(admin, settings)
    server = post_server(alice, "there")
    assert alice.get(f"/servers/{server['id']}/").json()["status_reason"] is None
    with db.write() as session:  # kvm-02's agent dies: no heartbeat for longer than allowed
        host = session.get(Host, remote_id)
        assert host is not None
        host.last_heartbeat_at = utcnow() - timedelta(seconds=settings.host_down_after_seconds + 1)
    states = {h["name"]: h["state"] for h in admin.get("/hosts/").json()["results"]}
    assert states["kvm-02"] == "down"
    shown = alice.get(f"/servers/{server['id']}/").json()
    assert shown["status"] == "starting"  # its boot waits for kvm-02, never runs elsewhere
    assert "its host is not responding" in shown["status_reason"]
    assert "kvm-02" not in str(alice.get("/servers/").json())
    assert client.app.state.runtime.agent.runner.claim_ready() == 0


def test_recovery_settles_only_its_own_hosts_operations(
    db: Database, settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    """At start a host requeues its own interrupted operations; another host's running one
    is that host's to finish, not this one's to redo."""
    remote_host = add_host(db, "kvm-02", memory_mb=64 * 1024)
    with db.write() as session:
        account = Account(name="carol")
        session.add(account)
        session.flush()
        ids = {}
        for name, host_id in (("here", None), ("there", remote_host)):
            server = Server(
                account_id=account.id, name=name, status=ServerStatus.STARTING,
                memory_mb=256, vcpus=1, disk_gb=1,
                host_id=host_id or session.scalar(
                    select(Host.id).where(Host.name == settings.host_name)
                ),
            )  # fmt: skip
            session.add(server)
            session.flush()
            operation = enqueue(session, OperationKind.SERVER_CREATE, server.id)
            operation.status = OperationStatus.RUNNING  # claimed, then the host died
            session.flush()
            ids[name] = operation.id
    recover(OperationContext(db, fake_driver, settings, fake_store))
    with db.read() as session:
        status = dict(session.execute(select(Operation.id, Operation.status)).all())
    assert status[ids["here"]] == OperationStatus.PENDING  # requeued: it runs again here
    assert status[ids["there"]] == OperationStatus.RUNNING  # left to kvm-02
