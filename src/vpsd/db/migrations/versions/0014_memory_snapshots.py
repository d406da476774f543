"""snapshots may hold the VM's memory: whether they do, the pause it cost, and the stamp of
what can resume it

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, not a batch: SQLite keeps the table (and its AUTOINCREMENT, 0010).
    op.add_column(
        "snapshots",
        sa.Column("memory", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("snapshots", sa.Column("pause_ms", sa.Integer(), nullable=True))
    op.add_column("snapshots", sa.Column("saved_state", sa.JSON(), nullable=True))


def downgrade() -> None:
    for column in ("saved_state", "pause_ms", "memory"):
        op.drop_column("snapshots", column)
