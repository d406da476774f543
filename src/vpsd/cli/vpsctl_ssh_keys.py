"""``vpsctl ssh-keys``: list, show, add, delete the account's SSH public keys."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vpsd.cli.vpsctl_common import (
    OutputOption,
    UsageProblem,
    YesOption,
    confirm,
    open_client,
)
from vpsd.cli.vpsctl_output import OutputFormat, details, note, print_json
from vpsd.schemas import MAX_PUBLIC_KEY_LENGTH, SshKeyOut

app = typer.Typer(help="Add, inspect and delete your SSH public keys.", no_args_is_help=True)
KeyIdArg = Annotated[int, typer.Argument(min=1, metavar="KEY_ID", help="the SSH key's id")]
MAX_KEY_FILE_BYTES = 4 * MAX_PUBLIC_KEY_LENGTH
"""Bigger files are not public keys: refuse them before reading them whole."""


def _parts(key: SshKeyOut) -> tuple[str, str]:
    """The key's type and comment ("" when it has none)."""
    fields = key.public_key.split(maxsplit=2)
    return fields[0] if fields else "", fields[2] if len(fields) > 2 else ""


def _time(key: SshKeyOut) -> str:
    return key.created_at.strftime("%Y-%m-%d %H:%M:%SZ")


def ssh_keys_table(keys: Iterable[SshKeyOut]) -> None:
    """SSH keys as a table: one row each, the key itself shortened to its fingerprint."""
    table = Table("ID", "NAME", "TYPE", "FINGERPRINT", "COMMENT", "CREATED", box=None)
    for key in keys:
        key_type, comment = _parts(key)
        table.add_row(
            str(key.id), escape(key.name), escape(key_type), key.fingerprint, escape(comment),
            _time(key),
        )  # fmt: skip
    # Piped tables must not be cut at 80 columns: scripts grep them.
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


def ssh_key_details(key: SshKeyOut) -> None:
    """Every field of an SSH key, the whole public key line included."""
    key_type, comment = _parts(key)
    details(
        [
            ("ID", key.id), ("Name", key.name), ("Type", key_type),
            ("Fingerprint", key.fingerprint), ("Comment", comment),
            ("Created", _time(key)), ("Public key", key.public_key),
        ]
    )  # fmt: skip


def _show(output: OutputFormat, body: dict[str, Any]) -> None:
    if output is OutputFormat.json:
        print_json(body)
    else:
        ssh_key_details(SshKeyOut.model_validate(body))


def _refuse_private_key(text: str, source: str, path: Path | None) -> None:
    """Never send a private key over the network, not even to have it refused."""
    if "PRIVATE KEY" in text or text.lstrip().startswith("PuTTY-User-Key-File"):
        hint = f" (try {path}.pub)" if path is not None and path.suffix != ".pub" else ""
        raise UsageProblem(
            f"{source} holds a private key: give the public key, the .pub file{hint}; "
            "nothing was sent"
        )


def _read_file(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise UsageProblem(f"{path} is too large to be an SSH public key")
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageProblem(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageProblem(f"{path} is not a text file: give an OpenSSH .pub file") from None


def _public_key_text(file: Path | None, key: str | None) -> tuple[str, str]:
    """The key text and where it came from: --file, --key, or stdin."""
    if file is not None and key is not None:
        raise UsageProblem("give the key once: --file PATH or --key TEXT, not both")
    if file is not None:
        return _read_file(file), str(file)
    if key is not None:
        return key, "--key"
    if sys.stdin.isatty():
        raise UsageProblem(
            "no key given: pass --file ~/.ssh/id_ed25519.pub, --key 'ssh-ed25519 AAAA...', "
            "or pipe the key on stdin"
        )
    return sys.stdin.read(MAX_KEY_FILE_BYTES), "stdin"


@app.command("list")
def list_ssh_keys(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """List your SSH keys, newest first."""
    with open_client(ctx) as client:
        body = client.ssh_keys.list_json()
        if output is OutputFormat.json:
            print_json(body)
        else:
            ssh_keys_table(SshKeyOut.model_validate(k) for k in body["results"])


@app.command("show")
def show(ctx: typer.Context, key_id: KeyIdArg, output: OutputOption = OutputFormat.table) -> None:
    """Show one SSH key with its fingerprint and whole public key line."""
    with open_client(ctx) as client:
        _show(output, client.ssh_keys.get_json(key_id))


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="letters, digits, '-' and '_' (1-64)")],
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", metavar="PATH", help="a public key file, e.g. id_ed25519.pub"),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", metavar="TEXT", help="the public key line itself")
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Save an SSH public key (ssh-ed25519, ecdsa, or ssh-rsa of 2048+ bits) under a name.

    The key comes from --file, --key, or stdin. Give the .pub file: a private key is
    refused here and never sent.
    """
    text, source = _public_key_text(file, key)
    _refuse_private_key(text, source, file)
    with open_client(ctx) as client:
        body = client.ssh_keys.create_json(name, text)
        if output is OutputFormat.table:
            note(f"ssh key {body['id']} ({body['name']}) added")
        _show(output, body)


@app.command("delete")
def delete(ctx: typer.Context, key_id: KeyIdArg, yes: YesOption = False) -> None:
    """Delete an SSH key. Servers created with it keep it installed."""
    with open_client(ctx) as client:
        found = client.ssh_keys.get(key_id)  # 404 before asking anything
        confirm(
            f"Delete SSH key {found.id} ({found.name}, {found.fingerprint})?",
            f"delete ssh key {found.id}",
            yes,
        )
        client.ssh_keys.delete(key_id)
        note(f"ssh key {key_id} deleted")
