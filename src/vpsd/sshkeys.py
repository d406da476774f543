"""OpenSSH public keys: parse, validate and fingerprint one ``authorized_keys``-style line.

Accepted: ``ssh-ed25519``, ``ecdsa-sha2-nistp256``/``384``/``521`` and ``ssh-rsa`` of at
least 2048 bits. Everything else is refused with a message that says what to paste instead.
The key material is checked by ``cryptography``; the fingerprint is the one
``ssh-keygen -l -E sha256`` prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import re
import struct
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from vpsd.schemas import MAX_PUBLIC_KEY_LENGTH

log = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
ACCEPTED_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
ACCEPTED_HELP = "accepted: ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of at least 2048 bits"
_CURVE_BITS = {"ecdsa-sha2-nistp256": 256, "ecdsa-sha2-nistp384": 384, "ecdsa-sha2-nistp521": 521}
# A token that names a key type, accepted or not: followed by key data after the first
# token, it means options before the key, or several keys on one line.
_KEY_TYPE_LIKE = re.compile(r"(ssh|ecdsa-sha2|sk-[a-z0-9-]+)-[a-z0-9-]+(@openssh\.com)?")
_FIELD_SEPARATOR = re.compile(r"[ \t]+")
_LINE_BREAK = re.compile(r"[\r\n]")
_PRINTABLE_TOKEN = re.compile(r"^[\x21-\x7e]{1,60}$")
# Control, invisible formatting (bidi overrides), line/paragraph separators, lone surrogates.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class InvalidPublicKey(ValueError):
    """The text is not one acceptable OpenSSH public key; ``str(error)`` says why."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated public key: its type, its base64 blob, the optional comment, and more."""

    key_type: str
    data: str
    """The key blob in canonical (padded) base64."""
    comment: str | None
    fingerprint: str
    """``SHA256:<unpadded base64>``, as ``ssh-keygen -l -E sha256`` prints it."""
    bits: int

    @property
    def line(self) -> str:
        """The normalized line: ``type base64`` plus `` comment`` when there is one."""
        key = f"{self.key_type} {self.data}"
        return f"{key} {self.comment}" if self.comment else key


def fingerprint(blob: bytes) -> str:
    """The SHA256 fingerprint of a key blob: ``SHA256:`` + unpadded base64 of its digest."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line (``type base64 [comment]``) and validate it.

    Surrounding whitespace and one trailing line break are ignored; the comment is kept,
    stripped. Raises ``InvalidPublicKey`` with a message fit for the user when the text is
    not exactly one accepted key: a private key, several keys or lines, ``authorized_keys``
    options, an unsupported type (``ssh-dss``, RSA under 2048 bits, security keys,
    certificates), bad base64, a type that does not match the key data, or control
    characters or backslashes in the comment.
    """
    if len(text) > MAX_PUBLIC_KEY_LENGTH:
        raise InvalidPublicKey(
            f"too long: a public key line has at most {MAX_PUBLIC_KEY_LENGTH} characters"
        )
    stripped = text.strip()
    _refuse_other_formats(stripped)
    if not stripped:
        raise InvalidPublicKey(
            "empty: paste one OpenSSH public key line, e.g. the contents of ~/.ssh/id_ed25519.pub"
        )
    if _LINE_BREAK.search(stripped):
        raise InvalidPublicKey(
            "several lines: paste exactly one public key, on one line (one key per request)"
        )
    fields = _FIELD_SEPARATOR.split(stripped, maxsplit=2)
    key_type = fields[0]
    _check_type(key_type, fields[1:])
    if len(fields) < 2:
        raise InvalidPublicKey(f"the key data is missing: expected '{key_type} AAAA... [comment]'")
    blob = _decode(fields[1])
    comment = _comment(fields[2] if len(fields) > 2 else "")
    bits = _validate_blob(key_type, blob)
    data = base64.b64encode(blob).decode("ascii")
    return PublicKey(key_type, data, comment, fingerprint(blob), bits)


def installable_line(stored: str) -> str | None:
    """The ``authorized_keys`` line to install for a stored key: rebuilt from its parts
    (``type base64 [comment]``), so nothing but the key and its comment reaches a guest.

    A key saved before a rule that now refuses its comment (a backslash, say) is installed
    without the comment, so its server still boots and its owner still logs in. None when
    even the type and key data are not an accepted key (nothing vpsd ever stored).
    """
    try:
        return parse_public_key(stored).line
    except InvalidPublicKey:
        pass
    fields = _FIELD_SEPARATOR.split(stored.strip(), maxsplit=2)
    try:
        return parse_public_key(" ".join(fields[:2])).line
    except InvalidPublicKey:
        return None


def guest_keys(stored: str | None, server_id: int) -> tuple[str, ...]:
    """The lines to install for root on server ``server_id``, from its stored keys (one per
    line), each through ``installable_line``; what is changed or left out is logged."""
    keys = []
    for number, line in enumerate(filter(None, (stored or "").splitlines()), start=1):
        installed = installable_line(line)
        if installed is None:
            log.warning("server %d: stored ssh key %d is no key; not installed", server_id, number)
            continue
        if installed != line.strip():
            key = parse_public_key(installed)
            log.warning(
                "server %d: ssh key %s installed as its type and key data alone (its stored "
                "comment is refused today)",
                server_id,
                key.fingerprint,
            )
        keys.append(installed)
    return tuple(keys)


