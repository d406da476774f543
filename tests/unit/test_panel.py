"""The web panel, in-process (no browser): signing in and out, sessions, CSRF, tenancy, the
security headers, forms that refuse in words, and ``vpsd account set-password``.

Each test looks at what the user gets: the status, where they are sent, the words on the
page, the cookies; and, for requests that must be refused, that nothing changed."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher, Type
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from tests.helpers import ApiClient, wait_for
from tests.unit.vpsctl_harness import new_key
from vpsd.backups.fake import FakeBackupStore
from vpsd.cli import vpsd as vpsd_cli
from vpsd.config import Settings
from vpsd.db.models import (
    Account,
    ApiToken,
    Backup,
    BackupPolicy,
    Operation,
    Server,
    Snapshot,
    SnapshotPolicy,
    SshKey,
    WebSession,
)
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app
from vpsd.services import web_sessions
from vpsd.services.tokens import create_token, list_tokens, revoke_token
from vpsd.services.web_sessions import set_password
from vpsd.web.render import PanelRoute
from vpsd.web.session import SESSION_COOKIE, SIGN_IN_COOKIE

BASE_URL = "https://testserver"  # the panel's cookies are Secure: sent back over HTTPS only
PASSWORD = "correct horse battery"
NEW = "a brand new password"
MISMATCH = "That account name and password do not match."
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]*)"')
NEXT_INPUT = re.compile(r'name="next" value="([^"]*)"')


REAL_HASHER = web_sessions._hasher


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: the real ones cost a few tenths of a second a password, on
    purpose (``test_passwords_are_hashed_with_argon2id`` checks them)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(web_sessions, "_hasher", cheap)
    monkeypatch.setattr(web_sessions, "_UNUSABLE", cheap.hash("no password"))


def test_passwords_are_hashed_with_argon2id(database: Database) -> None:
    assert REAL_HASHER.type is Type.ID
    assert REAL_HASHER.memory_cost >= 64 * 1024 and REAL_HASHER.time_cost >= 3
    set_password(database, "alice", PASSWORD)
    with database.read() as session:
        stored = session.scalar(select(Account.password_hash).where(Account.name == "alice"))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored


@contextmanager
def panel_client(
    settings: Settings, driver: FakeDriver, store: FakeBackupStore
) -> Iterator[TestClient]:
    """The app (runner and monitor included) on the fake driver, spoken to over HTTPS."""
    app = create_app(settings, driver=driver, backup_store=store)
    with TestClient(app, base_url=BASE_URL) as http:
        yield http


@pytest.fixture
def client(
    settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> Iterator[TestClient]:
    """The conftest's ``client`` over HTTPS (``alice`` and ``bob`` use this one)."""
    with panel_client(settings, fake_driver, fake_store) as http:
        yield http


@pytest.fixture
def database(client: TestClient, settings: Settings) -> Iterator[Database]:
    """The app's database (migrated by its start), to set passwords and look at rows."""
    opened = Database(settings.effective_database_url)
    yield opened
    opened.dispose()


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF_INPUT.search(page)
    assert found, f"no csrf_token field on the page: {page[:500]}"
    return found.group(1)


def altered(token: str) -> str:
    """``token`` with its last character changed."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def text_of(response: httpx.Response) -> str:
    """A page's text as the user reads it (entities decoded)."""
    return html.unescape(response.text)


