"""``vpsctl``: the command-line client of the vpsd API (servers, snapshots, backups, SSH keys).

Tables for people, ``-o json`` for scripts, ``--wait`` for work that takes time; every
failure is one ``error:`` line on stderr and a documented exit code (``EXIT_CODES_HELP``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vpsd import __version__
from vpsd.cli import (
    vpsctl_backups,
    vpsctl_images,
    vpsctl_servers,
    vpsctl_snapshots,
    vpsctl_ssh_keys,
)
from vpsd.cli.vpsctl_common import GlobalOptions, UsageProblem, global_options
from vpsd.cli.vpsctl_config import (
    TOKEN_ENV,
    URL_ENV,
    ConfigError,
    config_path,
    read_config,
    write_config,
)
from vpsd.cli.vpsctl_output import EXIT_CODES_HELP, ExitCode, error_line, note, report
from vpsd.client import Client, VpsdClientError

app = typer.Typer(
    help="vpsctl: manage vpsd servers, their snapshots and backups, and your SSH keys from the "
    "terminal.\n\n"
    f"Configuration, per setting: --url/--token flags, else {URL_ENV}/{TOKEN_ENV}, else the "
    "config file written by 'vpsctl login' ($VPSCTL_CONFIG, else "
    "$XDG_CONFIG_HOME/vpsctl/config.toml, else ~/.config/vpsctl/config.toml).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(vpsctl_servers.app, name="servers")
app.add_typer(vpsctl_snapshots.app, name="snapshots")
app.add_typer(vpsctl_backups.app, name="backups")
app.add_typer(vpsctl_ssh_keys.app, name="ssh-keys")
app.add_typer(vpsctl_images.app, name="images")


def _version(value: bool) -> None:
    if value:
        print(f"vpsctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar=URL_ENV, help="the API's base URL, e.g. http://127.0.0.1:8000"
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help="API token (prefer the env var or 'vpsctl login': flags show in ps)",
            show_default=False,
        ),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option("--request-timeout", min=0.1, metavar="SECONDS", help="per HTTP request"),
    ] = 30.0,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = None,
) -> None:
    """Global options; they go before the command: ``vpsctl --url URL servers list``."""
    ctx.obj = GlobalOptions(url=url or None, token=token or None, request_timeout=request_timeout)


def _read_token(token_stdin: bool) -> str:
    if token_stdin:
        token = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        token = typer.prompt("API token", hide_input=True, err=True).strip()
    else:
        raise UsageProblem("stdin is not a terminal: pipe the token in with --token-stdin")
    if not token:
        raise UsageProblem("no token given")
    return token


@app.command()
def login(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", help="the API's base URL [default: --url/VPSD_URL given to vpsctl]"),
    ] = None,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="read the token from stdin instead of a prompt")
    ] = False,
) -> None:
    """Check a token against the API and save it with the URL in the config file (0600).

    The token is asked for with hidden input (or read from stdin with --token-stdin) and
    never printed.
    """
    path = config_path()
    url = url or global_options(ctx).url or read_config(path).get("url")
    if not url:
        raise UsageProblem("no API URL: pass --url URL")
    token = _read_token(token_stdin)
    try:
        client = Client(url, token, timeout=global_options(ctx).request_timeout)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    with client:
        client.servers.list_page(page=1, page_size=1)  # GET /api/v1/servers/: is it valid?
        base_url = client.base_url
    write_config(path, base_url, token)
    note(f"logged in to {base_url}; token saved to {path}")


def main() -> None:
    """Entry point: run the command; turn every expected failure into one line + exit code."""
    try:
        app()
    except VpsdClientError as error:
        sys.exit(report(error))
    except (ConfigError, UsageProblem) as error:
        error_line(str(error))
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        error_line("interrupted (work already requested goes on in the service)")
        sys.exit(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    main()
