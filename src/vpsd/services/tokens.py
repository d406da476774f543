"""Accounts and their API tokens. Only a SHA-256 of each token is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vpsd.db.base import utcnow
from vpsd.db.models import Account, ApiToken
from vpsd.db.session import Database
from vpsd.services.errors import Invalid, NotFound

TOKEN_PREFIX = "vpsd_"  # noqa: S105  (a marker, not a secret)
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so no salt or KDF is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as operators see it: never the secret, only its first characters."""

    id: int
    account: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of an API request: the account its token belongs to."""

    account_id: int
    account_name: str
    is_admin: bool = False
    """Admins also see and drain hosts (``/api/v1/hosts/``)."""


def _info(token: ApiToken) -> TokenInfo:
    return TokenInfo(token.id, token.account.name, token.prefix, token.created_at, token.revoked_at)


def account_named(session: Session, name: str, *, create: bool = False) -> Account:
    """The account called ``name``; with ``create``, a new one if there is none (the name
    checked first). ``NotFound`` when there is none and ``create`` is False."""
    if not ACCOUNT_NAME.match(name):  # checked before any query: no NUL reaches PostgreSQL
        if not create:
            raise NotFound(f"no account named {name!r}")
        raise Invalid(
            "account",
            "account names are 1-64 characters: letters, digits, '.', '_', '@', '-', "
            "starting with a letter or digit",
        )
    account = session.scalar(select(Account).where(Account.name == name))
    if account is not None:
        return account
    if not create:
        raise NotFound(f"no account named {name!r}")
    account = Account(name=name)
    session.add(account)
    session.flush()
    return account


def create_token(db: Database, account_name: str, *, admin: bool = False) -> tuple[TokenInfo, str]:
    """Create a token for ``account_name`` (creating the account if new); ``admin`` makes
    the account an admin (an admin account stays one).

    Returns the token's info and the secret, which is shown once and never stored.
    """
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.write() as session:
        account = account_named(session, account_name, create=True)
        if admin:
            account.is_admin = True
        token = ApiToken(
            account=account, prefix=secret[: len(TOKEN_PREFIX) + 6], token_hash=hash_token(secret)
        )
        session.add(token)
        session.flush()
        return _info(token), secret


def list_tokens(db: Database, account_name: str | None = None) -> list[TokenInfo]:
    """All tokens, oldest first, optionally only those of one account."""
    with db.read() as session:
        query = select(ApiToken).join(ApiToken.account).order_by(ApiToken.id)
        if account_name is not None:
            query = query.where(Account.name == account_name)
        return [_info(token) for token in session.scalars(query)]


def get_token(db: Database, token_id: int, account_id: int) -> TokenInfo:
    """One of the account's tokens; another's, or an unknown id, is ``NotFound``."""
    with db.read() as session:
        token = session.get(ApiToken, token_id)
        if token is None or token.account_id != account_id:
            raise NotFound(f"no token with id {token_id}")
        return _info(token)


def revoke_token(db: Database, token_id: int, account_id: int | None = None) -> TokenInfo:
    """Revoke a token at once; revoking a revoked token changes nothing. With ``account_id``
    only that account's token: another's is ``NotFound``, as if it did not exist."""
    with db.write() as session:
        token = session.get(ApiToken, token_id)
        if token is None or (account_id is not None and token.account_id != account_id):
            raise NotFound(f"no token with id {token_id}")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
        return _info(token)


def authenticate(db: Database, secret: str) -> Principal | None:
    """The account a live token belongs to, or None for unknown and revoked tokens."""
    found = find_live_token(db, secret)
    return found[0] if found is not None else None


def find_live_token(db: Database, secret: str) -> tuple[Principal, int] | None:
    """The account a live token belongs to and the token's id, or None for unknown and
    revoked tokens."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
        return None
    digest = hash_token(secret)
    with db.read() as session:
        row = session.execute(
            select(
                ApiToken.id.label("token_id"),
                ApiToken.token_hash,
                ApiToken.revoked_at,
                Account.id,
                Account.name,
                Account.is_admin,
            )
            .join(ApiToken.account)
            .where(ApiToken.token_hash == digest)
        ).first()
    # The index finds the row by hash; the constant-time compare keeps the final check from
    # depending on how many characters matched, whatever the database does.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return None
    return Principal(account_id=row.id, account_name=row.name, is_admin=row.is_admin), row.token_id


class TokenAuthenticator:
    """``authenticate`` with a short cache of live tokens, for the API's hot path.

    Every request carries a token; looking it up is about a third of a simple GET's cost.
    Live tokens are remembered for ``ttl`` seconds, so a revocation takes effect within
    ``ttl`` (``VPSD_TOKEN_CACHE_SECONDS``; 0 disables the cache). Unknown and revoked tokens
    are never cached: guessing cannot fill the cache, and a new token works at once.
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self, db: Database, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.clock = clock
        self._live: dict[str, tuple[Principal, float]] = {}

    def __call__(self, secret: str) -> Principal | None:
        """The account behind ``secret``, or None (see ``authenticate``)."""
        if self.ttl <= 0:
            return authenticate(self.db, secret)
        digest = hash_token(secret)
        now = self.clock()
        cached = self._live.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = authenticate(self.db, secret)
        if principal is None:
            self._live.pop(digest, None)
            return None
        if len(self._live) >= self.MAX_ENTRIES:
            self._live.clear()
        self._live[digest] = (principal, now + self.ttl)
        return principal
