"""Many hosts behind one API: ``vpsd serve --workers 2`` and three ``vpsd agent`` hosts on
PostgreSQL and the real RabbitMQ (the fake driver, whose VMs outlive a killed agent as QEMU's
do). Placement spreads servers; each host runs its own servers' operations; a killed agent,
API worker or broker loses nothing and runs nothing twice at once (from the agents' logs)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, assert_never_twice_at_once, cluster, worker_pids
from tests.helpers import ApiClient, wait_for
from tests.live_server import free_port

pytestmark = [pytest.mark.e2e]

SLOW = "snapshot_create=2,snapshot_restore=2"
AGENT_METRICS_PORT = free_port()
"""Fake driver delays: long enough to kill an agent in the middle of the work."""


@pytest.fixture
def three_hosts() -> Iterator[Cluster]:
    """The API and three agents, all up."""
    with cluster(
        # 30 servers of 1 vCPU on 3 hosts of this machine's 2 CPUs
        VPSD_QUOTA_SERVERS="40", VPSD_QUOTA_VCPUS="40", VPSD_CPU_OVERCOMMIT="16",
        VPSD_FAKE_DELAYS=SLOW,
    ) as running:  # fmt: skip
        running.add_agent(
            1, "--metrics-port", str(AGENT_METRICS_PORT), "--metrics-address", "0.0.0.0",
            driver="fake",
        )  # fmt: skip
        for n in (2, 3):
            running.add_agent(n, driver="fake")
        running.wait_hosts_up(admin_of(running), 3)
        yield running


def admin_of(running: Cluster) -> ApiClient:
    """An admin's client (a new token)."""
    token = running.api.cli("token", "create", "--account", "ops", "--admin").stdout.split()[-1]
    return running.api.client(token)


def create_servers(alice: ApiClient, count: int) -> list[int]:
    """``count`` running servers."""
    ids = []
    for i in range(count):
        response = alice.post("/servers/", json={"name": f"web-{i}", "disk_gb": 1})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    for server_id in ids:
        alice.wait_server(server_id, "running", timeout=60)
    return ids


