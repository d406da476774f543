"""Replays of the attacks of issue 10 on state and resources (findings 2, 3, 6 and 7), each
kept here so it stays fixed. In-process app on the fake driver, on SQLite and PostgreSQL; the
real-QEMU halves are in ``tests/integration/test_liveness.py`` and
``tests/faults/test_paused_guest.py``.

- 2: a VM whose liveness cannot be read (``/proc`` failing with EMFILE) is neither recorded
  stopped by a stop, nor flipped to stopped by the monitor, nor booted a second time.
- 3: one token asking for 25 big servers gets 400s once past its quota or the host's
  capacity, never a 500, and the refused requests create nothing, also when concurrent.
- 6: a snapshot cannot be deleted while a restore from it is queued or running.
- 7: a VM that QEMU paused on a full disk shows ``paused`` with the reason, and runs again
  once space is back.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiClient, NoDispatch, measure_as, wait_for
from tests.unit.conftest import account_token
from vpsd.agent import monitor
from vpsd.agent.heartbeat import HostCapacity
from vpsd.config import Settings
from vpsd.db.models import Account, Operation, OperationKind, Server, ServerStatus, Snapshot
from vpsd.db.session import Database
from vpsd.hypervisor.base import BootFailed
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations import handlers
from vpsd.runtime.app import create_app
from vpsd.schemas import ServerCreate
from vpsd.services import quotas
from vpsd.services.errors import DomainError, InvalidState
from vpsd.services.servers import ServerService
from vpsd.services.snapshots import SnapshotService

GIB_MB = 1024
# The attacked host: 2 CPUs, 23.5 GiB of memory; room on disk for a few thin 2 TiB disks.
ATTACKED_HOST = HostCapacity(cpus=2, memory_mb=23 * GIB_MB + 512 - 1024, disk_free_gb=2000)
BIG = {"disk_gb": 2048, "memory_mb": 8 * GIB_MB, "vcpus": 2}
VPSD = str(Path(sys.executable).parent / "vpsd")
HOST_INTERNALS = ("Cannot allocate memory", "recommended cpus", "qemu", "/proc", "pid")


@pytest.fixture(autouse=True)
def fast_liveness_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operations retry an unknown liveness a few times, quickly (seconds in production)."""
    monkeypatch.setattr(handlers, "LIVENESS_RETRY_DELAYS", (0.05, 0.05))


def _host(monkeypatch: pytest.MonkeyPatch, settings: Settings, host: HostCapacity) -> None:
    measure_as(monkeypatch, settings, host)


def _server_count(settings: Settings) -> int:
    database = Database(settings.effective_database_url)
    try:
        with database.read() as session:
            return session.query(Server).count()
    finally:
        database.dispose()


# --- finding 2: liveness is three-valued ---------------------------------------------------


def test_stop_is_not_recorded_while_liveness_is_unknown(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    sid = alice.create_server()["id"]
    pid = fake_driver.info(sid).pid
    fake_driver.set_liveness_unknown(sid)  # /proc/<pid>/cmdline: EMFILE

    # The monitor cannot tell, so it does not flip the server (5 intervals pass).
    time.sleep(5 * settings.monitor_interval)
    assert alice.server_status(sid) == "running"

    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    wait_for(lambda: alice.server_status(sid) != "stopping", 10, what="the stop to end")
    server = alice.get(f"/servers/{sid}/").json()
    assert server["status"] == "error", server  # never "stopped": it did not happen
    assert "could not tell whether the VM is running" in server["status_reason"]
    assert not any(word in server["status_reason"] for word in HOST_INTERNALS), server

    # Starting again while it is still unknown boots no second VM.
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    wait_for(lambda: alice.server_status(sid) != "starting", 10, what="the start to end")
    assert alice.server_status(sid) == "error"

    fake_driver.set_liveness_unknown(sid, False)
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "running")
    assert fake_driver.info(sid).pid == pid  # the same VM, found running, not a new one
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")


def test_a_liveness_glitch_is_retried_and_the_stop_completes(
    alice: ApiClient, fake_driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "LIVENESS_RETRY_DELAYS", (1.0, 1.0))
    sid = alice.create_server()["id"]
    fake_driver.set_liveness_unknown(sid)
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    wait_for(lambda: ("stop", sid) in fake_driver.calls, 5, what="the first try")
    fake_driver.set_liveness_unknown(sid, False)  # readable again before the retries end
    alice.wait_server(sid, "stopped")
    assert fake_driver.info(sid).pid is None


