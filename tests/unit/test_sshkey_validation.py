"""``vpsd.sshkeys``: real keys made by ssh-keygen, fingerprints as ssh-keygen prints them,
and every kind of text that is not one acceptable public key."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vpsd.sshkeys import (
    InvalidPublicKey,
    fingerprint,
    guest_keys,
    installable_line,
    parse_public_key,
)

requires_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed"
)

# A fixed, valid ed25519 public key (any 32 bytes are accepted as a point encoding).
ED25519_BLOB = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
ED25519 = "ssh-ed25519 " + base64.b64encode(ED25519_BLOB).decode()


def keygen(tmp_path: Path, *args: str, comment: str = "me@laptop") -> tuple[Path, Path]:
    """Make a key pair with ssh-keygen; return the private and public key paths."""
    private = tmp_path / ("key" + "".join(a.strip("-") for a in args))
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", "", "-C", comment, "-f", str(private)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return private, private.with_name(private.name + ".pub")


def keygen_fingerprint(public: Path) -> str:
    """The fingerprint ``ssh-keygen -l -E sha256`` prints (its second field)."""
    result = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.split()[1]


def rejected(text: str) -> str:
    with pytest.raises(InvalidPublicKey) as caught:
        parse_public_key(text)
    return str(caught.value)


@requires_ssh_keygen
@pytest.mark.parametrize(
    ("args", "key_type", "bits"),
    [
        (("-t", "ed25519"), "ssh-ed25519", 256),
        (("-t", "ecdsa", "-b", "256"), "ecdsa-sha2-nistp256", 256),
        (("-t", "ecdsa", "-b", "384"), "ecdsa-sha2-nistp384", 384),
        (("-t", "ecdsa", "-b", "521"), "ecdsa-sha2-nistp521", 521),
        (("-t", "rsa", "-b", "2048"), "ssh-rsa", 2048),
    ],
)
def test_accepts_real_keys_with_ssh_keygens_fingerprint(
    tmp_path: Path, args: tuple[str, ...], key_type: str, bits: int
) -> None:
    _, public = keygen(tmp_path, *args)
    text = public.read_text()
    key = parse_public_key(text)
    assert key.key_type == key_type
    assert key.bits == bits
    assert key.comment == "me@laptop"
    assert key.fingerprint == keygen_fingerprint(public)
    assert key.line == text.strip()
    assert key.fingerprint.startswith("SHA256:") and not key.fingerprint.endswith("=")


@requires_ssh_keygen
def test_rsa_under_2048_bits_is_refused_with_its_size(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "-t", "rsa", "-b", "1024")
    message = rejected(public.read_text())
    assert "at least 2048 bits" in message and "1024" in message


@requires_ssh_keygen
def test_dsa_is_refused(tmp_path: Path) -> None:
    try:
        _, public = keygen(tmp_path, "-t", "dsa")
        text = public.read_text()
    except subprocess.CalledProcessError:  # an OpenSSH built without DSA
        text = "ssh-dss " + base64.b64encode(struct.pack(">I", 7) + b"ssh-dss").decode()
    assert "ssh-dss" in rejected(text)


@requires_ssh_keygen
@pytest.mark.parametrize("args", [("-t", "ed25519"), ("-t", "rsa", "-b", "2048", "-m", "PEM")])
def test_a_private_key_is_named_as_such(tmp_path: Path, args: tuple[str, ...]) -> None:
    private, _ = keygen(tmp_path, *args)
    message = rejected(private.read_text())
    assert "this is a private key; paste the .pub file" in message


@requires_ssh_keygen
def test_the_type_must_match_the_key_data(tmp_path: Path) -> None:
    _, public = keygen(tmp_path, "-t", "ed25519")
    _, data, _ = public.read_text().split()
    message = rejected(f"ssh-rsa {data}")
    assert "says ssh-rsa" in message and "ssh-ed25519" in message
    assert "does not match" in rejected(f"ecdsa-sha2-nistp256 {data}")


def test_ecdsa_curve_must_match_the_type() -> None:
    # An ecdsa blob whose type says nistp384 but whose curve says nistp256.
    blob = (
        struct.pack(">I", 19) + b"ecdsa-sha2-nistp384"
        + struct.pack(">I", 8) + b"nistp256"
        + struct.pack(">I", 65) + b"\x04" + bytes(64)
    )  # fmt: skip
    assert "not a valid ecdsa-sha2-nistp384 key" in rejected(
        "ecdsa-sha2-nistp384 " + base64.b64encode(blob).decode()
    )


def test_normalizes_whitespace_and_the_comment() -> None:
    key = parse_public_key(f"  {ED25519}\t  alice@laptop  (work)  \r\n")
    assert key.line == f"{ED25519} alice@laptop  (work)"
    assert key.comment == "alice@laptop  (work)"
    bare = parse_public_key(ED25519 + "\n")
    assert bare.comment is None and bare.line == ED25519


def test_the_base64_is_re_encoded_canonically() -> None:
    data = ED25519.split()[1]
    assert parse_public_key(f"ssh-ed25519 {data}").data == data


def test_fingerprint_is_sha256_unpadded_base64() -> None:
    digest = base64.b64encode(__import__("hashlib").sha256(ED25519_BLOB).digest()).decode()
    assert fingerprint(ED25519_BLOB) == "SHA256:" + digest.rstrip("=")
    assert parse_public_key(ED25519).fingerprint == fingerprint(ED25519_BLOB)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (f"{ED25519} a\n{ED25519} b", "several lines"),
        (f"{ED25519} a\n\n", None),  # a trailing newline is fine
        (f"{ED25519} a {ED25519} b", "several keys"),
        (f'command="echo hi" {ED25519} me', "options"),
        (f'no-pty,from="10.0.0.0/8" {ED25519} me', "options"),
        (f"no-port-forwarding {ED25519}", "options"),
        ("ssh-ed25519", "key data is missing"),
        ("ssh-ed25519 not*base64!", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB", "not valid base64"),
        ("ssh-ed25519 AAAA", "not a valid ssh-ed25519 key"),
        (ED25519[:-8] + "AAAAAAAA", None),  # still 32 bytes of point: accepted
        (ED25519 + "AAAA", "not a valid ssh-ed25519 key"),  # trailing data in the blob
        ("ssh-foo AAAA", "unknown key type 'ssh-foo'"),
        ("\x00\x01 AAAA", "unknown key type (unprintable)"),
        ("sk-ssh-ed25519@openssh.com AAAA", "security-key"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificates"),
        ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----", "PEM"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----", "RFC 4716"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none", "private key"),
        (f"{ED25519} me\x1b[31m", "control"),
        (f"{ED25519} me\x00", "control"),
        (f"{ED25519} evil\u202etxt", "control or invisible"),
        (f"{ED25519} a\tb", "control"),
        (f"{ED25519} a\ud800", "control"),
        (f"{ED25519} a\\n command=x", "backslash"),
        (f"{ED25519} me\\", "backslash"),
        (f"{ED25519} a\\0055b", "backslash"),
        ("x" * 20_000, "too long"),
    ],
)
def test_rejections_say_why(text: str, expected: str | None) -> None:
    if expected is None:
        parse_public_key(text)
        return
    assert expected in rejected(text)


def test_messages_never_echo_the_key_data() -> None:
    for text in (f"ssh-rsa {ED25519.split()[1]}", f"{ED25519}\n{ED25519}", ED25519 + "AAAA"):
        assert ED25519.split()[1] not in rejected(text)


# -- keys stored before a rule that refuses them ---------------------------------------------

SMUGGLING = f'{ED25519} a\\n command="/usr/bin/id" ssh\\0055ed25519 {ED25519.split()[1]} evil'


@pytest.mark.parametrize(
    ("stored", "installed"),
    [
        (f"{ED25519} me@laptop", f"{ED25519} me@laptop"),
        (ED25519, ED25519),
        (f"  {ED25519}\t me  ", f"{ED25519} me"),
        # A comment refused today: installed without it, never with it.
        (SMUGGLING, ED25519),
        (f"{ED25519} a\x1b]52;c;x\x07", ED25519),
        # Not a key at all (vpsd never stored one): nothing.
        ("ssh-ed25519 AAAA", None),
        (f'command="x" {ED25519}', None),
        ("", None),
    ],
)
def test_a_stored_key_is_installed_rebuilt_from_its_parts(
    stored: str, installed: str | None
) -> None:
    assert installable_line(stored) == installed


def test_guest_keys_rebuild_each_line_and_log_what_they_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = f"{ED25519} ok\n\n{SMUGGLING}\nssh-ed25519 AAAA\n"
    assert guest_keys(stored, 7) == (f"{ED25519} ok", ED25519)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"server 7: ssh key {parse_public_key(ED25519).fingerprint} installed" in logged
    assert "server 7: stored ssh key 3 is no key; not installed" in logged
    assert "evil" not in logged and "AAAA" not in logged  # never the key text
    assert guest_keys(None, 7) == () and guest_keys("", 7) == ()
