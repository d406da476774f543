"""Changes, an update that rolls itself back (issue 23, point 5), on the fake driver: the
rules, the verdicts, the rollback that puts disk and memory back, and a change interrupted
at each phase ending in a state the user can read. The real guest side is in
tests/guest/test_guest_changes.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.helpers import ApiClient, NoDispatch, wait_for, write_fake_image
from tests.unit.vpsctl_harness import Run
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.changes import Change, ChangePhase
from vpsd.db.models import Account, Operation, Snapshot, SnapshotStatus
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeCommand, FakeDriver
from vpsd.operations import leases
from vpsd.operations.context import OperationContext
from vpsd.operations.handlers import execute
from vpsd.runtime.app import create_app
from vpsd.schemas import ChangeCreate
from vpsd.services.changes import ChangeService

TERMINAL = ("succeeded", "rolled_back", "failed")
UPGRADE = "apt-get -y upgrade"


@pytest.fixture
def client(settings: Settings, fake_driver: FakeDriver) -> Iterator[TestClient]:
    """The app with a (placeholder) debian-12 image: changes need a guest. A failing health
    check is tried for a second, not a minute."""
    settings.change_health_seconds = 1.0
    write_fake_image(settings.images_dir)
    app = create_app(settings, driver=fake_driver, backup_store=FakeBackupStore())
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def debian(alice: ApiClient, fake_driver: FakeDriver) -> dict[str, Any]:
    """A running Debian server (fake), its disk and memory written."""
    server = alice.create_server(image="debian-12", disk_gb=2)
    fake_driver.write(server["id"], b"before the update")
    fake_driver.write_memory(server["id"], b"processes before the update")
    return server


@pytest.fixture
def sshd(debian: dict[str, Any]) -> Iterator[None]:
    """Something answering the server's SSH port with a banner, as its sshd would."""
    listener = socket.create_server((debian["ssh"]["host"], debian["ssh"]["port"]))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def answer() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield
    stopping.set()
    thread.join()
    listener.close()


def run_change(alice: ApiClient, server_id: int, **body: Any) -> dict[str, Any]:
    """Start a change and wait for its end; the change."""
    response = alice.post("/changes/", json={"server_id": server_id, **body})
    assert response.status_code == 201, response.text
    change_id = response.json()["id"]

    def ended() -> dict[str, Any] | None:
        change: dict[str, Any] = alice.get(f"/changes/{change_id}/").json()
        return change if change["status"] in TERMINAL else None

    result: dict[str, Any] = wait_for(ended, 30, what=f"change {change_id}")
    return result


def test_a_change_that_passes_keeps_its_work_and_its_snapshot(
    alice: ApiClient, fake_driver: FakeDriver, debian: dict[str, Any], sshd: None
) -> None:
    sid = debian["id"]
    fake_driver.guest_commands[UPGRADE] = FakeCommand(output=b"3 upgraded\n", disk=b"updated")
    change = run_change(alice, sid, command=UPGRADE, health_check={"ssh": True})
    assert change["status"] == "succeeded", change
    assert change["exit_code"] == 0 and change["output"] == "3 upgraded\n"
    assert change["output_length"] == len("3 upgraded\n")
    assert change["health"]["check"] == "ssh" and change["health"]["passed"] is True
    assert change["health"]["detail"].startswith("SSH answers: SSH-2.0-OpenSSH_9.2p1")
    assert change["server"] == {"id": sid, "name": debian["name"]}
    assert fake_driver.read(sid) == b"updated"
    snapshot = alice.get(f"/snapshots/{change['snapshot_id']}/").json()
    assert snapshot["status"] == "completed" and snapshot["memory"] is True
    assert alice.get(f"/servers/{sid}/").json()["status"] == "running"


