"""Real guests: the Debian image built once per host (cached by recipe), one ``vpsd serve``
and one booted server shared by the whole package, since every boot costs ~20 s under TCG.

The tests in ``test_guest_story.py`` run in file order on that one server; each leaves it
``running`` with SSH answering.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer
from vpsd.config import default_image_cache_dir
from vpsd.hypervisor.images import build, recipes, store
from vpsd.hypervisor.images.store import BuiltImage

BOOT_TIMEOUT = float(os.environ.get("VPSD_TEST_BOOT_TIMEOUT", "240"))
"""Seconds a guest may take to answer SSH (about 20 under TCG on 2 idle cores)."""
STOP_TIMEOUT = "20"


def image_cache_dir() -> Path:
    """The host's image cache, as ``vpsd serve`` would find it."""
    configured = os.environ.get("VPSD_IMAGE_CACHE_DIR")
    return Path(configured) if configured else default_image_cache_dir()


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    """The debian-12 image, from the cache or built now (root and mmdebstrap needed)."""
    recipe = recipes.DEBIAN_12
    cached = store.find_build(image_cache_dir(), recipe.build_name)
    if cached is not None:
        return cached
    problem = None
    if missing := build.missing_programs():
        problem = f"Debian packages missing: {' '.join(missing)}"
    elif os.geteuid() != 0:
        problem = "building the guest image needs root"
    if problem:
        message = f"no {recipe.build_name} image in {image_cache_dir()} and {problem}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return build.build(recipe, image_cache_dir())


@dataclass
class Guest:
    """A booted server and the way in: its id, SSH port and the private key for root."""

    client: ApiClient
    service: LiveServer
    server_id: int
    name: str
    port: int
    key: Path

    @property
    def folder(self) -> Path:
        """The server's folder in the data dir (disks, sockets, console log)."""
        return self.service.data_dir / "servers" / str(self.server_id)

    def ssh(self, command: str, *, check: bool = True, timeout: float = 60) -> str:
        """Run ``command`` as root in the guest; its stdout."""
        result = ssh(self.port, self.key, command, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {command!r} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def wait_ssh(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until SSH answers; the seconds it took."""
        started = time.monotonic()
        wait_for(
            lambda: ssh(self.port, self.key, "true", timeout=10).returncode == 0,
            timeout,
            interval=0.5,
            what=f"SSH on port {self.port}",
        )
        return time.monotonic() - started

    def status(self) -> dict[str, object]:
        """The server object."""
        body: dict[str, object] = self.client.get(f"/servers/{self.server_id}/").json()
        return body


def ssh(
    port: int, key: Path, command: str, *, timeout: float = 60, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``ssh root@127.0.0.1 -p PORT COMMAND`` with ``key``, no prompts, no known_hosts."""
    args = [
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=5", *extra, "root@127.0.0.1", command,
    ]  # fmt: skip
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(args, 255, "", f"timed out: {exc}")


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair; the private key's path."""
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-client is not installed")
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def guest_service(built_image: BuiltImage) -> Iterator[LiveServer]:
    """``vpsd serve`` on the real QEMU driver, with the image in its data dir."""
    if qh.missing_qemu_binaries():
        pytest.skip(f"QEMU tools missing: {', '.join(qh.missing_qemu_binaries())}")
    root = qh.short_tmpdir()
    service = LiveServer(
        root,
        stop_timeout=STOP_TIMEOUT,
        image_cache_dir=str(built_image.folder.parent),
        change_health_seconds="5",  # a change's failing check: rolled back in 5 s, not 60
    )
    try:
        service.start()
        yield service
    finally:
        service.close()
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_client(guest_service: LiveServer) -> ApiClient:
    """An account on the guest service."""
    return guest_service.client(guest_service.create_token("carol"))


@pytest.fixture(scope="session")
def guest(guest_service: LiveServer, guest_client: ApiClient, ssh_key: Path) -> Guest:
    """A Debian server created with ``ssh_key``, booted until SSH answers."""
    public_key = ssh_key.with_suffix(".pub").read_text().strip()
    created = guest_client.post("/ssh_keys/", json={"name": "ci", "public_key": public_key})
    assert created.status_code == 201, created.text
    response = guest_client.post(
        "/servers/",
        json={
            "name": "story-1",
            "disk_gb": 4,
            "image": "debian-12",
            "ssh_keys": [created.json()["id"]],
        },
    )
    assert response.status_code == 201, response.text
    server = response.json()
    guest_client.wait_server(server["id"], "running", timeout=60)
    found = Guest(
        guest_client, guest_service, server["id"], "story-1", server["ssh"]["port"], ssh_key
    )
    try:
        found.wait_ssh()
    except AssertionError:
        console = guest_client.get(f"/servers/{server['id']}/console/").text
        raise AssertionError(f"the guest never answered SSH; console:\n{console}") from None
    return found
