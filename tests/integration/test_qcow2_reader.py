"""The in-process qcow2 reader counts exactly what ``qemu-img measure`` counts, on every
layout vpsd makes: blank disks, written, zeroed and discarded clusters, snapshots taken
between writes, overlays on a compressed image (with and without their own data)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from vpsd.hypervisor.qemu import img, qcow2

pytestmark = [pytest.mark.qemu, qh.requires_qemu]
MIB = 1024 * 1024


def _io(disk: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(disk)], check=True, capture_output=True)


def _snapshot(disk: Path, tag: str) -> None:
    subprocess.run(["qemu-img", "snapshot", "-c", tag, str(disk)], check=True)


def _measured(disk: Path, tag: str) -> int:
    """The data ``qemu-img measure`` reports (the fallback's answer)."""
    full = img.measure_required(disk, tag=tag, timeout=60)
    empty = img.measure_required(None, size_bytes=img.virtual_size(disk), timeout=60)
    return max(0, full - empty)


def _base(folder: Path) -> Path:
    """A compressed image like the guest images: data here and there, some zero clusters."""
    raw = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(raw), "256M"], check=True)
    _io(raw, "write -P 0x11 0 8M", "write -P 0x12 100M 3M", "write -z 50M 2M")
    compressed = folder / "image.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-c", "-O", "qcow2", "-o", "compression_type=zstd",
         str(raw), str(compressed)],
        check=True,
    )  # fmt: skip
    return compressed


def _overlay(folder: Path, size: str = "1G") -> Path:
    disk = folder / "disk0.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "image.qcow2", "-F", "qcow2",
         str(disk), size],
        check=True, cwd=folder,
    )  # fmt: skip
    return disk


def _blank(folder: Path) -> Path:
    disk = folder / "disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    return disk


Layout = Callable[[Path], Path]


def _blank_untouched(folder: Path) -> Path:
    return _blank(folder)


def _blank_written(folder: Path) -> Path:
    disk = _blank(folder)
    _io(disk, "write -P 0xab 0 5M", "write -P 0xcd 700M 1M", "write -P 1 1023M 1M")
    return disk


def _blank_zeroed_and_discarded(folder: Path) -> Path:
    disk = _blank(folder)
    _io(disk, "write -P 0xab 0 10M", "write -z 2M 3M", "discard 6M 2M", "write -z 200M 4M")
    return disk


def _overlay_untouched(folder: Path) -> Path:
    _base(folder)
    return _overlay(folder)


def _overlay_written(folder: Path) -> Path:
    _base(folder)
    disk = _overlay(folder)
    # Over the image's data, beside it, past its end, and zeros over its data.
    _io(disk, "write -P 0x22 4M 8M", "write -P 0x23 150M 1M", "write -P 0x24 600M 2M",
        "write -z 100M 1M")  # fmt: skip
    return disk


LAYOUTS: dict[str, Layout] = {
    "blank disk": _blank_untouched,
    "written disk": _blank_written,
    "zeroed and discarded clusters": _blank_zeroed_and_discarded,
    "overlay on a compressed image": _overlay_untouched,
    "overlay with data of its own": _overlay_written,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_reader_agrees_with_qemu_img_measure(layout: str, tmp_path: Path) -> None:
    disk = LAYOUTS[layout](tmp_path)
    _snapshot(disk, "first")
    _io(disk, "write -P 0x77 300M 6M", "write -z 0 1M")  # changes after the snapshot
    _snapshot(disk, "second")
    for tag in ("first", "second"):
        assert qcow2.allocated_bytes(disk, tag) == _measured(disk, tag), (layout, tag)
        assert img.captured_bytes(disk, tag, timeout=60) == _measured(disk, tag)


def test_what_it_does_not_read_falls_back_to_qemu_img(tmp_path: Path) -> None:
    disk = tmp_path / "extended.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(disk), "64M"],
        check=True,
    )
    _io(disk, "write -P 0x5a 0 3M")
    _snapshot(disk, "s")
    with pytest.raises(qcow2.Unsupported):
        qcow2.allocated_bytes(disk, "s")
    assert img.captured_bytes(disk, "s", timeout=60) == _measured(disk, "s") >= 3 * MIB
    with pytest.raises(qcow2.Unsupported, match="no snapshot"):
        qcow2.allocated_bytes(_blank(tmp_path), "missing")
