"""each host's SSH address, and servers' console tails mirrored for API processes elsewhere

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ssh_host", sa.String(length=255), nullable=True))
    op.create_table(
        "server_consoles",
        sa.Column("server_id", ID, nullable=False),
        sa.Column("tail", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["servers.id"],
            name=op.f("fk_server_consoles_server_id_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_server_consoles")),
    )


def downgrade() -> None:
    op.drop_table("server_consoles")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("ssh_host")
