"""The panel's account pages: SSH keys (for new servers) and API tokens (for scripts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from vpsd.schemas import MAX_ID, SshKeyCreate
from vpsd.services import tokens
from vpsd.services.errors import DomainError
from vpsd.web.render import STATUS_OF_ERROR, FormErrors, PanelRoute, confirm, done, page
from vpsd.web.servers import ALL, form_dict
from vpsd.web.session import PanelUser, PanelUserDep, services_of

router = APIRouter(include_in_schema=False, route_class=PanelRoute)
ObjectId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _keys_page(
    request: Request,
    user: PanelUser,
    status: int = 200,
    errors: FormErrors | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    _, keys = services_of(request).ssh_keys.list(user.account_id, ALL)
    return page(
        request,
        "ssh_keys.html",
        user,
        status=status,
        keys=keys,
        errors=errors or FormErrors(""),
        form=form or {},
    )


@router.get("/ssh-keys")
def ssh_keys(request: Request, user: PanelUserDep) -> Response:
    """The account's SSH keys, and the form to add one."""
    return _keys_page(request, user)


@router.post("/ssh-keys")
async def add_ssh_key(request: Request, user: PanelUserDep) -> Response:
    """Add the form's key; refused, the form comes back with the reason."""
    values = form_dict(await request.form())
    try:
        key = await run_in_threadpool(
            services_of(request).ssh_keys.create,
            user.account_id,
            SshKeyCreate.model_validate(values),
        )
    except (ValidationError, DomainError) as error:
        errors = FormErrors.of(error)
        return await run_in_threadpool(_keys_page, request, user, STATUS_OF_ERROR, errors, values)
    return done(request, "/ssh-keys", f"SSH key {key.name} added ({key.fingerprint}).")


@router.get("/ssh-keys/{key_id}/delete")
def confirm_delete_key(request: Request, user: PanelUserDep, key_id: ObjectId) -> Response:
    """Ask before deleting a key."""
    key = services_of(request).ssh_keys.get(user.account_id, key_id)
    return confirm(
        request,
        user,
        title=f"Delete SSH key {key.name}?",
        consequences=[
            "New servers can no longer be given this key.",
            "Servers that already have it keep it: remove it from their "
            "~/.ssh/authorized_keys yourself.",
        ],
        action=f"/ssh-keys/{key_id}/delete",
        button="Delete key",
        back="/ssh-keys",
    )


@router.post("/ssh-keys/{key_id}/delete")
def delete_key(request: Request, user: PanelUserDep, key_id: ObjectId) -> Response:
    """Delete a key."""
    services = services_of(request)
    key = services.ssh_keys.get(user.account_id, key_id)
    services.ssh_keys.delete(user.account_id, key_id)
    return done(request, "/ssh-keys", f"SSH key {key.name} deleted.")


def _tokens_page(request: Request, user: PanelUser, new_token: str | None = None) -> Response:
    db = services_of(request).db
    mine = tokens.list_tokens(db, user.principal.account_name)
    return page(
        request,
        "tokens.html",
        user,
        tokens=sorted(mine, key=lambda t: t.id, reverse=True),
        new_token=new_token,
    )


@router.get("/tokens")
def api_tokens(request: Request, user: PanelUserDep) -> Response:
    """The account's API tokens (never their secrets), and a button to make one."""
    return _tokens_page(request, user)


@router.post("/tokens")
def create_api_token(request: Request, user: PanelUserDep) -> Response:
    """Make a token for this account and show its secret, this once."""
    _, secret = tokens.create_token(services_of(request).db, user.principal.account_name)
    return _tokens_page(request, user, new_token=secret)


@router.get("/tokens/{token_id}/revoke")
def confirm_revoke(request: Request, user: PanelUserDep, token_id: ObjectId) -> Response:
    """Ask before revoking a token."""
    token = tokens.get_token(services_of(request).db, token_id, user.account_id)
    return confirm(
        request,
        user,
        title=f"Revoke API token {token.prefix}…?",
        consequences=[
            "Scripts and programs using it get 401 from now on.",
            "A panel session signed in with it ends.",
            "This cannot be undone: make a new token for them instead.",
        ],
        action=f"/tokens/{token_id}/revoke",
        button="Revoke token",
        back="/tokens",
    )


@router.post("/tokens/{token_id}/revoke")
def revoke(request: Request, user: PanelUserDep, token_id: ObjectId) -> Response:
    """Revoke one of the account's tokens."""
    info = tokens.revoke_token(services_of(request).db, token_id, user.account_id)
    return done(request, "/tokens", f"API token {info.prefix}… revoked.")
