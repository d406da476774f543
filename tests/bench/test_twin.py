"""The benchmark's lean twin (bench/twin.py) answers vpsd's snapshot reads byte for byte.

``python -m bench api`` reports vpsd's rate as a fraction of the twin's; the ratio means
something only while both do the same work and give the same answers. Both apps run
in-process on the same seeded database (SQLite and PostgreSQL), and every query below must
get the same status code and the same body bytes from each.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bench.api import seed_database
from bench.twin import Twin
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.models import Account, Server, Snapshot
from vpsd.db.session import Database
from vpsd.runtime.app import create_app
from vpsd.services.tokens import create_token, revoke_token

SERVERS = 30
ACCOUNTS = 3
ODD_TEXT = 'naïve ☃ "quoted" \\ back\tslash\nline \x01 \x7f \u2028 😀 </script>'


def _seed(db: Database) -> dict[str, Any]:
    """The bench's seed (small), plus snapshots in every state and awkward text."""
    seed_database(db, SERVERS, ACCOUNTS)
    with db.write() as session:
        accounts = list(session.scalars(select(Account.id).order_by(Account.id)))
        mine = list(
            session.scalars(
                select(Server.id).where(Server.account_id == accounts[0]).order_by(Server.id)
            )
        )
        theirs = session.scalar(
            select(Server.id).where(Server.account_id == accounts[1]).order_by(Server.id)
        )
        early = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)
        extra = [
            {"status": "in_progress", "size_mb": None, "description": None},
            {"status": "failed", "status_reason": "qemu-img: " + ODD_TEXT, "size_mb": None},
            {"status": "deleting", "name": "hidden"},
            {"status": "completed", "consistency": "filesystem", "description": ODD_TEXT},
            {"status": "completed", "consistency": "crash", "created_at": early},
        ]
        for values in extra:
            row = {
                "server_id": mine[1],
                "name": f"extra-{values['status']}",
                "description": "",
                "size_mb": 2048,
                "created_at": datetime.now(UTC) - timedelta(days=3),
                "completed_at": None,
                "status_reason": None,
                "consistency": None,
                **values,
            }
            session.execute(insert(Snapshot), [row])
        hidden = session.scalar(select(Snapshot.id).where(Snapshot.status == "deleting"))
        own = session.scalar(select(Snapshot.id).where(Snapshot.description == ODD_TEXT))
        other = session.scalar(select(Snapshot.id).where(Snapshot.server_id == theirs))
    _, token = create_token(db, "bench-000")
    revoked_info, revoked = create_token(db, "bench-000")
    revoke_token(db, revoked_info.id)
    return {
        "token": token,
        "revoked": revoked,
        "mine": mine,
        "theirs": theirs,
        "own": own,
        "other": other,
        "hidden": hidden,
    }


def _queries(ids: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    base = "/api/v1/snapshots/"
    auth = {"Authorization": f"Bearer {ids['token']}"}
    return [
        (base, auth),
        (f"{base}?page=2&page_size=7", auth),
        (f"{base}?page_size=7&page=3&server_id={ids['mine'][1]}", auth),
        (f"{base}?page=99&page_size=10", auth),
        (f"{base}?page=2&page_size=3&foo=a%20b&page=2", auth),
        (f"{base}?server_id={ids['mine'][1]}", auth),
        (f"{base}?server_id={ids['mine'][0]}&page_size=2", auth),
        (f"{base}?server_id={ids['theirs']}", auth),
        (f"{base}{ids['own']}/", auth),
        (f"{base}{ids['mine'][0] * 3}/", auth),
        (f"{base}{ids['other']}/", auth),
        (f"{base}{ids['hidden']}/", auth),
        (f"{base}999999/", auth),
        (base, {"Authorization": "Bearer vpsd_not-a-token"}),
        (base, {"Authorization": "Bearer not-even-the-prefix"}),
        (base, {"Authorization": f"Bearer {ids['revoked']}"}),
        (f"{base}{ids['own']}/", {"Authorization": f"Basic {ids['token']}"}),
        (base, {}),
        (f"{base}{ids['own']}/", {"Authorization": f"bearer   {ids['token']}  "}),
    ]


@pytest.fixture(params=[None, "https://vpsd.example/"], ids=["relative", "public-url"])
def both(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[Any, ...]]:
    """vpsd and the twin on the same seeded database; the ids the queries use."""
    settings = settings.model_copy(update={"public_url": request.param and "https://vpsd.example"})
    db = Database(settings.effective_database_url)
    try:
        migrate.upgrade(db)
        ids = _seed(db)
    finally:
        db.dispose()
    twin = Twin(settings.effective_database_url, request.param, settings.token_cache_seconds)
    with TestClient(create_app(settings)) as vpsd, TestClient(twin) as lean:
        yield vpsd, lean, ids


def test_the_twin_answers_every_query_byte_for_byte_as_vpsd(both: tuple[Any, ...]) -> None:
    vpsd, twin, ids = both
    checked = 0
    for url, headers in _queries(ids):
        for _ in range(2):  # the second time from the token caches
            expected = vpsd.get(url, headers=headers)
            got = twin.get(url, headers=headers)
            assert (got.status_code, got.content) == (expected.status_code, expected.content), url
            assert got.headers["content-type"] == expected.headers["content-type"], url
            assert got.headers.get("www-authenticate") == expected.headers.get(
                "www-authenticate"
            ), url
            checked += 1
    first = vpsd.get(_queries(ids)[0][0], headers=_queries(ids)[0][1]).json()
    assert first["count"] == (SERVERS // ACCOUNTS) * 5 + 4  # the deleting one is hidden
    assert ODD_TEXT in [item["description"] for item in first["results"]]
    assert checked == 2 * len(_queries(ids))
