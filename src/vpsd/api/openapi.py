"""The OpenAPI document as the API behaves: no 422 answers, since invalid input is a 400."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

# FastAPI documents a 422 on every operation with parameters; vpsd never sends one
# (``vpsd.api.errors`` turns validation failures into 400), so the document must not either.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def without_422(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with FastAPI's 422 answers and their schemas removed (in place)."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve ``without_422`` of FastAPI's generated document, built once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_422(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
