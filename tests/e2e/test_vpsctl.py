"""``vpsctl`` as a user runs it: a subprocess against a live ``vpsd serve`` on real QEMU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import qemu_helpers as qh
from tests.helpers import ApiClient
from tests.live_server import LiveServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, qh.requires_qemu]

VPSCTL = str(Path(sys.executable).parent / "vpsctl")
CLIENT_VARS = ("VPSD_URL", "VPSD_TOKEN", "VPSCTL_CONFIG", "XDG_CONFIG_HOME")


class Ctl:
    """Runs ``vpsctl`` with a clean environment: a temp HOME and the given variables."""

    def __init__(self, home: Path, **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
        self.env = {**base, "HOME": str(home), "COLUMNS": "200", **env}

    def __call__(
        self, *args: str, stdin: Any = subprocess.DEVNULL, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [VPSCTL, *args],
            env={**self.env, **env},
            stdin=None if input is not None else stdin,
            input=input,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def json(self, *args: str) -> Any:
        """Run with ``-o json``, expect success, return the parsed stdout."""
        result = self(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def in_pty(self, *args: str, answer: str) -> subprocess.CompletedProcess[str]:
        """Run with a terminal on stdin and type ``answer`` + Enter at the prompt."""
        master, slave = os.openpty()
        try:
            process = subprocess.Popen(
                [VPSCTL, *args], env=self.env, stdin=slave,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            os.close(slave)
            slave = -1
            os.write(master, f"{answer}\n".encode())  # the line waits in the tty's buffer
            stdout, stderr = process.communicate(timeout=180)
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def ctl(live_server: LiveServer, alice_live: ApiClient, tmp_path: Path) -> Iterator[Ctl]:
    """vpsctl as alice (the ``alice_live`` account), configured by VPSD_URL/VPSD_TOKEN."""
    yield Ctl(tmp_path, VPSD_URL=live_server.base_url, VPSD_TOKEN=alice_live.token)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _break_disk(live_server: LiveServer, server_id: int) -> None:
    """Make a stopped server's disk unusable for qemu-img: it is no longer a qcow2 image."""
    disk = live_server.data_dir / "servers" / str(server_id) / "disk0.qcow2"
    disk.write_bytes(b"this is not a qcow2 image\n" * 100)


