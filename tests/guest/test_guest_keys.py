"""Only the keys vpsd accepted log in to a real Debian guest (issue 22, item 2).

The attack: a key whose comment holds literal escapes, ``ssh-ed25519 <A> a\\n
command="/usr/bin/id" ssh\\0055ed25519 <B> evil``, was accepted; the guest's first boot wrote
it with dash's ``echo``, which expands ``\\n`` and ``\\0055`` (``-``), so a second line put key
B, never accepted, in root's ``authorized_keys``. Three things close it, each checked here on
one server (one boot):

- the API refuses such a comment, in words;
- a key stored before that rule is installed rebuilt from its type and blob, its comment
  dropped, and the server boots;
- the guest's first-boot script writes each key as its words (``printf '%s'``, no escapes),
  only ``type blob [comment]`` of an accepted type: replayed in the guest by running it again
  on the hostile line as if the host had sent it.

Logins are real: ``ssh`` to the guest's sshd with each private key.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.guest.conftest import Guest, ssh
from tests.helpers import ApiClient, store_key_text
from tests.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.guest]


@dataclass
class KeyPair:
    """A key made by ssh-keygen: its private key's path and its public key's words."""

    private: Path
    key_type: str
    blob: str
    comment: str

    @property
    def line(self) -> str:
        """The .pub file's line."""
        return f"{self.key_type} {self.blob} {self.comment}"


def key_pair(folder: Path, name: str) -> KeyPair:
    private = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", str(private)],
        check=True,
        timeout=30,
    )
    key_type, blob, comment = private.with_suffix(".pub").read_text().split()
    return KeyPair(private, key_type, blob, comment)


def smuggling(carrier: KeyPair, smuggled: KeyPair) -> str:
    """The reported line: ``carrier``'s key, a comment whose escapes echo turns into a second
    line holding ``smuggled`` with a forced command (the backslashes are typed literally)."""
    return (
        f'{carrier.key_type} {carrier.blob} a\\n command="/usr/bin/id" '
        f"ssh\\0055ed25519 {smuggled.blob} evil"
    )


@dataclass
class KeyedGuest:
    """A server created with an accepted key (``accepted``) and a key stored before the rule
    (``legacy``, whose comment smuggles ``smuggled``)."""

    guest: Guest
    accepted: KeyPair
    legacy: KeyPair
    smuggled: KeyPair

    def logs_in(self, key: KeyPair) -> bool:
        """Whether root's login with ``key`` succeeds (and runs the command asked for)."""
        result = ssh(self.guest.port, key.private, "echo logged-in", timeout=60)
        if result.returncode == 0:
            return result.stdout.strip() == "logged-in"
        assert "Permission denied (publickey)" in result.stderr, result.stderr
        return False

    def authorized_keys(self) -> list[str]:
        """Root's authorized_keys in the guest, line by line."""
        return self.guest.ssh("cat /root/.ssh/authorized_keys").splitlines()


@pytest.fixture(scope="module")
def keyed(
    guest_service: LiveServer, guest_client: ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyedGuest]:
    """The module's one server, booted until the accepted key logs in; deleted afterwards."""
    folder = tmp_path_factory.mktemp("keys")
    accepted, legacy, smuggled = (key_pair(folder, n) for n in ("accepted", "legacy", "smuggled"))
    ids = []
    for name, key in (("accepted", accepted), ("legacy", legacy)):
        created = guest_client.post("/ssh_keys/", json={"name": name, "public_key": key.line})
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    # Saved by an earlier vpsd, which accepted the comment (the same key, the same fingerprint).
    store_key_text(guest_service.database_url, ids[1], smuggling(legacy, smuggled))
    response = guest_client.post(
        "/servers/",
        json={"name": "keys-1", "disk_gb": 4, "image": "debian-12", "ssh_keys": ids},
    )
    assert response.status_code == 201, response.text
    server = response.json()
    guest_client.wait_server(server["id"], "running", timeout=60)
    guest = Guest(
        guest_client, guest_service, server["id"], "keys-1", server["ssh"]["port"], accepted.private
    )
    try:
        guest.wait_ssh()
    except AssertionError:
        console = guest_client.get(f"/servers/{server['id']}/console/").text
        raise AssertionError(f"the guest never answered SSH; console:\n{console}") from None
    yield KeyedGuest(guest, accepted, legacy, smuggled)
    assert guest_client.delete(f"/servers/{server['id']}/").status_code == 204
    guest_client.wait_server(server["id"], None, timeout=120)


def test_the_api_refuses_the_smuggling_key_in_words(
    guest_client: ApiClient, tmp_path: Path
) -> None:
    carrier, smuggled = key_pair(tmp_path, "carrier"), key_pair(tmp_path, "smuggled")
    response = guest_client.post(
        "/ssh_keys/", json={"name": "evil", "public_key": smuggling(carrier, smuggled)}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["errors"][0]["field"] == "body.public_key"
    assert "backslash" in body["errors"][0]["message"]


def test_a_key_stored_before_the_rule_is_installed_without_its_comment(
    keyed: KeyedGuest,
) -> None:
    assert keyed.logs_in(keyed.accepted)
    assert keyed.logs_in(keyed.legacy)
    assert not keyed.logs_in(keyed.smuggled)
    assert keyed.authorized_keys() == [
        keyed.accepted.line,
        f"{keyed.legacy.key_type} {keyed.legacy.blob}",
    ]


FIRSTBOOT_AGAIN = """
set -eu
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/org.vpsd
fake=/run/vpsd-test-fw
mkdir -p $fake/instance-id $fake/authorized_keys
echo replayed-instance > $fake/instance-id/raw
echo {keys} | base64 -d > $fake/authorized_keys/raw
mount --bind $fake $fw
trap 'umount $fw' EXIT
/usr/local/sbin/vpsd-firstboot
"""


def test_the_guest_writes_a_hostile_line_as_one_key(keyed: KeyedGuest) -> None:
    """The guest's own defence, as if a host had sent the line: its first-boot script run
    again in the guest, on fw_cfg files of the test's making."""
    hostile = smuggling(keyed.legacy, keyed.smuggled)
    raw = f"{keyed.accepted.line}\n{hostile}\n".encode()
    keyed.guest.ssh(FIRSTBOOT_AGAIN.format(keys=base64.b64encode(raw).decode()))
    assert keyed.logs_in(keyed.accepted)
    assert keyed.logs_in(keyed.legacy)
    assert not keyed.logs_in(keyed.smuggled)
    # One line per key, the comment's backslashes as typed.
    assert keyed.authorized_keys() == [keyed.accepted.line, hostile]
