"""Alembic, driven from code: ``upgrade`` at start-up, ``check`` in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from vpsd.db.session import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works: it only has to be the same in every vpsd process.
PG_MIGRATION_LOCK = 7_205_830_411


def alembic_config(database: Database) -> Config:
    """An Alembic config for ``database`` that needs no alembic.ini on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return config


def upgrade(database: Database) -> None:
    """Apply every pending migration. Safe when several processes start at once.

    On SQLite, foreign keys are off while migrations run: a "batch" migration recreates a
    table (copy, drop, rename), and dropping a table with ``ON DELETE CASCADE`` children
    would delete every child row. They are checked once the migrations are done.
    """
    config = alembic_config(database)
    with database.engine.connect() as connection:
        if database.is_sqlite:
            # Outside any transaction (the pragma is a no-op inside one): on the raw
            # connection, before SQLAlchemy begins one.
            _raw(connection).execute("PRAGMA foreign_keys = OFF")
        else:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if database.is_sqlite:
                raw = _raw(connection)
                raw.execute("PRAGMA foreign_keys = ON")
                dangling = raw.execute("PRAGMA foreign_key_check").fetchall()
                if dangling:
                    raise RuntimeError(f"migrations left rows without their parent: {dangling}")
            else:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK}
                )
                connection.commit()


def _raw(connection: Connection) -> Any:
    """The DB-API connection under ``connection`` (sqlite3's, in autocommit mode)."""
    raw = connection.connection.driver_connection
    assert raw is not None, "the connection is closed"
    return raw


def check(database: Database) -> None:
    """Raise if the models have changes that no migration describes."""
    config = alembic_config(database)
    with database.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)
