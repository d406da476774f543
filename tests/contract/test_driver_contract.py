"""The ``Driver`` contract, run against every driver (the fake and real QEMU)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from tests.contract.driver_probes import DiskProbe
from vpsd.core.errors import HostError
from vpsd.hypervisor.base import (
    Driver,
    DriverError,
    IncompleteDisks,
    PowerState,
    ResumeRefused,
    RunState,
    StopResult,
    VmSpec,
)

SPEC = VmSpec(server_id=7, memory_mb=128, vcpus=1, disk_gb=1)
SID = SPEC.server_id
MIB = 1024 * 1024


def test_lifecycle(driver: Driver) -> None:
    driver.create_disks(SPEC)
    assert driver.info(SID).power_state is PowerState.STOPPED

    driver.start(SPEC)
    running = driver.info(SID)
    assert running.power_state is PowerState.RUNNING
    assert running.pid is not None
    driver.start(SPEC)  # idempotent: same VM, not a second one
    assert driver.info(SID).pid == running.pid

    result = driver.stop(SID, timeout=1.0)
    assert isinstance(result, StopResult)
    assert driver.info(SID).power_state is PowerState.STOPPED
    assert driver.stop(SID, timeout=1.0) == StopResult(forced=False)

    driver.start(SPEC)
    assert driver.info(SID).power_state is PowerState.RUNNING
    driver.kill(SID)
    assert driver.info(SID).power_state is PowerState.STOPPED
    driver.kill(SID)  # no-op when stopped

    driver.destroy(SID)
    driver.destroy(SID)  # no-op when gone
    assert driver.info(SID).power_state is PowerState.STOPPED
    assert driver.snapshot_tags(SID) == set()


def test_create_disks_never_overwrites(driver: Driver, disk: DiskProbe) -> None:
    driver.create_disks(SPEC)
    disk.write(SID, 0xAB)
    driver.create_disks(SPEC)
    assert disk.has(SID, 0xAB)


def test_snapshot_stopped_vm(driver: Driver, disk: DiskProbe) -> None:
    driver.create_disks(SPEC)
    disk.write(SID, 0xAB)
    taken = driver.snapshot_create(SID, "first")
    assert taken.captured_bytes >= MIB
    # A blank disk never had a guest that shut down cleanly.
    assert taken.consistency == "crash"
    assert driver.snapshot_tags(SID) == {"first"}
    # Idempotent: a retried create takes nothing new and reports the same size.
    assert driver.snapshot_create(SID, "first").captured_bytes == taken.captured_bytes
    assert driver.snapshot_tags(SID) == {"first"}


def test_snapshot_running_vm_and_restore(driver: Driver, disk: DiskProbe) -> None:
    driver.start(SPEC)
    disk.write(SID, 0xCD)
    assert disk.has(SID, 0xCD)
    taken = driver.snapshot_create(SID, "live")
    assert taken.captured_bytes >= MIB
    assert taken.consistency == "crash"  # no guest agent to freeze a blank disk's guest
    assert driver.snapshot_tags(SID) == {"live"}
    assert driver.snapshot_create(SID, "live").captured_bytes == taken.captured_bytes
    assert driver.info(SID).power_state is PowerState.RUNNING

    disk.write(SID, 0xEE)  # the guest keeps writing after the snapshot
    with pytest.raises(HostError):
        driver.snapshot_restore(SID, "live")
    assert driver.info(SID).power_state is PowerState.RUNNING
    assert disk.has(SID, 0xEE)

    driver.stop(SID, timeout=1.0)
    driver.snapshot_restore(SID, "live")
    assert disk.has(SID, 0xCD)
    driver.start(SPEC)
    assert disk.has(SID, 0xCD)


def test_restore_older_keeps_newer_usable(driver: Driver, disk: DiskProbe) -> None:
    driver.create_disks(SPEC)
    disk.write(SID, 0x11)
    driver.snapshot_create(SID, "old")
    disk.write(SID, 0x22)
    driver.snapshot_create(SID, "new")
    disk.write(SID, 0x33)

    driver.snapshot_restore(SID, "old")
    assert disk.has(SID, 0x11)
    assert driver.snapshot_tags(SID) == {"old", "new"}

    driver.snapshot_restore(SID, "new")
    assert disk.has(SID, 0x22)
    driver.snapshot_restore(SID, "old")
    assert disk.has(SID, 0x11)
    driver.snapshot_restore(SID, "old")  # idempotent
    assert disk.has(SID, 0x11)


def test_restore_unknown_tag_fails(driver: Driver, disk: DiskProbe) -> None:
    driver.create_disks(SPEC)
    disk.write(SID, 0x44)
    with pytest.raises(HostError):
        driver.snapshot_restore(SID, "never-taken")
    assert disk.has(SID, 0x44)


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_delete_is_idempotent(driver: Driver, disk: DiskProbe, running: bool) -> None:
    driver.create_disks(SPEC)
    if running:
        driver.start(SPEC)
    disk.write(SID, 0x55)
    driver.snapshot_create(SID, "a")
    driver.snapshot_create(SID, "b")
    driver.snapshot_delete(SID, "a")
    assert driver.snapshot_tags(SID) == {"b"}
    driver.snapshot_delete(SID, "a")
    driver.snapshot_delete(SID, "never-taken")
    assert driver.snapshot_tags(SID) == {"b"}
    driver.kill(SID)
    driver.snapshot_restore(SID, "b")
    assert disk.has(SID, 0x55)


def test_snapshot_without_disks_fails(driver: Driver) -> None:
    with pytest.raises(HostError):
        driver.snapshot_create(SID, "nothing")
    driver.snapshot_delete(SID, "nothing")  # nothing to delete is fine
    assert driver.snapshot_tags(SID) == set()


def test_run_state_follows_the_vm(driver: Driver) -> None:
    assert driver.run_state(SID) is RunState.OFF  # no VM at all
    driver.create_disks(SPEC)
    assert driver.run_state(SID) is RunState.OFF
    driver.start(SPEC)
    assert driver.run_state(SID) is RunState.RUNNING
    assert driver.resume(SID) is RunState.RUNNING  # nothing to resume: a no-op
    driver.kill(SID)
    assert driver.run_state(SID) is RunState.OFF
    assert driver.resume(SID) is RunState.OFF


def test_a_vm_paused_outside_vpsd_is_reported_and_left_paused(
    driver: Driver, disk: DiskProbe
) -> None:
    driver.start(SPEC)
    disk.pause(SID)
    assert driver.info(SID).power_state is PowerState.RUNNING  # its process lives
    assert driver.run_state(SID) is RunState.PAUSED
    # Only a pause on a full disk is vpsd's to end: someone else's pause stays.
    assert driver.resume(SID) is RunState.PAUSED
    assert driver.run_state(SID) is RunState.PAUSED
    # Paused CPUs cannot answer ACPI: the stop forces the VM off at once.
    assert driver.stop(SID, timeout=30.0) == StopResult(forced=True, paused=True)
    assert driver.info(SID).power_state is PowerState.STOPPED
    driver.start(SPEC)
    assert driver.run_state(SID) is RunState.RUNNING


def test_a_snapshot_streams_out_and_back_in(driver: Driver, disk: DiskProbe) -> None:
    driver.start(SPEC)
    disk.write(SID, 0xAB)
    driver.snapshot_create(SID, "point")
    disk.write(SID, 0xCD)  # after the snapshot: not in the stream
    [info] = driver.disks(SID)
    assert info.name == "disk0"
    other = VmSpec(server_id=8, memory_mb=128, vcpus=1, disk_gb=1)
    with (
        driver.snapshot_reader(SID, "point", "disk0") as stream,
        driver.disk_writer(other, "disk0", info.size_bytes) as sink,
    ):
        shutil.copyfileobj(stream, sink, MIB)
    assert disk.has(8, 0xAB)
    assert driver.snapshot_tags(8) == set()
    # A running VM's disk is not written under it.
    with pytest.raises(HostError), driver.disk_writer(SPEC, "disk0", info.size_bytes):
        pass
    driver.kill(SID)
    with (
        driver.snapshot_reader(SID, "point", "disk0") as stream,
        driver.disk_writer(SPEC, "disk0", info.size_bytes) as sink,
    ):
        shutil.copyfileobj(stream, sink, MIB)
    assert disk.has(SID, 0xAB)
    assert driver.snapshot_tags(SID) == {"point"}  # written in place: snapshots kept


def test_a_cut_stream_leaves_no_new_disk(driver: Driver) -> None:
    spec = VmSpec(server_id=9, memory_mb=128, vcpus=1, disk_gb=1)
    with pytest.raises(RuntimeError), driver.disk_writer(spec, "disk0", MIB) as sink:
        sink.write(b"\x01" * 4096)
        raise RuntimeError("the backup storage went away")
    assert driver.disks(9) == []


def test_clone_a_snapshot_into_a_new_server(driver: Driver, disk: DiskProbe) -> None:
    driver.start(SPEC)
    disk.write(SID, 0x11)
    driver.snapshot_create(SID, "golden")
    disk.write(SID, 0x22)
    bigger = VmSpec(server_id=10, memory_mb=128, vcpus=1, disk_gb=2)
    driver.snapshot_clone(SID, "golden", bigger)
    driver.snapshot_clone(SID, "golden", bigger)  # idempotent
    assert disk.has(10, 0x11)
    assert disk.has(SID, 0x22)
    assert driver.snapshot_tags(10) == set()
    with pytest.raises(HostError):
        driver.snapshot_clone(SID, "no-such-snapshot", VmSpec(11, 128, 1, 1))


def _stopped_with_a_snapshot(driver: Driver, disk: DiskProbe) -> None:
    """A stopped server whose disk holds 0xAB, kept in its snapshot ``kept`` too."""
    driver.create_disks(SPEC)
    disk.write(SID, 0xAB)
    driver.snapshot_create(SID, "kept")


def _rewrite(driver: Driver, pattern: int, *, cut: bool = False) -> None:
    """Write the first MiB of the stopped server's disk0 with ``pattern`` through
    ``disk_writer``, without finishing the rewrite; ``cut``: the stream fails after it."""
    [info] = driver.disks(SID)
    if not cut:
        with driver.disk_writer(SPEC, "disk0", info.size_bytes) as sink:
            sink.write(bytes([pattern]) * MIB)
        return
    with pytest.raises(RuntimeError), driver.disk_writer(SPEC, "disk0", info.size_bytes) as sink:
        sink.write(bytes([pattern]) * MIB)
        raise RuntimeError("the backup storage went away")


def test_an_unfinished_rewrite_is_never_booted_and_can_be_put_back(
    driver: Driver, disk: DiskProbe
) -> None:
    """Issue 22, item 5: a restore killed half-way left a mix of old and new bytes, which
    ``start`` booted with no warning."""
    _stopped_with_a_snapshot(driver, disk)
    _rewrite(driver, 0xCD, cut=True)
    _rewrite(driver, 0xCD)  # a rerun after the cut: the state kept is still the first one
    assert disk.has(SID, 0xCD)
    assert driver.incomplete_disks(SID) == ["disk0"]
    with pytest.raises(IncompleteDisks):
        driver.start(SPEC)
    assert driver.info(SID).power_state is PowerState.STOPPED

    driver.finish_rewrite(SID, keep=False)
    driver.finish_rewrite(SID, keep=False)  # idempotent
    assert driver.incomplete_disks(SID) == []
    assert disk.has(SID, 0xAB)
    assert driver.snapshot_tags(SID) == {"kept"}
    driver.start(SPEC)
    assert driver.info(SID).power_state is PowerState.RUNNING


def test_a_finished_rewrite_keeps_the_new_bytes_and_the_snapshots(
    driver: Driver, disk: DiskProbe
) -> None:
    _stopped_with_a_snapshot(driver, disk)
    _rewrite(driver, 0xCD)
    driver.finish_rewrite(SID, keep=True)
    assert driver.incomplete_disks(SID) == []
    assert disk.has(SID, 0xCD)
    assert driver.snapshot_tags(SID) == {"kept"}
    driver.finish_rewrite(SID, keep=False)  # nothing left to put back
    assert disk.has(SID, 0xCD)


def test_a_snapshot_restore_makes_an_unfinished_rewrite_whole(
    driver: Driver, disk: DiskProbe
) -> None:
    _stopped_with_a_snapshot(driver, disk)
    _rewrite(driver, 0xCD, cut=True)
    driver.snapshot_restore(SID, "kept")
    assert driver.incomplete_disks(SID) == []
    assert disk.has(SID, 0xAB)
    driver.start(SPEC)
    assert driver.info(SID).power_state is PowerState.RUNNING


def test_snapshot_with_memory_resumes_where_it_was(driver: Driver, disk: DiskProbe) -> None:
    driver.start(SPEC)
    disk.write(SID, 0x11)
    taken = driver.snapshot_create(SID, "mem", memory=True)
    assert taken.saved_state is not None
    assert (taken.saved_state.memory_mb, taken.saved_state.vcpus) == (SPEC.memory_mb, SPEC.vcpus)
    assert taken.pause_seconds is not None and 0 <= taken.pause_seconds < 60
    assert taken.captured_bytes >= MIB
    assert driver.info(SID).power_state is PowerState.RUNNING  # the guest went on
    # Idempotent: a retry finds the state saved, takes nothing and reports no new pause.
    retried = driver.snapshot_create(SID, "mem", memory=True)
    assert retried.saved_state == taken.saved_state and retried.pause_seconds is None

    disk.write(SID, 0x22)
    driver.snapshot_resume(SPEC, "mem", taken.saved_state)
    assert driver.info(SID).power_state is PowerState.RUNNING
    assert disk.has(SID, 0x11)
    # From a stopped VM too: it comes back running, as it was when taken.
    driver.kill(SID)
    disk.write(SID, 0x33)
    driver.snapshot_resume(SPEC, "mem", taken.saved_state)
    assert driver.info(SID).power_state is PowerState.RUNNING
    assert disk.has(SID, 0x11)


def test_a_saved_state_is_resumed_only_as_it_was_taken(driver: Driver, disk: DiskProbe) -> None:
    driver.start(SPEC)
    disk.write(SID, 0x44)
    taken = driver.snapshot_create(SID, "mem", memory=True)
    assert taken.saved_state is not None
    disk.write(SID, 0x55)
    pid = driver.info(SID).pid
    bigger = dataclasses.replace(SPEC, memory_mb=SPEC.memory_mb * 2)
    with pytest.raises(ResumeRefused, match="memory"):
        driver.snapshot_resume(bigger, "mem", taken.saved_state)
    newer = dataclasses.replace(taken.saved_state, qemu_version="99.0.0 (elsewhere)")
    with pytest.raises(ResumeRefused):
        driver.snapshot_resume(SPEC, "mem", newer)
    # Refused before anything was touched: the same VM runs on, its disk as it was.
    assert driver.info(SID).pid == pid
    assert disk.has(SID, 0x55)


def test_a_snapshot_with_memory_needs_a_running_vm(driver: Driver) -> None:
    driver.create_disks(SPEC)
    with pytest.raises(DriverError, match="running"):
        driver.snapshot_create(SID, "mem", memory=True)


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_backup_points_say_what_changed_since_the_last_kept_one(
    driver: Driver, disk: DiskProbe, running: bool
) -> None:
    if running:
        driver.start(SPEC)
    else:
        driver.create_disks(SPEC)
    disk.write(SID, 0x11)
    [first] = driver.backup_point_create(SID, "vpsd-backup-a", "a", None).disks
    assert (first.name, first.since, first.chain_break) == ("disk0", None, None)
    disk.write(SID, 0x22)  # after the point: not in its snapshot
    with driver.backup_source(SID, "vpsd-backup-a", first) as source:
        data = bytearray(MIB)
        source.read_into(0, memoryview(data))
        assert data == b"\x11" * MIB and source.read_bytes == MIB
        assert source.data_extents()[0][0] == 0
    driver.backup_point_finish(SID, "vpsd-backup-a", "a", kept=True)
    assert driver.snapshot_tags(SID) == set()

    [second] = driver.backup_point_create(SID, "vpsd-backup-b", "b", "a").disks
    assert second.since == "a"
    assert second.changed(0, MIB) and not second.changed(MIB, MIB)
    # A backup that was not kept leaves the base as it was...
    driver.backup_point_finish(SID, "vpsd-backup-b", "b", kept=False)
    [third] = driver.backup_point_create(SID, "vpsd-backup-c", "c", "a").disks
    assert third.since == "a" and third.changed(0, MIB)
    # ... and a kept one replaces it.
    driver.backup_point_finish(SID, "vpsd-backup-c", "c", kept=True)
    [fourth] = driver.backup_point_create(SID, "vpsd-backup-d", "d", "a").disks
    assert fourth.since is None and fourth.chain_break
    driver.backup_point_finish(SID, "vpsd-backup-d", "d", kept=False)
    assert driver.snapshot_tags(SID) == set()
