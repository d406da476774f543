"""GET /metrics: what an operator scrapes. HTTP requests by route template, operations by
kind and outcome, gauges read from the database, and the sum over API worker processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from tests.helpers import ApiClient
from tests.unit.test_hosts_api import add_host, host_of, only_remote_hosts, post_server
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Operation, OperationKind, OperationStatus
from vpsd.db.session import Database
from vpsd.metrics import DatabaseCollector, observe_operation, serve_metrics
from vpsd.services.tokens import create_token

REPO = Path(__file__).resolve().parents[2]
HTTP_COUNT = "vpsd_http_request_duration_seconds_count"


class Scrape:
    """One scrape of /metrics, parsed: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is absent (a series not observed yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample named ``name``."""
        return [dict(labels) for sample, labels in self.samples if sample == name]


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")  # no token: like /healthz
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


def http_count(scraped: Scrape, route: str, status: str, method: str = "GET") -> float:
    return scraped.value(HTTP_COUNT, method=method, route=route, status=status)


def test_requests_are_counted_by_route_template_and_status(
    alice: ApiClient, client: TestClient
) -> None:
    server = alice.create_server()
    snapshot = alice.create_snapshot(server["id"])
    before = scrape(client)
    for _ in range(3):
        assert alice.get("/snapshots/").status_code == 200
    assert alice.get(f"/snapshots/{snapshot['id']}/").status_code == 200
    assert alice.get("/snapshots/987654/").status_code == 404
    assert client.get("/no/such/path/").status_code == 404
    assert client.request("BREW", "/healthz").status_code == 405
    after = scrape(client)

    def added(route: str, status: str, method: str = "GET") -> float:
        return http_count(after, route, status, method) - http_count(before, route, status, method)

    assert added("/api/v1/snapshots/", "200") == 3
    assert added("/api/v1/snapshots/{snapshot_id}/", "200") == 1
    assert added("/api/v1/snapshots/{snapshot_id}/", "404") == 1
    assert added("unmatched", "404") == 1
    assert added("/healthz", "405", method="other") == 1  # no series per invented method
    assert added("/metrics", "200") == 1  # the scrape before this one
    routes = {labels["route"] for labels in after.labels_of(HTTP_COUNT)}
    # Templates only: no raw id, no path a client made up.
    assert not any(segment.isdigit() for route in routes for segment in route.split("/"))
    assert not any("no/such" in route for route in routes)
    assert after.value("vpsd_database_up") == 1


def test_a_completed_snapshot_is_counted(alice: ApiClient, client: TestClient) -> None:
    server = alice.create_server()
    before = scrape(client)
    assert alice.create_snapshot(server["id"])["status"] == "completed"
    after = scrape(client)
    labels = {"kind": OperationKind.SNAPSHOT_CREATE.value, "outcome": "completed"}
    assert labels["kind"] == "snapshot.create"
    total = "vpsd_operations_total"
    assert after.value(total, **labels) - before.value(total, **labels) == 1
    count = "vpsd_operation_duration_seconds_count"
    assert after.value(count, **labels) - before.value(count, **labels) == 1


def test_observed_operations_are_counted_and_timed(client: TestClient) -> None:
    labels = {"kind": "backup.create", "outcome": "failed"}
    before = scrape(client)
    observe_operation("backup.create", "failed", 42.0)
    observe_operation(OperationKind.BACKUP_CREATE, "failed", 3.0)  # the enum: its value
    after = scrape(client)

    def added(name: str, **extra: str) -> float:
        return after.value(name, **labels, **extra) - before.value(name, **labels, **extra)

    assert added("vpsd_operations_total") == 2
    assert added("vpsd_operation_duration_seconds_count") == 2
    assert added("vpsd_operation_duration_seconds_sum") == pytest.approx(45.0)
    assert added("vpsd_operation_duration_seconds_bucket", le="5.0") == 1
    assert added("vpsd_operation_duration_seconds_bucket", le="60.0") == 2


def test_database_gauges_show_servers_hosts_and_queues(
    alice: ApiClient, client: TestClient, db: Database, settings: Settings
) -> None:
    here = settings.host_name
    kept = [alice.create_server(f"web-{i}")["id"] for i in range(2)]
    gone = alice.create_server("web-gone")["id"]
    assert alice.delete(f"/servers/{gone}/").status_code == 204
    alice.wait_server(gone, None)

    scraped = scrape(client)
    assert scraped.value("vpsd_servers", state="running") == len(kept)
    assert {labels["state"] for labels in scraped.labels_of("vpsd_servers")} >= {"stopped"}
    assert "deleted" not in {labels["state"] for labels in scraped.labels_of("vpsd_servers")}
    assert scraped.value("vpsd_host_up", host=here) == 1
    assert 0 <= scraped.value("vpsd_host_heartbeat_age_seconds", host=here) < 10
    assert scraped.value("vpsd_operations_queued", host=here) == 0
    assert scraped.value("vpsd_operations_running", host=here) == 0

    # Another host with no agent running here: its server's boot waits for it.
    add_host(db, "kvm-02", memory_mb=64 * 1024)
    silent = utcnow() - timedelta(seconds=settings.host_down_after_seconds + 100)
    add_host(db, "kvm-silent", memory_mb=1024, seen=silent)
    admin = ApiClient(client, create_token(db, "root-ops", admin=True)[1])
    only_remote_hosts(admin, settings)
    remote = post_server(alice, "there")["id"]
    assert host_of(db, remote) == "kvm-02"

    scraped = scrape(client)
    assert scraped.value("vpsd_operations_queued", host="kvm-02") == 1
    assert scraped.value("vpsd_operations_running", host="kvm-02") == 0
    assert scraped.value("vpsd_operations_queued", host=here) == 0
    assert scraped.value("vpsd_servers", state="starting") == 1
    assert scraped.value("vpsd_host_up", host=here) == 1  # draining: still up
    assert scraped.value("vpsd_host_up", host="kvm-02") == 1
    assert scraped.value("vpsd_host_up", host="kvm-silent") == 0
    age = scraped.value("vpsd_host_heartbeat_age_seconds", host="kvm-silent")
    assert settings.host_down_after_seconds + 100 <= age < settings.host_down_after_seconds + 110

    # As if kvm-02's agent had claimed it.
    with db.write() as session:
        session.execute(
            update(Operation)
            .where(Operation.server_id == remote)
            .values(status=OperationStatus.RUNNING, started_at=utcnow())
        )
    scraped = scrape(client)
    assert scraped.value("vpsd_operations_queued", host="kvm-02") == 0
    assert scraped.value("vpsd_operations_running", host="kvm-02") == 1


def test_a_database_failure_leaves_the_other_metrics(data_dir: Path) -> None:
    unreachable = Database(f"sqlite:///{data_dir / 'missing' / 'vpsd.db'}")
    try:
        families = list(DatabaseCollector(unreachable, Settings(data_dir=data_dir)).collect())
    finally:
        unreachable.dispose()
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [
        ("vpsd_database_up", [0.0])
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_agent_serves_its_metrics_alone(db: Database, settings: Settings) -> None:
    port = free_port()
    serve_metrics("127.0.0.1", port, db, settings)
    observe_operation("server.start", "completed", 0.5)
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    scraped = Scrape(response.text)
    assert scraped.value("vpsd_host_up", host=settings.host_name) == 1
    assert scraped.value("vpsd_operations_total", kind="server.start", outcome="completed") >= 1
    assert scraped.value("vpsd_servers", state="running") == 0


WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from vpsd.runtime.app import create_app
    from vpsd.backups.fake import FakeBackupStore
    from vpsd.config import Settings
    from vpsd.hypervisor.fake import FakeDriver
    from vpsd.metrics import observe_operation

    data_dir, role, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    settings = Settings(
        data_dir=data_dir, driver="fake", default_image="blank",
        image_cache_dir=data_dir / "image-cache",
    )
    app = create_app(settings, driver=FakeDriver(), backup_store=FakeBackupStore())
    with TestClient(app) as client:
        if role == "worker":
            for _ in range(count):
                assert client.get("/healthz").status_code == 200
            observe_operation("snapshot.create", "completed", 0.25)
        else:
            print(json.dumps(client.get("/metrics").text))
    """
)


def test_worker_processes_metrics_are_summed(data_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}

    def run(role: str, count: int) -> str:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(data_dir), role, str(count)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("worker", 2)
    run("worker", 3)
    assert len(list(shared.glob("*.db"))) >= 2  # each process's own files
    scraped = Scrape(json.loads(run("scrape", 0).splitlines()[-1]))
    assert http_count(scraped, "/healthz", "200") == 5
    labels = {"kind": "snapshot.create", "outcome": "completed"}
    assert scraped.value("vpsd_operations_total", **labels) == 2
    assert scraped.value("vpsd_operation_duration_seconds_sum", **labels) == pytest.approx(0.5)
    # The database's gauges once, not once per process.
    assert len(scraped.labels_of("vpsd_host_up")) == 1
    assert scraped.value("vpsd_database_up") == 1
