"""The Python SDK (``vpsd.client``) against a live ``vpsd serve`` on real QEMU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import qemu_helpers as qh
from tests.live_server import LiveServer, free_port
from vpsd.client import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConnectionFailed,
    NotFoundError,
    OperationFailed,
)

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]


@pytest.fixture
def alice(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.base_url, live_server.create_token("alice"), poll_interval=0.2) as c:
        yield c


def test_crud_and_waits(alice: Client) -> None:
    server = alice.servers.create("web-server-01", disk_gb=1, memory_mb=128)
    seen: list[str] = []
    running = alice.wait_for_server(
        server.id, "running", on_progress=lambda s: seen.append(s.status)
    )
    assert running.status == "running" and seen[-1] == "running"
    assert [s.id for s in alice.servers.list()] == [server.id]
    assert alice.servers.get(server.id).memory_mb == 128

    created = alice.snapshots.create(server.id, "before-update", description="pre-migration")
    assert created.status == "in_progress" and created.size_mb is None and created.message
    progress: list[str] = []
    done = alice.wait_for_snapshot(created.id, on_progress=lambda s: progress.append(s.status))
    assert done.status == "completed" and done.size_mb is not None
    assert progress[-1] == "completed"
    second = alice.wait_for_snapshot(alice.snapshots.create(server.id, "second").id)

    assert [s.id for s in alice.snapshots.list(server_id=server.id)] == [second.id, done.id]
    page = alice.snapshots.list_page(server_id=server.id, page_size=1)
    assert (page.count, len(page.results), page.next is not None) == (2, 1, True)
    merged = alice.list_all("snapshots/", {"page_size": 1})  # follows the next link
    assert [s["id"] for s in merged["results"]] == [second.id, done.id]
    assert alice.snapshots.get(done.id).description == "pre-migration"

    alice.servers.stop(server.id)
    assert alice.wait_for_server(server.id, "stopped").status_reason  # forced off: no guest OS
    started = alice.snapshots.restore(done.id)
    assert started.server.status == "restoring" and started.snapshot.id == done.id
    assert alice.wait_for_restore(server.id).status == "stopped"
    alice.servers.start(server.id)
    alice.wait_for_server(server.id, "running")

    alice.snapshots.delete(second.id)
    with pytest.raises(NotFoundError):
        alice.snapshots.get(second.id)
    alice.servers.delete(server.id)
    alice.wait_for_server_deleted(server.id)
    assert alice.servers.list() == [] and alice.snapshots.list() == []


def test_typed_errors(live_server: LiveServer, alice: Client) -> None:
    server = alice.servers.create("mine", disk_gb=1)
    alice.wait_for_server(server.id, "running")
    snapshot = alice.wait_for_snapshot(alice.snapshots.create(server.id, "mine").id)

    with Client(live_server.base_url, live_server.create_token("bob")) as bob:
        for call in (
            lambda: bob.snapshots.get(snapshot.id),
            lambda: bob.snapshots.delete(snapshot.id),
            lambda: bob.snapshots.restore(snapshot.id),
            lambda: bob.snapshots.create(server.id, "theirs"),
        ):
            with pytest.raises(NotFoundError) as missing:
                call()
            assert missing.value.status == 404
    assert alice.snapshots.get(snapshot.id).status == "completed"

    with pytest.raises(BadRequestError) as invalid:
        alice.snapshots.create(server.id, "no spaces allowed")
    assert invalid.value.status == 400
    assert [e.field for e in invalid.value.errors] == ["body.name"]

    with (
        Client(live_server.base_url, "vpsd_wrong") as stranger,
        pytest.raises(AuthenticationError) as denied,
    ):
        stranger.servers.list()
    assert denied.value.status == 401

    dead_url = f"http://127.0.0.1:{free_port()}"
    with Client(dead_url, "t") as nowhere, pytest.raises(ConnectionFailed) as unreachable:
        nowhere.servers.list()
    assert dead_url in str(unreachable.value)


def test_failing_snapshot_raises_operation_failed(live_server: LiveServer, alice: Client) -> None:
    server = alice.servers.create("fragile", disk_gb=1)
    alice.wait_for_server(server.id, "running")
    alice.servers.stop(server.id)
    alice.wait_for_server(server.id, "stopped")
    disk = live_server.data_dir / "servers" / str(server.id) / "disk0.qcow2"
    disk.write_bytes(b"this is not a qcow2 image\n" * 100)  # qemu-img cannot snapshot it

    created = alice.snapshots.create(server.id, "doomed")
    with pytest.raises(OperationFailed) as failed:
        alice.wait_for_snapshot(created.id)
    shown = alice.snapshots.get(created.id)
    assert shown.status == "failed"
    assert failed.value.status_reason == shown.status_reason and shown.status_reason
