"""Hostile input, case by case, on both database backends (fake driver, in-process app).

Every case asserts the status, the one error shape (``detail`` and ``errors`` naming the
field), and that nothing changed: the account's server and snapshot lists are identical
before and after.

Decisions these tests pin down:

- A body without ``Content-Type`` (or with any non-JSON type) answers ``415`` and names
  ``header.content-type``, even when the bytes are valid JSON: the page's clients always
  send ``application/json``, and guessing would accept form posts from browsers.
- Ids in paths and query strings are ASCII digits only; ``1.0``, ``+1``, `` 1``, ``1_0``
  are ``400``, not other spellings of an id. Ids above 2**63-1 are ``400``; 2**63-1 is a
  valid id that names nothing (``404``).
- Unknown query parameter *names* are ignored, as most HTTP APIs do; unknown body fields
  are ``400``.
- An oversized body on a route that reads no body (``stop``, ``restore``...) is ``413``
  when its length is declared; streamed without a length it is never read, so ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ApiClient
from vpsd.config import Settings
from vpsd.schemas import DESCRIPTION_MAX_LENGTH, MAX_ID, NAME_MAX_LENGTH

JSON = {"Content-Type": "application/json"}


class World:
    """One account with a running server and a completed snapshot; its full visible state."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.server_id: int = api.create_server("web-1")["id"]
        self.snapshot_id: int = api.create_snapshot(self.server_id, "base")["id"]
        self.before = self.state()

    def state(self) -> tuple[Any, Any]:
        """Everything the account can list (lists are newest first, so order is stable)."""
        return self.api.get("/servers/").json(), self.api.get("/snapshots/").json()

    def assert_unchanged(self) -> None:
        assert self.state() == self.before


@pytest.fixture
def world(alice: ApiClient) -> World:
    return World(alice)


def assert_error(response: Any, status: int, field: str | None, case: str = "") -> None:
    """``status`` with the documented error shape; ``field`` among the named fields."""
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"] == "application/json", case
    body = response.json()
    assert set(body) == {"detail", "errors"}, (case, body)
    assert isinstance(body["detail"], str) and body["detail"], case
    assert all(set(error) == {"field", "message"} for error in body["errors"]), (case, body)
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], (case, body)


# -- bodies ---------------------------------------------------------------------------------

BAD_NAMES = {
    "unicode-latin": "snäpshot",
    "unicode-cyrillic": "снимок",
    "emoji": "snap📸",
    "fullwidth-digits": "snap\uff11",
    "traversal": "../etc",
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "too-long": "a" * (NAME_MAX_LENGTH + 1),
    "empty": "",
    "space": "a b",
    "newline": "a\nb",
    "trailing-newline": "snap\n",
    "nul": "a\x00b",
    "tab": "a\tb",
    "shell": "$(reboot)",
    "not-a-string": 12,
    "null": None,
}


def test_bad_snapshot_names_are_refused(world: World) -> None:
    for case, name in BAD_NAMES.items():
        body = {"server_id": world.server_id, "name": name}
        assert_error(world.api.post("/snapshots/", json=body), 400, "body.name", case)
    world.assert_unchanged()


def test_bad_server_names_are_refused(world: World) -> None:
    for case, name in BAD_NAMES.items():
        response = world.api.post("/servers/", json={"name": name, "disk_gb": 1})
        assert_error(response, 400, "body.name", case)
    world.assert_unchanged()


def test_longest_name_and_description_are_accepted(world: World) -> None:
    """The limits' other side: so the refusals above are about the limits, not the route."""
    body = {
        "server_id": world.server_id,
        "name": "a" * NAME_MAX_LENGTH,
        "description": "é" * DESCRIPTION_MAX_LENGTH,
    }
    response = world.api.post("/snapshots/", json=body)
    assert response.status_code == 201, response.text
    assert world.api.wait_snapshot(response.json()["id"])["description"] == body["description"]


def test_bad_descriptions_are_refused(world: World) -> None:
    for description in ["x" * (DESCRIPTION_MAX_LENGTH + 1), 5, True, ["a"], {"a": 1}]:
        body = {"server_id": world.server_id, "name": "ok", "description": description}
        response = world.api.post("/snapshots/", json=body)
        assert_error(response, 400, "body.description", repr(description)[:20])
    world.assert_unchanged()


BAD_INTS: dict[str, Any] = {
    "2**63": 2**63,
    "10**30": 10**30,
    "zero": 0,
    "negative": -1,
    "string": "1",
    "word": "abc",
    "float": 1.0,
    "fraction": 1.5,
    "exponent": 1e3,
    "true": True,
    "false": False,
    "null": None,
    "list": [1],
    "object": {"id": 1},
}


