"""Replayed attacks on the API of issue 10, findings 8 to 12, each asserting its fix.

Every refusal has the documented status and error shape (``detail`` and ``errors`` naming the
field), and leaves the account's servers and snapshots as they were.

Decisions these tests pin down:

- Links (``next``/``previous``, the trailing-slash redirect's ``location``) are relative
  (``/api/v1/servers/?page=2``), or absolute on ``VPSD_PUBLIC_URL``; never the request's Host.
- A body starting with a UTF-8 byte order mark is refused as malformed JSON (RFC 8259 forbids
  sending one; skipping it silently would be a second spelling of the same body).
- ``Content-Type: application/json`` with a ``charset`` other than ``utf-8`` is ``415``.
"""

from __future__ import annotations

import codecs
import importlib
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.helpers import ApiClient, wait_for
from tests.hostile.test_hostile_input import World, assert_error
from tests.live_server import LiveServer
from tests.qemu_helpers import short_tmpdir
from vpsd.api.docs import ASSETS
from vpsd.api.openapi import OPERATION_ID
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app
from vpsd.schemas import MAX_ID
from vpsd.services.tokens import create_token

JSON = {"Content-Type": "application/json"}
EVIL = {"Host": "evil.example"}


@pytest.fixture
def world(alice: ApiClient) -> World:
    return World(alice)


def _no_evil(response: Any) -> None:
    """Nothing of the forged Host comes back, in the body or in any header."""
    assert "evil" not in response.text, response.text
    assert not any("evil" in value for value in response.headers.values()), response.headers


# -- 8: Host header reflected ---------------------------------------------------------------


