"""Built images on disk: reading their manifests and placing them where servers boot from.

A build lives in ``<folder>/<slug>-<version>/`` (``disk.qcow2``, ``vmlinuz``,
``initrd.img``, ``manifest.json``), read-only. The build cache holds every build of this
host; each data dir has its own ``images/`` holding the builds its servers use, hard links
into the cache where the filesystem allows (instant, no space used), copies elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpsd.hypervisor.base import DriverError, GuestImage

MANIFEST = "manifest.json"
FILES = ("disk.qcow2", "vmlinuz", "initrd.img", MANIFEST)


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One build of an image, as its manifest describes it."""

    folder: Path
    slug: str
    version: str
    name: str
    os: str
    min_disk_gb: int
    min_memory_mb: int
    size_mb: int
    cmdline: str

    @property
    def build_name(self) -> str:
        """``<slug>-<version>``, the folder's name."""
        return f"{self.slug}-{self.version}"

    @property
    def guest_image(self) -> GuestImage:
        """What the driver needs to create a disk from this image and boot it."""
        return guest_image(self.folder, self.cmdline)


def guest_image(folder: Path, cmdline: str) -> GuestImage:
    """The driver's view of the build in ``folder``."""
    return GuestImage(
        disk=folder / "disk.qcow2",
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.img",
        cmdline=cmdline,
    )


def read_build(folder: Path) -> BuiltImage:
    """The build in ``folder``; raises ``DriverError`` when it is missing or incomplete."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DriverError(f"image {folder.name} is incomplete: {', '.join(missing)} missing")
    try:
        data: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        return BuiltImage(
            folder=folder,
            slug=str(data["slug"]),
            version=str(data["version"]),
            name=str(data["name"]),
            os=str(data["os"]),
            min_disk_gb=int(data["min_disk_gb"]),
            min_memory_mb=int(data["min_memory_mb"]),
            size_mb=int(data["size_mb"]),
            cmdline=str(data["cmdline"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"image {folder.name}: unreadable {MANIFEST} ({exc})") from exc


def find_build(folder: Path, build_name: str) -> BuiltImage | None:
    """The complete build ``build_name`` under ``folder``, or None."""
    candidate = folder / build_name
    if not (candidate / MANIFEST).is_file():
        return None
    return read_build(candidate)


def place(build: BuiltImage, images_dir: Path) -> BuiltImage:
    """Make ``build`` available in ``images_dir`` (idempotent); return it there.

    Files are hard-linked when possible, else copied; either way they appear under their
    final folder name only when complete.
    """
    target = images_dir / build.build_name
    if (target / MANIFEST).is_file():
        return read_build(target)
    images_dir.mkdir(parents=True, exist_ok=True)
    partial = images_dir / f".{build.build_name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for name in FILES:
            try:
                os.link(build.folder / name, partial / name)
            except OSError:  # another filesystem, or links not allowed: copy
                shutil.copyfile(build.folder / name, partial / name)
                (partial / name).chmod(0o444)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return read_build(target)


def remove(images_dir: Path, build_name: str) -> None:
    """Delete the build ``build_name`` from ``images_dir`` (no error when it is gone)."""
    folder = images_dir / build_name
    if folder.exists():
        for path in folder.iterdir():
            path.chmod(0o644)
        shutil.rmtree(folder)
