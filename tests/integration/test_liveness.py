"""Issue 10, finding 2 on real QEMU: a VM whose liveness cannot be read is not "gone".

With the descriptors exhausted (``ulimit -n`` reached, as a flood of half-open connections
did) reading ``/proc/<pid>/cmdline`` failed with EMFILE, and a stop was recorded ``stopped``
while the VM kept running. Here the driver is put in that situation for real (this process's
descriptor limit is lowered and filled), and the whole service with ``/proc`` reads failing
with EMFILE: nothing may be recorded that did not happen, and no second QEMU may be started.
Also: a boot QEMU refuses shows the tenant no host details (finding 3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, measure_as, wait_for
from vpsd.agent.heartbeat import HostCapacity
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.base import LivenessUnknown, PowerState, VmSpec
from vpsd.hypervisor.qemu import QemuDriver
from vpsd.operations import handlers, reasons
from vpsd.runtime.app import create_app
from vpsd.services.tokens import create_token

pytestmark = [pytest.mark.qemu, qh.requires_qemu]

ACCEL = os.environ.get("VPSD_TEST_ACCEL", "auto")
SPEC = VmSpec(server_id=1, memory_mb=128, vcpus=1, disk_gb=1)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for an absent reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """Every new file descriptor of this process fails with EMFILE until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    filled: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:  # fill the holes below the limit
                filled.append(os.open("/dev/null", os.O_RDONLY))
        with pytest.raises(OSError) as caught:
            os.open("/dev/null", os.O_RDONLY)
        assert caught.value.errno == errno.EMFILE
        yield
    finally:
        for fd in filled:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def driver() -> Iterator[QemuDriver]:
    root = qh.short_tmpdir()
    try:
        yield QemuDriver(root / "servers", accel=ACCEL, command_timeout=120)
    finally:
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


def test_no_descriptors_means_unknown_never_stopped(driver: QemuDriver) -> None:
    driver.start(SPEC)
    pid = driver.info(1).pid
    assert pid is not None
    with descriptors_exhausted():
        with pytest.raises(LivenessUnknown):
            driver.info(1)
        with pytest.raises(LivenessUnknown):
            driver.stop(1, timeout=0.5)
        with pytest.raises(LivenessUnknown):
            driver.start(SPEC)  # never a second QEMU on a guess
        with pytest.raises(LivenessUnknown):
            driver.destroy(1)  # and never the disks of a VM that may run
    assert _alive(pid)
    assert driver.info(1).pid == pid
    assert qh.qemu_pids_under(driver.servers_dir) == [pid]
    assert driver.disk_paths(1)
    driver.stop(1, timeout=0.5)
    assert driver.info(1).power_state is PowerState.STOPPED
    assert not _alive(pid)


@pytest.fixture
def proc_unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """``[False]``; set it to ``[True]`` and reads below /proc fail with EMFILE."""
    switch = [False]
    read_bytes = pathlib.Path.read_bytes

    def guarded(self: Path) -> bytes:
        if switch[0] and str(self).startswith("/proc/"):
            raise OSError(errno.EMFILE, "Too many open files", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", guarded)
    yield switch
    switch[0] = False


@pytest.fixture
def qemu_service(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiClient]:
    """The app on the real QEMU driver (blank servers), as alice."""
    monkeypatch.setattr(handlers, "LIVENESS_RETRY_DELAYS", (0.1, 0.2))
    settings.driver = "qemu"
    settings.accel = ACCEL
    driver = QemuDriver(settings.servers_dir, accel=ACCEL, command_timeout=120)
    database = Database(settings.effective_database_url)
    try:
        with TestClient(create_app(settings, driver=driver)) as client:
            yield ApiClient(client, create_token(database, "alice")[1])
    finally:
        database.dispose()
        qh.kill_qemus_under(settings.data_dir)


def _pid(settings: Settings, server_id: int) -> int:
    return int((settings.servers_dir / str(server_id) / "qemu.pid").read_text())


def test_stop_during_emfile_is_not_recorded_while_the_vm_runs(
    qemu_service: ApiClient, settings: Settings, proc_unreadable: list[bool]
) -> None:
    alice = qemu_service
    sid = alice.create_server("victim")["id"]
    pid = _pid(settings, sid)

    proc_unreadable[0] = True
    time.sleep(10 * settings.monitor_interval)
    assert alice.server_status(sid) == "running"  # the monitor did not flip it

    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    wait_for(lambda: alice.server_status(sid) != "stopping", 30, what="the stop to end")
    server = alice.get(f"/servers/{sid}/").json()
    assert server["status"] == "error", server  # before the fix: "stopped", reason null
    assert "could not tell whether the VM is running" in server["status_reason"]
    assert _alive(pid)

    assert alice.post(f"/servers/{sid}/start/").status_code == 200  # still blind
    wait_for(lambda: alice.server_status(sid) != "starting", 30, what="the start to end")
    assert alice.server_status(sid) == "error"

    proc_unreadable[0] = False
    assert qh.qemu_pids_under(settings.data_dir) == [pid]  # no second QEMU was started
    assert alice.post(f"/servers/{sid}/start/").status_code == 200
    alice.wait_server(sid, "running")
    assert qh.qemu_pids_under(settings.data_dir) == [pid]  # found running, the same VM
    assert alice.post(f"/servers/{sid}/stop/").status_code == 200
    alice.wait_server(sid, "stopped")
    assert not _alive(pid)


def test_a_boot_qemu_refuses_shows_no_host_details(
    qemu_service: ApiClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Admission is told the host is huge: QEMU itself must refuse 64 TiB of memory.
    huge = HostCapacity(cpus=64, memory_mb=2**31 - 1, disk_free_gb=10**6)
    measure_as(monkeypatch, settings, huge)
    settings.quota_memory_mb = 2**31 - 1
    response = qemu_service.post(
        "/servers/", json={"name": "too-big", "disk_gb": 1, "memory_mb": 64 * 1024 * 1024}
    )
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    qemu_service.wait_server(sid, "error")
    server: dict[str, Any] = qemu_service.get(f"/servers/{sid}/").json()
    assert server["status_reason"] == reasons.BOOT_FAILED
    qemu_log = (settings.servers_dir / str(sid) / "qemu.log").read_text()
    assert "memory" in qemu_log.lower()  # the operator has QEMU's own words