def test_finding_8_host_header_is_never_reflected(world: World) -> None:
    """The attack: ``Host: evil.example`` came back in ``next``/``previous`` and in the
    trailing-slash redirect's ``location``."""
    for name in ("web-2", "web-3"):
        world.api.create_server(name)
    page = world.api.get("/servers/?page_size=1&page=2", headers=EVIL)
    assert page.status_code == 200, page.text
    _no_evil(page)
    assert page.json()["next"] == "/api/v1/servers/?page_size=1&page=3"
    assert page.json()["previous"] == "/api/v1/servers/?page_size=1&page=1"

    redirect = world.api.get("/servers?page_size=1", headers=EVIL, follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/api/v1/servers/?page_size=1"
    _no_evil(redirect)
    redirect = world.api.get(f"/servers/{world.server_id}", headers=EVIL, follow_redirects=False)
    assert redirect.headers["location"] == f"/api/v1/servers/{world.server_id}/"
    # A relative link never names another host, whatever the path says.
    redirect = world.api.http.get(
        "http://testserver//evil.example/api/v1/servers", follow_redirects=False
    )
    assert redirect.status_code == 404
    _no_evil(redirect)


def test_finding_8_links_use_the_public_url(settings: Settings, fake_driver: FakeDriver) -> None:
    """With ``VPSD_PUBLIC_URL`` set, links are absolute on it, whatever Host says."""
    with pytest.raises(ValidationError):
        Settings(public_url="https://vpsd.example/?next=evil.example")
    with pytest.raises(ValidationError):
        Settings(public_url="javascript:alert(1)")
    public = settings.model_copy(update={"public_url": "https://vpsd.example"})
    with TestClient(create_app(public, driver=fake_driver)) as http:
        database = Database(public.effective_database_url)
        try:
            api = ApiClient(http, create_token(database, "alice")[1])
        finally:
            database.dispose()
        api.create_server("web-1")
        api.create_server("web-2")
        page = api.get("/servers/?page_size=1", headers=EVIL)
        _no_evil(page)
        assert page.json()["next"] == "https://vpsd.example/api/v1/servers/?page_size=1&page=2"
        redirect = api.get("/servers", headers=EVIL, follow_redirects=False)
        assert redirect.headers["location"] == "https://vpsd.example/api/v1/servers/"


# -- 9: loose paging ------------------------------------------------------------------------

LOOSE_NUMBERS = {
    "float": "1.0",
    "plus": "%2B1",
    "plus-raw": "+1",  # a "+" in a query string is a space
    "space": "%201",
    "underscore": "1_0",
    "arabic-digit": "%D9%A3",
    "fullwidth-digit": "%EF%BC%91",
    "exponent": "1e1",
    "empty": "",
}


def test_finding_9_paging_is_as_strict_as_ids(world: World) -> None:
    """The attack: ``page=1.0``, ``page=+1``, ``page=%201`` were accepted and ``page=1_0``
    read as 10."""
    for path in ("/servers/", "/snapshots/", "/ssh_keys/", "/images/"):
        for parameter in ("page", "page_size"):
            for case, text in LOOSE_NUMBERS.items():
                response = world.api.get(f"{path}?{parameter}={text}")
                assert_error(response, 400, f"query.{parameter}", f"{path} {parameter} {case}")
    world.assert_unchanged()
    # The same parameters in plain digits are fine: the refusals are about the spelling.
    page = world.api.get("/servers/?page=1&page_size=1")
    assert page.status_code == 200, page.text
    assert page.json()["count"] == 1


# -- 10: answers outside the one error shape (the app's part) -------------------------------

HUGE = b"9" * 5000  # past Python's 4300-digit limit on converting digits to an int


def test_finding_10_bodies_get_the_one_error_shape(world: World) -> None:
    """The attack: a 5,000-digit integer got "There was an error parsing the body" with no
    field named; a UTF-8 BOM and ``charset=latin-1`` bodies were read as UTF-8."""
    server = str(world.server_id).encode()
    huge_cases = [
        ("/snapshots/", b'{"server_id": ' + HUGE + b', "name": "a"}', "body.server_id"),
        ("/snapshots/", b'{"server_id": -' + HUGE + b', "name": "a"}', "body.server_id"),
        ("/snapshots/", b'{"server_id": ' + server + b', "name": ' + HUGE + b"}", "body.name"),
        ("/servers/", b'{"name": "a", "disk_gb": ' + HUGE + b"}", "body.disk_gb"),
        (
            "/servers/",
            b'{"name": "a", "disk_gb": 1, "ssh_keys": [' + HUGE + b"]}",
            "body.ssh_keys.0",
        ),
        ("/servers/", HUGE, "body"),
    ]
    for path, body, field in huge_cases:
        response = world.api.post(path, content=body, headers=JSON)
        assert_error(response, 400, field, field)
        assert "error parsing the body" not in response.text
        assert "too large (5000 digits)" in response.json()["errors"][0]["message"]

    bom = codecs.BOM_UTF8 + b'{"server_id": ' + server + b', "name": "bom"}'
    response = world.api.post("/snapshots/", content=bom, headers=JSON)
    assert_error(response, 400, "body")
    assert "byte order mark" in response.json()["errors"][0]["message"]

    fields = {"server_id": world.server_id, "name": "l", "description": "café"}
    latin1 = json.dumps(fields, ensure_ascii=False).encode("latin-1")  # "é" is one byte, E9
    for charset in ("latin-1", "LATIN-1", "iso-8859-1", '"utf-16"', "utf8", "us-ascii"):
        headers = {"Content-Type": f"application/json; charset={charset}"}
        response = world.api.post("/snapshots/", content=latin1, headers=headers)
        assert_error(response, 415, "header.content-type", charset)
    # Without a charset the bytes are UTF-8, which they are not: never read as "caf\ufffd".
    response = world.api.post("/snapshots/", content=latin1, headers=JSON)
    assert_error(response, 400, "body")
    assert "not UTF-8" in response.json()["errors"][0]["message"]
    utf16 = json.dumps({"server_id": world.server_id, "name": "u16"}).encode("utf-16")
    assert_error(world.api.post("/snapshots/", content=utf16, headers=JSON), 400, "body")
    world.assert_unchanged()

    # UTF-8, said or not, is accepted: the refusals are about the encoding.
    for name, content_type in (
        ("u1", "application/json; charset=utf-8"),
        ("u2", 'application/json; Charset="UTF-8"'),
    ):
        body = json.dumps({"server_id": world.server_id, "name": name, "description": "café"})
        response = world.api.post(
            "/snapshots/", content=body.encode(), headers={"Content-Type": content_type}
        )
        assert response.status_code == 201, response.text
        assert world.api.wait_snapshot(response.json()["id"])["description"] == "café"


# -- 11: the docs page needs the internet ---------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to anything but this machine fail (a test database may be on loopback)."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        inet = self.family in (socket.AF_INET, socket.AF_INET6)
        if inet and not ipaddress.ip_address(address[0]).is_loopback:
            raise OSError(f"no network in this test: {address!r}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def test_finding_11_docs_page_needs_no_other_origin(client: TestClient, no_network: None) -> None:
    """The attack: ``/api/v1/docs`` loaded Swagger UI from a CDN."""
    page = client.get("/api/v1/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.search(r"https?://", html) is None, html
    policy = page.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in policy.split("; ")}
    assert directives["default-src"] == ["'self'"]
    for sources in directives.values():
        assert not any(s == "*" or "://" in s or s.startswith(("http", "*")) for s in sources)
    assert "'unsafe-inline'" not in directives["script-src"]
    # The page's one inline script carries the nonce its policy names (new on every answer).
    nonces = re.findall(r'<script nonce="([^"]+)">', html)
    assert len(nonces) == 1 and f"'nonce-{nonces[0]}'" in directives["script-src"]
    assert client.get("/api/v1/docs").headers["content-security-policy"] != policy

    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert referenced == {f"/api/v1/docs/static/{name}" for name in ASSETS}
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in referenced:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(types[Path(url).suffix]), url
        assert len(asset.content) > 1000, url
    assert "SwaggerUIBundle" in client.get("/api/v1/docs/static/swagger-ui-bundle.js").text
    # Only the assets folder: not the package's code beside it.
    assert_error(client.get("/api/v1/docs/static/%2e%2e/__init__.py"), 404, None)


# -- 12: OpenAPI flaws a generated client trips on ------------------------------------------

OPERATION_IDS = {
    ("get", "/api/v1/snapshots/"): "listSnapshots",
    ("post", "/api/v1/snapshots/"): "createSnapshot",
    ("get", "/api/v1/snapshots/{snapshot_id}/"): "getSnapshot",
    ("post", "/api/v1/snapshots/{snapshot_id}/restore/"): "restoreSnapshot",
    ("delete", "/api/v1/snapshots/{snapshot_id}/"): "deleteSnapshot",
    ("get", "/api/v1/servers/"): "listServers",
    ("post", "/api/v1/servers/"): "createServer",
    ("get", "/api/v1/servers/{server_id}/"): "getServer",
    ("post", "/api/v1/servers/{server_id}/start/"): "startServer",
    ("post", "/api/v1/servers/{server_id}/stop/"): "stopServer",
    ("post", "/api/v1/servers/{server_id}/reboot/"): "rebootServer",
    ("get", "/api/v1/servers/{server_id}/console/"): "getServerConsole",
    ("delete", "/api/v1/servers/{server_id}/"): "deleteServer",
    ("get", "/api/v1/images/"): "listImages",
    ("get", "/api/v1/images/{image_id}/"): "getImage",
    ("get", "/api/v1/ssh_keys/"): "listSshKeys",
    ("post", "/api/v1/ssh_keys/"): "createSshKey",
    ("get", "/api/v1/ssh_keys/{key_id}/"): "getSshKey",
    ("delete", "/api/v1/ssh_keys/{key_id}/"): "deleteSshKey",
}
PYDANTIC_CONSTRAINTS = {"ge", "le", "gt", "lt"}


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the document (schemas among them), depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schemas(item)


def _response_schemas(document: dict[str, Any]) -> set[str]:
    """Names of the component schemas that answers use, directly or nested."""
    components = document["components"]["schemas"]
    refs = [
        o["$ref"]
        for path in document["paths"].values()
        for operation in path.values()
        for answer in operation["responses"].values()
        for o in _schemas(answer)
        if "$ref" in o
    ]
    names: set[str] = set()
    while refs:
        name = refs.pop().rsplit("/", 1)[-1]
        if name not in names:
            names.add(name)
            refs += [o["$ref"] for o in _schemas(components[name]) if "$ref" in o]
    return names


def test_finding_12_openapi_document_suits_generated_clients(world: World) -> None:
    """The attack: ``openapi-python-client`` met ``ge``/``le`` bounds, a float ``maximum``,
    ``created_at`` without ``format``, always-sent fields not ``required``, and operation ids
    like ``list_snapshots_api_v1_snapshots_get``."""
    document = world.api.http.get("/api/v1/openapi.json").json()
    ids = {
        (method, path): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert all(OPERATION_ID.match(i) for i in ids.values()), ids  # later routes too
    assert len(set(ids.values())) == len(ids)
    assert {key: ids.get(key) for key in OPERATION_IDS} == OPERATION_IDS

    for schema in _schemas(document):
        assert not PYDANTIC_CONSTRAINTS & {k for k, v in schema.items() if not isinstance(v, dict)}
        if schema.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                assert not isinstance(schema.get(key), float), schema
    for (method, path), _ in OPERATION_IDS.items():
        for parameter in document["paths"][path][method].get("parameters", []):
            if parameter["name"].endswith("_id"):
                schema = parameter["schema"]
                bounds = schema["anyOf"][0] if "anyOf" in schema else schema
                assert (bounds["minimum"], bounds["maximum"]) == (1, MAX_ID), (path, parameter)
    # Exactly 9223372036854775807 in the text too (a float would print as 9.2e+18).
    raw = world.api.http.get("/api/v1/openapi.json").text
    assert '"maximum":9223372036854775807' in raw.replace(" ", "")
    assert "e+18" not in raw

    components = document["components"]["schemas"]
    for name, schema in components.items():
        if "created_at" in schema.get("properties", {}):
            created = schema["properties"]["created_at"]
            assert (created["type"], created.get("format")) == ("string", "date-time"), name
    answers = _response_schemas(document)
    assert {"ServerOut", "SnapshotOut", "ErrorBody", "Page_ServerOut_"} <= answers
    for name in answers:
        schema = components[name]
        assert set(schema.get("required", [])) == set(schema.get("properties", {})), name
    assert {"status_reason", "consistency"} <= set(components["SnapshotOut"]["required"])
    assert {"ssh", "status_reason"} <= set(components["ServerOut"]["required"])
    assert {"next", "previous"} <= set(components["Page_SnapshotOut_"]["required"])
    # And what the document calls required is what is sent.
    sent = world.api.get(f"/snapshots/{world.snapshot_id}/").json()
    assert set(sent) == set(components["SnapshotOut"]["required"])
    world.assert_unchanged()


GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture
def fake_live_server() -> Iterator[LiveServer]:
    """``vpsd serve`` on the fake driver, in a short data dir removed afterwards."""
    root = short_tmpdir()
    server = LiveServer(root, driver="fake")
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait(get: Any, done: Any, what: str) -> Any:
    return wait_for(lambda: (lambda obj: obj if done(obj) else None)(get()), 30, 0.05, what)


def test_finding_12_a_generated_client_works(
    fake_live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client generated by openapi-python-client from the served document creates a server,
    lists it, snapshots it, shows and deletes the snapshot, against ``vpsd serve``."""
    if not GENERATOR.exists():
        pytest.skip("openapi-python-client is not installed: pip install -e '.[dev]'")
    document = httpx.get(f"{fake_live_server.base_url}/api/v1/openapi.json").text
    (tmp_path / "openapi.json").write_text(document)
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")  # no ruff run on the output
    package = "vpsd_generated_client"
    generated = subprocess.run(
        [
            str(GENERATOR), "generate", "--path", str(tmp_path / "openapi.json"),
            "--meta", "none", "--output-path", str(tmp_path / package),
            "--config", str(tmp_path / "config.yaml"), "--fail-on-warning",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr

    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        gen = importlib.import_module(package)
        servers = importlib.import_module(f"{package}.api.servers")
        snapshots = importlib.import_module(f"{package}.api.snapshots")
        models = importlib.import_module(f"{package}.models")
        for name in ("create_server", "get_server", "list_servers"):
            importlib.import_module(f"{package}.api.servers.{name}")
        for name in ("create_snapshot", "get_snapshot", "delete_snapshot", "list_snapshots"):
            importlib.import_module(f"{package}.api.snapshots.{name}")

        token = fake_live_server.create_token("alice")
        with gen.AuthenticatedClient(base_url=fake_live_server.base_url, token=token) as api:
            created = servers.create_server.sync(
                client=api, body=models.ServerCreate(name="gen-1", disk_gb=1)
            )
            assert isinstance(created, models.ServerOut), created
            server = _wait(
                lambda: servers.get_server.sync(created.id, client=api),
                lambda s: s.status == "running",
                "the server to run",
            )
            assert server.ssh is None and server.status_reason is None
            listed = servers.list_servers.sync(client=api, page_size=10)
            assert isinstance(listed, models.PageServerOut), listed
            assert (listed.count, [s.id for s in listed.results]) == (1, [created.id])
            assert listed.to_dict()["next"] is None and listed.to_dict()["previous"] is None

            taken = snapshots.create_snapshot.sync(
                client=api, body=models.SnapshotCreate(server_id=created.id, name="gen-snap")
            )
            assert isinstance(taken, models.SnapshotCreated), taken
            snapshot = _wait(
                lambda: snapshots.get_snapshot.sync(taken.id, client=api),
                lambda s: s.status != "in_progress",
                "the snapshot to settle",
            )
            assert snapshot.status == "completed", snapshot
            assert snapshot.created_at.tzinfo is not None
            assert snapshot.created_at.timestamp() <= time.time() + 1
            by_server = snapshots.list_snapshots.sync(client=api, server_id=created.id)
            assert [s.id for s in by_server.results] == [taken.id]

            deleted = snapshots.delete_snapshot.sync_detailed(taken.id, client=api)
            assert deleted.status_code == 204
            gone = snapshots.get_snapshot.sync(taken.id, client=api)
            assert isinstance(gone, models.ErrorBody), gone
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == package]:
            del sys.modules[name]