def test_monitor_leaves_a_server_whose_liveness_is_unknown(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    sid = alice.create_server()["id"]
    with fake_driver._lock:  # the VM dies, and /proc becomes unreadable, at one moment
        fake_driver.kill(sid)
        fake_driver.set_liveness_unknown(sid)
    time.sleep(5 * settings.monitor_interval)
    assert alice.server_status(sid) == "running"  # unknown is not "stopped"
    fake_driver.set_liveness_unknown(sid, False)
    alice.wait_server(sid, "stopped", timeout=10)  # once it can be seen, it is recorded


# --- finding 3: quotas and admission control -----------------------------------------------


def _flood(alice: ApiClient, count: int, **size: int) -> Counter[int]:
    codes: Counter[int] = Counter()
    for i in range(count):
        response = alice.post("/servers/", json={"name": f"big-{i}", **size})
        codes[response.status_code] += 1
        if response.status_code == 400:
            detail = response.json()["detail"]
            assert "quota" in detail or "cannot run a server of that size" in detail, detail
            assert not any(word in detail for word in HOST_INTERNALS), detail
    return codes


def test_25_big_servers_on_defaults_are_refused_by_the_quota(
    alice: ApiClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, settings, ATTACKED_HOST)
    codes = _flood(alice, 25, **BIG)
    # 2 TiB is beyond the default disk quota (1 TiB): nothing at all is created.
    assert codes == Counter({400: 25})
    assert _server_count(settings) == 0


def test_25_big_servers_with_a_high_quota_stop_at_the_host_capacity(
    alice: ApiClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, settings, ATTACKED_HOST)
    database = Database(settings.effective_database_url)
    try:
        unlimited = {"servers": 100, "vcpus": 1000, "memory_mb": 10**6, "disk_gb": 10**6}
        quotas.set_quota(database, settings, "alice", unlimited)
    finally:
        database.dispose()
    codes = _flood(alice, 25, **BIG)
    # 22.5 GiB of memory for guests: two 8 GiB servers, not three.
    assert codes == Counter({201: 2, 400: 23})
    assert _server_count(settings) == 2
    refused = alice.post("/servers/", json={"name": "one-more", **BIG})
    assert refused.json()["detail"].startswith("vpsd cannot run a server of that size")


def test_small_servers_stop_at_the_server_quota(
    alice: ApiClient, bob: ApiClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, settings, HostCapacity(cpus=8, memory_mb=64 * GIB_MB, disk_free_gb=1000))
    codes = _flood(alice, 25, disk_gb=1)
    assert codes == Counter({201: settings.quota_servers, 400: 25 - settings.quota_servers})
    refused = alice.post("/servers/", json={"name": "eleventh", "disk_gb": 1})
    assert "server quota reached" in refused.json()["detail"]
    # Another account has a quota of its own.
    assert bob.post("/servers/", json={"name": "b", "disk_gb": 1}).status_code == 201
    # A deleted server frees its place in the quota.
    first = alice.get("/servers/").json()["results"][-1]["id"]
    assert alice.delete(f"/servers/{first}/").status_code == 204
    alice.wait_server(first, None)
    assert alice.post("/servers/", json={"name": "again", "disk_gb": 1}).status_code == 201


def test_sizes_beyond_what_the_host_can_run_are_refused_without_its_numbers(
    alice: ApiClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused in the account's words (its quota, naming the field), or as a size no host
    can run now; never with the host's capacity (issue 22: "at most 233 / 23081")."""
    _host(monkeypatch, settings, ATTACKED_HOST)
    host_numbers = [str(ATTACKED_HOST.memory_mb), str(ATTACKED_HOST.disk_free_gb)]
    for field, value in (("vcpus", 3), ("memory_mb", 23 * GIB_MB), ("disk_gb", 6001)):
        body = {"name": "huge", "disk_gb": 1, field: value}
        response = alice.post("/servers/", json=body)
        assert response.status_code == 400, response.text
        error = response.json()
        if error["errors"]:
            assert error["errors"][0]["field"] == f"body.{field}"
            assert error["detail"].endswith("(your account's quota)")
        else:
            assert error["detail"].startswith("vpsd cannot run a server of that size")
        assert not any(number in response.text for number in host_numbers), response.text
    assert _server_count(settings) == 0


def test_boot_failures_do_not_show_host_details(alice: ApiClient, fake_driver: FakeDriver) -> None:
    qemu_said = (
        "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory; "
        "Number of SMP cpus requested (4) exceeds the recommended cpus supported by KVM (2)"
    )
    original = fake_driver.start

    def failing_start(spec: Any) -> None:
        fake_driver.start = original  # type: ignore[method-assign]
        raise BootFailed(qemu_said)

    fake_driver.start = failing_start  # type: ignore[method-assign]
    response = alice.post("/servers/", json={"name": "doomed", "disk_gb": 1})
    sid = response.json()["id"]
    alice.wait_server(sid, "error")
    reason = alice.get(f"/servers/{sid}/").json()["status_reason"]
    assert "could not be started on this host" in reason
    assert not any(word in reason for word in HOST_INTERNALS), reason


def _accounts(db: Database, *names: str) -> list[int]:
    with db.write() as session:
        accounts = [Account(name=name) for name in names]
        session.add_all(accounts)
        session.flush()
        return [account.id for account in accounts]


def _race(calls: list[Callable[[], Any]]) -> Counter[str]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> str:
        barrier.wait()
        try:
            call()
        except DomainError as error:
            return type(error).__name__
        return "ok"

    with ThreadPoolExecutor(len(calls)) as pool:
        return Counter(pool.map(run, calls))


def test_concurrent_creates_respect_the_quota_exactly(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, settings, ATTACKED_HOST)
    settings.quota_servers = 5
    service = ServerService(db, settings, NoDispatch())
    (account_id,) = _accounts(db, "alice")
    outcomes = _race(
        [
            lambda i=i: service.create(account_id, ServerCreate(name=f"s{i}", disk_gb=1))
            for i in range(16)
        ]
    )
    assert outcomes == Counter({"ok": 5, "LimitReached": 11})
    with db.read() as session:
        assert session.query(Server).count() == 5
        assert session.query(Operation).count() == 5


def test_concurrent_creates_of_two_accounts_respect_the_host_exactly(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One CPU, overcommitted 4 times: four 1-vCPU servers on the host, whoever asks.
    _host(monkeypatch, settings, HostCapacity(cpus=1, memory_mb=64 * GIB_MB, disk_free_gb=1000))
    service = ServerService(db, settings, NoDispatch())
    alice, bob = _accounts(db, "alice", "bob")
    calls = [
        lambda i=i, owner=owner: service.create(owner, ServerCreate(name=f"s{i}", disk_gb=1))
        for i in range(6)
        for owner in (alice, bob)
    ]
    assert _race(calls) == Counter({"ok": 4, "LimitReached": 8})
    with db.read() as session:
        assert session.query(Server).count() == 4


def test_account_quota_overrides_and_reset(db: Database, settings: Settings) -> None:
    _accounts(db, "carol")
    view = quotas.set_quota(db, settings, "carol", {"servers": 2, "disk_gb": None})
    assert view.quota.servers == 2 and view.overridden == {"servers"}
    assert view.quota.disk_gb == settings.quota_disk_gb
    view = quotas.set_quota(db, settings, "carol", {"vcpus": 3}, reset=True)
    assert view.overridden == {"vcpus"} and view.quota.servers == settings.quota_servers
    assert quotas.show_quota(db, settings, "carol").used == quotas.Resources(0, 0, 0, 0)
    with pytest.raises(DomainError):
        quotas.show_quota(db, settings, "nobody")
    with pytest.raises(DomainError):
        quotas.set_quota(db, settings, "carol", {"servers": -1})


# --- finding 6: a snapshot deleted during its own restore ----------------------------------


def test_snapshot_cannot_be_deleted_while_it_is_restored(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    snapshot = alice.create_snapshot(sid, "before")
    fake_driver.delay("snapshot_restore", 1.0)
    assert alice.post(f"/snapshots/{snapshot['id']}/restore/").status_code == 200
    time.sleep(0.1)
    refused = alice.delete(f"/snapshots/{snapshot['id']}/")
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == (
        "this snapshot is being restored, copied to a new server or guarding a change; "
        "delete it when that has finished"
    )
    assert alice.get(f"/snapshots/{snapshot['id']}/").json()["status"] == "completed"
    alice.wait_server(sid, "running")
    fake_driver.delay("snapshot_restore", 0)
    assert len(fake_driver.snapshot_tags(sid)) == 1  # still on the disk
    assert alice.delete(f"/snapshots/{snapshot['id']}/").status_code == 204


def test_snapshot_cannot_be_deleted_while_its_restore_is_queued(
    db: Database, settings: Settings
) -> None:
    (account_id,) = _accounts(db, "alice")
    with db.write() as session:
        server = Server(
            account_id=account_id, name="web", status=ServerStatus.STOPPED,
            memory_mb=256, vcpus=1, disk_gb=1,
        )  # fmt: skip
        snapshot = Snapshot(server=server, name="s", status="completed")
        session.add_all([server, snapshot])
        session.flush()
        snapshot_id = snapshot.id
    service = SnapshotService(db, settings, NoDispatch())
    service.restore(account_id, snapshot_id)  # pending: no runner here
    with pytest.raises(InvalidState, match="being restored"):
        service.delete(account_id, snapshot_id)
    with db.read() as session:
        assert session.get(Snapshot, snapshot_id).status == "completed"  # type: ignore[union-attr]
        kinds = [op.kind for op in session.query(Operation)]
    assert kinds == [OperationKind.SNAPSHOT_RESTORE]


# --- finding 7: a VM paused by QEMU on a full disk -----------------------------------------


def test_vm_paused_on_a_full_disk_shows_paused_and_resumes(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.fill_disk(sid)
    alice.wait_server(sid, "paused", timeout=10)
    assert alice.get(f"/servers/{sid}/").json()["status_reason"] == monitor.DISK_FULL
    time.sleep(5 * settings.monitor_interval)
    assert alice.server_status(sid) == "paused"  # no room yet: not continued
    assert alice.post(f"/servers/{sid}/start/").status_code == 400
    fake_driver.free_disk()
    alice.wait_server(sid, "running", timeout=10)
    assert alice.get(f"/servers/{sid}/").json()["status_reason"] is None


def test_a_paused_server_can_be_stopped_at_once_and_deleted(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server()["id"]
    fake_driver.fill_disk(sid)
    alice.wait_server(sid, "paused", timeout=10)
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    assert "paused" in alice.get(f"/servers/{sid}/").json()["status_reason"]
    fake_driver.free_disk()

    other = alice.create_server("other")["id"]
    fake_driver.pause(other)  # paused for another reason: vpsd does not continue it
    alice.wait_server(other, "paused", timeout=10)
    assert alice.get(f"/servers/{other}/").json()["status_reason"] == monitor.PAUSED
    assert alice.delete(f"/servers/{other}/").status_code == 204
    alice.wait_server(other, None)


def test_a_paused_vm_that_dies_turns_stopped(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server()["id"]
    fake_driver.pause(sid)
    alice.wait_server(sid, "paused", timeout=10)
    fake_driver.kill(sid)
    alice.wait_server(sid, "stopped", timeout=10)
    assert "without a stop request" in alice.get(f"/servers/{sid}/").json()["status_reason"]


def test_paused_is_a_documented_status(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    statuses = schema["components"]["schemas"]["ServerOut"]["properties"]["status"]["enum"]
    assert "paused" in statuses


def test_operator_sets_and_shows_an_account_quota(data_dir: Path) -> None:
    def vpsd(*args: str) -> subprocess.CompletedProcess[str]:
        command = [VPSD, *args, "--data-dir", str(data_dir)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert vpsd("token", "create", "--account", "dave").returncode == 0
    changed = vpsd("account", "set-quota", "dave", "--servers", "3", "--memory-mb", "2048")
    assert changed.returncode == 0, changed.stderr
    shown = vpsd("account", "show", "dave")
    assert shown.returncode == 0, shown.stderr
    cells = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in shown.stdout.splitlines()
        if line.startswith("│")
    ]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["servers"] == ["0", "3", "account"]
    assert rows["memory_mb"] == ["0", "2048", "account"]
    assert rows["vcpus"] == ["0", "16", "default"]
    unknown = vpsd("account", "show", "nobody")
    assert unknown.returncode == 1 and "no account named 'nobody'" in unknown.stderr
    refused = vpsd("account", "set-quota", "dave", "--servers", "-1")
    assert refused.returncode == 2  # Typer refuses a negative quota


def test_recovery_does_not_guess_a_server_it_cannot_see(
    settings: Settings, fake_driver: FakeDriver
) -> None:
    """Finding 2 at start-up: a server left ``stopping`` by a crash, whose VM's liveness
    cannot be read, is not settled to ``stopped`` or ``running`` on a guess."""

    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        alice = ApiClient(test_client, account_token(settings, "alice"))
        sid = alice.create_server()["id"]
    database = Database(settings.effective_database_url)
    with database.write() as session:  # as a crash mid-stop would leave it
        session.get_one(Server, sid).status = ServerStatus.STOPPING
        session.query(Operation).delete()
    database.dispose()
    fake_driver.set_liveness_unknown(sid)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        server = ApiClient(test_client, alice.token).get(f"/servers/{sid}/").json()
    assert server["status"] == "error"
    assert "could not tell whether its VM is running" in server["status_reason"]
