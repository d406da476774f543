"""Tokens: hashed at rest, revocable, and the API's short cache of live tokens."""

from __future__ import annotations

import pytest

from vpsd.db.session import Database
from vpsd.services.errors import Invalid, NotFound
from vpsd.services.tokens import (
    TokenAuthenticator,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)


def test_create_list_revoke(db: Database) -> None:
    info, secret = create_token(db, "alice")
    assert secret.startswith("vpsd_") and len(secret) > 40
    principal = authenticate(db, secret)
    assert principal is not None and principal.account_name == "alice"
    listed = list_tokens(db)
    assert [(t.id, t.account, t.prefix) for t in listed] == [(info.id, "alice", secret[:11])]
    revoke_token(db, info.id)
    assert authenticate(db, secret) is None
    assert list_tokens(db)[0].revoked_at is not None


def test_second_token_joins_the_same_account(db: Database) -> None:
    _, first = create_token(db, "alice")
    _, second = create_token(db, "alice")
    one, two = authenticate(db, first), authenticate(db, second)
    assert one is not None and two is not None and one.account_id == two.account_id


def test_bad_names_and_ids(db: Database) -> None:
    with pytest.raises(Invalid):
        create_token(db, "../etc")
    with pytest.raises(NotFound):
        revoke_token(db, 12345)
    assert authenticate(db, "vpsd_not-a-token") is None
    assert authenticate(db, "Bearer something") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_remembers_live_tokens_for_its_ttl(db: Database) -> None:
    clock = Clock()
    cached = TokenAuthenticator(db, ttl=2.0, clock=clock)
    info, secret = create_token(db, "alice")
    assert cached(secret) is not None
    revoke_token(db, info.id)
    clock.now += 1.9
    assert cached(secret) is not None  # within the TTL: still remembered
    clock.now += 0.2
    assert cached(secret) is None  # expired: the revocation shows


def test_cache_never_remembers_refusals(db: Database) -> None:
    clock = Clock()
    cached = TokenAuthenticator(db, ttl=60.0, clock=clock)
    assert cached("vpsd_unknown") is None
    _, secret = create_token(db, "alice")
    assert cached(secret) is not None  # a new token works at once


def test_ttl_zero_disables_the_cache(db: Database) -> None:
    cached = TokenAuthenticator(db, ttl=0)
    info, secret = create_token(db, "alice")
    assert cached(secret) is not None
    revoke_token(db, info.id)
    assert cached(secret) is None
