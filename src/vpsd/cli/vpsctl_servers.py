"""``vpsctl servers``: list, show, create, start, stop, reboot, console, ssh, delete, change."""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from vpsd.cli import vpsctl_changes
from vpsd.cli.vpsctl_common import (
    DEFAULT_WAIT_TIMEOUT,
    OutputOption,
    ServerIdArg,
    TimeoutOption,
    UsageProblem,
    WaitOption,
    YesOption,
    confirm,
    open_client,
    run_wait,
)
from vpsd.cli.vpsctl_output import (
    OutputFormat,
    Progress,
    note,
    print_json,
    server_details,
    servers_table,
)
from vpsd.client import Client, ServerOut
from vpsd.client.resources import DEFAULT_CONSOLE_BYTES
from vpsd.console_text import for_terminal, plain
from vpsd.schemas import BLANK_IMAGE, ServerStatusName

app = typer.Typer(help="Create, inspect, power and delete servers.", no_args_is_help=True)
app.command("change", help=vpsctl_changes.HELP)(vpsctl_changes.change)
MAX_CONSOLE_BYTES = 1024 * 1024
SSH_USER = "root"
_NOT_IN_ALIAS = re.compile(r"[^A-Za-z0-9.-]")
"""Characters a HostKeyAlias does not take from the API's host (an IPv6 address's colons)."""


def _show(
    client: Client, body: dict[str, object], output: OutputFormat, refresh: bool = False
) -> None:
    """Print a server: its JSON as the API sent it, or its details."""
    if refresh:
        body = client.servers.get_json(int(str(body["id"])))
    if output is OutputFormat.json:
        print_json(body)
    else:
        server_details(ServerOut.model_validate(body))


def _wait_status(client: Client, server_id: int, status: ServerStatusName, timeout: float) -> None:
    run_wait(
        f"server {server_id}",
        lambda progress: client.wait_for_server(
            server_id, status, timeout=timeout, on_progress=progress
        ),
    )


def _answer(
    client: Client,
    body: dict[str, Any],
    final: ServerStatusName,
    wait: bool,
    timeout: float,
    output: OutputFormat,
) -> None:
    """Show the server an action answered with; with ``wait``, once it reached ``final``."""
    if wait:
        _wait_status(client, body["id"], final, timeout)
    _show(client, body, output, refresh=wait)


