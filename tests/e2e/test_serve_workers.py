"""``vpsd serve --workers N``'s supervisor (issue 22, item 10): a worker slow to start is
given the time, and every worker's exit is logged with its cause."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.cluster import worker_pids
from tests.helpers import wait_for
from tests.live_server import serving

pytestmark = [pytest.mark.e2e]

SLOW_START = """\
import sys
import time

if "--multiprocessing-fork" in sys.argv:  # a worker spawned by `vpsd serve --workers`
    time.sleep({seconds})
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
