"""Migrations carry existing rows forward: data written by an older vpsd, upgraded."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import text

from vpsd.db import migrate
from vpsd.db.base import Base
from vpsd.db.models import Server, Snapshot, SnapshotStatus
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


def test_every_table_that_declares_never_reused_ids_has_them_on_sqlite(tmp_path: Path) -> None:
    """A batch migration recreates a SQLite table from its reflected shape, which loses
    ``AUTOINCREMENT``: a new migration that does so must put it back (as 0010 did)."""
    database = Database(f"sqlite:///{tmp_path / 'vpsd.db'}")
    try:
        migrate.upgrade(database)
        with database.engine.connect() as connection:
            tables = text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            schema = {name: sql for name, sql in connection.execute(tables)}
    finally:
        database.dispose()
    declared = [t.name for t in Base.metadata.sorted_tables if t.kwargs.get("sqlite_autoincrement")]
    assert {"snapshots", "servers", "accounts"} <= set(declared)
    missing = [name for name in declared if "AUTOINCREMENT" not in schema[name]]
    assert not missing, missing


def test_ids_of_snapshots_deleted_before_the_upgrade_stay_unused(tmp_path: Path) -> None:
    """Upgraded from 0009, where SQLite could hand a deleted snapshot's id out again: the next
    snapshot's id is above every id the database still mentions (snapshot 30 is gone, its
    operation remains)."""
    database = Database(f"sqlite:///{tmp_path / 'vpsd.db'}")
    try:
        config = migrate.alembic_config(database)
        with database.engine.connect() as connection:
            config.attributes["connection"] = connection
            # as migrate.upgrade runs them: batch migrations recreate tables
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
            command.upgrade(config, "0001")
            for statement in filter(str.strip, ROWS.split(";")):
                connection.execute(text(statement))
            command.upgrade(config, "0009")
            connection.execute(text(DELETED_SNAPSHOTS_OPERATION))
            connection.commit()
        migrate.upgrade(database)
        with database.write() as session:
            server = session.get(Server, 7)
            assert server is not None
            snapshot = Snapshot(server=server, name="next", status=SnapshotStatus.IN_PROGRESS)
            session.add(snapshot)
            session.flush()
            assert snapshot.id == 31
        with database.read() as session:
            assert session.get(Snapshot, 12) is not None  # the rows came along
    finally:
        database.dispose()


DELETED_SNAPSHOTS_OPERATION = """
INSERT INTO operations (id, kind, server_id, snapshot_id, status, payload, attempts,
                        created_at)
    VALUES (3, 'snapshot.delete', 7, 30, 'completed', '{}', 1, '2026-01-02 00:00:00');
"""
