"""Browser tests of the web panel: Playwright (pytest-playwright's ``page``, ``new_context``
fixtures) driving Debian's Chromium, and axe-core for accessibility.

``scripts/setup --test`` installs what they need: the Debian package ``chromium``,
pytest-playwright (the ``dev`` extra) and axe-core (``npm ci`` in tests/web). Playwright's own
browser downloads (``playwright install``) are never used: the browser is /usr/bin/chromium.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from playwright.sync_api import Error as PlaywrightError

from tests.helpers import write_fake_image
from tests.live_server import VPSD, LiveServer, serving

HERE = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
AXE_JS = HERE / "node_modules" / "axe-core" / "axe.min.js"

# Chromium's background connections (component updates, sync, QUIC probes, first-run pages)
# fail on this project's closed test machines and slow every launch down: turn them off.
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/web ``web`` (a conftest's ``pytestmark`` would not)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.web)


@pytest.fixture(scope="session")
def base_url(pytestconfig: pytest.Config) -> str | None:
    """pytest-playwright's own ``base_url`` (``--base-url``; None here: tests use the panel's
    ``base_url``). pytest-playwright 0.10 defines it as a method of a plugin object, which
    pytest 9.1+ deprecates (PytestRemovedIn10Warning, an error with our filterwarnings)."""
    value: str | None = pytestconfig.getoption("--base-url", None) or None
    return value


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, on Debian's Chromium (headless unless --headed)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup --test (it installs chromium)")
    return {
        "headless": True,
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": CHROMIUM_ARGS,
    }


@pytest.fixture(scope="session")
def axe_context_args() -> dict[str, Any]:
    """Extra ``new_context`` options for a page axe runs in: the panel's strict
    Content-Security-Policy would block the injected axe script, so CSP is bypassed.

    Use ``new_context(**axe_context_args)``, or ``axe_page``; keep the plain ``page`` (CSP
    enforced) for everything else, so a test still sees what the CSP would break."""
    return {"bypass_csp": True}


@pytest.fixture
def axe_page(new_context: Any, axe_context_args: dict[str, Any]) -> Page:
    """A page whose context bypasses CSP (``axe_context_args``), for ``axe_violations``."""
    context: BrowserContext = new_context(**axe_context_args)
    return context.new_page()


@pytest.fixture(scope="module")
def panel() -> Iterator[LiveServer]:
    """A running ``vpsd serve`` on the fake driver (no VMs), in its own data dir, for the
    module's tests; its ``base_url`` serves the panel. A placeholder ``debian-12`` image is
    installed, so servers made from it get an SSH port; the default stays ``blank``."""
    with serving(driver="fake", prepare=lambda root: write_fake_image(root / "images")) as server:
        yield server


def make_account(panel: LiveServer, name: str, password: str) -> None:
    """Give account ``name`` (created if new) the panel password ``password``, with
    ``vpsd account set-password NAME --password-stdin`` as an operator would."""
    try:
        subprocess.run(
            [VPSD, "account", "set-password", name, "--password-stdin"],
            env=panel.env,
            input=password + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as error:
        error.add_note(f"stderr: {error.stderr}")
        raise


def sign_in(page: Page, base_url: str, name: str, password: str) -> None:
    """Sign in through the panel's form, as a person would; ends on the servers page."""
    page.goto(base_url + "/sign-in")
    page.get_by_label("Account", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    # exact: the page has a "Sign in with token" button too
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/servers$"))


def axe_violations(
    page: Page, min_impact: tuple[str, ...] = ("serious", "critical")
) -> list[dict[str, Any]]:
    """axe-core's violations on ``page``'s current document whose impact is in
    ``min_impact`` (axe's impacts: minor, moderate, serious, critical).

    axe is injected as a script, which a strict Content-Security-Policy (the panel's) blocks:
    the page's context must be made with ``bypass_csp=True`` — use the ``axe_page`` fixture,
    or ``new_context(**axe_context_args)``."""
    if not AXE_JS.is_file():
        pytest.fail(f"{AXE_JS} is missing: run scripts/setup --test (it runs npm ci in tests/web)")
    try:
        page.add_script_tag(path=AXE_JS)
    except PlaywrightError as error:
        if "Content Security Policy" not in error.message:
            raise
        pytest.fail(
            "the page's Content-Security-Policy blocked axe-core's script: make its context "
            f"with bypass_csp=True (the axe_page fixture)\n{error.message}"
        )
    if not page.evaluate("() => typeof window.axe?.run === 'function'"):
        pytest.fail(f"axe-core did not load from {AXE_JS}: run scripts/setup --test")
    violations: list[dict[str, Any]] = page.evaluate("async () => (await axe.run()).violations")
    return [violation for violation in violations if violation["impact"] in min_impact]
