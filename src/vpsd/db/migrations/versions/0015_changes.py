"""changes: a command run in a server's guest between a snapshot and a health check, rolled
back when either fails

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("server_id", ID, nullable=False),
        sa.Column("snapshot_id", ID, nullable=True),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("health_check", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("keep_snapshot_hours", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("output_length", sa.BigInteger(), nullable=False),
        sa.Column("health", sa.JSON(), nullable=True),
        sa.Column("command_started_at", vpsd.db.base.UTCDateTime(), nullable=True),
        sa.Column("created_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.Column("finished_at", vpsd.db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_changes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            name=op.f("fk_changes_server_id_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_account_id_id", "changes", ["account_id", "id"])
    op.create_index("ix_changes_server_id", "changes", ["server_id"])


def downgrade() -> None:
    op.drop_index("ix_changes_server_id", table_name="changes")
    op.drop_index("ix_changes_account_id_id", table_name="changes")
    op.drop_table("changes")