@pytest.mark.parametrize(
    ("does", "check", "reason"),
    [
        (FakeCommand(exit_code=100, output=b"E: broken\n", disk=b"half"), None, "exit code 100"),
        (FakeCommand(timed_out=True, disk=b"half"), None, "did not end within 5 s"),
        (FakeCommand(disk=b"sshd gone"), {"tcp_port": 80}, "nothing accepts connections on"),
        (
            FakeCommand(disk=b"broken"),
            {"command": "systemctl is-system-running"},
            "the health check failed",
        ),
    ],
    ids=["command-fails", "command-hangs", "port-closed", "check-fails"],
)
def test_a_failed_command_or_check_is_rolled_back(
    alice: ApiClient,
    fake_driver: FakeDriver,
    debian: dict[str, Any],
    does: FakeCommand,
    check: dict[str, Any] | None,
    reason: str,
) -> None:
    sid = debian["id"]
    fake_driver.guest_commands[UPGRADE] = does
    fake_driver.guest_commands["systemctl is-system-running"] = FakeCommand(
        exit_code=1, output=b"degraded\n"
    )
    body: dict[str, Any] = {"command": UPGRADE, "timeout_seconds": 5}
    if check is not None:
        body["health_check"] = check
    change = run_change(alice, sid, **body)
    assert change["status"] == "rolled_back", change
    assert reason in change["status_reason"]
    # Disk and memory are back as they were before the change: the memory snapshot resumed.
    assert fake_driver.read(sid) == b"before the update"
    assert fake_driver.read_memory(sid) == b"processes before the update"
    assert alice.get(f"/servers/{sid}/").json()["status"] == "running"
    assert alice.get(f"/snapshots/{change['snapshot_id']}/").json()["status"] == "completed"


def test_a_change_is_refused_before_anything_runs(
    alice: ApiClient, bob: ApiClient, fake_driver: FakeDriver, debian: dict[str, Any]
) -> None:
    sid = debian["id"]
    for number in range(5):
        alice.create_snapshot(sid, f"s{number}")
    full = alice.post("/changes/", json={"server_id": sid, "command": UPGRADE})
    assert full.status_code == 400
    assert "needs a free snapshot slot" in full.json()["detail"]
    assert bob.post("/changes/", json={"server_id": sid, "command": UPGRADE}).status_code == 404
    blank = alice.create_server("blank", image="blank")["id"]
    refused = alice.post("/changes/", json={"server_id": blank, "command": UPGRADE})
    assert "no guest" in refused.json()["detail"]
    for bad in (
        {"command": ""},
        {"command": "x\x00y"},
        {"command": UPGRADE, "health_check": {"ssh": True, "tcp_port": 80}},
        {"command": UPGRADE, "health_check": {"ssh": False}},
        {"command": UPGRADE, "health_check": {}},
        {"command": UPGRADE, "health_check": {"tcp_port": 0}},
        {"command": UPGRADE, "timeout_seconds": 0},
        {"command": UPGRADE, "keep_snapshot_hours": -1},
    ):
        answer = alice.post("/changes/", json={"server_id": sid, **bad})
        assert answer.status_code == 400, bad
    assert fake_driver.guest_runs == []
    assert alice.get("/changes/").json()["count"] == 0
    assert alice.get(f"/snapshots/?server_id={sid}").json()["count"] == 5


def test_changes_are_the_accounts_own(
    alice: ApiClient, bob: ApiClient, debian: dict[str, Any], sshd: None
) -> None:
    change = run_change(alice, debian["id"], command="true")
    assert bob.get(f"/changes/{change['id']}/").status_code == 404
    assert bob.get("/changes/").json()["count"] == 0
    listed = alice.get(f"/changes/?server_id={debian['id']}").json()
    assert [c["id"] for c in listed["results"]] == [change["id"]]


# --- a change interrupted at each phase (vpsd killed), run again by recovery ---------------


@pytest.fixture
def agent_ctx(
    settings: Settings,
    db: Database,
    fake_driver: FakeDriver,
    client: TestClient,
    debian: dict[str, Any],
) -> Iterator[OperationContext]:
    """What a new host agent runs operations with, on the test's database and fake driver;
    the app's own runner is stopped (after ``debian`` was made), so the test steps alone."""
    client.app.state.runtime.agent.runner.stop()  # type: ignore[attr-defined]
    yield OperationContext(
        db=db,
        driver=fake_driver,
        settings=settings,
        backups=FakeBackupStore(),
        claimant=leases.new_claimant(settings),
    )


