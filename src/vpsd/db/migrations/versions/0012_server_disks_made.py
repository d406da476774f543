"""servers record whether their disks were made (by their host's agent), so an API process
anywhere can refuse to start a copy whose disks never were

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Servers made before this revision: their disks were made unless their create failed,
    # and for those the host's start handler still refuses a copy with no disk.
    op.add_column(
        "servers",
        sa.Column("disks_made", sa.Boolean(), server_default=sa.true(), nullable=False),
    )


def downgrade() -> None:
    # Not a batch (it would recreate the table without SQLite's AUTOINCREMENT, see 0010):
    # SQLite drops a column in place since 3.35.
    op.drop_column("servers", "disks_made")
