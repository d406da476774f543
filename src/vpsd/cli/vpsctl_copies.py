"""The commands ``vpsctl snapshots`` and ``vpsctl backups`` share: list, show, create, restore,
delete. Both are copies of a server's disks with the same life (``in_progress``, then
``completed`` or ``failed``; restored onto their server; deleted), so one implementation
serves both groups, worded for each.

No ``from __future__ import annotations`` here: typer reads the commands' annotations, which
name this module's local aliases, at definition time.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from vpsd.cli.vpsctl_common import (
    DEFAULT_WAIT_TIMEOUT,
    OutputOption,
    TimeoutOption,
    WaitOption,
    YesOption,
    confirm,
    open_client,
    run_wait,
)
from vpsd.cli.vpsctl_output import OutputFormat, note, print_json, server_details
from vpsd.client import Client, ServerOut
from vpsd.client.resources import ServerCopiesApi

Copies = ServerCopiesApi[Any, Any, Any]


@dataclass(frozen=True)
class CopyKind:
    """How one kind of copy is reached and shown."""

    noun: str
    """``snapshot`` or ``backup``."""
    copies: Callable[[Client], Copies]
    """Its SDK collection: ``lambda client: client.snapshots``."""
    table: Callable[[Iterable[Any]], None]
    details: Callable[[Any], None]
    list_note: str
    """What ``list`` adds about the rows (``with their consistency``)."""
    create_help: str
    """``create``'s help: what it takes and its limit."""


def add_commands(app: typer.Typer, kind: CopyKind) -> None:
    """Register ``list``, ``show``, ``create``, ``restore`` and ``delete`` for ``kind``."""
    noun = kind.noun
    id_arg = Annotated[
        int, typer.Argument(min=1, metavar=f"{noun.upper()}_ID", help=f"the {noun}'s id")
    ]
    server_option = typer.Option(
        "--server", "-s", min=1, metavar="SERVER_ID", help="only this server's"
    )

    def show(output: OutputFormat, body: dict[str, Any], copies: Copies) -> None:
        if output is OutputFormat.json:
            print_json(body)
        else:
            kind.details(copies.model.model_validate(body))

    @app.command(
        "list",
        help=f"List your {noun}s (of one server with --server), newest first{kind.list_note}.",
    )
    def list_copies(
        ctx: typer.Context,
        server: Annotated[int | None, server_option] = None,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        with open_client(ctx) as client:
            copies = kind.copies(client)
            body = copies.list_json(server)
            if output is OutputFormat.json:
                print_json(body)
            else:
                kind.table(copies.model.model_validate(item) for item in body["results"])

    @app.command("show", help=f"Show one {noun}; a failed one says why.")
    def show_copy(
        ctx: typer.Context, copy_id: id_arg, output: OutputOption = OutputFormat.table
    ) -> None:
        with open_client(ctx) as client:
            copies = kind.copies(client)
            show(output, copies.get_json(copy_id), copies)

    @app.command(
        "create",
        help=f"{kind.create_help}\n\nWith --wait, exits 1 and prints the reason if the {noun} "
        "fails.",
    )
    def create(
        ctx: typer.Context,
        server: Annotated[
            int, typer.Option("--server", "-s", min=1, metavar="SERVER_ID", help="the server")
        ],
        name: Annotated[
            str, typer.Option("--name", "-n", help="letters, digits, '-' and '_' (1-64)")
        ],
        description: Annotated[
            str | None, typer.Option("--description", "-d", help="free text")
        ] = None,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        with open_client(ctx) as client:
            copies = kind.copies(client)
            body = copies.create_json(server, name, description)
            copy_id = int(body["id"])
            if wait:
                run_wait(
                    f"{noun} {copy_id}",
                    lambda progress: copies.wait_completed(
                        copy_id, timeout=timeout, on_progress=progress
                    ),
                )
                body = copies.get_json(copy_id)
            elif output is OutputFormat.table:
                note(str(body.get("message", "")))
            show(output, body, copies)

    @app.command(
        "restore",
        help=f"Overwrite a server's disks with a {noun}; the server is stopped first and comes "
        "back in its former power state (--wait: until it has).",
    )
    def restore(
        ctx: typer.Context,
        copy_id: id_arg,
        yes: YesOption = False,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        with open_client(ctx) as client:
            copies = kind.copies(client)
            copy = copies.get(copy_id)  # 404 before asking anything
            confirm(
                f"Restore server {copy.server.id} ({copy.server.name}) from {noun} "
                f"{copy.id} ({copy.name})? All data written since is lost",
                f"restore server {copy.server.id} from {noun} {copy.id}",
                yes,
            )
            body = copies.restore_json(copy_id)
            if wait:
                wait_restored(client, int(body["server"]["id"]), timeout, output)
            elif output is OutputFormat.json:
                print_json(body)
            else:
                note(str(body.get("message", "")))

    @app.command("delete", help=f"Permanently delete a {noun}. This cannot be undone.")
    def delete(ctx: typer.Context, copy_id: id_arg, yes: YesOption = False) -> None:
        with open_client(ctx) as client:
            copies = kind.copies(client)
            copy = copies.get(copy_id)  # 404 before asking anything
            confirm(
                f"Delete {noun} {copy.id} ({copy.name}) of server "
                f"{copy.server.id} ({copy.server.name})?",
                f"delete {noun} {copy.id}",
                yes,
            )
            copies.delete(copy_id)
            note(f"{noun} {copy_id} deleted")


def wait_restored(client: Client, server_id: int, timeout: float, output: OutputFormat) -> None:
    """Wait until a server being restored is back in its power state, then print it."""
    run_wait(
        f"server {server_id}",
        lambda progress: client.wait_for_restore(server_id, timeout=timeout, on_progress=progress),
    )
    body = client.servers.get_json(server_id)
    if output is OutputFormat.json:
        print_json(body)
    else:
        server_details(ServerOut.model_validate(body))
