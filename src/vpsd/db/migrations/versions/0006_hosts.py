"""hosts, the server's host and the admin flag

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Float(), nullable=False),
        sa.Column("cpu_overcommit", sa.Float(), nullable=False),
        sa.Column("memory_overcommit", sa.Float(), nullable=False),
        sa.Column("disk_overcommit", sa.Float(), nullable=False),
        sa.Column("last_heartbeat_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.Column("created_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host_id", ID, nullable=True))
        batch_op.create_index(batch_op.f("ix_servers_host_id"), ["host_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_servers_host_id_hosts"), "hosts", ["host_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_servers_host_id_hosts"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_servers_host_id"))
        batch_op.drop_column("host_id")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
    op.drop_table("hosts")
