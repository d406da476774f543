"""snapshots: manual or automatic, protected, expiring; snapshot policies

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10

Numbered 0014 because another branch adds 0013; whoever merges both points this one's
``down_revision`` at 0013.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Columns and indexes added in place, never a batch: a batch recreates the table on
    # SQLite without its AUTOINCREMENT (see 0010). Existing snapshots are manual ones.
    op.add_column(
        "snapshots",
        sa.Column("type", sa.String(length=16), server_default="manual", nullable=False),
    )
    op.add_column(
        "snapshots",
        sa.Column("protected", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("snapshots", sa.Column("expires_at", vpsd.db.base.UTCDateTime(), nullable=True))
    op.add_column("snapshots", sa.Column("slot", vpsd.db.base.UTCDateTime(), nullable=True))
    op.create_index("ix_snapshots_expires_at", "snapshots", ["expires_at"], unique=False)
    op.create_index("uq_snapshots_server_id_slot", "snapshots", ["server_id", "slot"], unique=True)
    op.create_table(
        "snapshot_policies",
        sa.Column(
            "server_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("frequency", sa.String(length=16), nullable=False),
        sa.Column("minute", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("keep", sa.Integer(), nullable=False),
        sa.Column("updated_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.Column("skipped_slot", vpsd.db.base.UTCDateTime(), nullable=True),
        sa.Column("skipped_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            name=op.f("fk_snapshot_policies_server_id_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_snapshot_policies")),
    )


def downgrade() -> None:
    op.drop_table("snapshot_policies")
    op.drop_index("uq_snapshots_server_id_slot", table_name="snapshots")
    op.drop_index("ix_snapshots_expires_at", table_name="snapshots")
    # SQLite drops a column in place since 3.35 (no batch: see upgrade).
    for column in ("slot", "expires_at", "protected", "type"):
        op.drop_column("snapshots", column)
