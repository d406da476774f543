"""Replays of the attacks on the ``vpsd serve`` process itself (issue 10, findings 2, 4, 5,
10 and 13): descriptor exhaustion by slow clients, two instances on one data dir, a taken
port, world-readable data, answers outside the JSON error shape, and a token made for
another data dir than the one served.

Each test starts real ``vpsd serve`` processes on 127.0.0.1, on the fake driver unless it
checks files QEMU makes, and is bounded to a few seconds of waiting.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import shlex
import shutil
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import qemu_helpers as qh
from tests.conftest import fresh_pg_database
from tests.helpers import wait_for
from tests.live_server import VPSD, LiveServer, free_port
from vpsd.runtime import instance

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2.0
"""VPSD_HEADER_TIMEOUT_SECONDS in these tests (20 s by default)."""
FLOOD_HEADER_TIMEOUT = 6.0


class LimitedServer(LiveServer):
    """A ``LiveServer`` whose ``vpsd serve`` runs under a command prefix (``prlimit``)."""

    def __init__(self, data_dir: Path, prefix: list[str], **settings: str) -> None:
        super().__init__(data_dir, **settings)
        self.prefix = prefix

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, VPSD, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._ready, timeout, interval=0.1, what=f"vpsd serve on {self.base_url}")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short, empty data dir; VMs started below it are killed and it is removed after."""
    root = qh.short_tmpdir()
    try:
        yield root
    finally:
        qh.kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def started() -> Iterator[list[LiveServer]]:
    """Servers a test starts (append them); closed at teardown, even after a failure."""
    servers: list[LiveServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def _fake(data_dir: Path, started: list[LiveServer], **settings: str) -> LiveServer:
    server = LiveServer(data_dir, driver="fake", **settings)
    started.append(server)
    server.start()
    return server


def _second_serve(server: LiveServer, port: int) -> subprocess.CompletedProcess[str]:
    """Run another ``vpsd serve`` with ``server``'s settings; it must exit by itself."""
    return subprocess.run(
        [VPSD, "serve", "--port", str(port)],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection; everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _status_and_json(answer: bytes) -> tuple[int, str, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("content-type", ""), json.loads(body)


def _sql(data_dir: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "vpsd.db", timeout=30) as db:
        rows = db.execute(query, args).fetchall()
    db.close()
    return rows


def _interrupted_operation(server: LiveServer, token: str) -> tuple[int, int]:
    """A server created through the API whose operation is then marked ``running`` again,
    as a vpsd executing it would leave it: the running vpsd leaves such a row alone, the
    start-up recovery of a new one would run it again. Returns (operation id, attempts)."""
    client = server.client(token)
    sid = client.create_server("victim")["id"]
    client.wait_server(sid, "running")
    [(op_id, attempts)] = _sql(
        server.data_dir,
        "SELECT id, attempts FROM operations WHERE server_id = ? ORDER BY id DESC LIMIT 1",
        sid,
    )
    with sqlite3.connect(server.data_dir / "vpsd.db", timeout=30) as db:
        db.execute("UPDATE operations SET status = 'running' WHERE id = ?", (op_id,))
    db.close()
    assert isinstance(op_id, int) and isinstance(attempts, int)
    return op_id, attempts


# -- finding 2: descriptor exhaustion by slow clients ---------------------------------------


def _hold_partial_headers(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /api/v1/servers/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-" + b"%d" % i)
        sockets.append(sock)
    return sockets


def _wait_all_closed(sockets: list[socket.socket], deadline: float) -> dict[int, int]:
    """Read every socket until the server closes it; fail at ``deadline``. Returns how
    many connections ended with each status (0: closed without an answer)."""
    statuses: dict[int, int] = {}
    answers = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while answers:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(answers)} partial-header connections still open"
            for key, _ in selector.select(timeout=left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    answers[sock] += chunk
                    continue
                answer = answers.pop(sock)
                selector.unregister(sock)
                status = _status_and_json(answer)[0] if answer else 0
                statuses[status] = statuses.get(status, 0) + 1
    return statuses


def test_partial_header_flood_under_1024_descriptors_keeps_the_api_answering(
    scratch: Path, started: list[LiveServer]
) -> None:
    """1,100 connections each sending part of a request header took the API down with
    ``ulimit -n 1024`` (finding 2). Now the connections beyond the cap shed the longest-idle
    ones, every other client is served at once, and each partial header is closed within
    the header timeout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        if hard != resource.RLIM_INFINITY and hard < 1400:
            pytest.skip(f"this test needs 1400 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1400, hard))
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    server = LimitedServer(
        scratch,
        ["prlimit", "--nofile=1024:1024", "--"],
        driver="fake",
        # Longer than the flood takes (a few SYNs are dropped while the accept queue is full:
        # 1 s each), so the connection cap, not the timeout, keeps the API answering.
        header_timeout_seconds=str(FLOOD_HEADER_TIMEOUT),
    )
    started.append(server)
    server.start()
    token = server.create_token("alice")
    assert server.process is not None
    pid = server.process.pid
    limits = Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1].split()
    assert limits[:2] == ["1024", "1024"], limits

    flood = _hold_partial_headers(server.port, 1100)
    try:
        flooded = time.monotonic()
        descriptors = len(os.listdir(f"/proc/{pid}/fd"))
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            started_at = time.monotonic()
            assert client.get("/healthz").status_code == 200
            answer = client.get("/api/v1/servers/", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started_at < 3
        statuses = _wait_all_closed(flood, flooded + FLOOD_HEADER_TIMEOUT + 3)
    finally:
        for sock in flood:
            sock.close()
    # At most 512 connections (1024 less the reserve): the oldest were shed with 503 to
    # make room, the newest timed out with 408.
    assert descriptors < 1024 - 256, descriptors
    assert set(statuses) <= {408, 503}, statuses
    assert 1100 - 512 <= statuses.get(503, 0) <= 1100 - 400, statuses
    assert "Too many open files" not in server.log()
    assert "out of system resource" not in server.log()
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        assert client.get("/healthz").status_code == 200


def test_a_header_that_never_completes_gets_408_in_the_json_shape(
    scratch: Path, started: list[LiveServer]
) -> None:
    server = _fake(scratch, started, header_timeout_seconds=str(HEADER_TIMEOUT))
    began = time.monotonic()
    answer = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=HEADER_TIMEOUT + 5)
    assert HEADER_TIMEOUT - 0.5 < time.monotonic() - began < HEADER_TIMEOUT + 2
    status, content_type, body = _status_and_json(answer)
    assert (status, content_type) == (408, "application/json")
    assert body == {"detail": "the request header did not arrive within 2 s", "errors": []}


def test_a_body_that_never_completes_gets_408(scratch: Path, started: list[LiveServer]) -> None:
    """The same attack one step later (a complete header, a body that never ends) would
    hold a connection and a request thread for ever."""
    server = _fake(scratch, started, header_timeout_seconds=str(HEADER_TIMEOUT))
    token = server.create_token("alice")
    request = (
        b"POST /api/v1/servers/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b'\r\nContent-Length: 100\r\n\r\n{"na'
    )
    began = time.monotonic()
    answer = _raw(server.port, request, timeout=HEADER_TIMEOUT + 5)
    assert time.monotonic() - began < HEADER_TIMEOUT + 2
    status, _, body = _status_and_json(answer)
    assert status == 408, answer
    assert body == {"detail": "the request body did not arrive within 2 s", "errors": []}
    assert server.client(token).get("/servers/").json()["count"] == 0


def test_beyond_the_connection_cap_idle_connections_make_room_else_503(
    scratch: Path, started: list[LiveServer]
) -> None:
    server = _fake(scratch, started, max_connections="2", header_timeout_seconds="30")
    token = server.create_token("alice")
    idle = _hold_partial_headers(server.port, 2)
    try:
        # Idle connections (a header under way) are shed, oldest first, for new ones.
        assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
        status, content_type, body = _status_and_json(_raw_rest(idle[0]))
        assert (status, content_type) == (503, "application/json")
        assert body["errors"] == [] and "too many open connections" in str(body["detail"])
    finally:
        for sock in idle:
            sock.close()
    # Requests under way are never shed: a new request gets 503 until one ends.
    head = (
        b"POST /api/v1/servers/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    busy = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(head)
        time.sleep(0.3)
        answer = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, content_type, body = _status_and_json(answer)
        assert (status, content_type) == (503, "application/json"), answer
        assert set(body) == {"detail", "errors"}
    finally:
        for sock in busy:
            sock.close()
    wait_for(
        lambda: httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200,
        5,
        what="a slot to be free again",
    )


def _raw_rest(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


# -- finding 10: the web server's own answers ------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "detail"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
            400,
            "malformed HTTP request: invalid character in Content-Length",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "malformed HTTP request: duplicate Content-Length",
        ),
        (
            b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "malformed HTTP request: unknown method",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
            431,
            "the request header is larger than 32768 bytes",
        ),
    ],
    ids=["content-length", "two-content-lengths", "unknown-method", "huge-header"],
)
def test_unparsable_requests_get_the_json_error_shape(
    scratch: Path, started: list[LiveServer], request_bytes: bytes, status: int, detail: str
) -> None:
    server = _fake(scratch, started)
    answer = _raw(server.port, request_bytes)
    assert _status_and_json(answer) == (
        status,
        "application/json",
        {"detail": detail, "errors": []},
    )


# -- finding 4: two instances on one data dir ------------------------------------------------


@pytest.mark.parametrize("port", ["same", "other"])
def test_a_second_serve_on_the_same_data_dir_is_refused_before_recovery(
    scratch: Path, started: list[LiveServer], port: str
) -> None:
    """A second ``vpsd serve`` on the data dir re-ran the first one's operations in its
    start-up recovery, even when its port was taken (finding 4)."""
    first = _fake(scratch, started)
    token = first.create_token("alice")  # CLI commands do not take the lock
    op_id, attempts = _interrupted_operation(first, token)
    assert first.process is not None
    second = _second_serve(first, first.port if port == "same" else free_port())
    assert second.returncode == 1, second.stderr
    message = second.stderr.strip().splitlines()[-1]
    assert message == (
        f"error: data dir {scratch} is in use by vpsd pid {first.process.pid}, serving "
        f"{first.base_url}: stop it first, or give this one another --data-dir"
    )
    assert "alembic" not in second.stderr and "Started server process" not in second.stderr
    query = "SELECT status, attempts FROM operations WHERE id = ?"
    assert _sql(scratch, query, op_id) == [("running", attempts)]
    client = first.client(token)
    assert client.get("/servers/").status_code == 200
    assert (scratch / "vpsd.lock").read_text().split()[0] == str(first.process.pid)
    assert first.cli("token", "list").returncode == 0


def test_a_taken_port_stops_serve_before_recovery(scratch: Path, started: list[LiveServer]) -> None:
    first = _fake(scratch, started)
    token = first.create_token("alice")
    op_id, attempts = _interrupted_operation(first, token)
    first.stop()  # gracefully: the row stays `running`, for the next start to recover
    query = "SELECT status, attempts FROM operations WHERE id = ?"
    assert _sql(scratch, query, op_id) == [("running", attempts)]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        refused = _second_serve(first, port)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert _sql(scratch, query, op_id) == [("running", attempts)]
    # The control: a start that binds does recover it (and the refused one left no lock).
    first.start()
    wait_for(
        lambda: _sql(scratch, query, op_id) == [("completed", attempts + 1)],
        10,
        what="the recovered operation to run again",
    )


def test_postgresql_advisory_lock_refuses_a_second_instance(
    scratch: Path, started: list[LiveServer]
) -> None:
    """On PostgreSQL the data dir is also locked in the database: another host given the
    same database and data dir path is refused (the flock cannot see it). The test process
    holds that lock in its place."""
    with fresh_pg_database() as url:
        holder = instance.lock_database(url, scratch)
        assert holder is not None
        try:
            with pytest.raises(instance.StartupError, match="is in use on database"):
                instance.lock_database(url, scratch)
            server = LiveServer(scratch, database_url=url, driver="fake")
            refused = _second_serve(server, free_port())
            assert refused.returncode == 1, refused.stderr
            message = refused.stderr.strip().splitlines()[-1]
            assert message.startswith(f"error: data dir {scratch} is in use on database ")
            assert f"by vpsd pid {os.getpid()} on {socket.gethostname()}" in message
            assert f"database {url} by" in message
        finally:
            holder.close()
        with pytest.raises(instance.StartupError) as refused_connection:
            instance.lock_database("postgresql://vpsd:secret@127.0.0.1:1/vpsd", scratch)
        assert str(refused_connection.value).startswith(
            "cannot lock the database postgresql://vpsd:***@127.0.0.1:1/vpsd: "
        )
        # Released: now it starts (and migrates the database it found locked before).
        server = LiveServer(scratch, database_url=url, driver="fake")
        started.append(server)
        server.start()
        server.close()


# -- finding 5: world-readable data -----------------------------------------------------------


def _loose(path: Path) -> bool:
    return bool(path.lstat().st_mode & 0o077)


def _readable_by_nobody(path: Path) -> bool:
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "head", "-c", "1", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


@pytest.mark.qemu
@qh.requires_qemu
def test_disks_database_and_logs_are_private_to_vpsd(
    scratch: Path, started: list[LiveServer]
) -> None:
    """``nobody`` read qcow2 bytes and token hashes (finding 5). Now the data dir is 0700
    and what vpsd and QEMU write in it 0600; a data dir left loose is tightened at start."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("reading as another user needs root and runuser")
    scratch.chmod(0o755)  # as mkdir(1) would leave it
    server = LiveServer(scratch)  # the QEMU driver: QEMU creates the disk and its files
    started.append(server)
    server.start()
    client = server.client(server.create_token("alice"))
    answer = client.post("/servers/", json={"name": "a", "disk_gb": 1, "image": "blank"})
    assert answer.status_code in (200, 201, 202), answer.text
    sid = answer.json()["id"]
    client.wait_server(sid, "running")

    disk = next(scratch.glob("servers/**/*.qcow2"))
    log = next(scratch.glob("servers/**/qemu.log"))
    secrets = [scratch / "vpsd.db", disk, log]
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    assert stat.S_IMODE(disk.parent.stat().st_mode) == 0o700
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not _readable_by_nobody(path), path
    # Nothing is open to the group or others, not even what QEMU creates after it has set
    # its own umask (027) once daemonized: the console log, sockets, pidfile.
    kept = [*scratch.glob("vpsd.*"), *(scratch / "servers").rglob("*")]
    assert [p for p in kept if p.lstat().st_mode & 0o077] == []
    assert [p for p in kept if p.is_dir() and _loose(p)] == []
    assert not _readable_by_nobody(next(scratch.glob("servers/**/console.log")))

    # An older vpsd left everything loose: the next start tightens it.
    assert client.post(f"/servers/{sid}/stop/").status_code == 200
    client.wait_server(sid, "stopped")
    server.stop()
    scratch.chmod(0o755)
    for path in [scratch / "servers", disk.parent, *secrets]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert _readable_by_nobody(disk)
    server.start()
    assert [p for p in [scratch, *(scratch / "servers").rglob("*"), *secrets] if _loose(p)] == []
    assert not any(_readable_by_nobody(path) for path in secrets)


def test_cli_commands_write_private_files(scratch: Path) -> None:
    data_dir = scratch / "fresh"
    env = {**os.environ, "VPSD_DATA_DIR": str(data_dir)}
    subprocess.run([VPSD, "token", "create", "--account", "alice"], env=env, check=True)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert [p for p in data_dir.rglob("*") if _loose(p)] == []


# -- finding 13: the token command of the data dir served ------------------------------------


def test_serve_says_which_data_dir_and_database_and_how_to_make_its_tokens(
    scratch: Path, started: list[LiveServer]
) -> None:
    """``vpsd token create`` without ``--data-dir`` wrote into another data dir than the
    one served, and the token got a bare 401 (finding 13)."""
    server = _fake(scratch, started)
    log = server.log()
    assert f"data dir {scratch}, database sqlite:///{scratch}/vpsd.db, driver fake" in log
    [hint] = [line for line in log.splitlines() if line.startswith("API tokens for this")]
    command = shlex.split(hint.split(": ", 1)[1].replace("NAME", "carol"))
    assert command[0] == VPSD and command[-2:] == ["--data-dir", str(scratch)]
    env = {k: v for k, v in os.environ.items() if k != "VPSD_DATA_DIR"}
    created = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    token = created.stdout.strip().splitlines()[-1]
    assert server.client(token).get("/servers/").status_code == 200
    unknown = server.client("vpsd_" + "x" * 40).get("/servers/")
    assert unknown.status_code == 401
    assert set(unknown.json()) == {"detail", "errors"}
    assert str(scratch) not in unknown.text
