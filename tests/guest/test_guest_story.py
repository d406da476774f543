"""The seed page's story on a real Debian guest, over SSH, and what makes it possible:
first-boot identity, filesystem-consistent snapshots, graceful power, a readable console.

Every test runs on the one shared server of ``conftest.guest`` (in file order) and leaves it
running with SSH answering.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.guest.conftest import Guest, ssh
from tests.helpers import snapshot_tag, wait_for, write_fake_image
from vpsd.hypervisor.images.store import BuiltImage
from vpsd.hypervisor.qemu.guest_agent import GuestAgent

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.guest]


def _snapshot(guest: Guest, name: str) -> dict[str, object]:
    response = guest.client.post("/snapshots/", json={"server_id": guest.server_id, "name": name})
    assert response.status_code == 201, response.text
    snapshot = guest.client.wait_snapshot(response.json()["id"])
    assert snapshot["status"] == "completed", snapshot
    return snapshot


def _restore(guest: Guest, snapshot_id: object) -> None:
    response = guest.client.post(f"/snapshots/{snapshot_id}/restore/")
    assert response.status_code == 200, response.text
    guest.client.wait_server(guest.server_id, "running", timeout=120)
    guest.wait_ssh()


def _host_key(guest: Guest) -> str:
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(guest.port), "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return scan.stdout.split()[-1]


def test_first_boot_gives_the_server_its_own_identity(guest: Guest) -> None:
    assert guest.ssh("hostname").strip() == guest.name
    assert guest.ssh("cat /etc/hostname").strip() == guest.name
    assert len(guest.ssh("cat /etc/machine-id").strip()) == 32
    # Only the key-pair logs in: no password authentication is even offered.
    refused = ssh(guest.port, guest.key, "true", extra=("-o", "PreferredAuthentications=password"))
    assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr
    # The 2 GiB image's filesystem grew to the 4 GiB disk on first boot.
    size_gib = int(guest.ssh("df --output=size -B1G / | tail -n 1"))
    assert size_gib >= 3
    assert "ssh-ed25519" in guest.ssh("cat /root/.ssh/authorized_keys")


def test_snapshot_before_an_update_and_roll_back(guest: Guest) -> None:
    """The page: "Before Updates: create a snapshot before major system updates"."""
    guest.ssh("echo 'before the update' > /root/marker && echo 'Port 22' > /etc/ssh/motd-test")
    guest.ssh("sync")
    snapshot = _snapshot(guest, "before-update-snapshot")
    assert snapshot["consistency"] == "filesystem"
    assert isinstance(snapshot["size_mb"], int) and snapshot["size_mb"] > 100

    # The "update" goes wrong: a package removed, a config file broken, the marker gone.
    guest.ssh("dpkg --purge nano && rm /root/marker && echo broken > /etc/ssh/motd-test")
    assert "not-installed" in guest.ssh("dpkg-query -W -f='${Status}' nano", check=False)

    _restore(guest, snapshot["id"])
    assert guest.ssh("cat /root/marker").strip() == "before the update"
    assert guest.ssh("cat /etc/ssh/motd-test").strip() == "Port 22"
    assert "install ok installed" in guest.ssh("dpkg-query -W -f='${Status}' nano")
    assert guest.ssh("test -x /usr/bin/nano && echo present").strip() == "present"


LOAD = (
    "mkdir -p /root/load; i=0; while :; do i=$((i+1)); "
    "dd if=/dev/zero of=/root/load/f$((i % 8)) bs=1M count=8 conv=fsync status=none; "
    "echo $i > /root/seq.new; sync /root/seq.new; mv /root/seq.new /root/seq; sync /root; done"
)


def test_a_snapshot_under_write_load_is_filesystem_consistent(guest: Guest, tmp_path: Path) -> None:
    """Writes with fsync in a loop; the frozen snapshot is clean and has every fsynced write."""
    guest.ssh(f"nohup sh -c '{LOAD}' >/dev/null 2>&1 &")
    wait_for(lambda: int(guest.ssh("cat /root/seq 2>/dev/null || echo 0")) >= 3, 120, 0.5)
    fsynced = int(guest.ssh("cat /root/seq"))
    snapshot = _snapshot(guest, "under-load")
    assert snapshot["consistency"] == "filesystem"

    # The snapshot itself, read offline: a clean ext4, no journal to replay.
    raw = tmp_path / "root.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
         "-l", f"snapshot.name={snapshot_tag(guest.service.database_url, snapshot['id'])}",
         str(guest.folder / "disk0.qcow2"),
         str(raw)],
        check=True, timeout=300,
    )  # fmt: skip
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    in_snapshot = subprocess.run(
        ["debugfs", "-R", "cat /root/seq", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    assert int(in_snapshot) >= fsynced
    raw.unlink()

    _restore(guest, snapshot["id"])
    assert int(guest.ssh("cat /root/seq")) == int(in_snapshot)
    # The restored guest booted afresh: the write loop is not running in it.
    assert guest.ssh("ps -eo args | grep -c '[s]eq.new' || true").strip() == "0"
    guest.ssh("rm -rf /root/load /root/seq")


def test_graceful_stop_is_quick_and_keeps_the_identity(guest: Guest) -> None:
    host_key = _host_key(guest)
    started = time.monotonic()
    assert guest.client.post(f"/servers/{guest.server_id}/stop/").status_code == 200
    guest.client.wait_server(guest.server_id, "stopped", timeout=60)
    took = time.monotonic() - started
    assert took <= 15, f"graceful stop took {took:.1f} s"
    assert guest.status()["status_reason"] is None  # not forced
    # A snapshot of a cleanly shut down guest is as good as a frozen one.
    assert _snapshot(guest, "powered-off")["consistency"] == "filesystem"

    assert guest.client.post(f"/servers/{guest.server_id}/start/").status_code == 200
    guest.client.wait_server(guest.server_id, "running", timeout=60)
    guest.wait_ssh()
    # Later boots are not first boots: the same host key, the same hostname.
    assert _host_key(guest) == host_key
    assert guest.ssh("hostname").strip() == guest.name


def test_reboot_boots_the_guest_again(guest: Guest) -> None:
    boot_id = guest.ssh("cat /proc/sys/kernel/random/boot_id")
    response = guest.client.post(f"/servers/{guest.server_id}/reboot/")
    assert response.status_code == 200 and response.json()["status"] == "rebooting"
    guest.client.wait_server(guest.server_id, "running", timeout=60)
    assert guest.status()["status_reason"] is None
    guest.wait_ssh()
    assert guest.ssh("cat /proc/sys/kernel/random/boot_id") != boot_id


def test_console_shows_the_boot(guest: Guest) -> None:
    response = guest.client.get(f"/servers/{guest.server_id}/console/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "Linux version" in response.text
    assert f"{guest.name} login:" in response.text
    assert len(guest.client.get(f"/servers/{guest.server_id}/console/?bytes=100").text) <= 100


def test_startup_recovery_thaws_a_guest_left_frozen(guest: Guest) -> None:
    """As if vpsd were killed between the freeze and the thaw of a snapshot."""
    marker = guest.folder / "frozen"
    with GuestAgent(guest.folder / "qga.sock") as agent:
        agent.execute("guest-fsfreeze-freeze")
        marker.touch()
        assert agent.execute("guest-fsfreeze-status") == "frozen"
    guest.service.kill()
    guest.service.start()
    with GuestAgent(guest.folder / "qga.sock") as agent:
        assert agent.execute("guest-fsfreeze-status") == "thawed"
    assert not marker.exists()
    guest.ssh("touch /root/writable && rm /root/writable")


def test_a_guest_that_never_boots_still_runs_and_the_console_says_why(
    guest: Guest, built_image: BuiltImage
) -> None:
    """An image whose disk holds no filesystem: the kernel starts, the root never mounts."""
    service, client = guest.service, guest.client
    broken = write_fake_image(
        service.data_dir / "images",
        slug="broken",
        name="Broken",
        # The initramfs waits rootdelay seconds (180 by default) for a root it can mount.
        cmdline=f"{built_image.cmdline} rootdelay=5",
    )
    for name in ("vmlinuz", "initrd.img"):
        (broken / name).unlink()
        shutil.copyfile(built_image.folder / name, broken / name)
    (broken / "disk.qcow2").unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(broken / "disk.qcow2"), "2G"],
                   check=True)  # fmt: skip
    service.cli("image", "list", "--data-dir", str(service.data_dir))  # registers it

    response = client.post("/servers/", json={"name": "never", "disk_gb": 2, "image": "broken"})
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    client.wait_server(sid, "running", timeout=60)
    console = wait_for(
        lambda: _failure(client.get(f"/servers/{sid}/console/").text), 180, 1.0, "a root failure"
    )
    assert "/dev/vda" in console
    # No agent answers in there: the snapshot is taken anyway, crash-consistent.
    taken = client.post("/snapshots/", json={"server_id": sid, "name": "anyway"}).json()
    assert client.wait_snapshot(taken["id"])["consistency"] == "crash"
    assert client.get(f"/servers/{sid}/").json()["status"] == "running"
    client.delete(f"/servers/{sid}/")
    client.wait_server(sid, None)


ROOT_FAILURE = re.compile(r"Gave up waiting for root|Failed to mount|Cannot open root")


def _failure(console: str) -> str | None:
    return console if ROOT_FAILURE.search(console) else None
