"""SQLite: snapshots, servers and accounts hand out ids that are never used again

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28

Earlier batch migrations recreated these three tables on SQLite (copy, drop, rename) from
their reflected shape, which does not carry ``AUTOINCREMENT``. Without it SQLite gives a new
row the largest id in use plus one, so deleting the newest snapshot handed its id to the next
one: a client still holding the old id (to retry a delete, to restore) reached the new
snapshot. The load test caught it (a 204 for a delete, and the id still listed afterwards).

This recreates the tables with ``AUTOINCREMENT`` and starts each counter above every id the
database still mentions, including those of snapshots already deleted (their operations keep
the id). PostgreSQL's identity columns never reuse an id: nothing to do there.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

HIGHEST_IDS = {
    "accounts": ["SELECT max(id) FROM accounts"],
    "servers": [
        "SELECT max(id) FROM servers",
        "SELECT max(server_id) FROM operations",
    ],
    "snapshots": [
        "SELECT max(id) FROM snapshots",
        "SELECT max(snapshot_id) FROM operations",
        "SELECT max(source_snapshot_id) FROM servers",
    ],
}
"""Per table: queries for every id of it the database still holds, deleted rows' included."""


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, queries in HIGHEST_IDS.items():
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        _start_counter_above(table, queries)


def _start_counter_above(table: str, queries: list[str]) -> None:
    """Make ``table``'s next id larger than any the ``queries`` find."""
    bind = op.get_bind()
    highest = max((bind.scalar(text(query)) or 0 for query in queries), default=0)
    bind.execute(text("DELETE FROM sqlite_sequence WHERE name = :table"), {"table": table})
    if highest:
        bind.execute(
            text("INSERT INTO sqlite_sequence (name, seq) VALUES (:table, :seq)"),
            {"table": table, "seq": highest},
        )


def downgrade() -> None:
    """Nothing to undo: ids that are never reused are what the models always declared."""
