"""Fixtures shared by every suite: databases on both backends, settings, an app client."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from tests.qemu_helpers import short_tmpdir
from vpsd.agent.heartbeat import measure_capacity, register
from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.base import Base
from vpsd.db.session import Database

PG_ADMIN_URL = os.environ.get("VPSD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty data dir, removed after the test."""
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (not migrated), dropped afterwards; yields its URL."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"vpsd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, migrated, dropped at the end."""
    with fresh_pg_database() as url:
        database = Database(url)
        migrate.upgrade(database)
        database.dispose()
        yield url


def _truncate_all(url: str) -> None:
    database = Database(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    database.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, data_dir: Path) -> str:
    """A migrated, empty database: SQLite in the data dir, or this session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{data_dir / 'vpsd.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(data_dir: Path, database_url: str) -> Settings:
    """Settings for a test: its own data dir and database, the fake driver, fast timeouts,
    blank servers unless a test asks for an image."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        driver="fake",
        default_image="blank",
        # Hermetic: not this host's cache of built images.
        image_cache_dir=data_dir / "image-cache",
        stop_timeout=0.5,
        monitor_interval=0.2,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """The test's database (``settings``), migrated, with this host registered as
    ``vpsd serve`` does at start; for tests that call services directly."""
    database = Database(settings.effective_database_url)
    migrate.upgrade(database)
    register(database, settings, measure_capacity(settings))
    yield database
    database.dispose()
