"""Unit fixtures: the app on the fake driver, driven in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ApiClient

# The vpsctl tests' fixtures (run, and the transport it sends through), for every unit test.
from tests.unit.vpsctl_harness import run, sent, transport  # noqa: F401
from vpsd.backups.fake import FakeBackupStore
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app
from vpsd.services.tokens import create_token


@pytest.fixture
def fake_driver() -> FakeDriver:
    """An in-memory driver whose faults a test can inject."""
    return FakeDriver()


@pytest.fixture
def fake_store() -> FakeBackupStore:
    """An in-memory backup store whose faults a test can inject."""
    return FakeBackupStore()


@pytest.fixture
def client(
    settings: Settings, fake_driver: FakeDriver, fake_store: FakeBackupStore
) -> Iterator[TestClient]:
    """A running app (runner, monitor and scheduler included) on the fake driver and store."""
    app = create_app(settings, driver=fake_driver, backup_store=fake_store)
    with TestClient(app) as test_client:
        yield test_client


def account_token(settings: Settings, account: str) -> str:
    """A new token of ``account`` (created if new) in the database of ``settings``."""
    database = Database(settings.effective_database_url)
    try:
        return create_token(database, account)[1]
    finally:
        database.dispose()


@pytest.fixture
def alice(client: TestClient, settings: Settings) -> ApiClient:
    """An account's view of the API, with its own token."""
    return ApiClient(client, account_token(settings, "alice"))


@pytest.fixture
def bob(client: TestClient, settings: Settings) -> ApiClient:
    """A second account, to check that accounts never see each other's objects."""
    return ApiClient(client, account_token(settings, "bob"))
