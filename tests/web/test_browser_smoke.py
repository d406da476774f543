"""The browser-test machinery itself, without the panel: Chromium starts, Playwright drives a
form, screenshots work, and axe-core finds violations (and only real ones).

Pages come from a tiny ``http.server`` on 127.0.0.1, so a failure here is the machinery's.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import axe_violations


def _document(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    ).encode()


FORM = _document(
    "Smoke test",
    '<form method="get" action="/hello">'
    '<label for="name">Your name</label> <input id="name" name="name" autocomplete="off">'
    ' <button type="submit">Greet</button></form>',
)
# An input with no label: axe's "label" rule, impact critical.
UNLABELLED = _document("Unlabelled", '<form><input name="name"><button>Go</button></form>')
# Like the panel's: no inline scripts, so no injected ones either (axe is one).
STRICT_CSP = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'"


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        csp = None
        if url.path == "/":
            body = FORM
        elif url.path == "/hello":
            name = parse_qs(url.query).get("name", [""])[0]
            body = _document("Hello", f"<p>Hello, {html.escape(name)}!</p>")
        elif url.path == "/unlabelled":
            body = UNLABELLED
        elif url.path == "/strict":
            body, csp = FORM, STRICT_CSP
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if csp:
            self.send_header("Content-Security-Policy", csp)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # not on the test's stderr


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The base URL of the static pages, on a random port of 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_chromium_fills_a_form_screenshots_and_axe_passes(
    page: Page, site: str, tmp_path: Path
) -> None:
    page.goto(site + "/")
    page.get_by_label("Your name").fill("Ada <Lovelace>")
    page.get_by_role("button", name="Greet").click()
    expect(page).to_have_url(site + "/hello?name=Ada+%3CLovelace%3E")
    expect(page.get_by_role("paragraph")).to_have_text("Hello, Ada <Lovelace>!")

    shot = tmp_path / "hello.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 1000

    assert axe_violations(page) == []


def test_axe_finds_an_unlabelled_input(page: Page, site: str) -> None:
    """So that ``axe_violations(...) == []`` above means something."""
    page.goto(site + "/unlabelled")
    violations = axe_violations(page)
    assert [violation["id"] for violation in violations] == ["label"]
    assert violations[0]["impact"] == "critical"
    assert violations[0]["nodes"][0]["target"] == ["input"]


def test_axe_under_a_strict_csp_needs_axe_page(page: Page, axe_page: Page, site: str) -> None:
    """The panel's Content-Security-Policy blocks the injected axe script, unless the
    context bypasses CSP (``axe_page``); ``axe_violations`` says so instead of passing."""
    page.goto(site + "/strict")
    with pytest.raises(pytest.fail.Exception, match="bypass_csp=True"):
        axe_violations(page)

    axe_page.goto(site + "/strict")
    assert axe_violations(axe_page) == []