def request_snapshot(alice: ApiClient, server_id: int, name: str) -> int:
    """POST a snapshot; its id (it is taken in the background)."""
    response = alice.post("/snapshots/", json={"server_id": server_id, "name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_thirty_servers_spread_over_three_hosts_each_running_its_own(
    three_hosts: Cluster,
) -> None:
    admin = admin_of(three_hosts)
    alice = three_hosts.api.client(three_hosts.api.create_token("alice"))
    servers = create_servers(alice, 30)
    for agent in three_hosts.agents.values():  # each host reaches the database and broker only
        if agent.namespace is not None:
            assert agent.process is not None
            assert os.readlink(f"/proc/{agent.process.pid}/ns/net") != os.readlink(
                "/proc/self/ns/net"
            )
            assert "default" not in agent.namespace.routes()
    per_host = Counter(h["servers"] for h in admin.get("/hosts/").json()["results"])
    assert per_host == Counter({10: 3})  # the same capacity: placement alternates

    snapshots = {sid: request_snapshot(alice, sid, "before") for sid in servers}
    for snapshot_id in snapshots.values():
        assert alice.wait_snapshot(snapshot_id)["status"] == "completed"
    for snapshot_id in snapshots.values():
        assert alice.post(f"/snapshots/{snapshot_id}/restore/").status_code == 200
    for sid in servers:
        wait_for(lambda sid=sid: three_hosts.last_operation(sid).status == "completed", 60)

    # Every operation ran on its own server's host, and on no other.
    ran_on: dict[int, set[str]] = {}
    for run in three_hosts.executions():
        ran_on.setdefault(run.operation_id, set()).add(run.host)
    rows = three_hosts.query(
        "SELECT o.id, h.name FROM operations o JOIN servers s ON s.id = o.server_id "
        "JOIN hosts h ON h.id = s.host_id"
    )
    assert len(rows) == 90  # create, snapshot and restore of each server
    for operation_id, host in rows:
        assert ran_on[operation_id] == {host}, (operation_id, ran_on.get(operation_id), host)
    assert_never_twice_at_once(three_hosts.executions())

    # Metrics: the API's, summed over its two workers; an agent's, its own operations.
    api = metrics(f"{three_hosts.api.base_url}/metrics")
    assert api[("vpsd_servers", (("state", "running"),))] == 30
    posted = (("method", "POST"), ("route", "/api/v1/servers/"), ("status", "201"))
    assert api[("vpsd_http_request_duration_seconds_count", posted)] == 30
    first = three_hosts.agents[three_hosts.host(1)]
    agent = metrics(f"http://{first.address}:{AGENT_METRICS_PORT}/metrics")
    snapshots = (("kind", "snapshot.create"), ("outcome", "completed"))
    assert agent[("vpsd_operations_total", snapshots)] == 10


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples a Prometheus scrape of ``url`` reads: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_killed_agent_waits_for_its_host_and_resumes_its_work(three_hosts: Cluster) -> None:
    admin = admin_of(three_hosts)
    alice = three_hosts.api.client(three_hosts.api.create_token("alice"))
    servers = create_servers(alice, 3)
    victim_server, *others = servers
    victim = three_hosts.agents[three_hosts.host_of(victim_server)]
    assert {three_hosts.host_of(sid) for sid in servers} == set(three_hosts.agents)

    # Mid-snapshot: the victim dies with its snapshot under way.
    snapshot = request_snapshot(alice, victim_server, "during-crash")
    wait_for(lambda: three_hosts.last_operation(victim_server).status == "running", 30)
    victim.kill()
    # The other hosts go on.
    for sid in others:
        assert alice.wait_snapshot(request_snapshot(alice, sid, "meanwhile"))["status"] == (
            "completed"
        )
    # Silent past the timeout: down to admins, a reason to its tenant, its work waits.
    wait_for(
        lambda: (
            {h["name"]: h["state"] for h in admin.get("/hosts/").json()["results"]}[victim.name]
            == "down"
        ),
        30,
        what="the victim's host to show down",
    )
    reason = alice.get(f"/servers/{victim_server}/").json()["status_reason"]
    assert reason and "host is not responding" in reason
    assert victim.name not in reason  # tenants never see host names
    time.sleep(2)  # its lease has expired by now: still, no other host takes it
    operation = three_hosts.last_operation(victim_server)
    assert operation.status == "running" and operation.claimed_by.startswith(victim.name + "@")
    assert alice.get(f"/snapshots/{snapshot}/").json()["status"] == "in_progress"

    victim.start()  # resumes its own work
    assert alice.wait_snapshot(snapshot, timeout=60)["status"] == "completed"
    assert three_hosts.operation(operation.id).attempts == 2
    assert alice.get(f"/servers/{victim_server}/").json()["status_reason"] is None

    # Mid-restore, restarted at once: its earlier process's lease is taken back without
    # waiting for it to expire (this agent holds the data dir: the earlier one is gone).
    assert alice.post(f"/snapshots/{snapshot}/restore/").status_code == 200
    wait_for(lambda: three_hosts.last_operation(victim_server).status == "running", 30)
    victim.kill()
    victim.start()
    restore = three_hosts.last_operation(victim_server)
    wait_for(lambda: three_hosts.operation(restore.id).status == "completed", 20)
    assert three_hosts.operation(restore.id).attempts == 2
    alice.wait_server(victim_server, "running")
    runs = three_hosts.executions()
    killed = {run.operation_id for run in runs if run.outcome == "killed"}
    assert killed == {operation.id, restore.id}  # the log saw both cut short
    assert_never_twice_at_once(runs)


def test_a_killed_api_worker_loses_nothing(three_hosts: Cluster) -> None:
    """Clients create and delete snapshots while an API worker is SIGKILLed: uvicorn replaces
    it; no request gets a 5xx, and every snapshot a client was told of settles."""
    alice = three_hosts.api.client(three_hosts.api.create_token("alice"))
    token = alice.token
    servers = create_servers(alice, 6)
    assert three_hosts.api.process is not None
    before = worker_pids(three_hosts.api.process)
    assert len(before) == 2
    statuses: Counter[int] = Counter()
    counting = threading.Lock()
    created: list[int] = []
    transport_errors: list[str] = []
    stop = threading.Event()

    def client(server_id: int) -> None:
        with httpx.Client(
            base_url=three_hosts.api.base_url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as http:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = http.post(
                        "/snapshots/", json={"server_id": server_id, "name": f"s{n}"}
                    )
                    listed = http.get("/snapshots/", params={"server_id": server_id})
                    deleted = (
                        http.delete(f"/snapshots/{created[-1]}/") if n % 3 == 0 and created
                        else None
                    )  # fmt: skip
                    with counting:
                        if response.status_code == 201:
                            created.append(response.json()["id"])
                        for answer in (response, listed, deleted):
                            if answer is not None:
                                statuses[answer.status_code] += 1
                except httpx.TransportError as error:  # a connection the killed worker held
                    transport_errors.append(type(error).__name__)

    threads = [threading.Thread(target=client, args=(sid,)) for sid in servers]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(sorted(before)[0], signal.SIGKILL)
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join()
    after = worker_pids(three_hosts.api.process)
    assert len(after) == 2 and sorted(before)[0] not in after  # replaced
    assert not [code for code in statuses if code >= 500], statuses
    assert statuses[201] > 0, statuses
    print(f"statuses {dict(statuses)}; transport errors {Counter(transport_errors)}")
    wait_for(
        lambda: (
            not three_hosts.query(
                "SELECT id FROM operations WHERE status IN ('pending', 'running')"
            )
        ),
        120,
        interval=0.5,
        what="every operation to end",
    )
    for snapshot_id in created:
        response = alice.get(f"/snapshots/{snapshot_id}/")
        assert response.status_code in (200, 404), response.text  # 404: deleted since
        if response.status_code == 200:
            assert response.json()["status"] in ("completed", "deleting"), response.json()
    failed = three_hosts.query("SELECT id, kind, error FROM operations WHERE status = 'failed'")
    assert not failed, failed
    assert_never_twice_at_once(three_hosts.executions())


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl ARGS`` (the broker of this machine)."""
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_a_broker_restart_loses_nothing_and_runs_nothing_twice(three_hosts: Cluster) -> None:
    if os.geteuid() != 0:
        pytest.skip("restarting RabbitMQ takes root")
    alice = three_hosts.api.client(three_hosts.api.create_token("alice"))
    servers = create_servers(alice, 3)
    under_way = [request_snapshot(alice, sid, "under-way") for sid in servers]
    wait_for(lambda: three_hosts.last_operation(servers[0]).status == "running", 30)
    rabbitmqctl("stop_app")  # every connection drops, with snapshots running
    try:
        while_down = [request_snapshot(alice, sid, "while-down") for sid in servers]
        time.sleep(2)
    finally:
        rabbitmqctl("start_app")
    after = [request_snapshot(alice, sid, "after") for sid in servers]
    for snapshot_id in under_way + while_down + after:
        assert alice.wait_snapshot(snapshot_id, timeout=90)["status"] == "completed"
    attempts = three_hosts.query("SELECT attempts FROM operations WHERE kind = 'snapshot.create'")
    assert all(row.attempts == 1 for row in attempts), attempts  # none ran twice
    assert_never_twice_at_once(three_hosts.executions())