def _shown(token: str) -> str:
    """A piece of the user's text, quoted for a message only if it is short printable ASCII."""
    return f"'{token}'" if _PRINTABLE_TOKEN.match(token) else "(unprintable)"


def _refuse_other_formats(text: str) -> None:
    if "PRIVATE KEY" in text or text.startswith("PuTTY-User-Key-File"):
        raise InvalidPublicKey(
            "this is a private key; paste the .pub file (the public key) instead, "
            "and keep the private key secret"
        )
    if text.startswith("---- BEGIN SSH2 PUBLIC KEY ----"):
        raise InvalidPublicKey(
            "this is an RFC 4716 (SSH2) public key; convert it to OpenSSH format with "
            "'ssh-keygen -i -f FILE' and paste the result"
        )
    if text.startswith("-----BEGIN"):
        raise InvalidPublicKey(
            "this is a PEM file, not an OpenSSH public key; paste the one line of the .pub "
            "file ('type AAAA... comment')"
        )


def _names_a_key(tokens: list[str]) -> bool:
    """True if a key type followed by key data (``AAAA...``) appears among ``tokens``."""
    return any(
        _KEY_TYPE_LIKE.fullmatch(token) and following.startswith("AAAA")
        for token, following in itertools.pairwise(tokens)
    )


def _check_type(key_type: str, rest: list[str]) -> None:
    if key_type in ACCEPTED_TYPES:
        if _names_a_key(" ".join(rest[1:]).split()):
            raise InvalidPublicKey("several keys on one line: paste exactly one public key")
        return
    if _names_a_key(" ".join(rest).split()):
        raise InvalidPublicKey(
            'options (such as command="..." or from="...") are not allowed before the key: '
            "paste only 'type base64 [comment]'"
        )
    if key_type == "ssh-dss":
        raise InvalidPublicKey(
            "DSA keys (ssh-dss) are not accepted: they are insecure and OpenSSH no longer "
            f"uses them; {ACCEPTED_HELP}"
        )
    if key_type.endswith("-cert-v01@openssh.com"):
        raise InvalidPublicKey(
            f"certificates are not accepted, paste the plain public key; {ACCEPTED_HELP}"
        )
    if key_type.startswith("sk-"):
        raise InvalidPublicKey(f"security-key (FIDO) keys are not supported; {ACCEPTED_HELP}")
    if "=" in key_type or "," in key_type:
        raise InvalidPublicKey(
            "options are not allowed: paste only 'type base64 [comment]' of one public key"
        )
    raise InvalidPublicKey(f"unknown key type {_shown(key_type)}; {ACCEPTED_HELP}")


def _decode(data: str) -> bytes:
    try:
        blob = base64.b64decode(data.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidPublicKey("the key data is not valid base64") from None
    if not blob:
        raise InvalidPublicKey("the key data is empty")
    return blob


def _comment(raw: str) -> str | None:
    comment = raw.strip(" \t")
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in comment):
        raise InvalidPublicKey(
            "the comment contains control or invisible characters; use printable text"
        )
    if "\\" in comment:
        # A shell's echo, a printf format, a config parser: each may read \n or \0055 in
        # it as an escape, turning one key line into two on the server.
        raise InvalidPublicKey(
            "the comment contains a backslash (\\), which a server's tools may read as an "
            "escape such as a line break; write the comment without it"
        )
    return comment or None


def _blob_type(blob: bytes) -> str | None:
    """The key type named inside the blob (its first SSH string), None if unreadable."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    name = blob[4 : 4 + length]
    if length > 64 or len(name) != length:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def _validate_blob(key_type: str, blob: bytes) -> int:
    """Check the blob is a well-formed key of ``key_type``; return its size in bits."""
    inner = _blob_type(blob)
    if inner is None:
        raise InvalidPublicKey(f"the key data is not a valid {key_type} key")
    if inner != key_type:
        raise InvalidPublicKey(
            f"the line says {key_type} but the key data is {_shown(inner)}: the type does not "
            "match the key"
        )
    line = key_type.encode("ascii") + b" " + base64.b64encode(blob)
    try:
        key = load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidPublicKey(f"the key data is not a valid {key_type} key") from None
    if isinstance(key, ed25519.Ed25519PublicKey) and key_type == "ssh-ed25519":
        return 256
    if isinstance(key, ec.EllipticCurvePublicKey) and key_type in _CURVE_BITS:
        if key.curve.key_size != _CURVE_BITS[key_type]:
            raise InvalidPublicKey(f"the key data is not a valid {key_type} key")
        return key.curve.key_size
    if isinstance(key, rsa.RSAPublicKey) and key_type == "ssh-rsa":
        if key.key_size < MIN_RSA_BITS:
            raise InvalidPublicKey(
                f"RSA keys must have at least {MIN_RSA_BITS} bits; this one has "
                f"{key.key_size} (make a new one: ssh-keygen -t ed25519)"
            )
        return key.key_size
    raise InvalidPublicKey(f"the key data is not a valid {key_type} key")
