"""``vpsd serve`` as a real subprocess, for end-to-end, crash and load tests.

A ``LiveServer`` owns a data dir; it can be started, stopped, SIGKILLed and started again
on the same data, as an operator would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, wait_for

VPSD = str(Path(sys.executable).parent / "vpsd")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """One ``vpsd serve`` process on 127.0.0.1, its log in ``<data_dir>/serve.log``."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        log_level: str = "info",
        **settings: str,
    ) -> None:
        self.data_dir = data_dir
        self.log_level = log_level
        self.args: tuple[str, ...] = ()
        """More ``vpsd serve`` options (``("--workers", "2")``)."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "VPSD_DATA_DIR": str(data_dir),
            "VPSD_STOP_TIMEOUT": "1",
            "VPSD_MONITOR_INTERVAL": "0.5",
            "VPSD_ACCEL": os.environ.get("VPSD_TEST_ACCEL", "auto"),
            # Blank servers (no guest) unless a test asks for an image: they start at once;
            # and no images from this host's cache unless a test asks for them.
            "VPSD_DEFAULT_IMAGE": "blank",
            "VPSD_IMAGE_CACHE_DIR": str(data_dir / "image-cache"),
            **{f"VPSD_{key.upper()}": value for key, value in settings.items()},
        }
        if database_url:
            self.env["VPSD_DATABASE_URL"] = database_url
        self.log_path = data_dir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._http_clients: list[httpx.Client] = []

    def start(self, timeout: float = 60.0) -> None:
        """Start ``vpsd serve`` and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    VPSD,
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    self.log_level,
                    *self.args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._ready, timeout, interval=0.1, what=f"vpsd serve on {self.base_url}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"vpsd serve exited {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """Stop the service gracefully (SIGTERM); its VMs keep running."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL the service, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Start again on the same data dir after ``stop`` or ``kill``."""
        self.start()

    @property
    def database_url(self) -> str:
        """The service's database (its SQLite file unless one was given)."""
        return self.env.get("VPSD_DATABASE_URL") or f"sqlite:///{self.data_dir / 'vpsd.db'}"

    def log(self) -> str:
        """Everything the service printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``vpsd ARGS`` with this server's environment."""
        return subprocess.run(
            [VPSD, *args], env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def create_token(self, account: str = "alice") -> str:
        """A new API token from ``vpsd token create`` (its last line of stdout)."""
        return self.cli("token", "create", "--account", account).stdout.strip().splitlines()[-1]

    def disk(self, server_id: int) -> Path:
        """The qcow2 file of the server's first disk."""
        return self.data_dir / "servers" / str(server_id) / "disk0.qcow2"

    def client(self, token: str, timeout: float = 30.0) -> ApiClient:
        """An ApiClient for ``token`` over real HTTP (closed by ``close``)."""
        http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http_clients.append(http)
        return ApiClient(http, token)

    def close(self) -> None:
        """Stop the service and close every client made by ``client``."""
        self.stop()
        for http in self._http_clients:
            http.close()

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Wait until nothing answers on the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/healthz", timeout=0.5)
            except httpx.TransportError:
                return
            time.sleep(0.1)


@contextmanager
def serving(
    database_url: str | None = None,
    prepare: Callable[[Path], object] | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[LiveServer]:
    """A started ``LiveServer`` in a fresh short data dir (``settings`` as ``VPSD_*``, more
    ``vpsd serve`` options in ``args``, other environment variables in ``env``; ``prepare``
    is given the data dir before the start); afterwards it is stopped, every VM it started
    is killed and the data dir removed, even when the block failed."""
    root = qh.short_tmpdir()
    server = LiveServer(root, database_url=database_url, **settings)
    server.args = args
    server.env.update(env or {})
    try:
        if prepare is not None:
            prepare(root)
        server.start()
        yield server
    finally:
        server.close()
        qh.kill_qemus_under(root)
        if os.environ.get("VPSD_TEST_KEEP"):  # to read its logs after a failure
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