@app.command("list")
def list_servers(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """List your servers, newest first."""
    with open_client(ctx) as client:
        body = client.servers.list_json()
        if output is OutputFormat.json:
            print_json(body)
        else:
            servers_table(ServerOut.model_validate(s) for s in body["results"])


@app.command("show")
def show(
    ctx: typer.Context, server_id: ServerIdArg, output: OutputOption = OutputFormat.table
) -> None:
    """Show one server, with the reason for its status when there is one."""
    with open_client(ctx) as client:
        _show(client, client.servers.get_json(server_id), output)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="letters, digits, '-' and '_' (1-64)")],
    disk_gb: Annotated[int, typer.Option("--disk-gb", help="disk size in GiB")],
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="memory in MiB [default: the service's]")
    ] = None,
    vcpus: Annotated[
        int | None, typer.Option("--vcpus", help="virtual CPUs [default: the service's]")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            metavar="SLUG",
            help=f"an image of 'vpsctl images list', or {BLANK_IMAGE!r} for an empty disk "
            "without a guest (default: the service's default image)",
        ),
    ] = None,
    ssh_keys: Annotated[
        list[int] | None,
        typer.Option(
            "--ssh-key",
            metavar="KEY_ID",
            help="id of one of your SSH keys to install for root (repeat for more, up to 10)",
        ),
    ] = None,
    from_snapshot: Annotated[
        int | None,
        typer.Option(
            "--from-snapshot",
            min=1,
            metavar="SNAPSHOT_ID",
            help="make the disk a copy of this snapshot (--disk-gb at least its disk's)",
        ),
    ] = None,
    from_backup: Annotated[
        int | None,
        typer.Option(
            "--from-backup",
            min=1,
            metavar="BACKUP_ID",
            help="make the disk from this backup (--disk-gb at least its disk's)",
        ),
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create a server from an image (or blank), a snapshot or a backup; its VM boots
    (--wait: until it runs)."""
    if from_snapshot is not None and from_backup is not None:
        raise UsageProblem("give --from-snapshot or --from-backup, not both")
    with open_client(ctx) as client:
        _answer(
            client,
            client.servers.create_json(
                name,
                disk_gb,
                memory_mb,
                vcpus,
                image=image,
                ssh_keys=ssh_keys or None,
                snapshot_id=from_snapshot,
                backup_id=from_backup,
            ),
            "running",
            wait,
            timeout,
            output,
        )


@app.command("start")
def start(
    ctx: typer.Context,
    server_id: ServerIdArg,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Boot a stopped server, or retry one in error (--wait: until it runs)."""
    with open_client(ctx) as client:
        _answer(client, client.servers.start_json(server_id), "running", wait, timeout, output)


@app.command("stop")
def stop(
    ctx: typer.Context,
    server_id: ServerIdArg,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Power a running server down: ACPI first, forced off after the service's timeout."""
    with open_client(ctx) as client:
        _answer(client, client.servers.stop_json(server_id), "stopped", wait, timeout, output)


@app.command("reboot")
def reboot(
    ctx: typer.Context,
    server_id: ServerIdArg,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Reboot a running server: ACPI, forced after a timeout (--wait: until it runs again)."""
    with open_client(ctx) as client:
        _answer(client, client.servers.reboot_json(server_id), "running", wait, timeout, output)


@app.command("console")
def console(
    ctx: typer.Context,
    server_id: ServerIdArg,
    max_bytes: Annotated[
        int,
        typer.Option(
            "--bytes",
            min=1,
            max=MAX_CONSOLE_BYTES,
            metavar="N",
            help="how much of the end of the console to show (at most 1 MiB)",
        ),
    ] = DEFAULT_CONSOLE_BYTES,
) -> None:
    """Print the end of the server's serial console (boot messages, login prompt).

    Colours are kept on a terminal (unless NO_COLOR is set); every other control sequence
    the guest wrote (titles, clipboard, screen clears) is dropped.
    """
    with open_client(ctx) as client:
        text = client.servers.console(server_id, max_bytes)
    sys.stdout.write(for_terminal(text) if _colour_terminal() else plain(text))
    sys.stdout.flush()


def _colour_terminal() -> bool:
    """Whether stdout is a terminal that should get colours (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def host_key_alias(api_url: str, server_id: int) -> str:
    """The name ssh records a server's host key under: ``vpsd-HOST[-PORT]-server-ID``, HOST
    and PORT those of the API's URL.

    One name per server, not per SSH ``host:port``: a port freed by a deleted server and
    given to a new one would otherwise meet the old key (REMOTE HOST IDENTIFICATION HAS
    CHANGED), while a server whose own key changes is still caught.
    """
    url = urlsplit(api_url)
    where = url.hostname or "api"
    if url.port is not None:
        where += f"-{url.port}"
    return f"vpsd-{_NOT_IN_ALIAS.sub('-', where)}-server-{server_id}"


def ssh_command(server: ServerOut, extra: list[str], api_url: str) -> list[str]:
    """``ssh -p PORT -o HostKeyAlias=... root@HOST [EXTRA...]`` for a server of the API at
    ``api_url``; UsageProblem if it has no SSH."""
    if server.ssh is None:
        reason = (
            f"it is {BLANK_IMAGE} (an empty disk, no guest); servers created with --image have one"
            if server.image == BLANK_IMAGE
            else "the API shows no SSH endpoint for it"
        )
        raise UsageProblem(f"server {server.id} ({server.name}) has no SSH endpoint: {reason}")
    alias = host_key_alias(api_url, server.id)
    return [
        "ssh", "-p", str(server.ssh.port), "-o", f"HostKeyAlias={alias}",
        f"{SSH_USER}@{server.ssh.host}", *extra,
    ]  # fmt: skip


@app.command("ssh")
def ssh(
    ctx: typer.Context,
    server_id: ServerIdArg,
    ssh_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SSH_ARGS",
            help="passed on to ssh after the destination: options (-i KEY) or a command",
            show_default=False,
        ),
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="only print the ssh command, do not run it")
    ] = False,
) -> None:
    """Log in to the server as root: runs 'ssh -p PORT root@HOST' with your own ssh, its host
    key recorded under a name of its own (HostKeyAlias=vpsd-HOST-server-ID).

    Arguments after '--' go to ssh: vpsctl servers ssh 7 -- -i ~/.ssh/id_ed25519 uptime
    """
    with open_client(ctx) as client:
        server = client.servers.get(server_id)
    command = ssh_command(server, ssh_args or [], client.base_url)
    if print_only:
        print(shlex.join(command))
        return
    if server.status != "running":
        note(f"server {server.id} is {server.status}: ssh may not connect")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)  # noqa: S606 (the user asked to run ssh)
    except OSError as error:
        raise UsageProblem(
            f"cannot run ssh: {error.strerror or error} (is an OpenSSH client installed?)"
        ) from None


@app.command("delete")
def delete(
    ctx: typer.Context,
    server_id: ServerIdArg,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="delete it even if some of its snapshots are protected: their protection "
            "is removed first (and named)",
        ),
    ] = False,
    yes: YesOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
) -> None:
    """Delete a server with its disks and all its snapshots. This cannot be undone.

    Refused while one of its snapshots is protected, unless --force."""
    with open_client(ctx) as client:
        server = client.servers.get(server_id)  # 404 before asking anything
        confirm(
            f"Delete server {server.id} ({server.name}) with its disks and all its snapshots"
            f"{', protected ones included' if force else ''}?",
            f"delete server {server.id}",
            yes,
        )
        deleted = client.servers.delete(server_id, force=force)
        if deleted is not None and deleted.unprotected_snapshots:
            named = ", ".join(f"{s.id} ({s.name})" for s in deleted.unprotected_snapshots)
            note(f"protection removed from snapshots {named}")
        if not wait:
            note(f"server {server_id} is being deleted")
            return
        label = f"server {server_id}"
        with Progress(label) as progress:
            client.wait_for_server_deleted(
                server_id,
                timeout=timeout,
                on_progress=lambda s: progress.update(s.status if s else "deleted"),
            )
        progress.done("deleted")
