"""The snapshot reads' fast path answers exactly what the response models would: the same
keys in the same order, the same times, the same bytes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text

from vpsd.api.presenters import snapshot_json
from vpsd.db.base import StoredTime, api_time
from vpsd.db.models import SnapshotStatus, SnapshotType
from vpsd.db.session import Database
from vpsd.schemas import SnapshotOut
from vpsd.services.snapshots import SnapshotView

MOMENT = datetime(2025, 1, 15, 18, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "stored",
    [
        "2025-01-15 18:30:05.000000",  # SQLite's text
        "2025-01-15 18:30:05",
        datetime(2025, 1, 15, 18, 30, 5),  # PostgreSQL's naive UTC datetime
        MOMENT,
    ],
)
def test_stored_times_read_as_the_api_shows_them(stored: StoredTime) -> None:
    assert api_time(stored) == "2025-01-15T18:30:05Z"


@pytest.mark.parametrize(
    ("description", "reason", "consistency", "size_mb", "pause_ms", "protected", "expires_at"),
    [
        (None, None, None, None, None, 0, None),  # SQLite's booleans are 0 and 1
        (
            'ünïcode "quoted" \n',
            "it failed",
            "crash",
            2048,
            380,
            True,
            "2025-01-16 18:30:05.250000",
        ),
        (None, None, "filesystem", 1, None, 1, datetime(2025, 1, 16, 18, 30, 5)),
    ],
)
def test_snapshot_json_is_byte_for_byte_the_models(
    description: str | None,
    reason: str | None,
    consistency: str | None,
    size_mb: int | None,
    pause_ms: int | None,
    protected: bool | int,
    expires_at: StoredTime | None,
) -> None:
    memory = pause_ms is not None
    view = SnapshotView(
        7, "before-update", SnapshotStatus.COMPLETED, size_mb, "2025-01-15 18:30:05.000000",
        description, reason, consistency, memory, pause_ms, SnapshotType.AUTOMATIC, protected,
        expires_at, 3, "web-01",
    )  # fmt: skip
    model = SnapshotOut.model_validate(
        {
            "id": 7,
            "server": {"id": 3, "name": "web-01"},
            "name": "before-update",
            "status": "completed",
            "size_mb": size_mb,
            "created_at": MOMENT,
            "description": description,
            "status_reason": reason,
            "consistency": consistency,
            "memory": memory,
            "pause_ms": pause_ms,
            "type": "automatic",
            "protected": bool(protected),
            "expires_at": None if expires_at is None else MOMENT + timedelta(days=1),
        }
    )
    fast = snapshot_json(view)
    assert list(fast) == list(SnapshotOut.model_fields)  # a new field must reach both
    assert orjson.dumps(fast) == model.model_dump_json().encode()


def test_reads_see_one_snapshot_and_survive_a_postgresql_restart(pg_database_url: str) -> None:
    """The hot reads keep a connection per thread: one whose server side went away (a
    PostgreSQL restart, an administrator's pg_terminate_backend) is replaced at once."""
    database = Database(pg_database_url)
    admin = Database(pg_database_url)
    try:
        [[(pid,)]] = database.fetch((text("SELECT pg_backend_pid()"), {}))
        # Several statements share one transaction: the same snapshot of the database.
        first, second = database.fetch(
            (text("SELECT txid_current_if_assigned(), now()"), {}),
            (text("SELECT now()"), {}),
        )
        assert first[0][1] == second[0][0]
        with admin.engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        [[(new_pid,)]] = database.fetch((text("SELECT pg_backend_pid()"), {}))
        assert new_pid != pid
    finally:
        database.dispose()
        admin.dispose()


def test_async_reads_overlap_and_survive_a_postgresql_restart(pg_database_url: str) -> None:
    """On PostgreSQL the event loop's reads await their round trips on a pool: a slow read
    does not hold up a quick one, and connections a restart broke are replaced."""
    database = Database(pg_database_url)
    admin = Database(pg_database_url)

    async def scenario() -> None:
        await database.open_async_reads()
        try:
            slow = asyncio.create_task(database.afetch((text("SELECT pg_sleep(1)"), {})))
            quick = asyncio.create_task(database.afetch((text("SELECT 1"), {})))
            done, _ = await asyncio.wait({slow, quick}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {quick}
            assert quick.result() == [[(1,)]]
            await slow
            first, second = await database.afetch(
                (text("SELECT now()"), {}), (text("SELECT now()"), {})
            )
            assert first == second  # one transaction: one snapshot of the database
            [[(pid,)]] = await database.afetch((text("SELECT pg_backend_pid()"), {}))
            with admin.engine.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            [[(new_pid,)]] = await database.afetch((text("SELECT pg_backend_pid()"), {}))
            assert new_pid != pid
        finally:
            await database.close_async_reads()

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()
        admin.dispose()
