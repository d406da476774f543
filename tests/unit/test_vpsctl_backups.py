"""``vpsctl backups`` (list, show, create, restore, delete, policy) and ``servers create
--from-snapshot/--from-backup``, through vpsctl's real ``main()`` and the SDK, against a fake
of the Backups API's contract (API.md "Beyond the page"; shapes of ``vpsd.schemas``) behind
an ``httpx.MockTransport``: what a user sees, and what is sent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.vpsctl_harness import Run, make_run, one_error_line

TOKEN = "alice-token"
CREATED_AT = "2025-01-15T18:30:00Z"
MAX_MANUAL = 10
PAGE_SIZE = 2
"""The fake's default page size: small, so lists span pages."""


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail, "errors": errors or []})


class FakeApi:
    """Servers, backups and backup policies as the API documents them, in memory. A backup
    created through the API is ``in_progress`` when created and on its first read, then
    ``completed`` (or ``failed`` if its name starts with ``fail``); a restored server is
    ``restoring`` on its first read, then back in its former power state; a new server is
    ``starting`` on its first read, then ``running``."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []
        self.servers: dict[int, dict[str, Any]] = {}
        self.backups: dict[int, dict[str, Any]] = {}
        self.policies: dict[int, dict[str, Any]] = {}
        self.reads: dict[int, int] = {}
        self.restoring: dict[int, str] = {}
        self.next_id = 1
        self.add_server("web-1")

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add_server(self, name: str, status: str = "running", **fields: Any) -> dict[str, Any]:
        server = {
            "id": self._id(), "name": name, "status": status, "status_reason": None,
            "memory_mb": 256, "vcpus": 1, "disk_gb": 2, "image": "debian-12",
            "ssh": {"host": "127.0.0.1", "port": 22013}, "source": None,
            "created_at": CREATED_AT, **fields,
        }  # fmt: skip
        self.servers[server["id"]] = server
        return server

    def add_backup(self, server_id: int, name: str, **fields: Any) -> dict[str, Any]:
        server = self.servers[server_id]
        backup = {
            "id": self._id(), "server": {"id": server_id, "name": server["name"]}, "name": name,
            "type": "manual", "status": "completed", "size_mb": 1800, "stored_mb": 312,
            "created_at": CREATED_AT, "description": None, "status_reason": None,
            "consistency": "filesystem", "completed_at": CREATED_AT, **fields,
        }  # fmt: skip
        self.backups[backup["id"]] = backup
        return backup

    def posts(self, path: str) -> list[Any]:
        """The bodies POSTed or PUT to ``path`` (below ``/api/v1``)."""
        return [
            json.loads(r.content)
            for r in self.sent
            if r.method in ("POST", "PUT") and r.url.path == f"/api/v1{path}"
        ]

    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.sent if r.method != "GET"]

    # --- the API -----------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(401, "invalid or missing token")
        path = request.url.path.removeprefix("/api/v1")
        body = json.loads(request.content) if request.content else None
        routes = [
            ("GET", r"/backups/", self.list_backups),
            ("POST", r"/backups/", self.create_backup),
            ("GET", r"/backups/(\d+)/", self.get_backup),
            ("DELETE", r"/backups/(\d+)/", self.delete_backup),
            ("POST", r"/backups/(\d+)/restore/", self.restore_backup),
            ("GET", r"/servers/(\d+)/", self.get_server),
            ("POST", r"/servers/", self.create_server),
            ("GET", r"/servers/(\d+)/backup-policy/", self.get_policy),
            ("PUT", r"/servers/(\d+)/backup-policy/", self.put_policy),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and request.method == method:
                args = [int(g) for g in match.groups()]
                return handler(request, body, *args)  # type: ignore[operator]
        return _error(404, "not found")

    def list_backups(self, request: httpx.Request, _: Any) -> httpx.Response:
        params = request.url.params
        found = sorted(self.backups.values(), key=lambda b: -b["id"])
        if "server_id" in params:
            found = [b for b in found if b["server"]["id"] == int(params["server_id"])]
        page, size = int(params.get("page", 1)), int(params.get("page_size", PAGE_SIZE))
        results = [self.read_backup(b["id"]) for b in found[(page - 1) * size : page * size]]
        server = f"&server_id={params['server_id']}" if "server_id" in params else ""
        link = "http://vpsd.test/api/v1/backups/?page={}&page_size=" + f"{size}{server}"
        return httpx.Response(
            200,
            json={
                "count": len(found),
                "next": link.format(page + 1) if page * size < len(found) else None,
                "previous": link.format(page - 1) if page > 1 else None,
                "results": results,
            },
        )

    def create_backup(self, _: httpx.Request, body: Any) -> httpx.Response:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(body.get("name"))):
            return _error(
                400,
                "invalid parameters",
                [{"field": "body.name", "message": "only letters, digits, '-' and '_'"}],
            )
        server_id = body["server_id"]
        if server_id not in self.servers:
            return _error(404, "server not found")
        manual = [
            b
            for b in self.backups.values()
            if b["server"]["id"] == server_id and b["type"] == "manual"
        ]
        if len(manual) >= MAX_MANUAL:
            return _error(400, f"backup limit reached: at most {MAX_MANUAL} manual backups")
        backup = self.add_backup(
            server_id, body["name"], status="in_progress", size_mb=None, stored_mb=None,
            consistency=None, completed_at=None, description=body.get("description"),
        )  # fmt: skip
        self.reads[backup["id"]] = 0
        return httpx.Response(201, json={**backup, "message": "The backup is being taken."})

    def read_backup(self, backup_id: int) -> dict[str, Any]:
        backup = self.backups[backup_id]
        if backup["status"] == "in_progress" and backup_id in self.reads:
            self.reads[backup_id] += 1
            if self.reads[backup_id] > 1:
                if backup["name"].startswith("fail"):
                    backup.update(status="failed", status_reason="backup storage unreachable")
                else:
                    backup.update(status="completed", size_mb=1800, stored_mb=312)
                    backup.update(consistency="filesystem", completed_at=CREATED_AT)
        return backup

    def get_backup(self, _: httpx.Request, __: Any, backup_id: int) -> httpx.Response:
        if backup_id not in self.backups:
            return _error(404, "backup not found")
        return httpx.Response(200, json=self.read_backup(backup_id))

    def delete_backup(self, _: httpx.Request, __: Any, backup_id: int) -> httpx.Response:
        if self.backups.pop(backup_id, None) is None:
            return _error(404, "backup not found")
        return httpx.Response(204)

    def restore_backup(self, _: httpx.Request, __: Any, backup_id: int) -> httpx.Response:
        backup = self.backups.get(backup_id)
        if backup is None:
            return _error(404, "backup not found")
        server = self.servers[backup["server"]["id"]]
        self.restoring[server["id"]] = server["status"]
        server["status"] = "restoring"
        return httpx.Response(
            200,
            json={
                "status": "success",
                "message": "Server is being restored from backup.",
                "backup": {k: backup[k] for k in ("id", "name", "created_at")},
                "server": {k: server[k] for k in ("id", "name", "status")},
            },
        )

    def get_server(self, _: httpx.Request, __: Any, server_id: int) -> httpx.Response:
        server = self.servers.get(server_id)
        if server is None:
            return _error(404, "server not found")
        body = dict(server)
        if server_id in self.restoring:  # restoring on this read, restored on the next
            server["status"] = self.restoring.pop(server_id)
        elif server["status"] == "starting":
            server["status"] = "running"
        return httpx.Response(200, json=body)

    def create_server(self, _: httpx.Request, body: Any) -> httpx.Response:
        source = None
        if body.get("snapshot_id") is not None:
            source = {"snapshot_id": body["snapshot_id"]}
        if body.get("backup_id") is not None:
            if body["backup_id"] not in self.backups:
                return _error(404, "backup not found")
            source = {"backup_id": body["backup_id"]}
        server = self.add_server(
            body["name"], status="starting", disk_gb=body["disk_gb"], source=source
        )
        return httpx.Response(201, json=server)

    def get_policy(self, _: httpx.Request, __: Any, server_id: int) -> httpx.Response:
        if server_id not in self.servers:
            return _error(404, "server not found")
        default = {"enabled": False, "frequency": "daily", "hour": 3, "weekday": 6, "keep": 7}
        return httpx.Response(200, json={**self.policies.get(server_id, default)})

    def put_policy(self, _: httpx.Request, body: Any, server_id: int) -> httpx.Response:
        if server_id not in self.servers:
            return _error(404, "server not found")
        policy = {"enabled": True, "frequency": "daily", "hour": 3, "weekday": 6, "keep": 7}
        policy.update(body)
        next_at = "2025-01-19T04:00:00Z" if policy["enabled"] else None
        self.policies[server_id] = {**policy, "next_backup_at": next_at}
        return self.get_policy(_, None, server_id)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def run(
    api: FakeApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """vpsctl against the fake API (no app: the server side is not needed)."""
    return make_run(TOKEN, httpx.MockTransport(api.handle), tmp_path, monkeypatch, capsys)


def row(output: str, name: str) -> str:
    """The table row of the object called ``name``."""
    return next(line for line in output.splitlines() if f" {name} " in f" {line} ")


def field(output: str, label: str) -> str:
    """The value shown for ``label`` in an object's details."""
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in output.splitlines()]
    return dict(pair for pair in pairs if len(pair) == 2)[label]


