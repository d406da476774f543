"""Signing in to the web panel: accounts' passwords (argon2id) and browsers' sessions.

A session's cookie holds 256 random bits; only their SHA-256 is stored, as for API tokens.
Each session has its own CSRF token, which every form and htmx request of the panel sends
back. A session ends when it expires, on sign-out, when the account's password changes,
and (signed in with an API token) when that token is revoked.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update

from vpsd.db.base import utcnow
from vpsd.db.models import Account, ApiToken, WebSession
from vpsd.db.session import Database
from vpsd.services.errors import Invalid
from vpsd.services.tokens import (
    ACCOUNT_NAME,
    Principal,
    account_named,
    find_live_token,
    hash_token,
)

PASSWORD_MIN_LENGTH = 8
"""NIST SP 800-63B's minimum for a password the user chose."""
PASSWORD_MAX_LENGTH = 1024
"""Long enough for any passphrase; short enough that hashing one costs nothing unusual."""

_hasher = PasswordHasher()  # argon2id, RFC 9106's second recommended parameters
_UNUSABLE = _hasher.hash(secrets.token_urlsafe(16))
"""Verified against when the account has no password, so a missing account costs a
sign-in as long as a wrong password (no account names learnt by timing)."""


def check_new_password(password: str) -> None:
    """``Invalid`` unless ``password`` is an acceptable new password."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise Invalid("password", f"passwords are at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise Invalid("password", f"passwords are at most {PASSWORD_MAX_LENGTH} characters")


def set_password(db: Database, account_name: str, password: str) -> bool:
    """Give ``account_name`` a new panel password (creating the account if new) and end its
    panel sessions; True when the account was created."""
    check_new_password(password)
    hashed = _hasher.hash(password)
    with db.write() as session:
        existed = session.scalar(select(Account.id).where(Account.name == account_name))
        account = account_named(session, account_name, create=True)
        account.password_hash = hashed
        session.execute(delete(WebSession).where(WebSession.account_id == account.id))
        return existed is None


def check_password(db: Database, account_name: str, password: str) -> Principal | None:
    """The account if ``password`` is its panel password, else None (no such account, no
    password set, or a wrong one: the three take the same time)."""
    if len(password) > PASSWORD_MAX_LENGTH:
        return None
    account = None
    with db.read() as session:
        if ACCOUNT_NAME.match(account_name):  # else no such account (nor a query with a NUL)
            account = session.scalar(select(Account).where(Account.name == account_name))
        stored = account.password_hash if account is not None else None
        principal = (
            Principal(account.id, account.name, account.is_admin) if account is not None else None
        )
    try:
        _hasher.verify(stored or _UNUSABLE, password)
    except (VerificationError, InvalidHashError):
        return None
    if stored is None or principal is None:
        return None
    if _hasher.check_needs_rehash(stored):
        with db.write() as session:
            session.execute(
                update(Account)
                .where(Account.id == principal.account_id)
                .values(password_hash=_hasher.hash(password))
            )
    return principal


def has_password(db: Database, account_id: int) -> bool:
    """Whether the account has a panel password (else it signs in with API tokens only)."""
    with db.read() as session:
        stored = session.scalar(select(Account.password_hash).where(Account.id == account_id))
    return stored is not None


def change_password(
    db: Database, principal: Principal, current: str, new: str, lifetime: timedelta
) -> str:
    """Give ``principal``'s account the panel password ``new``, end every session of the
    account, and open one for the browser that asked; the new session's secret.

    ``current`` must be the account's password when it has one (a session left open on a
    shared computer must not be enough to take the account over). ``Invalid`` for a wrong
    ``current`` (field ``current_password``) or an unacceptable ``new`` (``password``);
    then nothing changes.
    """
    check_new_password(new)
    if has_password(db, principal.account_id) and (
        check_password(db, principal.account_name, current) is None
    ):
        raise Invalid("current_password", "that is not this account's current password")
    set_password(db, principal.account_name, new)
    return open_session(db, principal, lifetime)


def check_token(db: Database, secret: str) -> tuple[Principal, int] | None:
    """The account and token id of a live API token, for signing in with it; else None."""
    return find_live_token(db, secret.strip())


@dataclass(frozen=True, slots=True)
class PanelSession:
    """A signed-in browser: who, and the CSRF token its forms must send."""

    id: int
    principal: Principal
    csrf_token: str

    def csrf_matches(self, sent: str | None) -> bool:
        """Whether ``sent`` is this session's CSRF token (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


def open_session(
    db: Database, principal: Principal, lifetime: timedelta, token_id: int | None = None
) -> str:
    """Start a session for ``principal`` lasting ``lifetime``; the cookie's secret. Expired
    sessions of any account are removed on the way."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at <= now))
        session.add(
            WebSession(
                account_id=principal.account_id,
                secret_hash=hash_token(secret),
                csrf_token=secrets.token_urlsafe(32),
                token_id=token_id,
                created_at=now,
                expires_at=now + lifetime,
            )
        )
    return secret


def find_session(db: Database, secret: str) -> PanelSession | None:
    """The live session whose cookie holds ``secret``, or None (unknown, expired, or its
    token revoked)."""
    if not secret or len(secret) > 128:
        return None
    with db.read() as session:
        row = session.execute(
            select(
                WebSession.id,
                WebSession.csrf_token,
                WebSession.expires_at,
                ApiToken.revoked_at,
                Account.id.label("account_id"),
                Account.name,
                Account.is_admin,
            )
            .join(Account, Account.id == WebSession.account_id)
            .outerjoin(ApiToken, ApiToken.id == WebSession.token_id)
            .where(WebSession.secret_hash == hash_token(secret))
        ).first()
    if row is None or row.expires_at <= utcnow() or row.revoked_at is not None:
        return None
    return PanelSession(row.id, Principal(row.account_id, row.name, row.is_admin), row.csrf_token)


def close_session(db: Database, session_id: int) -> None:
    """End a session (sign-out); ending an ended one changes nothing."""
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.id == session_id))