def test_server_commands_match_the_api(ctl: Ctl, alice_live: ApiClient) -> None:
    created = ctl.json("servers", "create", "--name", "web-1", "--disk-gb", "1", "--wait")
    sid = created["id"]
    assert created["status"] == "running"
    assert created == alice_live.get(f"/servers/{sid}/").json()

    assert ctl.json("servers", "list") == alice_live.get("/servers/").json()
    assert ctl.json("servers", "show", str(sid)) == alice_live.get(f"/servers/{sid}/").json()
    table = ctl("servers", "list")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if "web-1" in line)
    assert str(sid) in row and "running" in row
    assert "Status reason" in ctl("servers", "show", str(sid)).stdout

    stopped = ctl("servers", "stop", str(sid), "--wait", "-o", "json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "stopped"
    assert f"server {sid}: stopped" in stopped.stderr  # plain progress lines without a tty
    assert alice_live.server_status(sid) == "stopped"

    assert ctl("servers", "start", str(sid), "--wait").returncode == 0
    assert alice_live.server_status(sid) == "running"

    small = ctl.json(
        "servers", "create", "--name", "small", "--disk-gb", "1", "--memory-mb", "128",
        "--vcpus", "2",
    )  # fmt: skip
    assert (small["status"], small["memory_mb"], small["vcpus"]) == ("starting", 128, 2)
    alice_live.wait_server(small["id"], "running")
    deleted = ctl("servers", "delete", str(small["id"]), "--yes", "--wait")
    assert deleted.returncode == 0, deleted.stderr
    assert alice_live.get(f"/servers/{small['id']}/").status_code == 404


def test_snapshot_commands_match_the_api_and_restore_reverts_the_disk(
    ctl: Ctl, alice_live: ApiClient, live_server: LiveServer
) -> None:
    sid = alice_live.create_server("db-1")["id"]
    assert ctl("servers", "stop", str(sid), "--wait").returncode == 0
    disk = live_server.data_dir / "servers" / str(sid) / "disk0.qcow2"
    qh.write_pattern(disk, 0x11)

    snap = ctl.json(
        "snapshots", "create", "--server", str(sid), "--name", "before", "-d", "first one",
        "--wait",
    )  # fmt: skip
    assert snap["status"] == "completed"
    assert snap == alice_live.get(f"/snapshots/{snap['id']}/").json()
    assert ctl.json("snapshots", "list") == alice_live.get("/snapshots/").json()
    by_server = ctl.json("snapshots", "list", "--server", str(sid))
    assert by_server == alice_live.get(f"/snapshots/?server_id={sid}").json()
    assert ctl.json("snapshots", "show", str(snap["id"])) == snap
    assert "first one" in ctl("snapshots", "show", str(snap["id"])).stdout
    assert "before" in ctl("snapshots", "list").stdout

    quick = ctl("snapshots", "create", "--server", str(sid), "--name", "quick")
    assert quick.returncode == 0 and "quick" in quick.stdout
    assert "being created" in quick.stderr  # the API's message, for people

    qh.write_pattern(disk, 0x22)
    restored = ctl("snapshots", "restore", str(snap["id"]), "--yes", "--wait", "-o", "json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout) == alice_live.get(f"/servers/{sid}/").json()
    assert json.loads(restored.stdout)["status"] == "stopped"  # it was stopped before
    assert qh.has_pattern(disk, 0x11) and not qh.has_pattern(disk, 0x22)

    assert ctl("snapshots", "delete", str(snap["id"]), "--yes").returncode == 0
    assert alice_live.get(f"/snapshots/{snap['id']}/").status_code == 404


def test_backup_commands_match_the_api_restore_and_new_server_from_a_backup(
    ctl: Ctl, alice_live: ApiClient, live_server: LiveServer
) -> None:
    sid = alice_live.create_server("app-1")["id"]
    assert ctl("servers", "stop", str(sid), "--wait").returncode == 0
    disk = live_server.data_dir / "servers" / str(sid) / "disk0.qcow2"
    qh.write_pattern(disk, 0x33)

    backup = ctl.json(
        "backups", "create", "--server", str(sid), "--name", "nightly", "--wait"
    )  # fmt: skip
    assert backup["status"] == "completed", backup
    assert backup == alice_live.get(f"/backups/{backup['id']}/").json()
    assert (
        ctl.json("backups", "list", "--server", str(sid))
        == alice_live.get(f"/backups/?server_id={sid}").json()
    )
    assert "nightly" in ctl("backups", "list").stdout

    policy = ctl.json(
        "backups", "policy", str(sid), "--enable", "--frequency", "weekly", "--weekday", "sun",
        "--hour", "2", "--keep", "4",
    )  # fmt: skip
    assert policy == alice_live.get(f"/servers/{sid}/backup-policy/").json()
    assert (policy["enabled"], policy["weekday"], policy["hour"], policy["keep"]) == (
        True, 6, 2, 4,
    )  # fmt: skip

    qh.write_pattern(disk, 0x44)
    restored = ctl("backups", "restore", str(backup["id"]), "--yes", "--wait", "-o", "json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["status"] == "stopped"
    assert qh.has_pattern(disk, 0x33)

    copy = ctl.json(
        "servers", "create", "--name", "app-2", "--disk-gb", "1", "--from-backup",
        str(backup["id"]), "--wait",
    )  # fmt: skip
    assert copy["source"] == {"backup_id": backup["id"]} and copy["status"] == "running"
    assert ctl("backups", "delete", str(backup["id"]), "--yes").returncode == 0
    assert alice_live.get(f"/backups/{backup['id']}/").status_code == 404


def test_failed_snapshot_wait_exits_1_with_the_reason(
    ctl: Ctl, alice_live: ApiClient, live_server: LiveServer
) -> None:
    sid = alice_live.create_server("fragile")["id"]
    assert ctl("servers", "stop", str(sid), "--wait").returncode == 0
    _break_disk(live_server, sid)

    result = ctl("snapshots", "create", "--server", str(sid), "--name", "doomed", "--wait")
    assert result.returncode == 1
    snapshot = alice_live.get(f"/snapshots/?server_id={sid}").json()["results"][0]
    assert snapshot["status"] == "failed" and snapshot["status_reason"]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: snapshot {snapshot['id']} (doomed) failed: ")
    assert " ".join(snapshot["status_reason"].split()) in line
    assert "Traceback" not in result.stderr


def test_confirmation_prompts(ctl: Ctl, alice_live: ApiClient) -> None:
    sid = alice_live.create_server("guarded")["id"]
    first = alice_live.create_snapshot(sid, "first")["id"]
    second = alice_live.create_snapshot(sid, "second")["id"]

    # No terminal to ask on: refuse, change nothing, tell the user about --yes.
    for args in (
        ("snapshots", "delete", str(first)),
        ("snapshots", "restore", str(first)),
        ("servers", "delete", str(sid)),
    ):
        refused = ctl(*args)
        assert refused.returncode == 2
        assert "pass --yes" in _one_error_line(refused)
    assert alice_live.get(f"/snapshots/{first}/").status_code == 200
    assert alice_live.server_status(sid) == "running"

    declined = ctl.in_pty("snapshots", "delete", str(first), answer="n")
    assert declined.returncode == 1
    assert f"Delete snapshot {first} (first)" in declined.stderr
    assert alice_live.get(f"/snapshots/{first}/").status_code == 200

    accepted = ctl.in_pty("snapshots", "delete", str(first), answer="y")
    assert accepted.returncode == 0, accepted.stderr
    assert alice_live.get(f"/snapshots/{first}/").status_code == 404

    restored = ctl.in_pty("snapshots", "restore", str(second), "--wait", answer="y")
    assert restored.returncode == 0, restored.stderr
    assert "Restore server" in restored.stderr
    assert alice_live.server_status(sid) == "running"


def test_errors_are_one_line_with_documented_exit_codes(ctl: Ctl, live_server: LiveServer) -> None:
    help_text = ctl("--help").stdout
    assert "3 not found" in help_text and "6 cannot connect" in help_text

    bad = ctl("servers", "list", VPSD_TOKEN="vpsd_not-a-real-token")
    assert bad.returncode == 4
    assert "token" in _one_error_line(bad)

    for args in (
        ("servers", "show", "987654"),
        ("servers", "start", "987654"),
        ("snapshots", "show", "987654"),
        ("snapshots", "delete", "987654", "--yes"),
        ("snapshots", "restore", "987654", "--yes"),
    ):
        missing = ctl(*args)
        assert missing.returncode == 3, args
        assert "not found" in _one_error_line(missing)

    invalid = ctl("snapshots", "create", "--server", "1", "--name", "no spaces")
    assert invalid.returncode == 1
    assert "body.name" in _one_error_line(invalid)

    dead_url = f"http://127.0.0.1:{free_port()}"
    unreachable = ctl("servers", "list", VPSD_URL=dead_url)
    assert unreachable.returncode == 6
    assert dead_url in _one_error_line(unreachable)

    unconfigured = Ctl(Path(ctl.env["HOME"]))("servers", "list")
    assert unconfigured.returncode == 2
    assert "no API URL" in _one_error_line(unconfigured)

    assert ctl("servers", "show", "not-a-number").returncode == 2


def test_login_saves_a_private_config_and_never_echoes_the_token(
    live_server: LiveServer, tmp_path: Path
) -> None:
    token = live_server.create_token("carol")
    user = Ctl(tmp_path)  # no VPSD_URL/VPSD_TOKEN: only what login saves
    config = tmp_path / ".config" / "vpsctl" / "config.toml"

    result = user("login", "--url", live_server.base_url, "--token-stdin", input=token + "\n")
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout and token not in result.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert token in config.read_text()
    assert user.json("servers", "list") == {
        "count": 0, "next": None, "previous": None, "results": []
    }  # fmt: skip

    # Precedence: VPSD_URL beats the file, --url beats VPSD_URL.
    dead_url = f"http://127.0.0.1:{free_port()}"
    assert user("servers", "list", VPSD_URL=dead_url).returncode == 6
    flagged = user("--url", live_server.base_url, "servers", "list", VPSD_URL=dead_url)
    assert flagged.returncode == 0, flagged.stderr
    assert user("servers", "list", VPSD_TOKEN="vpsd_wrong").returncode == 4

    # A rejected token is not saved; VPSCTL_CONFIG chooses the file.
    other = tmp_path / "other.toml"
    rejected = user(
        "login", "--url", live_server.base_url, "--token-stdin",
        input="vpsd_wrong\n", VPSCTL_CONFIG=str(other),
    )  # fmt: skip
    assert rejected.returncode == 4
    assert "vpsd_wrong" not in rejected.stdout + rejected.stderr
    assert not other.exists()
    saved = user(
        "login", "--url", live_server.base_url, "--token-stdin",
        input=token + "\n", VPSCTL_CONFIG=str(other),
    )  # fmt: skip
    assert saved.returncode == 0 and stat.S_IMODE(other.stat().st_mode) == 0o600

    # Without a terminal there is nobody to prompt: ask for --token-stdin.
    no_tty = user("login", "--url", live_server.base_url)
    assert no_tty.returncode == 2
    assert "--token-stdin" in _one_error_line(no_tty)