def test_bad_server_id_in_snapshot_body_is_refused(world: World) -> None:
    for case, value in BAD_INTS.items():
        response = world.api.post("/snapshots/", json={"server_id": value, "name": "s"})
        assert_error(response, 400, "body.server_id", case)
    world.assert_unchanged()


@pytest.mark.parametrize("field", ["disk_gb", "memory_mb", "vcpus"])
def test_bad_sizes_in_server_body_are_refused(world: World, field: str) -> None:
    for case, value in BAD_INTS.items():
        if value is None and field != "disk_gb":
            continue  # null means "the default" for the optional sizes
        body = {"name": "big", "disk_gb": 1, field: value}
        assert_error(world.api.post("/servers/", json=body), 400, f"body.{field}", case)
    world.assert_unchanged()


def test_server_id_of_max_id_is_valid_but_names_nothing(world: World) -> None:
    assert_error(world.api.post("/snapshots/", json={"server_id": MAX_ID, "name": "s"}), 404, None)
    world.assert_unchanged()


RAW_BODIES = {
    "duplicate-keys": b'{"server_id": SID, "name": "a", "name": "b"}',
    "duplicate-nested-keys": b'{"server_id": SID, "name": "a", "description": "x", '
    b'"description": "y"}',
    "nan": b'{"server_id": NaN, "name": "a"}',
    "infinity": b'{"server_id": Infinity, "name": "a"}',
    "minus-infinity": b'{"server_id": -Infinity, "name": "a"}',
    "huge-float": b'{"server_id": 1e400, "name": "a"}',
    "list": b'[{"server_id": SID, "name": "a"}]',
    "string": b'"server_id"',
    "null": b"null",
    "number": b"SID",
    "true": b"true",
    "empty": b"",
    "whitespace": b"   ",
    "truncated": b'{"server_id": SID, "name": "a"',
    "trailing-garbage": b'{"server_id": SID, "name": "a"} x',
    "single-quotes": b"{'server_id': SID, 'name': 'a'}",
    "not-utf8": b'{"server_id": SID, "name": "\xff"}',
    "utf16": '{"server_id": SID, "name": "a"}'.encode("utf-16"),
    "comment": b'{"server_id": SID, /* hi */ "name": "a"}',
    "unknown-field": b'{"server_id": SID, "name": "a", "force": true}',
    "missing-name": b'{"server_id": SID}',
    "missing-server": b'{"name": "a"}',
    "deep-nesting": b'{"server_id": SID, "name": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}
RAW_FIELDS = {  # the field each case names; "body" for the rest
    "unknown-field": "body.force",
    "missing-name": "body.name",
    "missing-server": "body.server_id",
    "huge-float": "body.server_id",  # valid JSON (a float), just not an integer
}


def test_malformed_json_bodies_are_refused(world: World) -> None:
    for case, raw in RAW_BODIES.items():
        body = raw.replace(b"SID", str(world.server_id).encode())
        response = world.api.post("/snapshots/", content=body, headers=JSON)
        assert_error(response, 400, RAW_FIELDS.get(case, "body"), case)
    world.assert_unchanged()


def test_valid_raw_body_is_accepted(world: World) -> None:
    """The same route and headers as the refusals above, with a good body: 201."""
    body = json.dumps({"server_id": world.server_id, "name": "raw"}).encode()
    response = world.api.post("/snapshots/", content=body, headers=JSON)
    assert response.status_code == 201, response.text


CONTENT_TYPES = {
    "text-plain": {"Content-Type": "text/plain"},
    "form": {"Content-Type": "application/x-www-form-urlencoded"},
    "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
    "xml": {"Content-Type": "application/xml"},
    "none": {},
}


@pytest.mark.parametrize("path", ["/snapshots/", "/servers/"])
def test_non_json_content_types_are_refused(world: World, path: str) -> None:
    body = {"server_id": world.server_id, "name": "ct", "disk_gb": 1}
    if path == "/servers/":
        body.pop("server_id")
    for case, headers in CONTENT_TYPES.items():
        # httpx adds no Content-Type to ``content=``; the header is exactly ``headers``.
        response = world.api.post(path, content=json.dumps(body).encode(), headers=headers)
        assert_error(response, 415, "header.content-type", case)
    world.assert_unchanged()


def test_form_post_is_refused(world: World) -> None:
    response = world.api.post("/snapshots/", data={"server_id": str(world.server_id), "name": "f"})
    assert_error(response, 415, "header.content-type")
    world.assert_unchanged()


# -- size limit -----------------------------------------------------------------------------


def _oversized(settings: Settings, server_id: int) -> bytes:
    padding = "x" * settings.max_body_bytes
    return json.dumps({"server_id": server_id, "name": "big", "description": padding}).encode()


@pytest.mark.parametrize("path", ["/snapshots/", "/servers/"])
def test_declared_oversized_body_is_413(world: World, settings: Settings, path: str) -> None:
    response = world.api.post(path, content=_oversized(settings, world.server_id), headers=JSON)
    assert_error(response, 413, "body")
    world.assert_unchanged()


@pytest.mark.parametrize("path", ["/snapshots/", "/servers/"])
def test_streamed_oversized_body_is_413(world: World, settings: Settings, path: str) -> None:
    payload = _oversized(settings, world.server_id)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    response = world.api.post(path, content=chunks(), headers=JSON)
    assert_error(response, 413, "body")
    world.assert_unchanged()


def test_declared_oversized_body_on_a_bodyless_route_is_413(
    world: World, settings: Settings
) -> None:
    response = world.api.post(
        f"/snapshots/{world.snapshot_id}/restore/",
        content=_oversized(settings, world.server_id),
        headers=JSON,
    )
    assert_error(response, 413, "body")
    world.assert_unchanged()


def test_body_at_the_limit_is_not_413(world: World, settings: Settings) -> None:
    body = json.dumps({"server_id": world.server_id, "name": "edge"})
    padded = body.encode().ljust(settings.max_body_bytes, b" ")  # trailing spaces are valid
    assert len(padded) == settings.max_body_bytes
    response = world.api.post("/snapshots/", content=padded, headers=JSON)
    assert response.status_code == 201, response.text


def test_invalid_content_length_is_400(world: World) -> None:
    response = world.api.get("/servers/", headers={"Content-Length": "12abc"})
    assert_error(response, 400, "header.content-length")


# -- ids in paths and query strings ---------------------------------------------------------

BAD_ID_TEXT = {
    "2**63": str(2**63),
    "10**30": str(10**30),
    "zero": "0",
    "negative": "-1",
    "minus-zero": "-0",
    "word": "abc",
    "float": "1.0",
    "exponent": "1e3",
    "plus": "+1",
    "underscore": "1_0",
    "hex": "0x1",
    "space": "%201",
    "arabic-digit": "%D9%A3",
    "nul": "1%00",
    "true": "true",
}
PATH_ENDPOINTS = [
    ("GET", "/servers/{}/", "path.server_id"),
    ("POST", "/servers/{}/stop/", "path.server_id"),
    ("POST", "/servers/{}/start/", "path.server_id"),
    ("DELETE", "/servers/{}/", "path.server_id"),
    ("GET", "/snapshots/{}/", "path.snapshot_id"),
    ("POST", "/snapshots/{}/restore/", "path.snapshot_id"),
    ("DELETE", "/snapshots/{}/", "path.snapshot_id"),
]


def test_bad_path_ids_are_400(world: World) -> None:
    for method, template, field in PATH_ENDPOINTS:
        for case, text in BAD_ID_TEXT.items():
            response = world.api.request(method, template.format(text))
            assert_error(response, 400, field, f"{method} {template} {case}")
    world.assert_unchanged()


def test_max_id_in_path_is_404(world: World) -> None:
    for method, template, _ in PATH_ENDPOINTS:
        response = world.api.request(method, template.format(MAX_ID))
        assert_error(response, 404, None, f"{method} {template}")
    world.assert_unchanged()


def test_bad_server_id_query_is_400(world: World) -> None:
    for case, text in BAD_ID_TEXT.items():
        response = world.api.get(f"/snapshots/?server_id={text}")
        assert_error(response, 400, "query.server_id", case)


BAD_PAGING = {
    "page=0": "query.page",
    "page=-1": "query.page",
    "page=abc": "query.page",
    f"page={2**63}": "query.page",
    "page_size=0": "query.page_size",
    "page_size=100000": "query.page_size",
    "page_size=1.5": "query.page_size",
}


def test_bad_list_queries_are_400(world: World) -> None:
    for path in ("/servers/", "/snapshots/"):
        for query, field in BAD_PAGING.items():
            assert_error(world.api.get(f"{path}?{query}"), 400, field, f"{path}?{query}")
    assert_error(world.api.get("/snapshots/?server_id="), 400, "query.server_id")


def test_unknown_query_parameters_are_ignored(world: World) -> None:
    response = world.api.get("/snapshots/?color=blue&_=123")
    assert response.status_code == 200
    assert response.json() == world.before[1]


# -- regressions found by schemathesis (tests/hostile/test_schemathesis.py) -----------------


def test_openapi_documents_400_and_never_422(world: World) -> None:
    """The document listed FastAPI's 422 (never sent) and left out the 400 that invalid paging
    or ids get on ``GET /servers/`` and ``DELETE /snapshots/{id}/``; body routes now list
    their 413 and 415 too."""
    document = world.api.http.get("/api/v1/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "422" not in statuses, (method, path)
            assert {"400", "401"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"413", "415"} <= statuses, (method, path)
