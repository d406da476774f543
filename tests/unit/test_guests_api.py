"""Servers with a guest, on the fake driver: images, SSH keys and ports, reboot, console,
snapshot consistency, and every bad input refused with nothing created."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiClient, store_key_text, write_fake_image
from tests.unit.conftest import account_token
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app

IMAGE_KEYS = {"id", "slug", "name", "os", "size_mb", "min_disk_gb", "min_memory_mb", "status"}


@pytest.fixture
def client(settings: Settings, fake_driver: FakeDriver) -> Iterator[TestClient]:
    """The app with a (placeholder) debian-12 image in its data dir."""
    write_fake_image(settings.images_dir)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def public_keys(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three real ed25519 public keys from ssh-keygen."""
    folder = tmp_path_factory.mktemp("keys")
    keys = []
    for i in range(3):
        path = folder / f"key{i}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"k{i}", "-f", str(path)],
            check=True,
        )
        keys.append(path.with_suffix(".pub").read_text().strip())
    return keys


def _key(client: ApiClient, public_key: str, name: str = "laptop") -> int:
    response = client.post("/ssh_keys/", json={"name": name, "public_key": public_key})
    assert response.status_code == 201, response.text
    key_id: int = response.json()["id"]
    return key_id


def _create(client: ApiClient, **body: Any) -> Any:
    return client.post("/servers/", json={"name": "web-1", "disk_gb": 10, **body})


def test_images_lists_the_installed_image(alice: ApiClient) -> None:
    body = alice.get("/images/").json()
    assert body["count"] == 1
    (image,) = body["results"]
    assert set(image) == IMAGE_KEYS
    assert image["slug"] == "debian-12" and image["status"] == "available"
    assert image["min_disk_gb"] == 2 and image["os"] == "debian"


def test_an_image_by_id(alice: ApiClient, bob: ApiClient) -> None:
    (listed,) = alice.get("/images/").json()["results"]
    assert alice.get(f"/images/{listed['id']}/").json() == listed
    assert bob.get(f"/images/{listed['id']}/").json() == listed  # images are everyone's
    assert alice.get(f"/images/{listed['id'] + 1}/").status_code == 404
    assert alice.get("/images/x/").status_code == 400


def test_images_need_a_token(client: TestClient) -> None:
    assert client.get("/api/v1/images/").status_code == 401


def test_a_server_from_an_image_gets_keys_identity_and_an_ssh_port(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings, public_keys: list[str]
) -> None:
    key_ids = [_key(alice, public_keys[0], "a"), _key(alice, public_keys[1], "b")]
    response = _create(alice, image="debian-12", ssh_keys=key_ids)
    assert response.status_code == 201, response.text
    server = response.json()
    assert server["image"] == "debian-12"
    assert server["ssh"]["host"] == "127.0.0.1"
    assert server["ssh"]["port"] in settings.ssh_port_range
    alice.wait_server(server["id"], "running")
    assert alice.get(f"/servers/{server['id']}/").json()["ssh"] == server["ssh"]

    spec = fake_driver.spec(server["id"])
    assert spec.image is not None
    assert spec.image.disk == settings.images_dir / "debian-12-000000000000" / "disk.qcow2"
    assert spec.guest is not None and spec.guest.hostname == "web-1"
    assert spec.guest.authorized_keys == (public_keys[0], public_keys[1])
    assert spec.ssh is not None and spec.ssh.port == server["ssh"]["port"]


def test_a_key_stored_before_the_comment_rule_boots_without_its_comment(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings, public_keys: list[str]
) -> None:
    """Issue 22, item 2: a key saved while backslashes were allowed must neither reach the
    guest with its comment (dash's echo made it two lines) nor stop the server booting."""
    kept, legacy = _key(alice, public_keys[0], "kept"), _key(alice, public_keys[1], "legacy")
    key_type, data, _ = public_keys[1].split()
    smuggling = f'{key_type} {data} a\\n command="/usr/bin/id" ssh\\0055ed25519 {data} evil'
    store_key_text(settings.effective_database_url, legacy, smuggling)
    response = _create(alice, image="debian-12", ssh_keys=[kept, legacy])
    assert response.status_code == 201, response.text
    alice.wait_server(response.json()["id"], "running")
    spec = fake_driver.spec(response.json()["id"])
    assert spec.guest is not None
    assert spec.guest.authorized_keys == (public_keys[0], f"{key_type} {data}")


def test_default_image_applies_when_none_is_given(
    settings: Settings, fake_driver: FakeDriver
) -> None:
    settings.default_image = "debian-12"
    write_fake_image(settings.images_dir)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        alice = ApiClient(test_client, account_token(settings, "alice"))
        server = _create(alice).json()
        assert server["image"] == "debian-12" and server["ssh"] is not None
        blank = _create(alice, name="bare", image="blank").json()
        assert blank["image"] == "blank" and blank["ssh"] is None


