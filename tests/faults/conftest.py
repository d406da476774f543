"""Fault-injection fixtures: a ``vpsd serve`` to SIGKILL, VMs to SIGKILL, filesystems to fill.

Every check here is one a user or an operator could make: the API, ``qemu-img`` on the disk
files, and ``sqlite3`` on the database file.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer

MIB = qh.MIB
SETTLE_TIMEOUT = 60.0
TRANSITIONAL_SERVER = ("starting", "stopping", "restoring", "deleting")


class Faults:
    """One live vpsd (SQLite) on its own data dir, with the checks the fault tests share."""

    def __init__(self, live: LiveServer, db_file: Path) -> None:
        self.live = live
        self.db_file = db_file
        self.alice: ApiClient = live.client(live.create_token("alice"))

    # -- files ---------------------------------------------------------------------------------

    def folder(self, server_id: int) -> Path:
        """The server's folder: disks, pidfile, QMP socket."""
        return self.live.data_dir / "servers" / str(server_id)

    def disk(self, server_id: int) -> Path:
        """The server's first (and only) qcow2 disk."""
        return self.folder(server_id) / "disk0.qcow2"

    def qmp(self, server_id: int) -> Path:
        """The QMP socket of the server's running VM."""
        return self.folder(server_id) / "qmp.sock"

    def qemu_pid(self, server_id: int) -> int:
        """The pid of the server's QEMU, from the pidfile vpsd had QEMU write."""
        return int((self.folder(server_id) / "qemu.pid").read_text().strip())

    def disk_tags(self, server_id: int) -> set[str]:
        """Internal snapshot names on the disk (``-U``: the VM may hold the image)."""
        out = subprocess.run(
            ["qemu-img", "snapshot", "-l", "-U", str(self.disk(server_id))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # Table rows: ID TAG VM-SIZE DATE VM-CLOCK [ICOUNT]; the header starts with "ID".
        return {line.split()[1] for line in out.splitlines()[2:] if len(line.split()) > 1}

    # -- database ------------------------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``query`` on the database file, read as an operator would with sqlite3."""
        with closing(sqlite3.connect(self.db_file, timeout=30)) as conn:
            return conn.execute(query, params).fetchall()

    def tag(self, snapshot_id: int) -> str:
        """The snapshot's internal tag on disk (read while its row exists)."""
        ((tag,),) = self.sql("SELECT tag FROM snapshots WHERE id = ?", snapshot_id)
        return str(tag)

    def unfinished_operations(self) -> list[tuple[Any, ...]]:
        """Operations still pending or running: (id, kind, status, attempts)."""
        return self.sql(
            "SELECT id, kind, status, attempts FROM operations "
            "WHERE status IN ('pending', 'running') ORDER BY id"
        )

    def wait_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until no operation is pending or running, then check no state is stuck."""
        wait_for(
            lambda: not self.unfinished_operations(),
            timeout,
            interval=0.2,
            what="every operation to be completed or failed",
        )
        stuck_servers = self.sql(
            "SELECT id, status FROM servers WHERE status IN (?, ?, ?, ?)", *TRANSITIONAL_SERVER
        )
        assert not stuck_servers, f"servers left in a transitional state: {stuck_servers}"
        stuck_snapshots = self.sql(
            "SELECT id, status FROM snapshots WHERE status IN ('in_progress', 'deleting')"
        )
        assert not stuck_snapshots, f"snapshots left unsettled: {stuck_snapshots}"

    # -- API -----------------------------------------------------------------------------------

    def server(self, server_id: int) -> dict[str, Any]:
        """The server as the API shows it."""
        response = self.alice.get(f"/servers/{server_id}/")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, snapshot_id: int) -> dict[str, Any]:
        """The snapshot as the API shows it."""
        response = self.alice.get(f"/snapshots/{snapshot_id}/")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def request_snapshot(self, server_id: int, name: str = "snap") -> int:
        """POST a snapshot and return its id without waiting for it."""
        response = self.alice.post("/snapshots/", json={"server_id": server_id, "name": name})
        assert response.status_code == 201, response.text
        snapshot_id: int = response.json()["id"]
        return snapshot_id

    def stop_server(self, server_id: int) -> None:
        """Stop a running server through the API and wait until it is stopped."""
        if self.server(server_id)["status"] == "running":
            response = self.alice.post(f"/servers/{server_id}/stop/")
            assert response.status_code == 200, response.text
            self.alice.wait_server(server_id, "stopped")

    def assert_disk_clean(self, server_id: int, *, allow_leaks: bool = False) -> None:
        """``qemu-img check`` finds no corruption on the (stopped) server's disk, and no
        leaked cluster unless ``allow_leaks`` (exit 3: wasted space, no harm to data)."""
        check = qh.image_check(self.disk(server_id))
        accepted = (0, 3) if allow_leaks else (0,)
        assert check.returncode in accepted, (
            f"qemu-img check {self.disk(server_id)} exited {check.returncode}:\n"
            f"{check.stdout}{check.stderr}"
        )


@contextmanager
def _scratch_root() -> Iterator[Path]:
    root = qh.short_tmpdir()
    try:
        yield root
    finally:
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fault_root() -> Iterator[Path]:
    """A short /tmp dir for one test; its VMs are killed and it is removed at teardown."""
    with _scratch_root() as root:
        yield root


def _start(
    data_dir: Path, db_file: Path | None = None, log_path: Path | None = None, **settings: str
) -> LiveServer:
    url = f"sqlite:///{db_file}" if db_file is not None else None
    # The fault tests put disks on a filesystem of a few MiB: admission control would refuse
    # every 1 GiB (thin) disk on it, before any fault is injected.
    live = LiveServer(data_dir, database_url=url, disk_overcommit="64", **settings)
    if log_path is not None:
        live.log_path = log_path
    live.start()
    return live


@pytest.fixture(scope="module")
def shared_faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    """A live vpsd shared by a module's tests, its data dir and database in a scratch dir,
    with the module's ``LIVE_SETTINGS`` (``VPSD_*`` settings, lower case) if it has any; a
    test may SIGKILL it as long as it restarts it."""
    with _scratch_root() as root:
        live = _start(root / "data", **getattr(request.module, "LIVE_SETTINGS", {}))
        try:
            yield Faults(live, root / "data" / "vpsd.db")
        finally:
            live.close()
            qh.kill_qemus_under(root)


@pytest.fixture
def faults(shared_faults: Faults) -> Iterator[Faults]:
    """The module's live vpsd; the servers a test made are deleted after it, VMs included."""
    yield shared_faults
    live = shared_faults.live
    if live.process is None or live.process.poll() is not None:
        live.restart()  # a test that failed between kill() and restart()
    with suppress(AssertionError):  # a failed test may leave a server mid-operation
        shared_faults.wait_settled()
    alice = shared_faults.alice
    for server in alice.get("/servers/").json()["results"]:
        if server["status"] != "deleting":
            alice.delete(f"/servers/{server['id']}/")
    wait_for(
        lambda: alice.get("/servers/").json()["count"] == 0,
        SETTLE_TIMEOUT,
        what="the test's servers to be deleted",
    )


def _mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}M,mode=0755", "tmpfs", str(where)],
        check=True,
        capture_output=True,
        text=True,
    )


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


