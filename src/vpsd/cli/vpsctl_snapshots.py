"""``vpsctl snapshots``: list, show, create, restore, delete."""

from __future__ import annotations

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
from vpsd.cli.vpsctl_output import (
    OutputFormat,
    note,
    print_json,
    server_details,
    snapshot_details,
    snapshots_table,
)
from vpsd.client import Client, ServerOut, SnapshotOut

app = typer.Typer(help="Take, inspect, restore and delete snapshots.", no_args_is_help=True)
SnapshotIdArg = Annotated[
    int, typer.Argument(min=1, metavar="SNAPSHOT_ID", help="the snapshot's id")
]


def _show(output: OutputFormat, body: dict[str, Any]) -> None:
    if output is OutputFormat.json:
        print_json(body)
    else:
        snapshot_details(SnapshotOut.model_validate(body))


@app.command("list")
def list_snapshots(
    ctx: typer.Context,
    server: Annotated[
        int | None,
        typer.Option("--server", "-s", min=1, metavar="SERVER_ID", help="only this server's"),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """List your snapshots (of one server with --server), newest first."""
    with open_client(ctx) as client:
        body = client.snapshots.list_json(server)
        if output is OutputFormat.json:
            print_json(body)
        else:
            snapshots_table(SnapshotOut.model_validate(s) for s in body["results"])


@app.command("show")
def show(
    ctx: typer.Context, snapshot_id: SnapshotIdArg, output: OutputOption = OutputFormat.table
) -> None:
    """Show one snapshot; a failed one says why."""
    with open_client(ctx) as client:
        _show(output, client.snapshots.get_json(snapshot_id))


@app.command("create")
def create(
    ctx: typer.Context,
    server: Annotated[
        int, typer.Option("--server", "-s", min=1, metavar="SERVER_ID", help="the server")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="letters, digits, '-' and '_' (1-64)")],
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="free text")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Take a point-in-time snapshot of a server (at most 5 per server).

    With --wait, exits 1 and prints the reason if the snapshot fails.
    """
    with open_client(ctx) as client:
        body = client.snapshots.create_json(server, name, description)
        snapshot_id = int(body["id"])
        if not wait:
            if output is OutputFormat.table:
                note(str(body.get("message", "")))
            _show(output, body)
            return
        run_wait(
            f"snapshot {snapshot_id}",
            lambda progress: client.wait_for_snapshot(
                snapshot_id, timeout=timeout, on_progress=progress
            ),
        )
        _show(output, client.snapshots.get_json(snapshot_id))


@app.command("restore")
def restore(
    ctx: typer.Context,
    snapshot_id: SnapshotIdArg,
    yes: YesOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Overwrite a server's disks with a snapshot; the server is stopped first and comes back
    in its former power state (--wait: until it has)."""
    with open_client(ctx) as client:
        snapshot = client.snapshots.get(snapshot_id)  # 404 before asking anything
        confirm(
            f"Restore server {snapshot.server.id} ({snapshot.server.name}) from snapshot "
            f"{snapshot.id} ({snapshot.name})? All data written since is lost",
            f"restore server {snapshot.server.id} from snapshot {snapshot.id}",
            yes,
        )
        body = client.snapshots.restore_json(snapshot_id)
        server_id = int(body["server"]["id"])
        if wait:
            _wait_restore(client, server_id, timeout, output)
        elif output is OutputFormat.json:
            print_json(body)
        else:
            note(str(body.get("message", "")))


def _wait_restore(client: Client, server_id: int, timeout: float, output: OutputFormat) -> None:
    run_wait(
        f"server {server_id}",
        lambda progress: client.wait_for_restore(server_id, timeout=timeout, on_progress=progress),
    )
    body = client.servers.get_json(server_id)
    if output is OutputFormat.json:
        print_json(body)
    else:
        server_details(ServerOut.model_validate(body))


@app.command("delete")
def delete(ctx: typer.Context, snapshot_id: SnapshotIdArg, yes: YesOption = False) -> None:
    """Permanently delete a snapshot. This cannot be undone."""
    with open_client(ctx) as client:
        snapshot = client.snapshots.get(snapshot_id)  # 404 before asking anything
        confirm(
            f"Delete snapshot {snapshot.id} ({snapshot.name}) of server "
            f"{snapshot.server.id} ({snapshot.server.name})?",
            f"delete snapshot {snapshot.id}",
            yes,
        )
        client.snapshots.delete(snapshot_id)
        note(f"snapshot {snapshot_id} deleted")