def _interrupted_change(
    agent_ctx: OperationContext, alice: ApiClient, debian: dict[str, Any], phase: ChangePhase
) -> tuple[int, int]:
    """A change whose operation ran up to ``phase`` before its agent died (recorded as it
    would be), claimed again by a new agent; the change's and the operation's ids."""
    service = ChangeService(agent_ctx.db, agent_ctx.settings, NoDispatch())
    view = service.create(
        _account(agent_ctx.db, alice), ChangeCreate(server_id=debian["id"], command=UPGRADE)
    )
    with agent_ctx.db.write() as session:
        operation = session.query(Operation).filter_by(snapshot_id=view.snapshot_id).one()
        operation_id = operation.id
    assert leases.claim(agent_ctx.db, operation_id, agent_ctx.claimant)
    if phase != ChangePhase.SNAPSHOT:
        # The dead agent had taken the snapshot: on disk, and recorded.
        tag = _tag(agent_ctx.db, view.snapshot_id)
        taken = agent_ctx.driver.snapshot_create(debian["id"], tag, memory=True)
        assert taken.saved_state is not None
        with agent_ctx.db.write() as session:
            snapshot = session.get(Snapshot, view.snapshot_id)
            assert snapshot is not None
            snapshot.status = SnapshotStatus.COMPLETED
            snapshot.saved_state = taken.saved_state.as_dict()
    with agent_ctx.db.write() as session:
        change = session.get(Change, view.id)
        assert change is not None
        change.phase = phase
        if phase in (ChangePhase.COMMAND, ChangePhase.HEALTH):
            change.command_started_at = change.created_at
    return view.id, operation_id


def _account(db: Database, alice: ApiClient) -> int:
    with db.read() as session:
        account_id = session.scalar(select(Account.id).where(Account.name == "alice"))
        assert account_id is not None
        return account_id


def _tag(db: Database, snapshot_id: int | None) -> str:
    with db.read() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        assert snapshot is not None
        return snapshot.tag


@pytest.mark.parametrize(
    ("phase", "ends"),
    [
        (ChangePhase.SNAPSHOT, "succeeded"),  # the snapshot is taken again, then all goes on
        (ChangePhase.COMMAND, "rolled_back"),  # the command's outcome was lost: back
        (ChangePhase.HEALTH, "succeeded"),  # the command had passed: the check runs again
        (ChangePhase.ROLLBACK, "rolled_back"),  # the rollback is done again
    ],
)
def test_a_change_interrupted_at_each_phase_ends_readable(
    agent_ctx: OperationContext,
    alice: ApiClient,
    fake_driver: FakeDriver,
    debian: dict[str, Any],
    phase: ChangePhase,
    ends: str,
) -> None:
    fake_driver.guest_ports[debian["id"]] = frozenset({22})
    change_id, operation_id = _interrupted_change(agent_ctx, alice, debian, phase)
    with agent_ctx.db.write() as session:  # a port check: no sshd in this test
        change = session.get(Change, change_id)
        assert change is not None
        change.health_check = {"tcp_port": 22}
    execute(agent_ctx, operation_id)
    change_seen = alice.get(f"/changes/{change_id}/").json()
    assert change_seen["status"] == ends, change_seen
    assert change_seen["phase"] == "done"
    if phase == ChangePhase.COMMAND:
        assert "interrupted" in change_seen["status_reason"]
        assert fake_driver.read(debian["id"]) == b"before the update"
    assert alice.get(f"/servers/{debian['id']}/").json()["status"] == "running"
    assert alice.get(f"/snapshots/{change_seen['snapshot_id']}/").json()["status"] == "completed"


def test_vpsctl_shows_a_changes_output_live_and_its_verdict(
    run: Run, alice: ApiClient, fake_driver: FakeDriver, debian: dict[str, Any]
) -> None:
    sid = debian["id"]
    fake_driver.guest_ports[sid] = frozenset({80})
    fake_driver.guest_commands[UPGRADE] = FakeCommand(output=b"\x1b]52;c;evil\x07Unpacking nginx\n")
    passed = run("servers", "change", str(sid), "--check-port", "80", "--", *UPGRADE.split())
    assert passed.code == 0, passed.err
    assert passed.out == "Unpacking nginx\n"  # the guest's escapes never reach the terminal
    assert "succeeded: the change is kept" in passed.err
    assert "health check (tcp_port) passed" in passed.err
    fake_driver.guest_commands["false"] = FakeCommand(exit_code=1)
    failed = run("servers", "change", str(sid), "--", "false")
    assert failed.code == 1
    assert "rolled back: the server is as it was before the change" in failed.err
    both = run(
        "servers", "change", str(sid), "--check-port", "80", "--check-command", "x", "--", "true"
    )
    assert both.code == 2