def test_default_image_not_installed_is_a_clear_400(
    settings: Settings, fake_driver: FakeDriver
) -> None:
    settings.default_image = "debian-12"  # and no image in the data dir
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        alice = ApiClient(test_client, account_token(settings, "alice"))
        response = _create(alice)
        assert response.status_code == 400
        assert "not installed" in response.json()["errors"][0]["message"]
        assert alice.get("/servers/").json()["count"] == 0


def test_ssh_ports_are_unique_and_freed_on_delete(alice: ApiClient) -> None:
    servers = [_create(alice, name=f"s{i}", image="debian-12").json() for i in range(3)]
    ports = [s["ssh"]["port"] for s in servers]
    assert len(set(ports)) == 3
    for server in servers:
        alice.wait_server(server["id"], "running")
    assert alice.delete(f"/servers/{servers[0]['id']}/").status_code == 204
    alice.wait_server(servers[0]["id"], None)
    again = _create(alice, name="again", image="debian-12").json()
    assert again["ssh"]["port"] == ports[0]


def _listening_with_a_free_neighbour() -> socket.socket:
    """A listening socket on a port P below the ephemeral range whose P+1 is free."""
    for port in range(24_000, 26_000, 2):
        busy = socket.socket()
        try:
            busy.bind(("127.0.0.1", port))
        except OSError:
            busy.close()
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                busy.close()
                continue
        busy.listen()
        return busy
    raise AssertionError("no pair of free ports in 24000-26000")


def test_a_port_something_else_listens_on_is_skipped(
    settings: Settings, fake_driver: FakeDriver
) -> None:
    with _listening_with_a_free_neighbour() as busy:
        port = busy.getsockname()[1]
        settings.ssh_ports = f"{port}-{port + 1}"
        write_fake_image(settings.images_dir)
        with TestClient(create_app(settings, driver=fake_driver)) as test_client:
            alice = ApiClient(test_client, account_token(settings, "alice"))
            created = _create(alice, image="debian-12")
            assert created.json()["ssh"]["port"] == port + 1, created.text
            full = _create(alice, name="two", image="debian-12")
            assert full.status_code == 400
            assert "no SSH port is free" in full.json()["detail"]


def test_ports_survive_a_restart(settings: Settings, fake_driver: FakeDriver) -> None:
    write_fake_image(settings.images_dir)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        token = account_token(settings, "alice")
        server = _create(ApiClient(test_client, token), image="debian-12").json()
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        again = ApiClient(test_client, token).get(f"/servers/{server['id']}/").json()
    assert again["ssh"] == server["ssh"]


BAD_BODIES: list[tuple[dict[str, Any], int, str]] = [
    ({"image": "windows-11"}, 400, "body.image"),
    ({"image": "Debian 12!"}, 400, "body.image"),
    ({"image": 12}, 400, "body.image"),
    ({"image": "debian-12", "disk_gb": 1}, 400, "body.disk_gb"),
    ({"image": "debian-12", "memory_mb": 128}, 400, "body.memory_mb"),
    ({"image": "debian-12", "ssh_keys": list(range(1, 12))}, 400, "body.ssh_keys"),
    ({"image": "debian-12", "ssh_keys": ["1"]}, 400, "body.ssh_keys.0"),
    ({"image": "debian-12", "ssh_keys": [0]}, 400, "body.ssh_keys.0"),
    ({"image": "debian-12", "ssh_keys": "1"}, 400, "body.ssh_keys"),
    ({"image": "blank", "ssh_keys": [1]}, 400, "body.ssh_keys"),
]


@pytest.mark.parametrize(("extra", "status", "field"), BAD_BODIES)
def test_bad_input_is_refused_and_creates_nothing(
    alice: ApiClient, public_keys: list[str], extra: dict[str, Any], status: int, field: str
) -> None:
    _key(alice, public_keys[0])
    response = _create(alice, **extra)
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["field"] == field
    assert alice.get("/servers/").json()["count"] == 0


def test_someone_elses_or_an_unknown_key_is_404_and_creates_nothing(
    alice: ApiClient, bob: ApiClient, public_keys: list[str]
) -> None:
    bobs = _key(bob, public_keys[2])
    for key_id in (bobs, bobs + 1000):
        response = _create(alice, image="debian-12", ssh_keys=[key_id])
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == f"ssh key {key_id} not found"
    assert alice.get("/servers/").json()["count"] == 0


def test_reboot_power_cycles_a_running_server(alice: ApiClient, fake_driver: FakeDriver) -> None:
    server = alice.create_server(image="debian-12", disk_gb=2)
    sid = server["id"]
    fake_driver.calls.clear()
    response = alice.post(f"/servers/{sid}/reboot/")
    assert response.status_code == 200 and response.json()["status"] == "rebooting"
    alice.wait_server(sid, "running")
    assert [c for c in fake_driver.calls if c[0] in ("stop", "start")] == [
        ("stop", sid),
        ("start", sid),
    ]
    assert alice.get(f"/servers/{sid}/").json()["status_reason"] is None


def test_a_forced_reboot_says_so(alice: ApiClient, fake_driver: FakeDriver) -> None:
    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    fake_driver.force_stops = True
    alice.post(f"/servers/{sid}/reboot/")
    alice.wait_server(sid, "running")
    assert "forced off" in alice.get(f"/servers/{sid}/").json()["status_reason"]


