"""The seed page's story through the panel, once, on a real QEMU server: sign in, create a
server, snapshot it before a change, make the change, restore, and delete.

The disk's bytes are checked with ``qemu-io`` inside the running QEMU: after the restore they
are the snapshot's again. ``VPSD_PANEL_SCREENSHOTS=docs/screenshots`` saves the pages shown in
docs/panel.md and the README.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Page, expect

from tests import qemu_helpers as qh
from tests.live_server import LiveServer, serving
from tests.web.conftest import make_account, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

T = TypeVar("T")
MIB = 1024 * 1024
BEFORE, AFTER = 0x5A, 0xE7
"""The disk's first 4 MiB: the snapshot's bytes, and the change made after it."""


@pytest.fixture(scope="module")
def real_panel() -> Iterator[LiveServer]:
    """``vpsd serve`` on real QEMU (blank disks: a VM without a guest, so it runs at once)."""
    with serving() as server:
        yield server


def off_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in another thread: QMP sessions run an event loop of their own,
    which cannot run in the thread where Playwright's sync API runs its loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def shoot(page: Page, name: str) -> None:
    """Save a screenshot for the docs when ``VPSD_PANEL_SCREENSHOTS`` names a folder."""
    folder = os.environ.get("VPSD_PANEL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_snapshot_before_a_change_and_roll_back(real_panel: LiveServer, page: Page) -> None:
    make_account(real_panel, "alice", "correct horse battery")
    page.set_viewport_size({"width": 1100, "height": 800})
    sign_in(page, real_panel.base_url, "alice", "correct horse battery")

    # create a server
    page.get_by_label("Name", exact=True).fill("web-server-01")
    page.get_by_label("Image").select_option("blank")
    page.get_by_label("Disk (GiB)").fill("1")
    page.get_by_role("button", name="Create server").click()
    expect(page).to_have_url(re.compile(r"/servers/\d+$"))
    server_id = int(page.url.rsplit("/", 1)[1])
    status = page.locator("#server-status")
    expect(status).to_contain_text("running", timeout=120_000)  # refreshed without a reload
    qmp = real_panel.data_dir / "servers" / str(server_id) / "qmp.sock"
    disk = real_panel.disk(server_id)
    off_loop(qh.write_pattern_running, qmp, BEFORE, 0, 4 * MIB)

    # snapshot it before the change
    page.get_by_label("Snapshot name").fill("before-update")
    page.get_by_role("button", name="Take snapshot").click()
    snapshots = page.locator("#snapshot-list")
    expect(snapshots.get_by_role("row", name=re.compile("before-update"))).to_contain_text(
        "completed", timeout=60_000
    )
    expect(snapshots).to_contain_text("1 of 5 snapshots")
    shoot(page, "server")
    if os.environ.get("VPSD_PANEL_SCREENSHOTS"):
        page.set_viewport_size({"width": 375, "height": 740})
        shoot(page, "server-375px")
        page.goto(real_panel.base_url + "/servers")
        page.set_viewport_size({"width": 1100, "height": 500})
        shoot(page, "servers")
        page.goto(f"{real_panel.base_url}/servers/{server_id}")

    # the change goes wrong; roll back
    off_loop(qh.write_pattern_running, qmp, AFTER, 0, 4 * MIB)
    assert off_loop(qh.has_pattern_running, qmp, disk, AFTER, 0, 4 * MIB)
    page.get_by_role("link", name="Restore before-update").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Restore web-server-01 from snapshot before-update?"
    )
    shoot(page, "confirm-restore")
    page.get_by_role("button", name="Restore server").click()
    expect(page.get_by_role("status").first).to_contain_text("Restoring web-server-01")
    expect(status).to_contain_text("running", timeout=120_000)
    assert off_loop(qh.has_pattern_running, qmp, disk, BEFORE, 0, 4 * MIB)  # the snapshot's bytes

    # delete the snapshot, then the server
    page.get_by_role("link", name="Delete before-update").click()
    page.get_by_role("button", name="Delete snapshot").click()
    expect(page.locator("#snapshot-list")).to_contain_text("0 of 5 snapshots")
    assert qh.snapshot_tags(disk) == []
    page.get_by_role("link", name="Delete server…").click()
    page.get_by_role("button", name="Delete server").click()
    expect(page).to_have_url(re.compile(r"/servers$"))
    expect(page.get_by_role("status").first).to_contain_text("web-server-01 is being deleted")
    expect(page.locator(f"#server-link-{server_id}")).to_have_count(0, timeout=60_000)
    assert qh.qemu_pids_under(real_panel.data_dir) == []
    assert not disk.exists()


def test_a_backup_and_the_policy_through_the_panel(real_panel: LiveServer, page: Page) -> None:
    make_account(real_panel, "bob", "correct horse battery")
    api = real_panel.client(real_panel.create_token("bob"))
    server_id = api.create_server("db-01", disk_gb=1)["id"]
    qmp = real_panel.data_dir / "servers" / str(server_id) / "qmp.sock"
    disk = real_panel.disk(server_id)
    off_loop(qh.write_pattern_running, qmp, BEFORE, 0, 4 * MIB)
    sign_in(page, real_panel.base_url, "bob", "correct horse battery")
    page.goto(f"{real_panel.base_url}/servers/{server_id}")

    page.get_by_label("Backup name").fill("weekly-offsite")
    page.get_by_role("button", name="Take backup").click()
    backups = page.locator("#backup-list")
    row = backups.get_by_role("row", name=re.compile("weekly-offsite"))
    expect(row).to_contain_text("completed", timeout=120_000)  # refreshed without a reload
    expect(backups).to_contain_text("1 of 10 manual backups")

    off_loop(qh.write_pattern_running, qmp, AFTER, 0, 4 * MIB)
    page.get_by_role("link", name="Restore weekly-offsite").click()
    page.get_by_role("button", name="Restore server").click()
    expect(page.get_by_role("status").first).to_contain_text("Restoring db-01 from backup")
    expect(page.locator("#server-status")).to_contain_text("running", timeout=120_000)
    assert off_loop(qh.has_pattern_running, qmp, disk, BEFORE, 0, 4 * MIB)

    page.get_by_label("Take backups automatically").check()
    page.get_by_label("How often").select_option("weekly")
    page.get_by_label("Day (weekly)").select_option(label="Friday")
    page.get_by_label("Hour (UTC)").fill("4")
    page.get_by_label("Keep").fill("3")
    page.get_by_role("button", name="Save policy").click()
    expect(page.get_by_role("status").first).to_have_text("Automatic backups are on.")
    expect(page.get_by_text("Next automatic backup:")).to_contain_text("04:00 UTC")
    policy = api.get(f"/servers/{server_id}/backup-policy/").json()
    assert {k: policy[k] for k in ("enabled", "frequency", "weekday", "hour", "keep")} == {
        "enabled": True,
        "frequency": "weekly",
        "weekday": 4,
        "hour": 4,
        "keep": 3,
    }
