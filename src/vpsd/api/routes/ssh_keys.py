"""``/api/v1/ssh_keys/``: the account's SSH public keys: list, add, show, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from vpsd.api.deps import DIGITS_ONLY, PageDep, PrincipalDep, ServicesDep
from vpsd.api.pagination import page_links
from vpsd.api.presenters import ssh_key_out
from vpsd.api.responses import responses
from vpsd.api.routing import ApiRoute
from vpsd.schemas import MAX_ID, Page, SshKeyCreate, SshKeyOut

router = APIRouter(prefix="/ssh_keys", tags=["ssh keys"], route_class=ApiRoute)
SshKeyId = Annotated[int, Path(ge=1, le=MAX_ID, description="the SSH key's id"), DIGITS_ONLY]


@router.get("/", operation_id="listSshKeys", responses=responses(400, 401))
def list_ssh_keys(
    request: Request, principal: PrincipalDep, services: ServicesDep, page: PageDep
) -> Page[SshKeyOut]:
    """The account's SSH keys, newest first."""
    count, keys = services.ssh_keys.list(principal.account_id, page)
    next_url, previous_url = page_links(request, page, count)
    return Page[SshKeyOut](
        count=count, next=next_url, previous=previous_url, results=[ssh_key_out(k) for k in keys]
    )


@router.post(
    "/", operation_id="createSshKey", status_code=201, responses=responses(400, 401, 413, 415)
)
def create_ssh_key(body: SshKeyCreate, principal: PrincipalDep, services: ServicesDep) -> SshKeyOut:
    """Save an OpenSSH public key (ssh-ed25519, ecdsa-sha2-nistp256/384/521, or ssh-rsa of at
    least 2048 bits); at most 100 per account, each key once."""
    return ssh_key_out(services.ssh_keys.create(principal.account_id, body))


@router.get("/{key_id}/", operation_id="getSshKey", responses=responses(400, 401, 404))
def get_ssh_key(key_id: SshKeyId, principal: PrincipalDep, services: ServicesDep) -> SshKeyOut:
    """One SSH key."""
    return ssh_key_out(services.ssh_keys.get(principal.account_id, key_id))


@router.delete(
    "/{key_id}/",
    operation_id="deleteSshKey",
    status_code=204,
    response_class=Response,
    responses=responses(400, 401, 404),
)
def delete_ssh_key(key_id: SshKeyId, principal: PrincipalDep, services: ServicesDep) -> None:
    """Delete an SSH key; servers created with it keep it installed."""
    services.ssh_keys.delete(principal.account_id, key_id)
