"""The in-process vpsctl harness the vpsctl tests share: the SDK's HTTP goes to the app under
test through an ``httpx.MockTransport``, vpsctl runs through its real ``main()``."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from fastapi.testclient import TestClient

from tests.helpers import ApiClient
from vpsd.cli import vpsctl, vpsctl_common
from vpsd.client import Client

BASE = "http://vpsd.test"


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


def new_key(comment: str = "me@laptop") -> tuple[str, str]:
    """A fresh ed25519 key pair: the public key line and the private key file's text."""
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    secret = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    return f"{public} {comment}", secret


@pytest.fixture
def sent() -> list[httpx.Request]:
    """Every request the SDK sent (through ``transport``)."""
    return []


@pytest.fixture
def transport(client: TestClient, sent: list[httpx.Request]) -> httpx.MockTransport:
    """Hands the SDK's requests to the in-process app."""

    def forward(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = client.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            content=request.content,
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return httpx.MockTransport(forward)


@pytest.fixture
def run(
    alice: ApiClient,
    transport: httpx.MockTransport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run ``vpsctl ARGS`` as alice, with ``stdin`` text (not a terminal) on stdin."""
    return make_run(alice.token, transport, tmp_path, monkeypatch, capsys)


class _TerminalInput(io.StringIO):
    """Typed answers on a stdin that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def make_run(
    token: str,
    transport: httpx.BaseTransport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """``run`` with any token and transport (a fake API, say). ``invoke(..., tty=True)`` makes
    stdin a terminal, its text the answers typed."""
    real_client = Client

    def client_factory(*args: object, **kwargs: object) -> Client:
        return real_client(*args, transport=transport, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vpsctl_common, "Client", client_factory)
    monkeypatch.setenv("VPSD_URL", BASE)
    monkeypatch.setenv("VPSD_TOKEN", token)
    monkeypatch.setenv("VPSCTL_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str, stdin: str = "", tty: bool = False) -> Result:
        monkeypatch.setattr(sys, "argv", ["vpsctl", *args])
        monkeypatch.setattr(sys, "stdin", (_TerminalInput if tty else io.StringIO)(stdin))
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            vpsctl.main()
        out, err = capsys.readouterr()
        code = exited.value.code
        return Result(code if isinstance(code, int) else 1 if code else 0, out, err)

    return invoke


def one_error_line(result: Result) -> str:
    """The one ``error:`` line a failed vpsctl command printed."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]