# --- list, show ------------------------------------------------------------------------------


def test_list_shows_type_status_and_both_sizes(run: Run, api: FakeApi) -> None:
    api.add_backup(1, "weekly-offsite", description="before the move")
    api.add_backup(1, "auto-1", type="automatic", size_mb=2048, stored_mb=40)
    api.add_backup(1, "running-one", status="in_progress", size_mb=None, stored_mb=None)

    listed = run("backups", "list")
    assert listed.code == 0, listed.err
    header = listed.out.splitlines()[0].split()
    assert header == [
        "ID", "NAME", "SERVER", "TYPE", "STATUS", "SIZE", "STORED", "CREATED", "DESCRIPTION"
    ]  # fmt: skip
    weekly = row(listed.out, "weekly-offsite")
    for cell in ("web-1 (1)", "manual", "completed", "1800 MiB", "312 MiB", "2025-01-15 18:30:00Z"):
        assert cell in weekly, weekly
    assert "before the move" in weekly
    assert "automatic" in row(listed.out, "auto-1") and "40 MiB" in row(listed.out, "auto-1")
    assert " - " in row(listed.out, "running-one")  # no sizes while in progress
    names = [line.split()[1] for line in listed.out.splitlines()[1:] if line.strip()]
    assert names == ["running-one", "auto-1", "weekly-offsite"]  # newest first, all pages


