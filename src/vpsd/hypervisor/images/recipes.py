"""What each guest image is made of, and the hash that names a build of it.

A recipe's ``version`` is a hash of everything that goes into the build (the recipe's own
fields, the files copied into the guest, the builder's revision), so a changed recipe gets
a new file name and an image a server's disk is backed by is never rebuilt in place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

GUEST_FILES = Path(__file__).parent / "guest"
"""Scripts, units and configuration copied into every guest (``guest/customize.sh``)."""

BUILDER_REVISION = 1
"""Bump when ``build.py`` changes what it produces from the same recipe."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """One buildable image."""

    slug: str
    name: str
    os: str
    suite: str
    """Debian suite mmdebstrap installs (``bookworm``)."""
    packages: tuple[str, ...]
    min_disk_gb: int
    """Size of the root filesystem, so the smallest disk a server made from it can have."""
    min_memory_mb: int
    """Below this the kernel cannot unpack its initrd and panics."""
    cmdline: str
    """Kernel command line for direct kernel boot."""

    @property
    def version(self) -> str:
        """12 hex digits of SHA-256 over the recipe, the guest files and the builder."""
        digest = hashlib.sha256()
        digest.update(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(f"builder {BUILDER_REVISION}".encode())
        for path in sorted(GUEST_FILES.iterdir()):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:12]

    @property
    def build_name(self) -> str:
        """The folder name of this build: ``debian-12-<version>``."""
        return f"{self.slug}-{self.version}"


DEBIAN_12 = Recipe(
    slug="debian-12",
    name="Debian 12",
    os="debian",
    suite="bookworm",
    packages=(
        "linux-image-cloud-amd64",
        "systemd",
        "systemd-sysv",
        "udev",
        "dbus",
        "qemu-guest-agent",
        "openssh-server",
        "iproute2",
        "iputils-ping",
        "procps",
        "e2fsprogs",
        "kmod",
        "less",
        "nano",
    ),
    min_disk_gb=2,
    min_memory_mb=192,
    cmdline="root=/dev/vda ro console=ttyS0,115200n8 net.ifnames=1",
)

RECIPES: dict[str, Recipe] = {recipe.slug: recipe for recipe in (DEBIAN_12,)}
"""Every image ``vpsd image build`` knows, by slug."""
