"""``vpsctl servers ssh`` against a real sshd whose port passes from one server to the next
(issue 22, item 13).

A deleted server's SSH port is given to the next new server, which has a host key of its
own. Keyed by ``[host]:port``, ssh then refused the new server with REMOTE HOST
IDENTIFICATION HAS CHANGED. With the per-server ``HostKeyAlias`` the new server is a new
name in known_hosts, and a server whose own key changes is still refused. Debian's sshd
stands in for the guests (``tests/storage_host.py``), on one port, its host key made anew.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from tests.storage_host import StorageHost, _keygen, storage_host
from vpsd.cli.vpsctl_servers import ssh_command
from vpsd.schemas import ServerOut

API_URL = "http://127.0.0.1:8000"


def server(server_id: int, port: int) -> ServerOut:
    """A running Debian server as the API shows it, its SSH endpoint on ``port``."""
    return ServerOut.model_validate(
        {
            "id": server_id,
            "name": f"web-{server_id}",
            "status": "running",
            "memory_mb": 256,
            "vcpus": 1,
            "disk_gb": 2,
            "image": "debian-12",
            "ssh": {"host": "127.0.0.1", "port": port},
            "created_at": datetime.now(UTC),
        }
    )


def log_in(
    host: StorageHost, target: ServerOut, known_hosts: Path
) -> subprocess.CompletedProcess[str]:
    """Run vpsctl's ssh command for ``target`` as a user would, remembering host keys in
    ``known_hosts`` (new ones accepted, changed ones refused)."""
    options = [
        "-i", str(host.client_key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
        "true",
    ]  # fmt: skip
    return subprocess.run(
        ssh_command(target, options, API_URL), capture_output=True, text=True, timeout=30
    )


def new_host_key(host: StorageHost) -> None:
    """Another server behind the same port: sshd restarted with a host key made anew."""
    host.stop()
    host.host_key.unlink()
    host.host_key.with_suffix(".pub").unlink()
    _keygen(host.host_key)
    host.start()


def test_a_new_server_on_a_freed_port_is_let_in_and_a_changed_key_is_not(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    with storage_host() as host:
        first, second = server(1, host.port), server(2, host.port)
        assert log_in(host, first, known_hosts).returncode == 0
        new_host_key(host)  # server 1 deleted, server 2 created on its port

        second_login = log_in(host, second, known_hosts)
        assert second_login.returncode == 0, second_login.stderr
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" not in second_login.stderr

        # Server 1's name now meets another key: ssh still refuses it, as it should.
        spoofed = log_in(host, first, known_hosts)
        assert spoofed.returncode != 0
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in spoofed.stderr
    # Each key is recorded under its server's name (hashed or not, as ssh_config says).
    for name in ("vpsd-127.0.0.1-8000-server-1", "vpsd-127.0.0.1-8000-server-2"):
        found = subprocess.run(
            ["ssh-keygen", "-F", name, "-f", str(known_hosts)], capture_output=True, timeout=30
        )
        assert found.returncode == 0, name