class SmallFs:
    """A tmpfs of a few MiB mounted for one test, with a filler file to make it full."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"

    def free_bytes(self) -> int:
        """Bytes still free on the filesystem."""
        stat = os.statvfs(self.mountpoint)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> None:
        """Take every free byte (fallocate, topped up by a write until ENOSPC)."""
        free = self.free_bytes()
        subprocess.run(["fallocate", "-l", str(free), str(self.filler)], check=False)
        # fallocate may leave a partial page or be unsupported: append until the kernel says no.
        fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        assert self.free_bytes() < 64 * 1024, f"still {self.free_bytes()} bytes free"

    def free(self) -> None:
        """Remove the filler: space is back."""
        self.filler.unlink(missing_ok=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (mount -t tmpfs)")
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed")


@pytest.fixture
def small_fs(fault_root: Path) -> Iterator[SmallFs]:
    """A 96 MiB tmpfs at ``<fault_root>/small`` (root only; skipped otherwise)."""
    _require_root()
    mountpoint = fault_root / "small"
    try:
        _mount_tmpfs(mountpoint, 96)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.strip()}")
    try:
        yield SmallFs(mountpoint)
    finally:
        # VMs and vpsd hold files on it: they are gone before the unmount (see teardowns).
        qh.kill_qemus_under(fault_root)
        _umount(mountpoint)


@pytest.fixture
def faults_factory(fault_root: Path) -> Iterator[Any]:
    """Start a live vpsd on a given data dir and database file; all are closed at teardown."""
    started: list[LiveServer] = []

    def make(data_dir: Path, db_file: Path, log_path: Path | None = None) -> Faults:
        live = _start(data_dir, db_file, log_path)
        started.append(live)
        return Faults(live, db_file)

    try:
        yield make
    finally:
        for live in started:
            live.close()
        qh.kill_qemus_under(fault_root)
