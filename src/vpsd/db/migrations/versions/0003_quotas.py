"""quotas: per-account overrides of the default quotas (None: the settings' default)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quota_servers", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("quota_vcpus", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("quota_memory_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("quota_disk_gb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("quota_disk_gb")
        batch_op.drop_column("quota_memory_mb")
        batch_op.drop_column("quota_vcpus")
        batch_op.drop_column("quota_servers")