def test_reboot_of_a_stopped_server_is_refused(alice: ApiClient) -> None:
    sid = alice.create_server()["id"]
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    response = alice.post(f"/servers/{sid}/reboot/")
    assert response.status_code == 400
    assert "cannot reboot a server that is stopped" in response.json()["detail"]


def test_console_is_plain_text_and_bounded(alice: ApiClient, bob: ApiClient) -> None:
    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    alice.wait_console(sid, f"server {sid} booted")
    response = alice.get(f"/servers/{sid}/console/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    # What the guest wrote is never sniffed as HTML by a browser (issue 22, item 8).
    assert response.headers["x-content-type-options"] == "nosniff"
    assert f"server {sid} booted" in response.text
    tail = alice.get(f"/servers/{sid}/console/", params={"bytes": 6}).text
    assert len(tail) == 6 and response.text.endswith(tail)
    for bad in ("0", "-1", str(1024 * 1024 + 1), "x"):
        assert alice.get(f"/servers/{sid}/console/", params={"bytes": bad}).status_code == 400
    assert bob.get(f"/servers/{sid}/console/").status_code == 404


@pytest.mark.parametrize(("image", "expected"), [("debian-12", "filesystem"), ("blank", "crash")])
def test_snapshots_say_how_consistent_they_are(alice: ApiClient, image: str, expected: str) -> None:
    sid = alice.create_server(image=image, disk_gb=2)["id"]
    snapshot = alice.create_snapshot(sid, "s1")
    assert snapshot["consistency"] == expected


def test_a_stopped_guest_snapshot_is_filesystem_consistent_unless_forced(
    alice: ApiClient, fake_driver: FakeDriver
) -> None:
    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    assert alice.create_snapshot(sid, "clean")["consistency"] == "filesystem"
    fake_driver.force_stops = True
    alice.post(f"/servers/{sid}/start/")
    alice.wait_server(sid, "running")
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    assert alice.create_snapshot(sid, "forced")["consistency"] == "crash"


def test_after_a_restore_a_stopped_guest_is_no_longer_known_clean(alice: ApiClient) -> None:
    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    live = alice.create_snapshot(sid, "live")
    alice.post(f"/servers/{sid}/stop/")
    alice.wait_server(sid, "stopped")
    assert alice.post(f"/snapshots/{live['id']}/restore/").status_code == 200
    alice.wait_server(sid, "stopped")
    # The disk now holds the restored state, whatever its consistency was.
    assert alice.create_snapshot(sid, "after-restore")["consistency"] == "crash"


def test_an_image_in_use_cannot_be_deleted(
    alice: ApiClient, settings: Settings, client: TestClient
) -> None:
    from vpsd.hypervisor.images import store
    from vpsd.services.errors import InvalidState

    images = client.app.state.services.images  # type: ignore[attr-defined]
    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    folder = settings.images_dir / "debian-12-000000000000"
    with pytest.raises(InvalidState, match="in use by 1 server"):
        images.delete("debian-12", lambda name: store.remove(settings.images_dir, name))
    assert folder.exists()
    alice.delete(f"/servers/{sid}/")
    alice.wait_server(sid, None)
    images.delete("debian-12", lambda name: store.remove(settings.images_dir, name))
    assert not folder.exists()
    assert alice.get("/images/").json()["count"] == 0
    assert _create(alice, image="debian-12").status_code == 400


def test_a_newer_build_replaces_the_older_for_new_servers(
    settings: Settings, fake_driver: FakeDriver
) -> None:
    write_fake_image(settings.images_dir, version="000000000000")
    write_fake_image(settings.images_dir, version="111111111111", size_mb=300)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        alice = ApiClient(test_client, account_token(settings, "alice"))
        (image,) = alice.get("/images/").json()["results"]
        assert image["size_mb"] == 300
        server = alice.create_server(image="debian-12", disk_gb=2)
        spec = fake_driver.spec(server["id"])
        assert spec.image is not None
        assert spec.image.disk.parent == Path(settings.images_dir / "debian-12-111111111111")


def test_a_guest_flooding_its_console_cannot_fill_the_host(
    alice: ApiClient, fake_driver: FakeDriver, settings: Settings
) -> None:
    from vpsd.agent.monitor import trim_consoles
    from vpsd.db.session import Database
    from vpsd.operations.context import OperationContext

    sid = alice.create_server(image="debian-12", disk_gb=2)["id"]
    fake_driver.write_console(sid, b"x" * settings.console_log_max_bytes + b"the end\n")
    database = Database(settings.effective_database_url)
    try:
        # The app's own VM monitor runs the same trim every 0.2 s and may get there first.
        trim_consoles(
            OperationContext(
                db=database, driver=fake_driver, settings=settings, backups=FakeBackupStore()
            )
        )
    finally:
        database.dispose()
    console = fake_driver.console_tail(sid, 2 * settings.console_log_max_bytes)
    assert len(console) == settings.console_log_max_bytes // 2
    assert console.endswith(b"the end\n")
