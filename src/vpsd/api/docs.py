"""The interactive API docs at ``/api/v1/docs``: Swagger UI served from the package, no CDN.

Swagger UI's JavaScript, CSS and icon come from the ``fastapi-offline`` package (it vendors
a current Swagger UI 5, which renders the OpenAPI 3.1 document FastAPI writes) and are served
under ``/api/v1/docs/static/``. The page's ``Content-Security-Policy`` allows nothing from
other origins; its one inline script (Swagger UI's start-up call) runs by a per-answer nonce.
"""

from __future__ import annotations

import secrets
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from vpsd.csp import content_security_policy

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
"""The files the docs page loads, all from ``/api/v1/docs/static/``."""


def assets_dir() -> Path:
    """The folder holding ``ASSETS``, inside the installed ``fastapi_offline`` package."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, docs_url: str, openapi_url: str) -> None:
    """Serve Swagger UI's assets under ``docs_url/static/`` and its page at ``docs_url``."""
    static_url = f"{docs_url}/static"
    app.mount(static_url, StaticFiles(directory=assets_dir()), name="docs-static")

    @app.get(docs_url, include_in_schema=False)
    def docs_page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{static_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{static_url}/swagger-ui.css",
            swagger_favicon_url=f"{static_url}/favicon.png",
            # Swagger UI would otherwise send the document to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        html = bytes(page.body).decode()
        if html.count("<script>") != 1:  # FastAPI changed its page: fail loudly, not blank
            raise RuntimeError("expected one inline <script> in FastAPI's Swagger UI page")
        html = html.replace("<script>", f'<script nonce="{nonce}">')
        return HTMLResponse(
            html, headers={"Content-Security-Policy": content_security_policy(nonce)}
        )
