"""The OpenAPI document as the API behaves: no 422 answers, since invalid input is a 400.

Also what a generated client needs: operations named for people (``listSnapshots``) and
integer bounds as JSON Schema integers.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from vpsd.api.deps import BEARER_SCHEME

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


_CONSTRAINTS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_INT64 = 2**63


def _integer_bound(value: float) -> int:
    # FastAPI passes component schemas through a model whose bounds are floats: 2**63-1 comes
    # out as 2.0**63. Integer bounds beyond float precision in this API are int64's limits.
    if value >= _INT64:
        return _INT64 - 1
    if value < -_INT64:
        return -_INT64
    return int(value)


def _fix_schema(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _fix_schema(item)
        return
    if not isinstance(node, dict):
        return
    for key, name in _CONSTRAINTS.items():
        # Pydantic constraints a parameter's annotation leaked into the document as they are.
        if isinstance(node.get(key), int | float) and not isinstance(node[key], bool):
            node.setdefault(name, node.pop(key))
    if node.get("type") == "integer":
        for key in _BOUNDS:
            if isinstance(node.get(key), float) and node[key].is_integer():
                node[key] = _integer_bound(node[key])
    for value in node.values():
        _fix_schema(value)


def with_json_schema_bounds(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with bounds as JSON Schema writes them (in place): ``minimum``, not
    ``ge``; ``maximum: 9223372036854775807``, not ``9.223372036854776e+18``."""
    _fix_schema(document)
    return document


def operation_id(route: APIRoute) -> str:
    """A route's default operation id: its function's name in camelCase (``list_servers``:
    ``listServers``), for a route that sets no ``operation_id``."""
    head, *rest = route.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


OPERATION_ID = re.compile(r"^[a-z][A-Za-z]+$")
"""What every operation id looks like: ``listSnapshots``, ``getServerConsole``."""


def with_bearer_security(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every operation requiring the bearer token (in place): the check is
    ``vpsd.api.routing.ApiRoute``'s, which FastAPI cannot document."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["HTTPBearer"] = dict(BEARER_SCHEME)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation["security"] = [{"HTTPBearer": []}]
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's generated document, corrected as above, built once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = with_bearer_security(without_422(generate()))
            app.openapi_schema = with_json_schema_bounds(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
