"""what each host's agent last found when it looked at its backup repository

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_storage_checks",
        sa.Column("host_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("checked_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.Column("since", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_backup_storage_checks_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_backup_storage_checks")),
    )


def downgrade() -> None:
    op.drop_table("backup_storage_checks")
