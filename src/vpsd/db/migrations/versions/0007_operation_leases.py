"""operations' leases (who runs them, last renewed) and when they were last published

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", vpsd.db.base.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", vpsd.db.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("claimed_by")
