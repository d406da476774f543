"""The commands ``vpsctl snapshots`` and ``vpsctl backups`` share: list, show, create, restore,
delete. Both are recovery points, copies of a server's disks with the same life
(``in_progress``, then ``completed`` or ``failed``; restored onto their server; deleted), so
one implementation serves both groups, worded for each.

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
    UsageProblem,
    WaitOption,
    YesOption,
    confirm,
    open_client,
    run_wait,
)
from vpsd.cli.vpsctl_output import OutputFormat, note, print_json, server_details
from vpsd.client import Client, ServerOut
from vpsd.client.resources import RecoveryPointsApi

RecoveryPoints = RecoveryPointsApi[Any, Any, Any]


@dataclass(frozen=True)
class RecoveryPointKind:
    """How one kind of point is reached and shown."""

    noun: str
    """``snapshot`` or ``backup``."""
    points: Callable[[Client], RecoveryPoints]
    """Its SDK collection: ``lambda client: client.snapshots``."""
    table: Callable[[Iterable[Any]], None]
    details: Callable[[Any], None]
    list_note: str
    """What ``list`` adds about the rows (``with their consistency``)."""
    create_help: str
    """``create``'s help: what it takes and its limit."""
    memory: bool = False
    """It can be taken with the server's memory (``create --memory``)."""


def add_commands(app: typer.Typer, kind: RecoveryPointKind) -> None:
    """Register ``list``, ``show``, ``create``, ``restore`` and ``delete`` for ``kind``."""
    noun = kind.noun
    id_arg = Annotated[
        int, typer.Argument(min=1, metavar=f"{noun.upper()}_ID", help=f"the {noun}'s id")
    ]
    server_option = typer.Option(
        "--server", "-s", min=1, metavar="SERVER_ID", help="only this server's"
    )

    def show(output: OutputFormat, body: dict[str, Any], points: RecoveryPoints) -> None:
        if output is OutputFormat.json:
            print_json(body)
        else:
            kind.details(points.model.model_validate(body))

    @app.command(
        "list",
        help=f"List your {noun}s (of one server with --server), newest first{kind.list_note}.",
    )
    def list_points(
        ctx: typer.Context,
        server: Annotated[int | None, server_option] = None,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        with open_client(ctx) as client:
            points = kind.points(client)
            body = points.list_json(server)
            if output is OutputFormat.json:
                print_json(body)
            else:
                kind.table(points.model.model_validate(item) for item in body["results"])

    @app.command("show", help=f"Show one {noun}; a failed one says why.")
    def show_point(
        ctx: typer.Context, point_id: id_arg, output: OutputOption = OutputFormat.table
    ) -> None:
        with open_client(ctx) as client:
            points = kind.points(client)
            show(output, points.get_json(point_id), points)

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
        memory: Annotated[
            bool,
            typer.Option(
                "--memory",
                help="also save the running server's memory: a restore resumes the guest "
                "where it was instead of booting it",
                hidden=not kind.memory,
            ),
        ] = False,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        if memory and not kind.memory:
            raise UsageProblem(f"a {noun} has no memory to keep; leave --memory out")
        with open_client(ctx) as client:
            points = kind.points(client)
            body = points.create_json(server, name, description, memory=memory or None)
            point_id = int(body["id"])
            if wait:
                run_wait(
                    f"{noun} {point_id}",
                    lambda progress: points.wait_completed(
                        point_id, timeout=timeout, on_progress=progress
                    ),
                )
                body = points.get_json(point_id)
            elif output is OutputFormat.table:
                note(str(body.get("message", "")))
            show(output, body, points)

    @app.command(
        "restore",
        help=f"Overwrite a server's disks with a {noun}; the server is stopped first and comes "
        "back in its former power state (--wait: until it has).",
    )
    def restore(
        ctx: typer.Context,
        point_id: id_arg,
        yes: YesOption = False,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        output: OutputOption = OutputFormat.table,
    ) -> None:
        with open_client(ctx) as client:
            points = kind.points(client)
            point = points.get(point_id)  # 404 before asking anything
            confirm(
                f"Restore server {point.server.id} ({point.server.name}) from {noun} "
                f"{point.id} ({point.name})? All data written since is lost",
                f"restore server {point.server.id} from {noun} {point.id}",
                yes,
            )
            body = points.restore_json(point_id)
            if wait:
                wait_restored(client, int(body["server"]["id"]), timeout, output)
            elif output is OutputFormat.json:
                print_json(body)
            else:
                note(str(body.get("message", "")))

    @app.command("delete", help=f"Permanently delete a {noun}. This cannot be undone.")
    def delete(ctx: typer.Context, point_id: id_arg, yes: YesOption = False) -> None:
        with open_client(ctx) as client:
            points = kind.points(client)
            point = points.get(point_id)  # 404 before asking anything
            confirm(
                f"Delete {noun} {point.id} ({point.name}) of server "
                f"{point.server.id} ({point.server.name})?",
                f"delete {noun} {point.id}",
                yes,
            )
            points.delete(point_id)
            note(f"{noun} {point_id} deleted")


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
