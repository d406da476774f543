"""The panel in Chromium on the fake driver: signing in and out, live statuses, the name
rule as you type, the snapshot limit shown before it bites, errors in words, SSH keys and
tokens, another account's objects, a form posted from another site, 375 px, and axe-core.

One ``vpsd serve`` serves the module (``panel``); each test uses its own accounts.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Page, expect

from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer
from tests.web.conftest import axe_violations, make_account, sign_in

PASSWORD = "correct horse battery"
_accounts = itertools.count(1)
NARROW = {"width": 375, "height": 740}


def public_key() -> str:
    """A new ed25519 public key in OpenSSH's form."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def new_account(panel: LiveServer, page: Page) -> ApiClient:
    """A new account with a password, signed in on ``page``; its API client."""
    name = f"user{next(_accounts)}"
    make_account(panel, name, PASSWORD)
    sign_in(page, panel.base_url, name, PASSWORD)
    return panel.client(panel.create_token(name))


def test_sign_in_refuses_a_wrong_password_in_words_then_signs_in_and_out(
    panel: LiveServer, page: Page
) -> None:
    make_account(panel, "carol", PASSWORD)
    page.goto(panel.base_url + "/servers")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/servers$"))
    page.get_by_label("Account", exact=True).fill("carol")
    page.get_by_label("Password", exact=True).fill("not her password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("That account name and password do not match.")
    sign_in(page, panel.base_url, "carol", PASSWORD)
    expect(page.get_by_role("heading", level=1)).to_have_text("Servers")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    page.goto(panel.base_url + "/servers")
    expect(page).to_have_url(re.compile(r"/sign-in"))


def test_sign_in_with_an_api_token(panel: LiveServer, page: Page) -> None:
    token = panel.create_token("dave")
    page.goto(panel.base_url + "/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page).to_have_url(re.compile(r"/servers$"))
    expect(page.locator(".who")).to_have_text("dave")


def test_statuses_refresh_without_a_reload(panel: LiveServer, page: Page) -> None:
    api = new_account(panel, page)
    first = api.create_server("first")["id"]
    page.reload()
    expect(page.locator(f"#server-link-{first}")).to_be_visible()
    second = api.create_server("second")["id"]  # through the API, while the page is open
    row = page.get_by_role("row", name=re.compile("second"))
    expect(row).to_contain_text("running", timeout=10_000)
    assert api.post(f"/servers/{second}/stop/").status_code == 200
    expect(row).to_contain_text("stopped", timeout=10_000)


def test_the_name_rule_is_checked_as_you_type(panel: LiveServer, page: Page) -> None:
    api = new_account(panel, page)
    server = api.create_server("rules")["id"]
    page.goto(f"{panel.base_url}/servers/{server}")
    name = page.get_by_label("Snapshot name")
    name.press_sequentially("before update!")
    hint = page.locator("#snapshot-name-rule")
    expect(hint).to_have_text(
        "Not allowed: space, '!'. Use letters, digits, - and _ only.", timeout=2_000
    )
    expect(name).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Take snapshot").click()  # the browser keeps it
    expect(page).to_have_url(re.compile(rf"/servers/{server}$"))
    assert api.get("/snapshots/").json()["count"] == 0
    name.fill("before-update")
    name.press("End")  # an input event: the rule is checked again
    expect(name).to_have_attribute("aria-invalid", "false")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.locator("#snapshot-list")).to_contain_text("before-update")


def test_the_snapshot_limit_is_shown_before_it_bites(panel: LiveServer, page: Page) -> None:
    api = new_account(panel, page)
    server = api.create_server("limits")["id"]
    for n in range(4):
        api.create_snapshot(server, f"s{n}")
    page.goto(f"{panel.base_url}/servers/{server}")
    count = page.locator("#snapshot-count")
    expect(count).to_contain_text("4 of 5 snapshots. One more can be taken.")
    page.get_by_label("Snapshot name").fill("s4")
    page.get_by_role("button", name="Take snapshot").click()
    expect(count).to_contain_text("5 of 5 snapshots. The limit is reached", timeout=10_000)
    page.get_by_label("Snapshot name").fill("s5")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.get_by_role("alert")).to_contain_text("5")  # the service's words, inline
    expect(page.get_by_label("Snapshot name")).to_have_value("s5")  # nothing typed is lost
    assert api.get(f"/snapshots/?server_id={server}").json()["count"] == 5


def test_errors_appear_inline_in_words(panel: LiveServer, page: Page) -> None:
    new_account(panel, page)
    page.goto(panel.base_url + "/ssh-keys")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_label("Public key").fill("ssh-ed25519 not-a-key")
    page.get_by_role("button", name="Add key").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Public key")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Public key")).to_have_value("ssh-ed25519 not-a-key")