def test_list_json_merges_every_page_and_filters_by_server(run: Run, api: FakeApi) -> None:
    other = api.add_server("db-1")
    for n in range(3):
        api.add_backup(1, f"web-{n}")
    api.add_backup(other["id"], "db-only")

    everything = json.loads(run("backups", "list", "-o", "json").out)
    assert everything["count"] == 4 and everything["next"] is None
    assert [b["name"] for b in everything["results"]] == ["db-only", "web-2", "web-1", "web-0"]

    api.sent.clear()
    only = run("backups", "list", "--server", str(other["id"]), "-o", "json")
    assert only.code == 0, only.err
    assert json.loads(only.out) == {
        "count": 1, "next": None, "previous": None, "results": [api.backups[other["id"] + 4]]
    }  # fmt: skip
    assert [r.url.params["server_id"] for r in api.sent] == [str(other["id"])]


def test_show_prints_every_field_and_json_unchanged(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "nightly", type="automatic", description="kept 7 days")
    shown = run("backups", "show", str(backup["id"]))
    assert shown.code == 0, shown.err
    for label, value in [
        ("Type", "automatic"), ("Status", "completed"), ("Size", "1800 MiB"),
        ("Stored", "312 MiB"), ("Consistency", "filesystem"), ("Server", "web-1 (1)"),
        ("Completed", "2025-01-15 18:30:00Z"), ("Description", "kept 7 days"),
    ]:  # fmt: skip
        assert field(shown.out, label) == value, shown.out
    as_json = run("backups", "show", str(backup["id"]), "-o", "json")
    assert json.loads(as_json.out) == backup and as_json.err == ""


def test_a_failed_backup_shows_its_reason(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "broken", status="failed", status_reason="storage full")
    shown = run("backups", "show", str(backup["id"]))
    assert shown.code == 0 and "storage full" in shown.out


