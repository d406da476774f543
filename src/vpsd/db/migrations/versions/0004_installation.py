"""installation identity and snapshot tags no database reuses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installation_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    # Existing snapshots keep the tag they have on disk (made from their id).
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tag", sa.String(length=64), nullable=True))
    snapshots = sa.table("snapshots", sa.column("id", sa.Integer()), sa.column("tag", sa.String()))
    op.execute(snapshots.update().values(tag="vpsd-snap-" + sa.cast(snapshots.c.id, sa.String())))
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.alter_column("tag", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_snapshots_tag"), ["tag"])


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_snapshots_tag"), type_="unique")
        batch_op.drop_column("tag")
    op.drop_table("installation")
