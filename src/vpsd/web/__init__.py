"""The web panel: server-rendered pages for customers at ``/`` (docs/panel.md).

Jinja2 renders every page on the server from the same services the API uses, and htmx
(vendored in ``static/``, no CDN) refreshes the parts that change (statuses, progress, the
console) without a reload. Every form also works as a plain HTML form.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from vpsd.web import account, auth, recovery_points, servers

STATIC_URL = "/static/panel"


def install_panel(app: FastAPI) -> None:
    """Serve the panel's pages and assets; after the API's routes, so those match first."""
    app.mount(
        STATIC_URL, StaticFiles(directory=str(files("vpsd.web") / "static")), name="panel-static"
    )
    app.include_router(auth.router)
    app.include_router(servers.router)
    app.include_router(account.router)
    app.include_router(recovery_points.router)
