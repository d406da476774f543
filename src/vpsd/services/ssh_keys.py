"""SSH keys: an account's OpenSSH public keys, installed for root on servers created with them.

Keys are validated and fingerprinted by ``vpsd.sshkeys``. The key text itself is never
logged; logs name a key by id and fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session

from vpsd.db.models import Account, SshKey
from vpsd.db.session import Database
from vpsd.schemas import SshKeyCreate
from vpsd.services.common import PageRequest
from vpsd.services.errors import Invalid, LimitReached, NotFound
from vpsd.sshkeys import InvalidPublicKey, parse_public_key

log = logging.getLogger(__name__)

MAX_SSH_KEYS_PER_ACCOUNT = 100
PUBLIC_KEY_FIELD = "body.public_key"


@dataclass(frozen=True, slots=True)
class SshKeyView:
    """An SSH key as the API shows it: a plain value, not an ORM object."""

    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime


ViewRow = Row[int, str, str, str, datetime]


def _view_query() -> Select[int, str, str, str, datetime]:
    return select(SshKey.id, SshKey.name, SshKey.public_key, SshKey.fingerprint, SshKey.created_at)


def _view(row: ViewRow) -> SshKeyView:
    key_id, name, public_key, fingerprint, created_at = row
    return SshKeyView(key_id, name, public_key, fingerprint, created_at)


class SshKeyService:
    """The rules for an account's SSH keys; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, account_id: int, page: PageRequest) -> tuple[int, list[SshKeyView]]:
        """The account's keys, newest first: total count and one page."""
        with self.db.read() as session:
            count = session.scalar(
                select(func.count()).select_from(SshKey).where(SshKey.account_id == account_id)
            )
            rows = session.execute(
                _view_query()
                .where(SshKey.account_id == account_id)
                .order_by(SshKey.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
        return count or 0, [_view(row) for row in rows]

    def get(self, account_id: int, key_id: int) -> SshKeyView:
        """One of the account's keys; NotFound for others' and unknown ids."""
        with self.db.read() as session:
            row = session.execute(
                _view_query().where(SshKey.id == key_id, SshKey.account_id == account_id)
            ).first()
        if row is None:
            raise NotFound("ssh key not found")
        return _view(row)

    def create(self, account_id: int, request: SshKeyCreate) -> SshKeyView:
        """Save a validated, normalized public key under ``request.name``.

        Raises Invalid (``body.public_key``) for a key that is not acceptable or that the
        account already has, LimitReached when the account has the maximum of keys.
        """
        try:
            key = parse_public_key(request.public_key)
        except InvalidPublicKey as error:
            raise Invalid(PUBLIC_KEY_FIELD, str(error)) from None
        with self.db.write() as session:
            # One writer per account at a time: the count and the duplicate check hold.
            session.scalar(select(Account.id).where(Account.id == account_id).with_for_update())
            same = session.execute(
                select(SshKey.id, SshKey.name).where(
                    SshKey.account_id == account_id, SshKey.fingerprint == key.fingerprint
                )
            ).first()
            if same is not None:
                raise Invalid(
                    PUBLIC_KEY_FIELD, f"this key is already saved as {same.name} (id {same.id})"
                )
            saved = session.scalar(
                select(func.count()).select_from(SshKey).where(SshKey.account_id == account_id)
            )
            if (saved or 0) >= MAX_SSH_KEYS_PER_ACCOUNT:
                raise LimitReached(
                    f"ssh key limit reached: an account can have at most "
                    f"{MAX_SSH_KEYS_PER_ACCOUNT} keys; delete one first"
                )
            row = SshKey(
                account_id=account_id,
                name=request.name,
                public_key=key.line,
                fingerprint=key.fingerprint,
            )
            session.add(row)
            session.flush()
            view = SshKeyView(row.id, row.name, row.public_key, row.fingerprint, row.created_at)
        log.info("ssh key %d (%s) added to account %d", view.id, view.fingerprint, account_id)
        return view

    def delete(self, account_id: int, key_id: int) -> None:
        """Delete one of the account's keys; servers that already have it keep it."""
        with self.db.write() as session:
            row = session.scalar(
                select(SshKey).where(SshKey.id == key_id, SshKey.account_id == account_id)
            )
            if row is None:
                raise NotFound("ssh key not found")
            session.delete(row)
        log.info("ssh key %d deleted from account %d", key_id, account_id)


def resolve(session: Session, account_id: int, key_ids: Iterable[int]) -> list[str]:
    """The public key lines of the account's keys ``key_ids``, in the order given.

    Runs in the caller's transaction (it never commits). A repeated id is taken once.
    Raises NotFound("ssh key N not found") for the first id that is not the account's.
    """
    wanted = list(dict.fromkeys(key_ids))
    if not wanted:
        return []
    rows = session.execute(
        select(SshKey.id, SshKey.public_key).where(
            SshKey.account_id == account_id, SshKey.id.in_(wanted)
        )
    ).all()
    lines = {key_id: line for key_id, line in rows}
    for key_id in wanted:
        if key_id not in lines:
            raise NotFound(f"ssh key {key_id} not found")
    return [lines[key_id] for key_id in wanted]
