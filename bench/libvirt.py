"""libvirt 9.0 beside vpsd: internal snapshots of a shut-off domain on the same kind of disk.

libvirt is the management layer most KVM tools build on; for a shut-off domain with a qcow2
disk, ``virsh snapshot-create-as``/``snapshot-revert``/``snapshot-delete`` make, apply and
delete an internal snapshot, as vpsd does for a stopped server. Timed through ``virsh``, the
way its users drive it (its process start is included, as vpsd's figures include HTTP).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.util import summary

URI = "qemu:///system"
DOMAIN = "vpsd-bench-libvirt"


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=600
    )


def unavailable() -> str | None:
    """Why libvirt cannot be measured here (None when it can); starts libvirtd if needed."""
    if shutil.which("virsh") is None or shutil.which("libvirtd") is None:
        return "libvirt is not installed (apt-get install libvirt-daemon-system libvirt-clients)"
    if _virsh("version", check=False).returncode == 0:
        return None
    if os.geteuid() != 0:
        return "libvirtd is not running and only root can start it"
    subprocess.run(_libvirtd_command(), check=False, timeout=30)
    for _ in range(50):
        if _virsh("version", check=False).returncode == 0:
            return None
        time.sleep(0.1)
    return "libvirtd did not start"


def _libvirtd_command() -> list[str]:
    """``libvirtd -d``; where /dev/kvm opens but cannot run a guest (a nested, paravirtual
    KVM), in a mount namespace that hides it. There, libvirt finds its cached QEMU
    capabilities stale on every call and probes QEMU again (two QEMU starts, 4-8 s per
    virsh call, measured); hidden, it probes once for TCG, as on a host without KVM."""
    from vpsd.hypervisor.qemu.process import kvm_device_opens, resolve_accel

    if not kvm_device_opens() or resolve_accel("auto") == "kvm" or shutil.which("unshare") is None:
        return ["libvirtd", "-d"]
    return ["unshare", "-m", "sh", "-c", "mount --bind /dev/null /dev/kvm && exec libvirtd -d"]


def version() -> str:
    """libvirt's version line."""
    lines = _virsh("version").stdout.splitlines()
    return next((line for line in lines if line.startswith("Using library")), "libvirt")


def _domain_xml(disk: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def measure(disk: Path, reps: int) -> dict[str, Any]:
    """Create, revert to and delete internal snapshots of a shut-off domain on ``disk``."""
    xml = disk.with_suffix(".xml")
    xml.write_text(_domain_xml(disk))
    _virsh("undefine", DOMAIN, "--snapshots-metadata", check=False)
    _virsh("define", str(xml))
    timings: dict[str, list[float]] = {"create": [], "revert": [], "delete": []}
    try:
        for rep in range(reps):
            name = f"s{rep}"
            for key, args in (
                ("create", ("snapshot-create-as", DOMAIN, "--name", name)),
                ("revert", ("snapshot-revert", DOMAIN, name)),
                ("delete", ("snapshot-delete", DOMAIN, name)),
            ):
                started = time.perf_counter()
                _virsh(*args)
                timings[key].append(time.perf_counter() - started)
    finally:
        _virsh("undefine", DOMAIN, "--snapshots-metadata", check=False)
        xml.unlink(missing_ok=True)
    return {key: summary(samples) for key, samples in timings.items()} | {"samples": timings}