def test_unknown_backup_and_bad_token_have_their_exit_codes(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = run("backups", "show", "999")
    assert missing.code == 3 and "backup not found" in one_error_line(missing)
    assert run("backups", "show", "0").code == 2  # ids are positive
    monkeypatch.setenv("VPSD_TOKEN", "wrong")
    refused = run("backups", "list")
    assert refused.code == 4 and "vpsctl login" in one_error_line(refused)


# --- create ----------------------------------------------------------------------------------


def test_create_sends_the_body_and_says_it_is_being_taken(run: Run, api: FakeApi) -> None:
    created = run("backups", "create", "--server", "1", "--name", "weekly-offsite")
    assert created.code == 0, created.err
    assert api.posts("/backups/") == [{"server_id": 1, "name": "weekly-offsite"}]
    assert "The backup is being taken." in created.err
    assert "in_progress" in created.out and "weekly-offsite" in created.out

    described = run("backups", "create", "-s", "1", "-n", "b2", "-d", "v1.4", "-o", "json")
    assert described.code == 0 and described.err == ""
    assert api.posts("/backups/")[-1] == {"server_id": 1, "name": "b2", "description": "v1.4"}
    assert json.loads(described.out)["message"] == "The backup is being taken."


def test_create_wait_shows_progress_then_the_completed_backup(run: Run, api: FakeApi) -> None:
    result = run("backups", "create", "-s", "1", "-n", "nightly", "--wait", "-o", "json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["status"] == "completed" and shown["stored_mb"] == 312
    assert "message" not in shown  # the GET body, once done
    assert f"backup {shown['id']}: in_progress" in result.err
    assert f"backup {shown['id']}: completed after" in result.err


def test_create_wait_on_a_failing_backup_exits_1_with_the_reason(run: Run, api: FakeApi) -> None:
    result = run("backups", "create", "-s", "1", "-n", "fail-1", "--wait")
    assert result.code == 1 and result.out == ""
    line = result.err.strip().splitlines()[-1]
    assert (
        line.startswith("error: backup ") and "(fail-1) failed: backup storage unreachable" in line
    )


def test_create_refusals_are_one_error_line(run: Run, api: FakeApi) -> None:
    for n in range(MAX_MANUAL):
        api.add_backup(1, f"b{n}")
    api.add_backup(1, "auto", type="automatic")  # automatic ones do not count
    limit = run("backups", "create", "-s", "1", "-n", "one-more")
    assert limit.code == 1 and "at most 10 manual backups" in one_error_line(limit)
    bad_name = run("backups", "create", "-s", "1", "-n", "no spaces")
    assert bad_name.code == 1 and "body.name" in one_error_line(bad_name)
    no_server = run("backups", "create", "-s", "99", "-n", "x")
    assert no_server.code == 3 and "server not found" in one_error_line(no_server)
    assert run("backups", "create", "-n", "x").code == 2  # --server is required


# --- restore, delete ---------------------------------------------------------------------------


def test_restore_and_delete_refuse_without_a_terminal(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "weekly")
    for command in ("restore", "delete"):
        refused = run("backups", command, str(backup["id"]))
        assert refused.code == 2
        assert "pass --yes" in one_error_line(refused)
    assert api.writes() == []
    assert backup["id"] in api.backups and api.servers[1]["status"] == "running"


def test_restore_asks_on_a_terminal_and_no_changes_nothing(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "weekly")
    declined = run("backups", "restore", str(backup["id"]), tty=True, stdin="n\n")
    assert declined.code == 1
    assert f"Restore server 1 (web-1) from backup {backup['id']} (weekly)?" in declined.err
    assert "nothing was changed" in declined.err
    assert api.writes() == []

    accepted = run("backups", "restore", str(backup["id"]), tty=True, stdin="y\n")
    assert accepted.code == 0, accepted.err
    assert api.writes() == [("POST", f"/api/v1/backups/{backup['id']}/restore/")]
    assert "Server is being restored from backup." in accepted.err


def test_restore_yes_json_prints_the_restore_answer(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "weekly")
    result = run("backups", "restore", str(backup["id"]), "--yes", "-o", "json")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["status"] == "success"
    assert answer["backup"] == {"id": backup["id"], "name": "weekly", "created_at": CREATED_AT}
    assert answer["server"] == {"id": 1, "name": "web-1", "status": "restoring"}


@pytest.mark.parametrize("power", ["running", "stopped"])
def test_restore_wait_ends_in_the_former_power_state(run: Run, api: FakeApi, power: str) -> None:
    api.servers[1]["status"] = power
    backup = api.add_backup(1, "weekly")
    result = run("backups", "restore", str(backup["id"]), "-y", "--wait", "-o", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == power
    assert "server 1: restoring" in result.err and f"server 1: {power} after" in result.err


def test_delete_with_yes(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "old")
    result = run("backups", "delete", str(backup["id"]), "--yes")
    assert result.code == 0, result.err
    assert result.out == "" and f"backup {backup['id']} deleted" in result.err
    assert backup["id"] not in api.backups
    again = run("backups", "delete", str(backup["id"]), "--yes")
    assert again.code == 3 and "backup not found" in one_error_line(again)


# --- policy ----------------------------------------------------------------------------------


def test_policy_shows_the_default_disabled_policy(run: Run, api: FakeApi) -> None:
    shown = run("backups", "policy", "1")
    assert shown.code == 0, shown.err
    assert field(shown.out, "Automatic backups") == "disabled"
    assert field(shown.out, "Keep") == "7"
    assert api.writes() == []
    as_json = json.loads(run("backups", "policy", "1", "-o", "json").out)
    assert as_json == {"enabled": False, "frequency": "daily", "hour": 3, "weekday": 6, "keep": 7}


def test_policy_set_sends_the_whole_policy(run: Run, api: FakeApi) -> None:
    result = run(
        "backups", "policy", "1", "--enable", "--frequency", "weekly", "--weekday", "sat",
        "--hour", "4", "--keep", "14",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert api.posts("/servers/1/backup-policy/") == [
        {"enabled": True, "frequency": "weekly", "hour": 4, "weekday": 5, "keep": 14}
    ]
    assert "weekly, Saturday at 04:00 UTC" in field(result.out, "Schedule")
    assert "2025-01-19 04:00:00Z" in field(result.out, "Next backup")


def test_policy_changes_only_what_is_given(run: Run, api: FakeApi) -> None:
    run("backups", "policy", "1", "--enable", "--frequency", "weekly", "--weekday", "2")
    changed = run("backups", "policy", "1", "--keep", "30", "-o", "json")
    assert changed.code == 0, changed.err
    assert api.posts("/servers/1/backup-policy/")[-1] == {
        "enabled": True, "frequency": "weekly", "hour": 3, "weekday": 2, "keep": 30
    }  # fmt: skip
    assert json.loads(changed.out)["keep"] == 30

    disabled = run("backups", "policy", "1", "--disable")
    assert disabled.code == 0 and "disabled" in field(disabled.out, "Automatic backups")
    assert api.posts("/servers/1/backup-policy/")[-1]["keep"] == 30  # kept for later

    hint = run("backups", "policy", "1", "--hour", "5")
    assert hint.code == 0 and "pass --enable" in hint.err


@pytest.mark.parametrize(
    "args", [("--weekday", "someday"), ("--weekday", "7"), ("--hour", "24"), ("--keep", "0"),
             ("--frequency", "hourly")]
)  # fmt: skip
def test_policy_bad_values_are_usage_errors(run: Run, api: FakeApi, args: tuple[str, str]) -> None:
    result = run("backups", "policy", "1", *args)
    assert result.code == 2, result.err
    assert api.writes() == []


def test_policy_of_an_unknown_server_is_not_found(run: Run) -> None:
    assert run("backups", "policy", "99").code == 3
    assert run("backups", "policy", "99", "--disable").code == 3


# --- servers create --from-snapshot / --from-backup ---------------------------------------------


def test_servers_create_from_a_backup_and_show_its_source(run: Run, api: FakeApi) -> None:
    backup = api.add_backup(1, "weekly")
    result = run(
        "servers", "create", "--name", "clone", "--disk-gb", "4", "--from-backup",
        str(backup["id"]), "--wait",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert api.posts("/servers/") == [{"name": "clone", "disk_gb": 4, "backup_id": backup["id"]}]
    assert "running after" in result.err
    assert field(result.out, "Status") == "running"
    assert f"backup {backup['id']}" in field(result.out, "Source")
    missing = run("servers", "create", "-n", "c2", "--disk-gb", "4", "--from-backup", "999")
    assert missing.code == 3 and "backup not found" in one_error_line(missing)


def test_servers_create_from_a_snapshot_shows_the_source(run: Run, api: FakeApi) -> None:
    result = run("servers", "create", "-n", "clone", "--disk-gb", "2", "--from-snapshot", "7")
    assert result.code == 0, result.err
    assert api.posts("/servers/") == [{"name": "clone", "disk_gb": 2, "snapshot_id": 7}]
    assert "snapshot 7" in field(result.out, "Source")
    server_id = json.loads(run("servers", "create", "-n", "c2", "--disk-gb", "2",
                               "--from-snapshot", "7", "-o", "json").out)["id"]  # fmt: skip
    assert api.servers[server_id]["source"] == {"snapshot_id": 7}


def test_servers_create_takes_one_source_at_most(run: Run, api: FakeApi) -> None:
    both = run(
        "servers", "create", "-n", "x", "--disk-gb", "2", "--from-snapshot", "1",
        "--from-backup", "2",
    )  # fmt: skip
    assert both.code == 2 and "not both" in one_error_line(both)
    assert api.sent == []
