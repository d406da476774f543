"""Property-based fuzzing of every endpoint of the OpenAPI document with schemathesis.

The app runs in-process (ASGI) on the fake driver and SQLite. Before each endpoint's run an
account gets a few servers and a completed snapshot, so small generated ids often name real
objects. Every response must: not be a 5xx, use a status the document lists for the
operation, carry the documented content type, and match the documented body schema.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import ApiClient, write_fake_image
from tests.qemu_helpers import short_tmpdir
from vpsd.config import Settings
from vpsd.db.session import Database
from vpsd.hypervisor.fake import FakeDriver
from vpsd.runtime.app import create_app
from vpsd.services.tokens import create_token

MAX_EXAMPLES = int(os.environ.get("VPSD_FUZZ_EXAMPLES", "100"))
"""Examples per operation: about a minute for all eleven on the CI machine."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _seed(app_settings: Settings, driver: FakeDriver) -> str:
    """An account with three servers (one stopped) and two completed snapshots; its token."""
    database = Database(app_settings.effective_database_url)
    with TestClient(create_app(app_settings, driver=driver)) as http:
        token = create_token(database, "alice")[1]
        api = ApiClient(http, token)
        servers = [api.create_server(f"seed-{i}")["id"] for i in range(3)]
        api.create_snapshot(servers[0], "seed-snap")
        api.create_snapshot(servers[1], "seed-snap", description="seeded")
        api.post(f"/servers/{servers[2]}/stop/")
        api.wait_server(servers[2], "stopped")
    database.dispose()
    return token


@pytest.fixture
def seeded() -> Iterator[tuple[Any, str]]:
    """The app (not yet started: schemathesis runs its lifespan) on seeded data, and a token."""
    root = short_tmpdir()
    app_settings = Settings(
        data_dir=root,
        database_url=f"sqlite:///{root / 'vpsd.db'}",
        driver="fake",
        stop_timeout=0.2,
        monitor_interval=0.2,
        default_image="blank",
        image_cache_dir=root / "image-cache",
    )
    write_fake_image(app_settings.images_dir)  # so that fuzzed creates can name an image
    driver = FakeDriver()
    token = _seed(app_settings, driver)
    yield create_app(app_settings, driver=driver), token
    shutil.rmtree(root, ignore_errors=True)


def _document() -> dict[str, Any]:
    """The OpenAPI document, from an app that is built but never started."""
    root = short_tmpdir()
    try:
        document: dict[str, Any] = create_app(
            Settings(data_dir=root, driver="fake", image_cache_dir=root / "image-cache"),
            driver=FakeDriver(),
        ).openapi()
        return document
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Loaded from the document itself rather than with ``schemathesis.pytest.from_fixture``
# (whose lazy loader breaks on pytest 9); each test then sends its cases to its own app.
schema = schemathesis.openapi.from_dict(_document())
# The token is sent with every case (never generated), and unknown query parameter names are
# ignored by design (as most HTTP APIs do), so neither counts as "negative" data here.
schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_endpoint_conforms(case: Any, seeded: tuple[Any, str]) -> None:
    app, token = seeded
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
