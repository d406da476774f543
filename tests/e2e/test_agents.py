"""``vpsd agent``: another hypervisor host beside ``vpsd serve`` on the same database. Each
host runs its own servers' operations; admins see both hosts."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.live_server import VPSD, LiveServer, serving

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def api() -> Iterator[LiveServer]:
    """``vpsd serve`` on the fake driver (no VMs: this is about who runs what)."""
    with serving(driver="fake", monitor_interval="1") as server:
        yield server


def start_agent(api: LiveServer, data_dir: Path, host: str) -> subprocess.Popen[bytes]:
    """``vpsd agent --host HOST`` on its own data dir and the API's database."""
    env = {**api.env, "VPSD_DATA_DIR": str(data_dir), "VPSD_DATABASE_URL": api.database_url}
    with (data_dir.parent / f"agent-{host}.log").open("ab") as log:
        return subprocess.Popen(
            [VPSD, "agent", "--host", host], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def test_an_agent_runs_its_hosts_servers_beside_serve(api: LiveServer, tmp_path: Path) -> None:
    admin = api.client(api.cli("token", "create", "--account", "ops", "--admin").stdout.split()[-1])
    alice = api.client(api.create_token("alice"))
    agent = start_agent(api, tmp_path / "kvm-02", "kvm-02")
    try:
        wait_for(
            lambda: len(admin.get("/hosts/").json()["results"]) == 2, 30, what="kvm-02 to register"
        )
        hosts = {h["name"]: h for h in admin.get("/hosts/").json()["results"]}
        assert hosts["kvm-02"]["state"] == "up"
        ids = []
        for i in range(4):
            response = alice.post("/servers/", json={"name": f"web-{i}", "disk_gb": 1})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for server_id in ids:  # kvm-02's boot is run by its agent, which polls the database
            alice.wait_server(server_id, "running", timeout=30)
        per_host = Counter(
            {h["name"]: h["servers"] for h in admin.get("/hosts/").json()["results"]}
        )
        assert sorted(per_host.values()) == [2, 2]  # the same capacity: they alternate
        # A second agent on the same data dir is refused before it touches anything.
        second = subprocess.run(
            [VPSD, "agent", "--host", "kvm-02"],
            env={**api.env, "VPSD_DATA_DIR": str(tmp_path / "kvm-02"),
                 "VPSD_DATABASE_URL": api.database_url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1 and "pid" in second.stderr, second.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    assert os.path.exists(tmp_path / "kvm-02" / "installation-id")
