"""The ``changes`` table: an update that rolls itself back (``vpsd.services.changes``).

Kept apart from ``models`` for size; ``models`` imports it, so Alembic sees its table."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vpsd.db.base import Base, UTCDateTime, utcnow

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite (as ``models.Id``).
Id = BigInteger().with_variant(Integer(), "sqlite")


class ChangeStatus(StrEnum):
    """How a change ended, or that it has not yet."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class ChangePhase(StrEnum):
    """Where a change is: each phase's result is recorded before the next begins, so a
    change interrupted by a restart goes on from there (``operations.change_handler``)."""

    SNAPSHOT = "snapshot"
    COMMAND = "command"
    HEALTH = "health"
    ROLLBACK = "rollback"
    DONE = "done"


class Change(Base):
    """A command run in a server's guest between a snapshot and a health check, rolled back
    to the snapshot when either fails."""

    __tablename__ = "changes"
    __table_args__ = (
        Index("ix_changes_account_id_id", "account_id", "id"),
        Index("ix_changes_server_id", "server_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    snapshot_id: Mapped[int | None] = mapped_column(Id)
    """The snapshot taken before the command (no foreign key: it may expire or be deleted)."""
    command: Mapped[str] = mapped_column(Text)
    health_check: Mapped[dict[str, Any]] = mapped_column(JSON)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    keep_snapshot_hours: Mapped[int] = mapped_column(Integer)
    status: Mapped[ChangeStatus] = mapped_column(String(16))
    phase: Mapped[ChangePhase] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str] = mapped_column(Text, default="")
    """The last ``OUTPUT_KEPT`` characters the command wrote (stdout and stderr)."""
    output_length: Mapped[int] = mapped_column(BigInteger, default=0)
    """How many characters it wrote in all: a client that printed N of them prints the rest."""
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    command_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
