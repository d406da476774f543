"""failed panel sign-ins in the database, counted by every API process alike

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vpsd.db.base

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sign_in_failures",
        sa.Column("id", ID, nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("failed_at", vpsd.db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_failures")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_sign_in_failures_key_hash_failed_at",
        "sign_in_failures",
        ["key_hash", "failed_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_sign_in_failures_failed_at"), "sign_in_failures", ["failed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sign_in_failures_failed_at"), table_name="sign_in_failures")
    op.drop_index("ix_sign_in_failures_key_hash_failed_at", table_name="sign_in_failures")
    op.drop_table("sign_in_failures")
