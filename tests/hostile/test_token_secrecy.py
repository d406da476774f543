"""API tokens at rest and in logs: only their SHA-256 is stored, and no log line holds one.

A token is ``vpsd_`` + 43 random characters; its first 6 random characters are stored as a
``prefix`` that identifies it to operators, so "the token is present" is checked on the
rest of the secret (37 characters), which alone would be enough to guess nothing but is
never supposed to leave the client.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests import qemu_helpers as qh
from tests.helpers import ApiClient, wait_for
from tests.live_server import LiveServer, serving
from vpsd.config import Settings
from vpsd.db.base import Base
from vpsd.db.session import Database
from vpsd.services.tokens import TOKEN_PREFIX, create_token, revoke_token

SHOWN_PREFIX = len(TOKEN_PREFIX) + 6
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
JSON = {"Content-Type": "application/json"}


def secret_part(token: str) -> str:
    """The part of a token no one but its holder ever sees."""
    return token[SHOWN_PREFIX:]


def every_value(database: Database) -> list[tuple[str, str, Any]]:
    """(table, column, value) for every cell of every table."""
    cells = []
    with database.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                cells += [(table.name, column, value) for column, value in row.items()]
    return cells


def test_database_holds_only_hashes(
    settings: Settings, client: Any, alice: ApiClient, bob: ApiClient
) -> None:
    database = Database(settings.effective_database_url)
    try:
        revoked_info, revoked = create_token(database, "alice")
        revoke_token(database, revoked_info.id)
        tokens = [alice.token, bob.token, revoked]
        # use them, so any request-time bookkeeping would have written them somewhere
        assert alice.create_server("web-1")["id"]
        assert bob.get("/servers/").status_code == 200
        assert ApiClient(client, revoked).get("/servers/").status_code == 401

        cells = every_value(database)
        hashes = {value for table, column, value in cells if column == "token_hash"}
        assert hashes >= {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
        assert all(SHA256_HEX.match(value) for value in hashes)
        for table, column, value in cells:
            for token in tokens:
                assert secret_part(token) not in str(value), (table, column)
    finally:
        database.dispose()

    if settings.effective_database_url.startswith("sqlite"):
        files = sorted(settings.data_dir.glob("vpsd.db*"))  # the db, its -wal and -shm
        assert files
        raw = b"".join(path.read_bytes() for path in files)
        for token in tokens:
            assert secret_part(token).encode() not in raw


@pytest.mark.e2e
@pytest.mark.qemu
@qh.requires_qemu
def test_service_log_never_holds_a_token() -> None:
    # With the access log on (off by default), the log lines most likely to carry a header.
    with serving(access_log="true") as live_server:
        _exercise_and_check_the_log(live_server)


def _exercise_and_check_the_log(live_server: LiveServer) -> None:
    good = live_server.create_token("alice")
    created = live_server.cli("token", "create", "--account", "alice")
    revoked = created.stdout.strip().splitlines()[-1]
    revoked_id = re.search(r"token (\d+)", created.stderr)
    assert revoked_id, created.stderr
    unknown = TOKEN_PREFIX + secrets.token_urlsafe(32)
    not_ours = "ghp_" + secrets.token_urlsafe(30)  # another system's token, pasted by mistake

    assert live_server.client(good).get("/servers/").status_code == 200
    assert live_server.client(revoked).get("/servers/").status_code == 200
    live_server.cli("token", "revoke", revoked_id.group(1))
    # A revocation takes effect within VPSD_TOKEN_CACHE_SECONDS (2 s by default).
    wait_for(
        lambda: live_server.client(revoked).get("/servers/").status_code == 401,
        timeout=10,
        what="the revoked token to be refused",
    )
    for token in (revoked, unknown, not_ours):
        response = live_server.client(token).get("/servers/")
        assert response.status_code == 401, token[:SHOWN_PREFIX]
    # errors and odd requests, which are what tends to get logged with their headers
    api = live_server.client(good)
    assert api.post("/snapshots/", content=b"{", headers={"Content-Type": "x"}).status_code == 415
    assert api.post("/snapshots/", content=b"{", headers=JSON).status_code == 400
    assert api.get("/servers/0/").status_code == 400
    assert api.get("/snapshots/999/").status_code == 404

    live_server.stop()  # flush and close the log
    log = Path(live_server.log_path).read_text(errors="replace")
    assert "GET /api/v1/servers/" in log, "the log has the access lines the test relies on"
    for token in (good, revoked, unknown, not_ours):
        secret = secret_part(token) if token.startswith(TOKEN_PREFIX) else token
        assert secret not in log, f"token {token[:SHOWN_PREFIX]}... is in the service log"
    assert "Bearer" not in log.replace("WWW-Authenticate: Bearer", "")
