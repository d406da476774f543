"""Dispatch over the real RabbitMQ: an API without an agent publishes after commit, a host's
agent takes its work from its own queue; duplicate messages run nothing twice, a lost one only
delays, and a server's operations run in order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from tests.cluster import BROKER_URL, delete_queues, require_broker
from tests.helpers import ApiClient, wait_for, write_fake_image
from vpsd.agent.host_agent import HostAgent
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.base import utcnow
from vpsd.db.models import Operation, OperationKind, OperationStatus
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.operations.outbox import enqueue
from vpsd.operations.publisher import ACTOR, make_broker, pika_url, queue_name
from vpsd.runtime.app import create_app
from vpsd.services.tokens import create_token


def test_a_kombu_style_url_names_the_default_vhost() -> None:
    assert (
        pika_url("amqp://guest:guest@127.0.0.1:5672//") == "amqp://guest:guest@127.0.0.1:5672/%2F"
    )
    assert pika_url("amqp://u:p@mq:5672/prod") == "amqp://u:p@mq:5672/prod"


def test_a_broker_url_must_be_amqp() -> None:
    with pytest.raises(ValidationError, match="RabbitMQ URL"):
        Settings(broker_url="redis://127.0.0.1:6379")


@pytest.fixture
def brokered(settings: Settings) -> Iterator[Settings]:
    """The test's settings with the broker, a host name (and so a queue) of its own, quick
    republishing; the queue is deleted afterwards."""
    require_broker()
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield settings.model_copy(
        update={
            "broker_url": BROKER_URL,
            "host_name": name,
            "republish_after_seconds": 0.5,
            "host_heartbeat_seconds": 0.2,
        }
    )
    delete_queues([queue_name(name)])


@pytest.fixture
def agent(
    brokered: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> Iterator[HostAgent]:
    """This host's agent, fed by its queue, in this process."""
    db = Database(brokered.effective_database_url)
    from vpsd.db import migrate

    migrate.upgrade(db)
    on_host = brokered.model_copy(update={"ssh_public_host": AGENT_SSH_HOST})
    write_fake_image(on_host.images_dir)
    host_agent = HostAgent(on_host, db, fake_driver, fake_store)
    host_agent.recover()
    host_agent.start()
    yield host_agent
    host_agent.stop()
    db.dispose()


@pytest.fixture
def api(brokered: Settings, agent: HostAgent, fake_driver: FakeDriver) -> Iterator[ApiClient]:
    """An API process with the broker: no agent of its own."""
    app = create_app(brokered, driver=fake_driver, backup_store=FakeBackupStore())
    assert app.state.runtime.agent is None
    with TestClient(app) as client:
        db = Database(brokered.effective_database_url)
        yield ApiClient(client, create_token(db, "alice")[1])
        db.dispose()


AGENT_SSH_HOST = "kvm-07.example.net"


def operations(settings: Settings) -> list[Operation]:
    db = Database(settings.effective_database_url)
    try:
        with db.read() as session:
            rows = list(session.scalars(select(Operation).order_by(Operation.id)))
            session.expunge_all()
            return rows
    finally:
        db.dispose()


def test_the_api_publishes_and_the_hosts_agent_runs(api: ApiClient, brokered: Settings) -> None:
    server = api.create_server()
    snapshot = api.create_snapshot(server["id"])
    assert snapshot["status"] == "completed"
    ran = operations(brokered)
    assert [op.kind for op in ran] == [OperationKind.SERVER_CREATE, OperationKind.SNAPSHOT_CREATE]
    assert all(op.dispatched_at is not None and op.attempts == 1 for op in ran)
    assert all(op.claimed_by and op.claimed_by.startswith(brokered.host_name) for op in ran)