def test_ssh_keys_and_tokens(panel: LiveServer, page: Page) -> None:
    api = new_account(panel, page)
    key = public_key()
    page.goto(panel.base_url + "/ssh-keys")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_label("Public key").fill(key)
    page.get_by_role("button", name="Add key").click()
    expect(page.get_by_role("status")).to_contain_text("SSH key laptop added")
    assert [k["name"] for k in api.get("/ssh_keys/").json()["results"]] == ["laptop"]

    page.goto(panel.base_url + "/tokens")
    page.get_by_role("button", name="Create a token").click()
    secret = page.locator("#new-token").inner_text()
    assert secret.startswith("vpsd_")
    assert panel.client(secret).get("/servers/").status_code == 200
    page.goto(panel.base_url + "/tokens")  # shown once: not on the next visit
    expect(page.locator("#new-token")).to_have_count(0)
    page.get_by_role("link", name=f"Revoke {secret[:11]}").click()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    # API processes remember a live token for VPSD_TOKEN_CACHE_SECONDS (2 s)
    wait_for(lambda: panel.client(secret).get("/servers/").status_code == 401, 10)


def test_a_server_from_an_image_shows_its_ssh_command_to_copy_and_its_console(
    panel: LiveServer, page: Page
) -> None:
    api = new_account(panel, page)
    page.goto(panel.base_url + "/ssh-keys")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_label("Public key").fill(public_key())
    page.get_by_role("button", name="Add key").click()
    page.goto(panel.base_url + "/servers")
    page.get_by_label("Name", exact=True).fill("web-1")
    page.get_by_label("Image").select_option("debian-12")
    page.get_by_label("Disk (GiB)").fill("2")
    page.get_by_label(re.compile("laptop")).check()
    page.get_by_role("button", name="Create server").click()
    expect(page).to_have_url(re.compile(r"/servers/\d+$"))
    server = api.get(page.url.replace(panel.base_url + "/servers", "/servers") + "/").json()
    assert server["image"] == "debian-12"
    command = f"ssh -p {server['ssh']['port']} root@{server['ssh']['host']}"
    expect(page.locator("#ssh-command")).to_have_text(command)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.locator('[data-copied-for="ssh-command"]')).to_have_text("Copied.")
    assert page.evaluate("() => navigator.clipboard.readText()") == command
    expect(page.locator("#console")).to_contain_text(f"server {server['id']} booted")


def test_another_accounts_objects_are_invisible(panel: LiveServer, page: Page) -> None:
    alice = new_account(panel, page)
    server = alice.create_server("alices-secret")["id"]
    snapshot = alice.create_snapshot(server, "alices-snap")["id"]
    page.context.clear_cookies()
    new_account(panel, page)  # bob
    expect(page.get_by_text("alices-secret")).to_have_count(0)
    for path in (f"/servers/{server}", f"/snapshots/{snapshot}/restore"):
        page.goto(panel.base_url + path)
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    assert alice.get(f"/snapshots/{snapshot}/").json()["status"] == "completed"


@pytest.fixture
def other_site() -> Iterator[str]:
    """A page on another origin whose form posts to the panel (a CSRF attempt), served at
    ``http://localhost:PORT/?target=...``: another site than 127.0.0.1's panel."""

    class Attack(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            target = self.path.split("target=", 1)[1]
            body = (
                f'<form method="post" action="{target}"><input name="name" value="evil">'
                '<input name="disk_gb" value="1"><input name="vcpus" value="1">'
                '<input name="memory_mb" value="256"><button>Win a prize</button></form>'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Attack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_form_posted_from_another_site_changes_nothing(
    panel: LiveServer, page: Page, other_site: str
) -> None:
    api = new_account(panel, page)
    page.goto(f"{other_site}/?target={panel.base_url}/servers")
    page.get_by_role("button", name="Win a prize").click()
    page.wait_for_load_state()
    assert page.url.endswith(("/sign-in", "/servers")), page.url
    expect(page.locator("body")).not_to_contain_text("evil is being created")
    assert api.get("/servers/").json()["count"] == 0


PAGES = (
    "/servers",
    "/servers/{server}",
    "/ssh-keys",
    "/tokens",
    "/password",
    "/snapshots/{snapshot}/delete",
)


def test_pages_fit_375_px_and_axe_finds_no_serious_violation(
    panel: LiveServer, axe_page: Page
) -> None:
    page = axe_page
    page.set_viewport_size(NARROW)
    page.goto(panel.base_url + "/sign-in")
    assert axe_violations(page) == []
    api = new_account(panel, page)
    server = api.create_server("a-server-with-a-rather-long-name-to-wrap")["id"]
    snapshot = api.create_snapshot(server, "nightly")["id"]
    for path in PAGES:
        page.goto(panel.base_url + path.format(server=server, snapshot=snapshot))
        page.wait_for_load_state("networkidle")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= NARROW["width"], (path, width)
        violations = axe_violations(page)
        assert violations == [], (path, [(v["id"], v["impact"], v["help"]) for v in violations])