def set_cookie_named(response: httpx.Response, name: str) -> str | None:
    """The ``Set-Cookie`` header that sets ``name``, or None."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    return None


class Browser:
    """One browser on the panel: its own cookies (the test client's jar is shared by
    every browser of a test, so each request swaps this browser's cookies in and out)."""

    def __init__(self, http: TestClient) -> None:
        self.http = http
        self.cookies = httpx.Cookies()
        self.csrf = ""

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.http.cookies = self.cookies
        try:
            response: httpx.Response = self.http.request(
                method, url, follow_redirects=False, **kwargs
            )
            return response
        finally:
            self.cookies = self.http.cookies
            self.http.cookies = httpx.Cookies()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def submit(self, url: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        """POST a panel form as the page would: with the session's CSRF token."""
        return self.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)

    def sign_in(
        self, name: str = "", password: str = "", token: str = "", next_url: str | None = None
    ) -> httpx.Response:
        """Open the sign-in page and send its form; signed in, remember the CSRF token."""
        form = self.get("/sign-in" + (f"?next={next_url}" if next_url is not None else ""))
        assert form.status_code == 200, form.text
        fields = {"csrf_token": csrf_of(form.text), "next": NEXT_INPUT.findall(form.text)[0]}
        fields |= {"token": token} if token else {"name": name, "password": password}
        response = self.post("/sign-in", data=fields)
        if response.status_code == 303:
            servers = self.get("/servers")
            assert servers.status_code == 200, servers.text
            self.csrf = csrf_of(servers.text)
        return response

    def goes_to_sign_in(self, url: str = "/servers") -> bool:
        """Whether opening ``url`` sends this browser to the sign-in page."""
        response = self.get(url)
        return response.status_code == 303 and response.headers["location"].startswith("/sign-in")


@pytest.fixture
def visitor(client: TestClient) -> Browser:
    return Browser(client)


def signed_in(client: TestClient, database: Database, name: str) -> Browser:
    """A browser signed in as ``name`` (given a password first)."""
    set_password(database, name, PASSWORD)
    signing_in = Browser(client)
    assert signing_in.sign_in(name, PASSWORD).status_code == 303
    return signing_in


def world(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a panel POST could change, to show that a refused one changed nothing."""
    columns: dict[str, tuple[Any, ...]] = {
        "accounts": (Account.id, Account.name, Account.password_hash),
        "servers": (Server.id, Server.name, Server.status),
        "snapshots": (
            Snapshot.id,
            Snapshot.name,
            Snapshot.status,
            Snapshot.protected,
            Snapshot.expires_at,
        ),
        "backups": (Backup.id, Backup.name, Backup.status),
        "policies": (
            BackupPolicy.server_id,
            BackupPolicy.enabled,
            BackupPolicy.frequency,
            BackupPolicy.hour,
            BackupPolicy.weekday,
            BackupPolicy.keep,
        ),
        "snapshot_policies": (
            SnapshotPolicy.server_id,
            SnapshotPolicy.enabled,
            SnapshotPolicy.frequency,
            SnapshotPolicy.minute,
            SnapshotPolicy.keep,
        ),
        "ssh_keys": (SshKey.id, SshKey.name),
        "tokens": (ApiToken.id, ApiToken.revoked_at),
        "sessions": (WebSession.id,),
        "operations": (Operation.id, Operation.kind),
    }
    with database.read() as session:
        return {
            table: [tuple(row) for row in session.execute(select(*cols).order_by(cols[0]))]
            for table, cols in columns.items()
        }


@dataclass(frozen=True)
class Things:
    """One of everything alice owns, by id."""

    server_id: int
    server_name: str
    snapshot_id: int
    backup_id: int
    key_id: int
    token_id: int


@pytest.fixture
def alices(alice: ApiClient, database: Database) -> Things:
    """Alice's server, a completed snapshot and backup of it, an SSH key and a token."""
    server = alice.create_server("alices-secret-box")
    snapshot = alice.create_snapshot(server["id"], "alices-snap")
    assert snapshot["status"] == "completed", snapshot
    backup = alice.create_backup(server["id"], "alices-backup")
    assert backup["status"] == "completed", backup
    key = alice.post("/ssh_keys/", json={"name": "alices-key", "public_key": new_key()[0]})
    assert key.status_code == 201, key.text
    token, _ = create_token(database, "alice")
    return Things(
        server["id"], server["name"], snapshot["id"], backup["id"], key.json()["id"], token.id
    )


def settled(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """The world once no operation is left to run (so it only changes if a request acts)."""

    def quiet() -> dict[str, list[tuple[Any, ...]]] | None:
        with database.read() as session:
            busy = session.scalar(
                select(Operation.id).where(Operation.status.in_(("pending", "running")))
            )
        return None if busy is not None else world(database)

    state: dict[str, list[tuple[Any, ...]]] = wait_for(quiet, 30, what="operations to finish")
    return state


# -- signing in ------------------------------------------------------------------------------


def test_the_right_password_signs_in_with_a_safe_cookie(
    visitor: Browser, database: Database
) -> None:
    set_password(database, "alice", PASSWORD)
    response = visitor.sign_in("alice", PASSWORD)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/servers"
    cookie = set_cookie_named(response, SESSION_COOKIE)
    assert cookie is not None, response.headers
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes, cookie
    assert re.search(r";\s*SameSite=Lax", cookie, re.IGNORECASE), cookie
    assert re.search(r";\s*Path=/(;|$)", cookie), cookie
    assert re.search(r";\s*Max-Age=43200(;|$)", cookie), cookie  # web_session_hours=12
    # The sign-in form's own token is spent.
    assert SIGN_IN_COOKIE not in visitor.cookies
    page = visitor.get("/servers")
    assert page.status_code == 200
    assert "alice" in page.text and "Sign out" in page.text
    assert visitor.get("/").headers["location"] == "/servers"


def test_a_failed_sign_in_says_so_and_sets_no_session(
    client: TestClient, database: Database, alice: ApiClient
) -> None:
    set_password(database, "carol", PASSWORD)
    failures = {
        "wrong password": ("carol", PASSWORD + "!"),
        "unknown account": ("nobody-here", PASSWORD),
        "no password set": ("alice", PASSWORD),  # alice has only a token
    }
    for who, (name, password) in failures.items():
        visitor = Browser(client)
        response = visitor.sign_in(name, password)
        assert response.status_code == 400, who
        assert MISMATCH in text_of(response), who
        assert set_cookie_named(response, SESSION_COOKIE) is None, who
        assert SESSION_COOKIE not in visitor.cookies, who
        assert f'value="{name}"' in response.text, who  # the name is kept,
        assert PASSWORD not in response.text, who  # the password is not
        assert visitor.goes_to_sign_in(), who


def test_wrong_password_and_unknown_account_get_the_same_page(
    visitor: Browser, database: Database
) -> None:
    set_password(database, "carol", PASSWORD)
    wrong = visitor.sign_in("carol", "not the password")
    unknown = visitor.sign_in("dave", "not the password")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.text.replace('value="carol"', "") == unknown.text.replace('value="dave"', "")


def test_an_empty_form_asks_for_name_and_password(visitor: Browser) -> None:
    response = visitor.sign_in("alice", "")
    assert response.status_code == 400
    assert "Enter your account name and password, or an API token." in text_of(response)


def test_an_api_token_signs_in_until_it_is_revoked_in_the_panel(
    visitor: Browser, database: Database
) -> None:
    info, secret = create_token(database, "alice")
    response = visitor.sign_in(token=secret)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/servers"
    assert set_cookie_named(response, SESSION_COOKIE) is not None
    tokens_page = visitor.get("/tokens")
    assert tokens_page.status_code == 200 and info.prefix in tokens_page.text

    revoked = visitor.submit(f"/tokens/{info.id}/revoke")
    assert revoked.status_code == 303 and revoked.headers["location"] == "/tokens"
    assert list_tokens(database, "alice")[0].revoked_at is not None
    # The session signed in with it ended with it: the next page load asks to sign in.
    assert visitor.get("/tokens").headers["location"] == "/sign-in?next=/tokens"
    # And the token no longer signs in.
    again = Browser(visitor.http).sign_in(token=secret)
    assert again.status_code == 400
    assert "That API token is not valid" in text_of(again)


def test_revoking_a_token_elsewhere_ends_its_panel_session(
    visitor: Browser, database: Database
) -> None:
    info, secret = create_token(database, "alice")
    assert visitor.sign_in(token=secret).status_code == 303
    set_password(database, "alice", PASSWORD)  # (ends it too; sign in again with the token)
    assert visitor.goes_to_sign_in()
    assert visitor.sign_in(token=secret).status_code == 303
    assert visitor.get("/servers").status_code == 200
    revoke_token(database, info.id)  # `vpsd token revoke`
    assert visitor.goes_to_sign_in()


def test_an_unknown_token_is_refused(visitor: Browser) -> None:
    response = visitor.sign_in(token="vpsd_" + "x" * 43)
    assert response.status_code == 400
    assert "That API token is not valid: unknown, mistyped or revoked." in text_of(response)
    assert set_cookie_named(response, SESSION_COOKIE) is None


# -- without a session -----------------------------------------------------------------------


PAGES = [
    "/servers",
    "/servers/1",
    "/servers/1/delete",
    "/ssh-keys",
    "/ssh-keys/1/delete",
    "/tokens",
    "/tokens/1/revoke",
    "/password",
    "/snapshots/1/restore",
    "/snapshots/1/delete",
    "/backups/1/restore",
    "/backups/1/delete",
]


def test_pages_without_a_session_go_to_sign_in_and_back(visitor: Browser) -> None:
    for path in PAGES:
        response = visitor.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == f"/sign-in?next={path}"
        # The sign-in page keeps where to go back to.
        sign_in = visitor.get(response.headers["location"])
        assert NEXT_INPUT.findall(sign_in.text) == [path, path]


def test_the_start_page_without_a_session_goes_to_sign_in(visitor: Browser) -> None:
    response = visitor.get("/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/sign-in")


def test_a_forged_session_cookie_is_no_session(visitor: Browser) -> None:
    for secret in ("made-up-secret", "", "x" * 5000, "%00"):
        response = visitor.get("/servers", headers={"Cookie": f"{SESSION_COOKIE}={secret}"})
        assert response.status_code == 303, secret
        assert response.headers["location"] == "/sign-in?next=/servers"


def test_htmx_requests_without_a_session_get_401_and_hx_redirect(visitor: Browser) -> None:
    for path in ["/servers/rows", "/servers/1/live", "/servers/1/console", *PAGES]:
        response = visitor.get(path, headers={"HX-Request": "true"})
        assert response.status_code == 401, path
        assert response.headers["HX-Redirect"] == "/sign-in"
    response = visitor.post("/servers/1/power/stop", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/sign-in"


def test_a_post_without_a_session_goes_to_sign_in_and_does_nothing(
    visitor: Browser, database: Database
) -> None:
    before = world(database)
    response = visitor.post("/servers", data={"name": "web-1", "disk_gb": "1", "csrf_token": "x"})
    assert response.status_code == 303 and response.headers["location"] == "/sign-in"
    assert world(database) == before


def test_next_goes_back_to_the_page_asked_for(visitor: Browser, database: Database) -> None:
    set_password(database, "alice", PASSWORD)
    response = visitor.sign_in("alice", PASSWORD, next_url="/ssh-keys")
    assert response.status_code == 303
    assert response.headers["location"] == "/ssh-keys"


EVIL_NEXTS = [
    "//evil.example",
    "//evil.example/servers",
    "https://evil.example",
    "https://evil.example/servers",
    "/\\evil.example",
    "\\\\evil.example",
    "javascript:alert(1)",
    "evil.example",
]


def test_the_sign_in_page_sends_a_signed_in_browser_on(
    client: TestClient, database: Database
) -> None:
    browser = signed_in(client, database, "alice")
    response = browser.get("/sign-in?next=/ssh-keys")
    assert response.status_code == 303
    assert response.headers["location"] == "/ssh-keys"


def test_next_with_control_characters_stays_on_this_site(
    client: TestClient, database: Database
) -> None:
    """Browsers drop tabs and newlines from a URL: ``/<tab>/evil.example`` would be
    ``//evil.example``. The redirect's location is percent-encoded, so it stays here."""
    set_password(database, "alice", PASSWORD)
    for sneaky in ("/\t/evil.example", "/\n/evil.example", "/\r/evil.example"):
        response = Browser(client).sign_in("alice", PASSWORD, next_url=quote(sneaky))
        assert response.status_code == 303
        location = response.headers["location"]
        assert _lands_on_this_site(location), (sneaky, location)


def _lands_on_this_site(location: str) -> bool:
    # Browsers drop tabs and newlines from URLs and read "\" as "/" (WHATWG URL).
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    return urlsplit(urljoin(BASE_URL + "/sign-in", cleaned)).netloc == "testserver"


def test_next_to_another_site_is_ignored(client: TestClient, database: Database) -> None:
    set_password(database, "alice", PASSWORD)
    for evil in EVIL_NEXTS:
        visitor = Browser(client)
        # The link an attacker sends: the sign-in page does not carry it on.
        form = visitor.get("/sign-in", params={"next": evil})
        assert NEXT_INPUT.findall(form.text) == ["/servers", "/servers"], evil
        # A form posted with it anyway: it is ignored.
        fields = {"name": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
        response = visitor.post("/sign-in", data={**fields, "next": evil})
        assert response.status_code == 303, evil
        assert response.headers["location"] == "/servers", evil


# -- CSRF ------------------------------------------------------------------------------------


def routes_of(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route of an app with its full path, into included routers (FastAPI keeps
    them as routes of their own)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from routes_of(inner.routes, prefix + route.include_context.prefix)
        else:
            yield prefix + getattr(route, "path", ""), route


def panel_posts(app: FastAPI) -> set[str]:
    """The paths of every POST route of the panel."""
    found = {
        path
        for path, route in routes_of(app.routes)
        if isinstance(route, PanelRoute) and "POST" in (route.methods or set())
    }
    assert "/sign-in" in found, found  # the walk found the panel's routes
    return found


def post_targets(things: Things) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """For each POST route of the panel, concrete requests on alice's things, with forms
    that would change something if the request were let through."""
    server = things.server_id
    return {
        "/sign-out": [("/sign-out", {})],
        "/servers": [("/servers", {"name": "forged", "disk_gb": "1", "image": "blank"})],
        "/servers/{server_id}/power/{action}": [
            (f"/servers/{server}/power/{action}", {}) for action in ("start", "stop", "reboot")
        ],
        "/servers/{server_id}/delete": [(f"/servers/{server}/delete", {})],
        "/servers/{server_id}/backup-policy": [
            (
                f"/servers/{server}/backup-policy",
                {"enabled": "on", "frequency": "weekly", "weekday": "2", "hour": "3", "keep": "4"},
            )
        ],
        "/servers/{server_id}/snapshot-policy": [
            (
                f"/servers/{server}/snapshot-policy",
                {"enabled": "on", "frequency": "hourly", "minute": "5", "hour": "3", "keep": "2"},
            )
        ],
        "/snapshots/{point_id}/protection": [
            (f"/snapshots/{things.snapshot_id}/protection", {"protected": "true"})
        ],
        "/servers/{server_id}/snapshots": [
            (f"/servers/{server}/snapshots", {"name": "forged", "expires_in": "24"})
        ],
        "/servers/{server_id}/backups": [(f"/servers/{server}/backups", {"name": "forged"})],
        "/snapshots/{point_id}/{action}": [
            (f"/snapshots/{things.snapshot_id}/restore", {}),
            (f"/snapshots/{things.snapshot_id}/delete", {}),
        ],
        "/backups/{point_id}/{action}": [
            (f"/backups/{things.backup_id}/restore", {}),
            (f"/backups/{things.backup_id}/delete", {}),
        ],
        "/ssh-keys": [("/ssh-keys", {"name": "forged", "public_key": new_key()[0]})],
        "/ssh-keys/{key_id}/delete": [(f"/ssh-keys/{things.key_id}/delete", {})],
        "/tokens": [("/tokens", {})],
        "/tokens/{token_id}/revoke": [(f"/tokens/{things.token_id}/revoke", {})],
        "/password": [
            (
                "/password",
                {"current_password": PASSWORD, "password": NEW, "password_again": NEW},
            )
        ],
    }


REFUSED = "This form was refused"


def test_every_panel_post_needs_the_session_csrf_token(
    client: TestClient, database: Database, alices: Things
) -> None:
    targets = post_targets(alices)
    # Every POST route is covered: a new one fails here until it is added above.
    assert panel_posts(client.app) - {"/sign-in"} == set(targets)  # type: ignore[arg-type]
    alice = signed_in(client, database, "alice")
    other = signed_in(client, database, "bob")  # a real token, of another session
    before = settled(database)
    forged: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {
        "missing": lambda form: form,
        "empty": lambda form: {**form, "csrf_token": ""},
        "wrong": lambda form: {**form, "csrf_token": altered(alice.csrf)},
        "another session's": lambda form: {**form, "csrf_token": other.csrf},
    }
    for requests in targets.values():
        for url, form in requests:
            for how, make in forged.items():
                response = alice.post(url, data=make(form))
                assert response.status_code == 403, (url, how, response.status_code)
                assert REFUSED in response.text and "Nothing was changed" in response.text
            for header in ({"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other.csrf}):
                response = alice.post(url, data={**form, "csrf_token": alice.csrf}, headers=header)
                assert response.status_code == 403, (url, header, response.status_code)
            # From another site, even with the right token.
            for site in ("cross-site", "same-site"):
                response = alice.submit(url, form, headers={"Sec-Fetch-Site": site})
                assert response.status_code == 403, (url, site, response.status_code)
    assert world(database) == before
    assert alice.get("/servers").status_code == 200  # still signed in: sign-out was refused


def test_the_right_csrf_token_is_accepted_in_the_form_or_the_header(
    client: TestClient, database: Database
) -> None:
    alice = signed_in(client, database, "alice")
    made = alice.submit("/tokens", headers={"Sec-Fetch-Site": "same-origin"})
    assert made.status_code == 200 and "Your new token" in made.text
    by_header = alice.post("/tokens", headers={"X-CSRF-Token": alice.csrf, "HX-Request": "true"})
    assert by_header.status_code == 200 and "Your new token" in by_header.text
    assert len(list_tokens(database, "alice")) == 2


def test_the_sign_in_form_has_its_own_csrf_check(visitor: Browser, database: Database) -> None:
    set_password(database, "alice", PASSWORD)
    form = visitor.get("/sign-in")
    token = csrf_of(form.text)
    assert visitor.cookies.get(SIGN_IN_COOKIE) == token  # double-submit: cookie and field
    cookie = set_cookie_named(form, SIGN_IN_COOKIE)
    assert cookie is not None and "HttpOnly" in cookie and "Secure" in cookie
    fields = {"name": "alice", "password": PASSWORD, "next": "/servers"}
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        (fields, {}),  # no token
        ({**fields, "csrf_token": ""}, {}),
        ({**fields, "csrf_token": altered(token)}, {}),
        ({**fields, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for data, headers in attempts:
        response = visitor.post("/sign-in", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert REFUSED in response.text
        assert set_cookie_named(response, SESSION_COOKIE) is None
    response = visitor.post("/sign-in", data={**fields, "csrf_token": "é" + token[1:]})
    assert response.status_code == 403  # not a 500: any text is compared safely
    # A token of another browser's sign-in page: it matches not this browser's cookie.
    stranger = Browser(visitor.http)
    assert csrf_of(stranger.get("/sign-in").text) != token
    response = stranger.post("/sign-in", data={**fields, "csrf_token": token})
    assert response.status_code == 403
    assert REFUSED in response.text
    assert set_cookie_named(response, SESSION_COOKIE) is None
    # No sign-in cookie at all (a forged form, or a browser that keeps no cookies): the
    # page says what to do about it, and nobody is signed in.
    cookieless = Browser(visitor.http)
    response = cookieless.post("/sign-in", data={**fields, "csrf_token": token})
    assert response.status_code == 400
    assert set_cookie_named(response, SESSION_COOKIE) is None
    assert "did not send the sign-in page's cookie back" in text_of(response)
    assert world(database)["sessions"] == []
    # The real form still works.
    assert visitor.post("/sign-in", data={**fields, "csrf_token": token}).status_code == 303


# -- tenancy ---------------------------------------------------------------------------------


def test_bob_cannot_see_or_touch_alices_things(
    client: TestClient, database: Database, alice: ApiClient, alices: Things
) -> None:
    bob = signed_in(client, database, "bob")
    servers = bob.get("/servers")
    assert servers.status_code == 200
    assert alices.server_name not in servers.text
    rows = bob.get("/servers/rows")
    assert rows.status_code == 200 and alices.server_name not in rows.text
    keys = bob.get("/ssh-keys")
    assert "alices-key" not in keys.text
    tokens_page = bob.get("/tokens")
    assert f"/tokens/{alices.token_id}/revoke" not in tokens_page.text

    server = alices.server_id
    pages = [
        f"/servers/{server}",
        f"/servers/{server}/live",
        f"/servers/{server}/console",
        f"/servers/{server}/delete",
        f"/snapshots/{alices.snapshot_id}/restore",
        f"/snapshots/{alices.snapshot_id}/delete",
        f"/backups/{alices.backup_id}/restore",
        f"/backups/{alices.backup_id}/delete",
        f"/ssh-keys/{alices.key_id}/delete",
        f"/tokens/{alices.token_id}/revoke",
    ]
    for url in pages:
        response = bob.get(url)
        assert response.status_code == 404, (url, response.status_code)
        assert "There is nothing here, or it is not yours." in text_of(response)
        for secret in (alices.server_name, "alices-snap", "alices-backup", "alices-key"):
            assert secret not in response.text, (url, secret)

    before = settled(database)
    targets = post_targets(alices)
    for path in ("/sign-out", "/servers", "/ssh-keys", "/tokens", "/password"):  # bob's own
        del targets[path]
    for requests in targets.values():
        for url, form in requests:
            response = bob.submit(url, form)
            assert response.status_code == 404, (url, response.status_code, response.text)
            assert alices.server_name not in response.text
    assert world(database) == before
    # Alice's view through the API: all there, as it was.
    assert alice.server_status(server) == "running"
    assert alice.get(f"/snapshots/{alices.snapshot_id}/").json()["status"] == "completed"
    assert alice.get(f"/backups/{alices.backup_id}/").json()["status"] == "completed"
    assert alice.get(f"/ssh_keys/{alices.key_id}/").status_code == 200


def test_alice_sees_her_own_things(client: TestClient, database: Database, alices: Things) -> None:
    alice = signed_in(client, database, "alice")
    assert alices.server_name in alice.get("/servers").text
    page = alice.get(f"/servers/{alices.server_id}")
    assert page.status_code == 200
    assert "alices-snap" in page.text and "alices-backup" in page.text
    for url in (
        f"/servers/{alices.server_id}/live",
        f"/servers/{alices.server_id}/console",
        f"/snapshots/{alices.snapshot_id}/restore",
        f"/backups/{alices.backup_id}/delete",
        f"/ssh-keys/{alices.key_id}/delete",
        f"/tokens/{alices.token_id}/revoke",
    ):
        assert alice.get(url).status_code == 200, url


def test_ids_that_are_not_ids_are_not_found(client: TestClient, database: Database) -> None:
    alice = signed_in(client, database, "alice")
    for path in (
        "/servers/0",
        "/servers/abc",
        "/servers/99999999999999999999",
        "/snapshots/x/delete",
        "/snapshots/1/explode",
        "/backups/-1/restore",
        "/servers/424242",
    ):
        response = alice.get(path)
        assert response.status_code == 404, path
        assert "There is nothing here, or it is not yours." in text_of(response), path


# -- sessions end ----------------------------------------------------------------------------


def test_sign_out_ends_the_session_on_the_server(client: TestClient, database: Database) -> None:
    alice = signed_in(client, database, "alice")
    stolen = httpx.Cookies(alice.cookies)
    response = alice.submit("/sign-out")
    assert response.status_code == 303 and response.headers["location"] == "/sign-in"
    cleared = set_cookie_named(response, SESSION_COOKIE)
    assert cleared is not None and "Max-Age=0" in cleared
    assert alice.goes_to_sign_in()
    # The old cookie, replayed (copied before sign-out), is no session any more.
    replay = Browser(client)
    replay.cookies = stolen
    assert replay.goes_to_sign_in("/servers")
    assert replay.goes_to_sign_in("/tokens")
    assert world(database)["sessions"] == []


def test_an_expired_session_is_no_session(client: TestClient, database: Database) -> None:
    alice = signed_in(client, database, "alice")
    with database.write() as session:
        session.execute(
            update(WebSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert alice.goes_to_sign_in()
    # The next sign-in (anyone's) removes the expired session's row.
    signed_in(client, database, "bob")
    assert len(world(database)["sessions"]) == 1


def test_a_new_password_ends_every_session_of_the_account(
    client: TestClient, database: Database
) -> None:
    laptop = signed_in(client, database, "alice")
    phone = Browser(client)
    assert phone.sign_in("alice", PASSWORD).status_code == 303
    bob = signed_in(client, database, "bob")
    set_password(database, "alice", NEW)
    assert laptop.goes_to_sign_in()
    assert phone.goes_to_sign_in()
    assert bob.get("/servers").status_code == 200  # other accounts' sessions go on
    assert laptop.sign_in("alice", PASSWORD).status_code == 400
    assert laptop.sign_in("alice", NEW).status_code == 303


def test_changing_the_password_signs_out_every_other_browser(
    client: TestClient, database: Database
) -> None:
    laptop = signed_in(client, database, "alice")
    phone = Browser(client)
    assert phone.sign_in("alice", PASSWORD).status_code == 303
    form = laptop.get("/password")
    assert form.status_code == 200 and "Change your password" in form.text
    assert 'autocomplete="current-password"' in form.text
    changed = laptop.submit(
        "/password", {"current_password": PASSWORD, "password": NEW, "password_again": NEW}
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/password"
    assert set_cookie_named(changed, SESSION_COOKIE) is not None  # a new session, this browser
    shown = laptop.get("/password")
    assert "Password changed. Every other browser" in text_of(shown)
    laptop.csrf = csrf_of(shown.text)
    assert laptop.get("/servers").status_code == 200
    assert phone.goes_to_sign_in()
    assert len(world(database)["sessions"]) == 1
    assert Browser(client).sign_in("alice", PASSWORD).status_code == 400
    assert Browser(client).sign_in("alice", NEW).status_code == 303


@pytest.mark.parametrize(
    ("form", "words"),
    [
        (
            {"current_password": "not the password", "password": NEW, "password_again": NEW},
            "that is not this account&#39;s current password",
        ),
        (
            {"current_password": PASSWORD, "password": NEW, "password_again": NEW + "!"},
            "the two new passwords differ",
        ),
        (
            {"current_password": PASSWORD, "password": "short", "password_again": "short"},
            "passwords are at least 8 characters",
        ),
        ({"password": NEW, "password_again": NEW}, "not this account&#39;s current password"),
    ],
    ids=["wrong current", "mismatch", "too short", "no current"],
)
def test_a_refused_password_change_says_why_and_changes_nothing(
    client: TestClient, database: Database, form: dict[str, str], words: str
) -> None:
    alice = signed_in(client, database, "alice")
    other = Browser(client)
    assert other.sign_in("alice", PASSWORD).status_code == 303
    before = world(database)
    refused = alice.submit("/password", form)
    assert refused.status_code == 400
    assert words in refused.text and 'role="alert"' in refused.text
    assert 'aria-invalid="true"' in refused.text
    assert world(database) == before
    assert other.get("/servers").status_code == 200


def test_an_account_signed_in_with_a_token_can_set_its_first_password(
    client: TestClient, database: Database
) -> None:
    _, secret = create_token(database, "carol")
    carol = Browser(client)
    assert carol.sign_in(token=secret).status_code == 303
    form = carol.get("/password")
    assert "Set a password" in form.text and "current_password" not in form.text
    assert carol.submit("/password", {"password": NEW, "password_again": NEW}).status_code == 303
    assert Browser(client).sign_in("carol", NEW).status_code == 303
    # Now it has one: the next change needs it.
    carol.csrf = csrf_of(carol.get("/password").text)
    again = carol.submit("/password", {"password": PASSWORD, "password_again": PASSWORD})
    assert again.status_code == 400


# -- headers and assets ----------------------------------------------------------------------


def check_page_headers(response: httpx.Response) -> None:
    policy = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    for name, sources in directives.items():
        for source in sources.split():
            assert source in ("'self'", "'none'", "data:"), (name, source)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"\son[a-z]+=", re.IGNORECASE)


def test_pages_carry_the_security_headers_and_obey_their_csp(
    client: TestClient, database: Database, alices: Things, visitor: Browser
) -> None:
    sign_in = visitor.get("/sign-in")
    check_page_headers(sign_in)
    check_page_headers(visitor.get("/servers"))  # the redirect too
    alice = signed_in(client, database, "alice")
    urls = [
        "/servers",
        f"/servers/{alices.server_id}",
        f"/servers/{alices.server_id}/delete",
        f"/snapshots/{alices.snapshot_id}/restore",
        "/ssh-keys",
        "/tokens",
        "/password",
        "/servers/424242",  # the not-found page
    ]
    pages = [sign_in] + [alice.get(url) for url in urls]
    pages.append(alice.post("/servers", data={"name": "x"}))  # the refused page
    pages.append(alice.submit("/servers", {"name": "bad name!", "disk_gb": "1"}))
    for page in pages:
        check_page_headers(page)
        # The CSP would block inline script, style and handlers: the pages use none.
        assert not INLINE_SCRIPT.search(page.text), page.url
        assert not INLINE_STYLE.search(page.text), page.url
        assert not INLINE_HANDLER.search(page.text), page.url
        assert "http://" not in page.text and "https://" not in page.text, page.url


def test_the_panel_assets_are_served(visitor: Browser) -> None:
    page = visitor.get("/sign-in")
    assets = {"htmx.min.js": "javascript", "panel.js": "javascript", "panel.css": "text/css"}
    for asset, kind in assets.items():
        response = visitor.get(f"/static/panel/{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], asset
        assert len(response.content) > 100, asset
        assert f'"/static/panel/{asset}"' in page.text  # the pages load them from here


def test_the_panel_does_not_shadow_the_api(alice: ApiClient) -> None:
    """API paths keep the API's answers (the trailing-slash redirect, JSON 404s), not the
    panel's sign-in redirect, whatever their shape."""
    for method in ("GET", "POST"):
        for path in ("/servers", "/snapshots", "/backups", "/ssh_keys", "/images"):
            answer = alice.request(method, path, follow_redirects=False)
            assert answer.status_code == 307, (method, path, answer.status_code)
            assert answer.headers["location"] == f"/api/v1{path}/"
        for path in ("/nothing-here", "/servers/1/nothing", "/snapshots/1/nothing"):
            missing = alice.request(method, path, follow_redirects=False)
            assert missing.status_code in (404, 405), (method, path, missing.status_code)
            assert missing.headers["content-type"].startswith("application/"), path


# -- escaping --------------------------------------------------------------------------------

XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_what_users_and_guests_write_is_shown_as_text(
    client: TestClient,
    database: Database,
    alice: ApiClient,
    fake_driver: FakeDriver,
    visitor: Browser,
) -> None:
    # The sign-in form echoes the name typed.
    refused = visitor.sign_in(XSS, "whatever-password")
    assert refused.status_code == 400
    assert XSS not in refused.text and "&lt;script&gt;" in refused.text
    server_id = alice.create_server("web-1")["id"]
    # A guest writes what it likes to its serial console.
    fake_driver.write_console(server_id, XSS.encode() + b"\x1b[31m\xff\n")
    alice.wait_console(server_id, XSS)  # once its host's agent has mirrored it
    panel = signed_in(client, database, "alice")
    console = panel.get(f"/servers/{server_id}/console", headers={"HX-Request": "true"})
    assert console.status_code == 200
    assert XSS not in console.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in console.text
    # A snapshot's description, from the panel's form.
    taken = panel.submit(f"/servers/{server_id}/snapshots", {"name": "snap-1", "description": XSS})
    assert taken.status_code == 303, taken.text
    for url in (f"/servers/{server_id}", f"/servers/{server_id}/live"):
        page = panel.get(url)
        assert XSS not in page.text and "&lt;script&gt;alert(1)" in page.text, url


def test_the_console_shows_colours_as_classes_and_drops_other_escapes(
    client: TestClient, database: Database, alice: ApiClient, fake_driver: FakeDriver
) -> None:
    """Issue 22, item 16: the panel showed a guest's colour codes raw."""
    server_id = alice.create_server("web-1")["id"]
    fake_driver.write_console(
        server_id,
        b"\x1b]0;title\x07\x1b[2J[\x1b[0;32m  OK  \x1b[0m] Started \x1b[1mssh\x1b[0m.\r\n",
    )
    alice.wait_console(server_id, "Started")  # once its host's agent has mirrored it
    panel = signed_in(client, database, "alice")
    console = panel.get(f"/servers/{server_id}/console", headers={"HX-Request": "true"})
    assert console.status_code == 200
    assert "\x1b" not in console.text and "title" not in console.text
    assert (
        '[<span class="con-fg-2">  OK  </span>] Started <span class="con-bold">ssh</span>.\n'
        in console.text
    )
    # The classes have rules in the panel's stylesheet (the CSP forbids inline styles).
    css = panel.get("/static/panel/panel.css").text
    assert ".con-fg-2 {" in css and ".con-bold {" in css


# -- forms -----------------------------------------------------------------------------------


def test_a_server_with_a_bad_name_is_refused_in_words(
    client: TestClient, database: Database
) -> None:
    alice = signed_in(client, database, "alice")
    response = alice.submit(
        "/servers", {"name": "my server!", "disk_gb": "1", "image": "blank", "vcpus": "1"}
    )
    assert response.status_code == 400
    words = text_of(response)
    assert "Please correct this: name: only letters A-Z a-z, digits, '-' and '_' are allowed" in (
        words
    )
    assert 'aria-invalid="true"' in response.text
    assert 'value="my server!"' in words  # the form keeps what was typed
    assert world(database)["servers"] == []
    assert alice.get("/servers").text.count("You have no servers yet") == 1


def test_creating_a_server_goes_to_its_page_and_says_so(
    client: TestClient, database: Database
) -> None:
    alice = signed_in(client, database, "alice")
    response = alice.submit("/servers", {"name": "web-1", "disk_gb": "1", "image": "blank"})
    assert response.status_code == 303, response.text
    [(server_id, name, _)] = world(database)["servers"]
    assert name == "web-1" and response.headers["location"] == f"/servers/{server_id}"
    page = alice.get(response.headers["location"])
    assert page.status_code == 200
    assert "Server web-1 is being created: it boots." in page.text
    assert "0 of 5 snapshots." in " ".join(page.text.split())
    # The message is shown once.
    assert "is being created" not in alice.get(f"/servers/{server_id}").text


def test_a_sixth_snapshot_is_refused_inline_and_nothing_is_taken(
    client: TestClient, database: Database, alice: ApiClient, settings: Settings
) -> None:
    assert settings.max_snapshots_per_server == 5
    server_id = alice.create_server("web-1")["id"]
    panel = signed_in(client, database, "alice")
    for number in range(1, 6):
        taken = panel.submit(f"/servers/{server_id}/snapshots", {"name": f"snap-{number}"})
        assert taken.status_code == 303, taken.text
        page = panel.get(taken.headers["location"])
        assert f"Taking snapshot snap-{number}." in page.text

        def completed(count: int = number) -> bool:
            body = alice.get(f"/snapshots/?server_id={server_id}").json()
            return len(body["results"]) == count and all(
                item["status"] == "completed" for item in body["results"]
            )

        wait_for(completed, 30, what=f"{number} snapshots")
    page = panel.get(f"/servers/{server_id}")
    words = " ".join(text_of(page).split())
    assert "5 of 5 snapshots. The limit is reached: delete one to take another." in words
    before = settled(database)
    refused = panel.submit(f"/servers/{server_id}/snapshots", {"name": "snap-6"})
    assert refused.status_code == 400
    words = " ".join(text_of(refused).split())
    assert (
        "snapshot limit reached: a server can have at most 5 snapshots; delete one first" in words
    )
    assert 'value="snap-6"' in refused.text  # the form keeps the name
    assert "5 of 5 snapshots." in words
    assert world(database) == before


def test_the_server_page_counts_snapshots(
    client: TestClient, database: Database, alice: ApiClient
) -> None:
    server_id = alice.create_server("web-1")["id"]
    alice.create_snapshot(server_id, "one")
    alice.create_snapshot(server_id, "two")
    panel = signed_in(client, database, "alice")
    words = " ".join(panel.get(f"/servers/{server_id}").text.split())
    assert "2 of 5 snapshots." in words
    live = " ".join(panel.get(f"/servers/{server_id}/live").text.split())
    assert "2 of 5 snapshots." in live


def test_the_panel_takes_a_snapshot_with_memory_of_a_running_server_only(
    client: TestClient, database: Database, alice: ApiClient, fake_driver: FakeDriver
) -> None:
    server_id = alice.create_server("web-1")["id"]
    panel = signed_in(client, database, "alice")
    taken = panel.submit(f"/servers/{server_id}/snapshots", {"name": "live", "memory": "on"})
    assert taken.status_code == 303, taken.text
    [snapshot] = alice.get(f"/snapshots/?server_id={server_id}").json()["results"]
    assert snapshot["memory"] is True
    alice.wait_snapshot(snapshot["id"])
    words = " ".join(text_of(panel.get(f"/servers/{server_id}")).split())
    assert "with memory: a restore resumes the guest" in words
    assert alice.post(f"/servers/{server_id}/stop/").status_code == 200
    alice.wait_server(server_id, "stopped")
    page = panel.get(f"/servers/{server_id}")
    assert 'name="memory" disabled' in page.text  # offered to a running server only
    refused = panel.submit(f"/servers/{server_id}/snapshots", {"name": "m2", "memory": "on"})
    assert refused.status_code == 400
    assert "needs a running server" in " ".join(text_of(refused).split())


# -- vpsd account set-password ---------------------------------------------------------------


@pytest.fixture
def cli(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """A runner of ``vpsd`` on the test's data dir and database. Run in this process, the
    CLI's private umask is put back afterwards, and the databases it opened (a command
    leaves that to the process's exit) are closed."""
    umask = os.umask(0o022)
    os.umask(umask)
    opened: list[Database] = []
    open_database = vpsd_cli._database

    def recorded(cli_settings: Settings) -> Database:
        opened.append(open_database(cli_settings))
        return opened[-1]

    monkeypatch.setattr(vpsd_cli, "_database", recorded)
    yield CliRunner(env={"VPSD_DATABASE_URL": settings.effective_database_url})
    for each in opened:
        each.dispose()
    os.umask(umask)


def set_password_cli(cli: CliRunner, settings: Settings, name: str, stdin: str) -> Any:
    return cli.invoke(
        vpsd_cli.app,
        ["account", "set-password", name, "--password-stdin", "--data-dir", str(settings.data_dir)],
        input=stdin,
    )


def test_cli_set_password_then_sign_in(
    cli: CliRunner, settings: Settings, visitor: Browser
) -> None:
    result = set_password_cli(cli, settings, "carol", "a good long password\r\n")
    assert result.exit_code == 0, result.output
    assert "created account 'carol' can sign in to the panel with this password" in result.output
    response = visitor.sign_in("carol", "a good long password")
    assert response.status_code == 303, response.text
    assert visitor.get("/servers").status_code == 200
    # Again: the account exists, its sessions end.
    result = set_password_cli(cli, settings, "carol", "another long password\n")
    assert result.exit_code == 0, result.output
    assert "account 'carol' can sign in" in result.output and "created" not in result.output
    assert visitor.goes_to_sign_in()
    assert visitor.sign_in("carol", "another long password").status_code == 303


def test_cli_refuses_a_short_password(
    cli: CliRunner, settings: Settings, visitor: Browser, database: Database
) -> None:
    result = set_password_cli(cli, settings, "carol", "short\n")
    assert result.exit_code == 2
    assert "passwords are at least 8 characters" in result.output
    with database.read() as session:
        assert session.scalar(select(Account).where(Account.name == "carol")) is None
    assert visitor.sign_in("carol", "short").status_code == 400


def test_cli_refuses_a_bad_account_name(cli: CliRunner, settings: Settings) -> None:
    result = set_password_cli(cli, settings, "../etc", "a good long password\n")
    assert result.exit_code == 2
    assert "account names are 1-64 characters" in result.output


# -- the throttle, through the sign-in form --------------------------------------------------


@pytest.fixture
def strict(settings: Settings) -> Settings:
    """Settings allowing 3 failed sign-ins per 5 minutes."""
    return settings.model_copy(update={"sign_in_attempts": 3, "sign_in_window_seconds": 300.0})


@pytest.fixture
def strict_panel(
    strict: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> Iterator[tuple[TestClient, Database]]:
    """The panel on ``strict`` settings, and its database."""
    with panel_client(strict, fake_driver, fake_store) as http:
        database = Database(strict.effective_database_url)
        try:
            yield http, database
        finally:
            database.dispose()


def test_too_many_failures_are_refused_for_a_while_even_with_the_right_password(
    strict: Settings, strict_panel: tuple[TestClient, Database]
) -> None:
    http, database = strict_panel
    set_password(database, "alice", PASSWORD)
    set_password(database, "bob", PASSWORD)
    visitor = Browser(http)
    for _ in range(strict.sign_in_attempts):
        assert visitor.sign_in("alice", "guess-guess").status_code == 400
    response = visitor.sign_in("alice", PASSWORD)
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 300
    assert "Too many failed sign-ins. Try again in 5 minutes." in text_of(response)
    assert set_cookie_named(response, SESSION_COOKIE) is None
    assert visitor.goes_to_sign_in()
    # Counted per client address too: another account from here waits as well, and
    # an API token does not get around it.
    assert visitor.sign_in("bob", PASSWORD).status_code == 429
    _, secret = create_token(database, "bob")
    assert visitor.sign_in(token=secret).status_code == 429
    assert world(database)["sessions"] == []


def test_failures_on_one_worker_count_on_every_worker(
    strict: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> None:
    """Two apps on one database, as ``vpsd serve --workers 2`` runs them: a guesser whose
    requests are spread over both gets no more attempts than from one."""
    with (
        panel_client(strict, fake_driver, fake_store) as first,
        panel_client(strict, fake_driver, fake_store) as second,
    ):
        database = Database(strict.effective_database_url)
        try:
            set_password(database, "alice", PASSWORD)
            for attempt in range(strict.sign_in_attempts):
                worker = Browser(first if attempt % 2 else second)
                assert worker.sign_in("alice", "guess-guess").status_code == 400
            for http in (first, second):
                assert Browser(http).sign_in("alice", PASSWORD).status_code == 429
        finally:
            database.dispose()


def test_a_success_before_the_limit_clears_the_count(
    strict: Settings, strict_panel: tuple[TestClient, Database]
) -> None:
    http, database = strict_panel
    set_password(database, "alice", PASSWORD)
    for _ in range(2):
        visitor = Browser(http)  # signed out: a signed-in browser skips the form
        for _ in range(strict.sign_in_attempts - 1):
            assert visitor.sign_in("alice", "guess-guess").status_code == 400
        assert visitor.sign_in("alice", PASSWORD).status_code == 303


def test_guessing_the_current_password_is_throttled(
    strict: Settings, strict_panel: tuple[TestClient, Database]
) -> None:
    """A session left open must not let its current password be guessed at speed."""
    http, database = strict_panel
    alice = signed_in(http, database, "alice")
    before = world(database)
    guess = {"current_password": "guess-guess", "password": NEW, "password_again": NEW}
    for _ in range(strict.sign_in_attempts):
        assert alice.submit("/password", guess).status_code == 400
    right = {**guess, "current_password": PASSWORD}
    response = alice.submit("/password", right)
    assert response.status_code == 429
    assert "Too many failed sign-ins" in text_of(response)
    assert int(response.headers["Retry-After"]) > 0
    assert world(database) == before  # the password and the sessions as they were


ODD_VALUES = (
    "",
    " ",
    "é" * 70,
    "\x00",
    "9" * 40,
    "-1",
    "1.5",
    "0",
    "<script>alert(1)</script>",
    "on",
)
"""What a hostile or careless browser may send in any field."""


def test_no_form_value_gets_a_server_error(
    client: TestClient, database: Database, alices: Things
) -> None:
    alice = signed_in(client, database, "alice")
    for requests in post_targets(alices).values():
        for url, form in requests:
            if url in ("/sign-out", "/tokens") or url.endswith(("/delete", "/restore")):
                continue  # no fields but the token (and their actions would end the test)
            if url == "/password":  # never right: a new session would end this browser's
                form = {**form, "current_password": "not the password"}
            for field in {*form, "ssh_keys", "description", "vcpus", "memory_mb"}:
                for value in ODD_VALUES:
                    response = alice.submit(url, {**form, field: value})
                    assert response.status_code < 500, (url, field, value, response.text)
    visitor = Browser(client)
    token = csrf_of(visitor.get("/sign-in").text)
    for field in ("name", "password", "token", "next", "csrf_token"):
        for value in ODD_VALUES:
            data = {"csrf_token": token, "name": "alice", "password": "x" * 8, field: value}
            response = visitor.post("/sign-in", data=data)
            assert response.status_code < 500, (field, value, response.text)