def test_an_api_beside_the_agents_shows_the_hosts_ssh_address_and_console(
    api: ApiClient, fake_driver: FakeDriver
) -> None:
    """Its servers' VMs are on other machines: it shows the SSH address their host recorded,
    and the console the host's agent mirrors into the database."""
    created = api.post("/servers/", json={"name": "web", "disk_gb": 10, "image": "debian-12"})
    assert created.status_code == 201, created.text
    server = created.json()
    assert server["ssh"]["host"] == AGENT_SSH_HOST
    api.wait_server(server["id"], "running")
    prompt = b"Debian GNU/Linux 12 web ttyS0\n\nweb login: "
    fake_driver.write_console(server["id"], prompt)

    def console() -> str:
        response = api.get(f"/servers/{server['id']}/console/", params={"bytes": 20})
        assert response.status_code == 200, response.text
        return str(response.text)

    wait_for(lambda: console() == prompt[-20:].decode(), 10, what="the mirrored console")


def test_sizes_are_checked_against_the_accounts_limits(api: ApiClient) -> None:
    """An API process beside the agents checks sizes against the account's quota, and says
    so in the account's numbers, never a host's."""
    response = api.post("/servers/", json={"name": "huge", "disk_gb": 1, "memory_mb": 10**8})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error == {
        "field": "body.memory_mb",
        "message": "must be at most 32768 MiB of memory (your account's quota)",
    }


def test_duplicate_messages_run_an_operation_once(api: ApiClient, brokered: Settings) -> None:
    server = api.create_server()
    snapshot = api.post("/snapshots/", json={"server_id": server["id"], "name": "dup"}).json()
    # As redeliveries, or a republish racing the first message, would.
    publish(brokered, [operations(brokered)[-1].id] * 5)
    assert api.wait_snapshot(snapshot["id"])["status"] == "completed"
    wait_for(lambda: operations(brokered)[-1].status == OperationStatus.COMPLETED, 10)
    assert operations(brokered)[-1].attempts == 1


def test_a_lost_message_only_delays(api: ApiClient, brokered: Settings, agent: HostAgent) -> None:
    server = api.create_server()
    db = agent.ctx.db
    with db.write() as session:  # published, says the row, but the message never arrived
        lost = enqueue(session, OperationKind.SERVER_STOP, server["id"])
        lost.dispatched_at = utcnow() - timedelta(seconds=5)
        session.flush()
        lost_id = lost.id
    wait_for(
        lambda: operations(brokered)[-1].status == OperationStatus.COMPLETED,
        15,
        what="the agent to republish and run the lost operation",
    )
    assert operations(brokered)[-1].id == lost_id


def publish(settings: Settings, operation_ids: list[int]) -> None:
    """Publish messages for these operations, in this order, to the host's queue."""
    broker = make_broker(BROKER_URL)
    try:
        for operation_id in operation_ids:
            broker.enqueue(
                dramatiq.Message(
                    queue_name=queue_name(settings.host_name), actor_name=ACTOR,
                    args=(operation_id,), kwargs={}, options={},
                )
            )  # fmt: skip
    finally:
        broker.close()


def test_a_servers_operations_run_in_order(
    api: ApiClient, brokered: Settings, agent: HostAgent, fake_driver: FakeDriver
) -> None:
    server = api.create_server()
    fake_driver.delay("stop", 0.05)
    kinds = [OperationKind.SERVER_STOP, OperationKind.SERVER_START] * 3
    with agent.ctx.db.write() as session:
        queued = [enqueue(session, kind, server["id"]) for kind in kinds]
        for operation in queued:
            operation.dispatched_at = utcnow()  # this test publishes them itself
        session.flush()
        ids = [operation.id for operation in queued]
    publish(brokered, ids[::-1])  # newest first: the order must come from the claims
    wait_for(lambda: all(op.status == OperationStatus.COMPLETED for op in operations(brokered)), 20)
    ran = [op for op in operations(brokered) if op.id in ids]
    started = [op.started_at for op in ran]
    assert started == sorted(started)  # type: ignore[type-var]
    assert all(op.attempts == 1 for op in ran)
    assert [c for c in fake_driver.calls if c[0] in ("stop", "start")][-6:] == [
        (kind, server["id"]) for kind in ("stop", "start") * 3
    ]
