"""The seed page's own clients (curl, Python requests, JavaScript fetch) against vpsd serve.

``page_examples/`` holds the page's examples verbatim (``test_examples_are_verbatim`` checks
them against the page when ../shared is beside the checkout). Only the base URL, the token
and the example ids are substituted, as a user of the page would.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient
from tests.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

EXAMPLES = Path(__file__).parent / "page_examples"
SEED = Path(__file__).parents[3] / "shared" / "seeds" / "000_f35a8c71ef0cad6f.txt"
PAGE_BASE = "https://admin.vps.org"
PAGE_SERVER_ID = "12345"
PAGE_SNAPSHOT_ID = "801"


def _program(kind: str) -> list[str]:
    if kind == "sh":
        return ["bash"]
    if kind == "py":
        return [sys.executable]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's fetch examples need Node.js 18+")
    return [node]


def run_example(
    server: LiveServer, operation: str, kind: str, token: str, server_id: int, snapshot_id: int
) -> str:
    """Run the page's example with the base URL, token and ids substituted; return stdout."""
    source = (EXAMPLES / f"{operation}.{kind}").read_text()
    # The ids first: "801" could otherwise hit the free port in the base URL (127.0.0.1:38016)
    # or the token.
    source = (
        source.replace(PAGE_SERVER_ID, str(server_id))
        .replace(PAGE_SNAPSHOT_ID, str(snapshot_id))
        .replace("YOUR_API_TOKEN", token)
        .replace(PAGE_BASE, server.base_url)
    )
    script = server.data_dir / f"example-{operation}.{kind}"
    script.write_text(source)
    result = subprocess.run(
        [*_program(kind), str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{operation}.{kind} failed:\n{result.stderr}"
    return result.stdout


def _parse(kind: str, output: str) -> Any:
    if kind == "sh":
        return json.loads(output)
    if kind == "py":
        return ast.literal_eval(output.strip())  # the page prints response.json()
    return None  # console.log prints JS notation, checked through the API instead


@pytest.mark.parametrize("kind", ["sh", "py", "mjs"])
def test_page_examples_work_unchanged(
    live_server: LiveServer, alice_live: ApiClient, kind: str
) -> None:
    token = alice_live.token
    server = alice_live.create_server("web-server-01")
    sid = server["id"]

    out = run_example(live_server, "create", kind, token, sid, 0)
    snapshots = alice_live.get("/snapshots/", params={"server_id": sid}).json()
    assert snapshots["count"] == 1
    created = snapshots["results"][0]
    assert created["name"] == "before-update-snapshot"
    assert created["description"] == "Snapshot before system update"
    assert "in_progress" in out and "before-update-snapshot" in out
    if (parsed := _parse(kind, out)) is not None:
        assert parsed["status"] == "in_progress" and parsed["size_mb"] is None
        assert parsed["server"] == {"id": sid, "name": "web-server-01"}
    completed = alice_live.wait_snapshot(created["id"])
    assert completed["status"] == "completed"

    out = run_example(live_server, "list", kind, token, sid, 0)
    assert "before-update-snapshot" in out or kind == "mjs"
    if (parsed := _parse(kind, out)) is not None:
        assert parsed["count"] == 1 and parsed["results"][0]["id"] == created["id"]
    else:
        assert "count: 1" in out

    out = run_example(live_server, "restore", kind, token, sid, created["id"])
    assert "restoring" in out
    if (parsed := _parse(kind, out)) is not None:
        assert parsed["status"] == "success"
        assert parsed["server"] == {"id": sid, "name": "web-server-01", "status": "restoring"}
    alice_live.wait_server(sid, "running")

    if (EXAMPLES / f"delete.{kind}").exists():  # the page has no fetch example for delete
        out = run_example(live_server, "delete", kind, token, sid, created["id"])
        if kind == "py":
            assert out.strip() == "204"
        assert alice_live.get(f"/snapshots/{created['id']}/").status_code == 404


def test_examples_are_verbatim() -> None:
    if not SEED.exists():
        pytest.skip(f"the seed page is not beside this checkout ({SEED})")
    page = SEED.read_text()
    for example in sorted(EXAMPLES.iterdir()):
        assert example.read_text().strip() in page, f"{example.name} differs from the page"
