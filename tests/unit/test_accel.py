"""Choosing the accelerator: KVM only where it can run a real guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpsd.hypervisor.base import DriverError
from vpsd.hypervisor.qemu import process

FLAGS = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge hypervisor {extra}\n"


def _cpuinfo(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\n" + FLAGS.format(extra=extra) + "\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize(("extra", "expected"), [("vmx", True), ("svm", True), ("", False)])
def test_virtualization_flag_is_read_from_cpuinfo(
    tmp_path: Path, extra: str, expected: bool
) -> None:
    assert process.cpu_has_virtualization(_cpuinfo(tmp_path, extra)) is expected


def test_unreadable_cpuinfo_means_no_virtualization(tmp_path: Path) -> None:
    assert process.cpu_has_virtualization(tmp_path / "missing") is False


@pytest.mark.parametrize(
    ("opens", "virtualization", "expected"),
    [(True, True, "kvm"), (True, False, "tcg"), (False, True, "tcg"), (False, False, "tcg")],
)
def test_auto_picks_kvm_only_where_a_real_guest_can_run(
    monkeypatch: pytest.MonkeyPatch, opens: bool, virtualization: bool, expected: str
) -> None:
    monkeypatch.setattr(process, "kvm_device_opens", lambda: opens)
    monkeypatch.setattr(process, "cpu_has_virtualization", lambda: virtualization)
    assert process.resolve_accel("auto") == expected


def test_explicit_kvm_is_honoured_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "cpu_has_virtualization", lambda: False)
    monkeypatch.setattr(process, "kvm_device_opens", lambda: True)
    assert process.resolve_accel("kvm") == "kvm"
    monkeypatch.setattr(process, "kvm_device_opens", lambda: False)
    with pytest.raises(DriverError, match="cannot be opened"):
        process.resolve_accel("kvm")
    assert process.resolve_accel("tcg") == "tcg"
