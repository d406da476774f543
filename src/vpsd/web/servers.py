"""The panel's server pages: the list (live), creating one, a server's page with its power
actions, console, SSH command, snapshots, backups and their policies, and deleting it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from vpsd.console_text import to_html
from vpsd.schemas import MAX_ID, ServerCreate
from vpsd.services.common import PageRequest
from vpsd.services.errors import DomainError
from vpsd.web.render import STATUS_OF_ERROR, FormErrors, PanelRoute, confirm, done, page
from vpsd.web.session import PAGE_HEADERS, PanelUser, PanelUserDep, services_of

router = APIRouter(include_in_schema=False, route_class=PanelRoute)
ServerId = Annotated[int, Path(ge=1, le=MAX_ID)]
ALL = PageRequest(page=1, page_size=1000)
"""A panel page shows up to this many of an account's objects of one kind."""
CONSOLE_BYTES = 16 * 1024
DEFAULT_DISK_GB = 10
"""The create form's disk size, unless the images need more."""
POWER_ACTIONS = {"start": "Starting", "stop": "Stopping", "reboot": "Rebooting"}


def form_dict(form: FormData, numbers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A form's fields for a request model: empty fields left out, ``numbers`` as ints
    when they are digits (anything else is left for the model to refuse, in words)."""
    values: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "csrf_token" or not isinstance(value, str) or value.strip() == "":
            continue
        value = value.strip()
        values[key] = int(value) if key in numbers and value.isdigit() else value
    return values


def _create_form(request: Request, user: PanelUser) -> dict[str, Any]:
    services = services_of(request)
    _, images = services.images.list(ALL)
    _, keys = services.ssh_keys.list(user.account_id, ALL)
    settings = services.settings
    return {
        "images": images,
        "keys": keys,
        "default_image": settings.default_image,
        "defaults": {
            "vcpus": settings.default_vcpus,
            "memory_mb": settings.default_memory_mb,
            "disk_gb": max([DEFAULT_DISK_GB] + [image.min_disk_gb for image in images]),
        },
    }


@router.get("/")
def home(user: PanelUserDep) -> Response:
    """The panel's start: the servers."""
    return RedirectResponse("/servers", status_code=303, headers=PAGE_HEADERS)


@router.get("/servers")
def server_list(request: Request, user: PanelUserDep) -> Response:
    """The account's servers, with live status, and the form to create one."""
    _, servers = services_of(request).servers.list(user.account_id, ALL)
    return page(
        request,
        "servers.html",
        user,
        servers=servers,
        form={},
        errors=FormErrors(""),
        **_create_form(request, user),
    )


@router.get("/servers/rows")
def server_rows(request: Request, user: PanelUserDep) -> Response:
    """The list's rows, polled by the list page."""
    _, servers = services_of(request).servers.list(user.account_id, ALL)
    return page(request, "_server_rows.html", user, servers=servers)


@router.post("/servers")
async def create_server(request: Request, user: PanelUserDep) -> Response:
    """Create a server from the form; refused, the form comes back with the reason."""
    form = await request.form()
    values = form_dict(form, numbers=("vcpus", "memory_mb", "disk_gb", "ssh_keys"))
    values["ssh_keys"] = [
        int(k) for k in form.getlist("ssh_keys") if isinstance(k, str) and k.isdigit()
    ] or None
    try:
        created = await run_in_threadpool(
            services_of(request).servers.create,
            user.account_id,
            ServerCreate.model_validate(values),
        )
    except (ValidationError, DomainError) as error:
        _, servers = await run_in_threadpool(
            services_of(request).servers.list, user.account_id, ALL
        )
        return page(
            request,
            "servers.html",
            user,
            status=STATUS_OF_ERROR,
            servers=servers,
            form=values,
            errors=FormErrors.of(error),
            **await run_in_threadpool(_create_form, request, user),
        )
    return done(
        request, f"/servers/{created.id}", f"Server {created.name} is being created: it boots."
    )


def _server_page_context(request: Request, user: PanelUser, server_id: int) -> dict[str, Any]:
    services = services_of(request)
    server = services.servers.get(user.account_id, server_id)
    _, backups = services.backups.list(user.account_id, ALL, server_id)
    return {
        "server": server,
        "backups": backups,
        "snapshot_limit": services.settings.max_snapshots_per_server,
        "backup_limit": services.settings.max_manual_backups_per_server,
        "manual_backups": sum(1 for b in backups if b.type == "manual"),
    }


async def _snapshots(request: Request, user: PanelUser, server_id: int) -> list[Any]:
    _, snapshots = await services_of(request).snapshots.list(user.account_id, ALL, server_id)
    return snapshots


@router.get("/servers/{server_id}")
async def server_page(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """One server: status, power, SSH, console, snapshots, backups and backup policy."""
    return await render_server_page(request, user, server_id)


async def render_server_page(
    request: Request,
    user: PanelUser,
    server_id: int,
    status: int = 200,
    errors: dict[str, FormErrors] | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    """The server's page; ``errors`` (by form: ``snapshot``, ``backup``, ``backup-policy``,
    ``snapshot-policy``, ``power``) shown beside the forms that caused them, ``form`` their
    values."""
    services = services_of(request)
    context = await run_in_threadpool(_server_page_context, request, user, server_id)
    policy = await run_in_threadpool(services.backup_policies.get, user.account_id, server_id)
    snapshot_policy = await run_in_threadpool(
        services.snapshot_policies.get, user.account_id, server_id
    )
    return page(
        request,
        "server.html",
        user,
        status=status,
        snapshots=await _snapshots(request, user, server_id),
        policy=policy,
        snapshot_policy=snapshot_policy,
        errors=errors or {},
        form=form or {},
        **context,
    )


@router.get("/servers/{server_id}/live")
async def server_live(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """The server's status, snapshots and backups, polled by its page."""
    return page(
        request,
        "_server_live.html",
        user,
        snapshots=await _snapshots(request, user, server_id),
        **await run_in_threadpool(_server_page_context, request, user, server_id),
    )


@router.get("/servers/{server_id}/console")
def server_console(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """The console's last bytes, polled by the server's page: its colours as classes, every
    other control sequence the guest wrote dropped."""
    tail = services_of(request).servers.console(user.account_id, server_id, CONSOLE_BYTES)
    # to_html escapes the guest's text itself; its markup is only vpsd's own spans.
    console = Markup(to_html(tail.decode(errors="replace")))  # noqa: S704
    return page(request, "_console.html", user, console=console)


@router.post("/servers/{server_id}/power/{action}")
async def power(
    request: Request,
    user: PanelUserDep,
    server_id: ServerId,
    action: Literal["start", "stop", "reboot"],
) -> Response:
    """Start, stop or reboot the server."""
    servers = services_of(request).servers
    act = {"start": servers.start, "stop": servers.stop, "reboot": servers.reboot}[action]
    try:
        server = await run_in_threadpool(act, user.account_id, server_id)
    except DomainError as error:
        return await render_server_page(
            request, user, server_id, STATUS_OF_ERROR, {"power": FormErrors.of(error)}
        )
    return done(request, f"/servers/{server_id}", f"{POWER_ACTIONS[action]} {server.name}.")


@router.get("/servers/{server_id}/delete")
async def confirm_delete(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """Ask before deleting the server; say which of its snapshots lose their protection."""
    services = services_of(request)
    server = await run_in_threadpool(services.servers.get, user.account_id, server_id)
    protected = [s.name for s in await _snapshots(request, user, server_id) if s.protected]
    consequences = [
        "Its virtual machine is stopped at once and its disks are erased.",
        "Its snapshots are deleted with it. Its backups are kept: a new server can be "
        "made from them.",
        "This cannot be undone.",
    ]
    if protected:
        consequences.insert(
            2,
            f"Protected snapshots lose their protection and are deleted too: "
            f"{', '.join(protected)}.",
        )
    return confirm(
        request,
        user,
        title=f"Delete server {server.name}?",
        consequences=consequences,
        action=f"/servers/{server_id}/delete",
        button="Delete server",
        back=f"/servers/{server_id}",
        fields={"force": "true"} if protected else None,
    )


@router.post("/servers/{server_id}/delete")
async def delete_server(request: Request, user: PanelUserDep, server_id: ServerId) -> Response:
    """Delete the server (with ``force=true``, as its confirmation said: removing the
    protection of its snapshots first)."""
    servers = services_of(request).servers
    server = await run_in_threadpool(servers.get, user.account_id, server_id)
    force = (await request.form()).get("force") == "true"
    try:
        deletion = await run_in_threadpool(servers.delete, user.account_id, server_id, force)
    except DomainError as error:
        return await render_server_page(
            request, user, server_id, STATUS_OF_ERROR, {"power": FormErrors.of(error)}
        )
    message = f"Server {server.name} is being deleted."
    if deletion.unprotected:
        names = ", ".join(s.name for s in deletion.unprotected)
        message += f" The protection of its snapshots {names} was removed."
    return done(request, "/servers", message)
