"""Migrations carry existing rows forward: data written by an older vpsd, upgraded."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from vpsd.db import migrate
from vpsd.db.session import Database

ROWS = """
INSERT INTO accounts (id, name, created_at) VALUES (1, 'alice', '2026-01-01 00:00:00');
INSERT INTO servers (id, account_id, name, status, memory_mb, vcpus, disk_gb, created_at,
                     updated_at)
    VALUES (7, 1, 'web', 'running', 256, 1, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO snapshots (id, server_id, name, status, created_at)
    VALUES (12, 7, 'before', 'completed', '2026-01-01 00:00:00');
"""


def test_rows_of_the_first_release_survive_every_migration(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
            connection.commit()
        _reset(database)
        config = migrate.alembic_config(database)
        with database.engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            for statement in filter(str.strip, ROWS.split(";")):
                connection.execute(text(statement))
            connection.commit()
        migrate.upgrade(database)
        with database.engine.connect() as connection:
            uuid = connection.scalar(text("SELECT uuid FROM servers WHERE id = 7"))
            tag = connection.scalar(text("SELECT tag FROM snapshots WHERE id = 12"))
        assert uuid is not None and len(uuid) == 36  # an identity of its own (0002)
        assert tag == "vpsd-snap-12", tag  # the tag it has on disk (0004)
    finally:
        database.dispose()


def _reset(database: Database) -> None:
    """Drop every table (the fixture's database is migrated already)."""
    with database.engine.begin() as connection:
        if database.is_sqlite:
            names = connection.scalars(
                text(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ).all()
            connection.execute(text("PRAGMA foreign_keys = OFF"))
            for name in names:
                connection.execute(text(f'DROP TABLE "{name}"'))
        else:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
