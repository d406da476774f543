"""guests: images, ssh keys, server identity and ports, snapshot consistency

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("os", sa.String(length=32), nullable=False),
        sa.Column("size_mb", sa.Integer(), nullable=False),
        sa.Column("min_disk_gb", sa.Integer(), nullable=False),
        sa.Column("min_memory_mb", sa.Integer(), nullable=False),
        sa.Column("cmdline", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("slug", "version", name=op.f("uq_images_slug")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_ssh_keys_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ssh_keys")),
        sa.UniqueConstraint("account_id", "fingerprint", name=op.f("uq_ssh_keys_account_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.create_index("ix_ssh_keys_account_id_id", ["account_id", "id"], unique=False)

    # Existing servers get an identity of their own before the column becomes required.
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uuid", sa.String(length=36), nullable=True))
    servers = sa.table("servers", sa.column("id", sa.Integer()), sa.column("uuid", sa.String()))
    connection = op.get_bind()
    for (server_id,) in connection.execute(sa.select(servers.c.id)).all():
        connection.execute(
            servers.update().where(servers.c.id == server_id).values(uuid=str(uuid.uuid4()))
        )
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.alter_column("uuid", existing_type=sa.String(length=36), nullable=False)
        batch_op.add_column(
            sa.Column(
                "image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.add_column(sa.Column("ssh_port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("authorized_keys", sa.Text(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_servers_ssh_port"), ["ssh_port"])
        batch_op.create_unique_constraint(batch_op.f("uq_servers_uuid"), ["uuid"])
        batch_op.create_foreign_key(
            batch_op.f("fk_servers_image_id_images"),
            "images",
            ["image_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consistency", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_column("consistency")

    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_servers_image_id_images"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_servers_uuid"), type_="unique")
        batch_op.drop_constraint(batch_op.f("uq_servers_ssh_port"), type_="unique")
        batch_op.drop_column("authorized_keys")
        batch_op.drop_column("ssh_port")
        batch_op.drop_column("image_id")
        batch_op.drop_column("uuid")

    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_ssh_keys_account_id_id")

    op.drop_table("ssh_keys")
    op.drop_table("images")
