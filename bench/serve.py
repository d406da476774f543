"""A ``vpsd serve`` subprocess on its own data dir, and an API client that times operations."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

VPSD = str(Path(sys.executable).parent / "vpsd")
POLL = 0.005
"""Seconds between polls while waiting for a state: the resolution of the API timings."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Serve:
    """``vpsd serve`` on 127.0.0.1 with ``data_dir``; its output goes to ``serve.log``."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "VPSD_DATA_DIR": str(data_dir),
            "VPSD_STOP_TIMEOUT": "1",
            **{f"VPSD_{key.upper()}": value for key, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        """Run ``vpsd ARGS`` on this data dir; return its stdout."""
        result = subprocess.run(
            [VPSD, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"vpsd {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def create_token(self, account: str) -> str:
        """A token for ``account`` from ``vpsd token create`` (last line of its output)."""
        return self.cli("token", "create", "--account", account).strip().splitlines()[-1]

    def start(self, timeout: float = 120.0) -> None:
        """Start the service and wait until ``/healthz`` answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "serve.log").open("ab") as log:
            self.process = subprocess.Popen(
                [VPSD, "serve", "--port", str(self.port), "--log-level", "warning"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vpsd serve exited {self.process.returncode}, see serve.log")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("vpsd serve did not answer in time")

    def stop(self) -> None:
        """SIGTERM the service (VMs keep running: the caller kills them)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def kill_qemus_under(folder: Path) -> None:
    """SIGKILL the QEMUs whose command line mentions ``folder`` (only the bench's own VMs)."""
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"qemu-system" in cmdline.split(b"\0")[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


class Api:
    """One account's HTTP client with the waits the timings need."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{base_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        """Send a request; fail unless the status is ``expect``; return the JSON body."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def wait(self, path: str, key: str, wanted: str, timeout: float = 600) -> None:
        """Poll ``GET path`` until its ``key`` is ``wanted``; fail on ``error``/``failed``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.call("GET", path, 200)[key]
            if value == wanted:
                return
            if value in ("error", "failed"):
                raise RuntimeError(f"{path} went {value} waiting for {wanted}")
            time.sleep(POLL)
        raise RuntimeError(f"timed out waiting for {path} to be {wanted}")

    def server_to(self, server_id: int, action: str, final: str) -> float:
        """POST a server action (``start``/``stop``) and time it until ``final``."""
        start = time.perf_counter()
        self.call("POST", f"/servers/{server_id}/{action}/", 200)
        self.wait(f"/servers/{server_id}/", "status", final)
        return time.perf_counter() - start

    def snapshot(self, server_id: int, name: str) -> tuple[int, float]:
        """Take a snapshot; return its id and the time from request to ``completed``."""
        start = time.perf_counter()
        snapshot_id: int = self.call(
            "POST", "/snapshots/", 201, json={"server_id": server_id, "name": name}
        )["id"]
        self.wait(f"/snapshots/{snapshot_id}/", "status", "completed")
        return snapshot_id, time.perf_counter() - start

    def restore(self, snapshot_id: int, server_id: int, final: str) -> float:
        """Restore; the time from request until the server is ``final`` again."""
        start = time.perf_counter()
        self.call("POST", f"/snapshots/{snapshot_id}/restore/", 200)
        self.wait(f"/servers/{server_id}/", "status", final)
        return time.perf_counter() - start

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()
