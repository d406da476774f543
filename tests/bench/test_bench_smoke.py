"""Smoke test of ``python -m bench``: every part runs on tiny sizes and leaves its results.

No timing is asserted: only that each part produced its table and JSON, into a temp results
dir, and that docs/benchmarks.md was left alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import qemu_helpers as qh

pytestmark = [pytest.mark.qemu, pytest.mark.e2e, qh.requires_qemu]
ROOT = Path(__file__).resolve().parents[2]


BACKUP_TOOLS = [
    tool for tool in ("restic", "nbdcopy", "nbdinfo", "qemu-nbd") if shutil.which(tool) is None
]


@pytest.mark.parametrize(
    "part",
    [
        "snapshots",
        "guest",
        "api",
        "guests",
        *(
            pytest.param(
                part,
                marks=pytest.mark.skipif(
                    bool(BACKUP_TOOLS), reason=f"missing from PATH: {', '.join(BACKUP_TOOLS)}"
                ),
            )
            for part in ("backups", "incremental")
        ),
    ],
)
def test_each_part_writes_its_results_and_table(part: str, tmp_path: Path) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    doc_before = doc.read_bytes() if doc.exists() else None
    work = qh.short_tmpdir()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bench", part, "--quick", "--results-dir", str(tmp_path),
             "--doc", str(tmp_path / "benchmarks.md"), "--work-dir", str(work)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        qh.kill_qemus_under(work)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = json.loads((tmp_path / f"{part}.json").read_text())
    assert saved["part"] == part
    assert saved["tables"] and all(table["rows"] for table in saved["tables"])
    assert saved["targets"]
    assert "Targets" in result.stdout
    assert (tmp_path / "benchmarks.md").read_text().count("| target | measured | met |") == 1
    assert (doc.read_bytes() if doc.exists() else None) == doc_before
