"""A guest writes to a disk whose host filesystem is full (issue 10, finding 7).

QEMU's default ``werror=enospc`` pauses the VM on the failed write (status ``io-error``, the
device's ``io-status`` ``nospace``): its process lives, so before the fix the server showed
``running``. Now the monitor shows ``paused`` with the reason, leaves it paused while there
is no room, and continues it (QMP ``cont``) once space is back: the guest's write then
completes without the guest ever seeing an error.

A real Debian guest does the writing (``dd`` through the guest agent): HMP ``qemu-io`` in a
blank VM does not go through the device and never pauses it. The servers' folder is a tmpfs
mounted for the test and filled with a filler file; the image and database stay elsewhere.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.faults.conftest import SmallFs, _mount_tmpfs, _require_root, _umount
from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer
from vpsd.agent.monitor import DISK_FULL
from vpsd.config import default_image_cache_dir
from vpsd.hypervisor.images import recipes, store
from vpsd.hypervisor.qemu.guest_agent import GuestAgent, GuestAgentError

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.guest, qh.requires_qemu]

BOOT_TIMEOUT = 300.0
WRITE_MB = 32


@pytest.fixture
def image_cache() -> Path:
    """The host's image cache, holding a debian-12 build (skipped otherwise)."""
    cache = default_image_cache_dir()
    if store.find_build(cache, recipes.DEBIAN_12.build_name) is None:
        pytest.skip(f"no {recipes.DEBIAN_12.build_name} image in {cache} (scripts/setup)")
    return cache


@pytest.fixture
def disks_fs(fault_root: Path) -> Iterator[SmallFs]:
    """A 512 MiB tmpfs mounted on the data dir's ``servers/``: room for a booted guest's
    overlay (whose backing image, in ``images/``, stays on the other filesystem)."""
    _require_root()
    mountpoint = fault_root / "data" / "servers"
    _mount_tmpfs(mountpoint, 512)
    try:
        yield SmallFs(mountpoint)
    finally:
        qh.kill_qemus_under(fault_root)
        _umount(mountpoint)


def _agent(qga: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    with GuestAgent(qga, timeout=5) as agent:
        return agent.execute(command, arguments, timeout=10)


def _agent_answers(qga: Path) -> bool:
    try:
        _agent(qga, "guest-ping")
    except GuestAgentError:
        return False
    return True


def test_guest_writing_to_a_full_disk_is_paused_then_resumed(
    fault_root: Path, disks_fs: SmallFs, image_cache: Path
) -> None:
    data = disks_fs.mountpoint.parent
    live = LiveServer(data, image_cache_dir=str(image_cache), stop_timeout="5")
    live.start()
    try:
        alice: ApiClient = live.client(live.create_token("alice"))
        sid = alice.create_server("writer", disk_gb=4, image="debian-12")["id"]
        qga = data / "servers" / str(sid) / "qga.sock"
        wait_for(lambda: _agent_answers(qga), BOOT_TIMEOUT, interval=1, what="the guest agent")

        disks_fs.fill()
        dd = ["if=/dev/urandom", "of=/var/tmp/fill", "bs=1M", f"count={WRITE_MB}", "oflag=direct"]
        pid = _agent(qga, "guest-exec", {"path": "/bin/dd", "arg": dd, "capture-output": True})
        alice.wait_server(sid, "paused", timeout=120)
        server = alice.get(f"/servers/{sid}/").json()
        assert server["status_reason"] == DISK_FULL, server
        time.sleep(3)
        assert alice.server_status(sid) == "paused"  # no room yet: not continued

        disks_fs.free()
        alice.wait_server(sid, "running", timeout=60)
        assert alice.get(f"/servers/{sid}/").json()["status_reason"] is None

        def dd_done() -> dict[str, Any] | None:
            status: dict[str, Any] = _agent(qga, "guest-exec-status", {"pid": pid["pid"]})
            return status if status.get("exited") else None

        finished = wait_for(dd_done, 120, interval=1, what="dd in the guest")
        # The guest never saw an error: its paused write completed after the resume.
        report = base64.b64decode(finished.get("err-data", "")).decode(errors="replace")
        assert finished["exitcode"] == 0, report
        assert f"{WRITE_MB}+0 records out" in report, report
    finally:
        live.close()
