"""QEMU-specific behaviour of ``QemuDriver`` (the shared contract lives in tests/contract)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from vpsd.core import commands
from vpsd.hypervisor.base import DriverError, PowerState, StopResult, VmSpec
from vpsd.hypervisor.qemu import CommandError, QemuDriver, img
from vpsd.hypervisor.qemu.qmp import qmp_call

pytestmark = [pytest.mark.qemu, qh.requires_qemu]

GIB = 1024**3
ACCEL = os.environ.get("VPSD_TEST_ACCEL", "auto")


def spec(server_id: int = 1, disk_gb: int = 1, memory_mb: int = 128) -> VmSpec:
    return VmSpec(server_id=server_id, memory_mb=memory_mb, vcpus=1, disk_gb=disk_gb)


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temp dir; every QEMU started below it is killed at teardown."""
    path = qh.short_tmpdir()
    try:
        yield path
    finally:
        qh.kill_qemus_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def driver(root: Path) -> QemuDriver:
    return QemuDriver(root / "servers", accel=ACCEL, command_timeout=120)


def test_process_is_named_after_the_server(driver: QemuDriver) -> None:
    driver.start(spec(server_id=42))
    pid = driver.info(42).pid
    assert pid is not None
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    assert "-name vpsd-server-42" in ps.stdout
    folder = driver.disk_paths(42)[0].parent
    assert {p.name for p in folder.iterdir()} >= {
        "disk0.qcow2",
        "qmp.sock",
        "qemu.pid",
        "console.log",
        "qemu.log",
    }


def test_vm_outlives_the_process_that_started_it(root: Path) -> None:
    servers = root / "servers"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from vpsd.hypervisor.base import VmSpec
        from vpsd.hypervisor.qemu import QemuDriver
        QemuDriver(Path({str(servers)!r}), accel={ACCEL!r}).start(VmSpec(3, 128, 1, 1))
    """)
    # If QEMU kept our stdout/stderr pipes open, this would hang until the timeout.
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True)

    fresh = QemuDriver(servers, accel=ACCEL)
    info = fresh.info(3)
    assert info.power_state is PowerState.RUNNING
    assert qmp_call(fresh.qmp_socket_path(3), "query-status")["status"] == "running"
    assert os.getsid(info.pid or 0) != os.getsid(0)  # detached from our session

    fresh.kill(3)
    assert fresh.info(3).power_state is PowerState.STOPPED


def test_blank_vm_stop_is_forced(driver: QemuDriver) -> None:
    driver.start(spec())
    assert driver.stop(1, timeout=0.5) == StopResult(forced=True)
    assert driver.info(1).power_state is PowerState.STOPPED


def test_tcg_works(root: Path) -> None:
    tcg = QemuDriver(root / "servers", accel="tcg")
    tcg.start(spec())
    pid = tcg.info(1).pid
    assert pid is not None
    assert b"q35,accel=tcg" in Path(f"/proc/{pid}/cmdline").read_bytes()
    qh.write_pattern_running(tcg.qmp_socket_path(1), 0x77)
    assert tcg.snapshot_create(1, "tcg").captured_bytes >= qh.MIB
    tcg.kill(1)


def test_start_failure_reports_qemu_stderr(driver: QemuDriver) -> None:
    with pytest.raises(DriverError, match="qemu-system-x86_64 failed") as caught:
        driver.start(spec(memory_mb=64 * 1024 * 1024))  # 64 TiB: QEMU refuses
    assert "memory" in str(caught.value).lower()
    assert driver.info(1).power_state is PowerState.STOPPED


def test_kill_survives_stale_pidfile_and_pid_reuse(driver: QemuDriver) -> None:
    driver.create_disks(spec())
    pidfile = driver.disk_paths(1)[0].parent / "qemu.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # a live pid that is not our QEMU
    info = driver.info(1)
    assert info.power_state is PowerState.STOPPED
    assert info.reason and "stale pidfile" in info.reason
    driver.kill(1)  # must not touch this pytest process
    driver.start(spec())
    assert driver.info(1).power_state is PowerState.RUNNING


def test_invalid_tags_are_rejected(driver: QemuDriver) -> None:
    driver.create_disks(spec())
    for tag in ("1", "", "a,b", "has space", "x" * 129):
        with pytest.raises(DriverError, match="invalid snapshot tag"):
            driver.snapshot_create(1, tag)


def test_command_error_carries_stderr(root: Path) -> None:
    with pytest.raises(CommandError) as caught:
        commands.run(["qemu-img", "info", str(root / "missing.qcow2")], timeout=30)
    error = caught.value
    assert error.returncode == 1
    assert "missing.qcow2" in error.stderr
    assert error.command[:2] == ["qemu-img", "info"]
    assert str(error).startswith("qemu-img info failed (exit 1): ")
    assert "No such file or directory" in str(error)
    assert "\n" not in str(error)

    with pytest.raises(CommandError, match=r"timed out after 0\.2s") as slow:
        commands.run(["sleep", "5"], timeout=0.2)
    assert slow.value.returncode is None

    with pytest.raises(CommandError, match="program not found"):
        commands.run(["vpsd-no-such-program"], timeout=5)


def test_snapshots_from_many_threads(driver: QemuDriver) -> None:
    """QMP sessions in parallel worker threads, one VM each, must not interfere."""
    errors: list[BaseException] = []

    def life(server_id: int) -> None:
        try:
            driver.start(spec(server_id))
            qh.write_pattern_running(driver.qmp_socket_path(server_id), server_id)
            driver.snapshot_create(server_id, f"t{server_id}")
            assert driver.snapshot_tags(server_id) == {f"t{server_id}"}
            driver.kill(server_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=life, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for server_id in range(1, 5):
        assert qh.has_pattern(driver.disk_paths(server_id)[0], server_id)


@pytest.fixture
def full_fs(root: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted below ``root``."""
    if os.geteuid() != 0:
        pytest.skip("disk-full test mounts a tmpfs, which needs root")
    mount = root / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        qh.kill_qemus_under(root)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Use up all free space of ``folder``'s filesystem with a filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 512, 1):  # big chunks first, then the last crumbs
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\1" * size)
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_disk_full_snapshot_leaves_no_partial_tag(
    driver: QemuDriver, full_fs: Path, running: bool
) -> None:
    """disk0 has room, disk1 (on a full tmpfs) has not: the snapshot must fail as a whole."""
    driver.create_disks(spec())
    disk0 = driver.disk_paths(1)[0]
    img.create(full_fs / "disk1.qcow2", GIB, timeout=30)
    (disk0.parent / "disk1.qcow2").symlink_to(full_fs / "disk1.qcow2")
    qh.write_pattern(disk0, 0x5A)
    qh.write_pattern(full_fs / "disk1.qcow2", 0x5B)
    if running:
        driver.start(spec())
    filler = _fill(full_fs)

    with pytest.raises(DriverError, match="No space left on device") as caught:
        driver.snapshot_create(1, "doomed")
    print(f"\n[{'running' if running else 'stopped'}] snapshot on full disk: {caught.value}")
    assert driver.snapshot_tags(1) == set()
    disks = driver.disk_paths(1)
    assert len(disks) == 2
    if running:
        assert driver.info(1).power_state is PowerState.RUNNING
        driver.kill(1)
    for disk in disks:
        assert img.snapshot_names(disk, timeout=30) == [], disk
        check = qh.image_check(disk)
        # 0: clean, 3: leaked clusters only (harmless, reclaimed by `qemu-img check -r`).
        assert check.returncode in (0, 3), check.stdout + check.stderr

    filler.unlink()
    assert driver.snapshot_create(1, "fine").captured_bytes >= 2 * qh.MIB
    assert qh.has_pattern(disks[1], 0x5B)


