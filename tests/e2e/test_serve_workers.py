"""``vpsd serve --workers N``'s supervisor (issue 22, item 10): a worker slow to start is
given the time, every worker's exit is logged with its cause, and workers that cannot start
their application stop ``vpsd serve`` with exit code 3."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests import qemu_helpers as qh
from tests.cluster import worker_pids
from tests.helpers import wait_for
from tests.live_server import VPSD, LiveServer, serving

pytestmark = [pytest.mark.e2e]

SLOW_START = """\
import sys
import time

if "--multiprocessing-fork" in sys.argv:  # a worker spawned by `vpsd serve --workers`
    time.sleep({seconds})
"""

BROKEN_APPLICATION = """\
import sys

if "--multiprocessing-fork" in sys.argv:  # a worker spawned by `vpsd serve --workers`
    sys.modules["vpsd.runtime.app"] = None  # cannot import its application
"""


def test_workers_slower_to_start_than_the_health_check_still_start(tmp_path: Path) -> None:
    """On a loaded machine, workers took longer to import vpsd than uvicorn's 5 s health
    check: the supervisor killed each one mid-import and started another, which met the same
    end, and the log said only "died". Here every worker sleeps 8 s before it can answer."""
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_START.format(seconds=8))
    with serving(driver="fake", args=("--workers", "2"), env={"PYTHONPATH": str(slow)}) as live:
        assert live.process is not None
        started = worker_pids(live.process)
        wait_for(
            lambda: live.log().count("Application startup complete") == 2,
            60,
            what="both workers' startup",
        )
        assert httpx.get(f"{live.base_url}/healthz", timeout=10).status_code == 200
        assert worker_pids(live.process) == started and len(started) == 2  # none replaced
        log = live.log()
        assert "was killed" not in log and "died" not in log, log


def test_every_worker_exit_is_logged_with_its_cause() -> None:
    """A worker killed from outside is replaced, and the log says which one and how it
    ended; at shutdown, how each worker stopped."""
    with serving(driver="fake", args=("--workers", "2")) as live:
        assert live.process is not None
        killed, kept = sorted(worker_pids(live.process))
        os.kill(killed, signal.SIGKILL)
        wait_for(
            lambda: f"API worker {killed} exited unexpectedly (signal SIGKILL)" in live.log(),
            30,
            what="the killed worker's exit in the log",
        )
        replacement = wait_for(
            lambda: (worker_pids(live.process) - {kept}) - {killed}, 30, what="a new worker"
        ).pop()
        assert f"API worker {replacement} started in place of {killed}" in live.log()
        live.stop()
        log = live.log()
        assert live.process.returncode == 0, log
        for pid in (kept, replacement):
            assert f"API worker {pid} stopped (" in log, log


def test_workers_that_cannot_start_stop_vpsd_serve_with_code_3(tmp_path: Path) -> None:
    """Workers whose application cannot load stop the parent (another would fail alike),
    which says why and exits 3, as one process does; it exited 0 before."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(BROKEN_APPLICATION)
    root = qh.short_tmpdir()
    try:
        env = {**LiveServer(root, driver="fake").env, "PYTHONPATH": str(broken)}
        done = subprocess.run(
            [VPSD, "serve", "--port", "0", "--workers", "2"],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "exited unexpectedly (exit code 3: its application could not start" in output
    assert "stopping: the API workers cannot start" in output