def test_two_gib_snapshot_is_cheap(driver: QemuDriver, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints timings (no asserts on them); the captured size must be exact."""
    driver.create_disks(spec(disk_gb=4))
    disk0 = driver.disk_paths(1)[0]
    qh.write_pattern(disk0, 0x3C, 0, 2 * GIB)

    started = time.perf_counter()
    captured = driver.snapshot_create(1, "big").captured_bytes
    stopped_total = time.perf_counter() - started
    started = time.perf_counter()
    assert img.captured_bytes(disk0, "big", timeout=60) == 2 * GIB
    measure = time.perf_counter() - started

    assert captured == 2 * GIB
    driver.start(spec(disk_gb=4))
    started = time.perf_counter()
    assert driver.snapshot_create(1, "big-live").captured_bytes == 2 * GIB
    running_total = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n2 GiB snapshot: stopped {stopped_total * 1000:.0f} ms (incl. size), "
            f"running {running_total * 1000:.0f} ms (incl. size), "
            f"size computation alone {measure * 1000:.0f} ms"
        )


def test_a_console_log_that_grew_too_long_keeps_its_end(driver: QemuDriver, root: Path) -> None:
    folder = root / "servers" / "1"
    folder.mkdir(parents=True)
    log = folder / "console.log"
    log.write_bytes(b"".join(f"line {i:07d}\n".encode() for i in range(300_000)))  # 3.6 MB
    assert driver.trim_console(1, 1024 * 1024) is True
    kept = log.read_bytes()
    assert len(kept) == 512 * 1024
    assert kept.endswith(b"line 0299999\n")
    assert driver.console_tail(1, 13) == b"line 0299999\n"
    assert driver.trim_console(1, 1024 * 1024) is False  # short enough now
    assert driver.trim_console(2, 1024) is False  # no console at all


def test_a_body_error_is_not_masked_when_the_program_is_gone() -> None:
    """A stream cut by the caller (its source failed) reports the caller's error, even when
    bytes it wrote are still buffered for a program that is already gone."""
    with (
        pytest.raises(RuntimeError, match="the backup storage went away"),
        commands.streaming(["true"], stdin=subprocess.PIPE, timeout=30) as process,
    ):
        process.wait()  # exited without reading: flushing to it can only fail
        assert process.stdin is not None
        process.stdin.write(b"\x01" * 4096)  # buffered, not yet sent
        raise RuntimeError("the backup storage went away")
