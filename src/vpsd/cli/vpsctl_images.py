"""``vpsctl images``: the images servers can be created from."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vpsd.cli.vpsctl_common import OutputOption, open_client
from vpsd.cli.vpsctl_output import OutputFormat, print_json
from vpsd.schemas import ImageOut

app = typer.Typer(
    help="List the images servers can be created from ('servers create --image SLUG').",
    no_args_is_help=True,
)


def _memory(mb: int) -> str:
    return f"{mb / 1024:g} GiB" if mb >= 1024 and mb % 256 == 0 else f"{mb} MiB"


def images_table(images: Iterable[ImageOut]) -> None:
    """Images as a table: one row each."""
    table = Table(
        "ID", "SLUG", "NAME", "OS", "SIZE", "MIN DISK", "MIN MEMORY", "STATUS", box=None
    )  # fmt: skip
    for image in images:
        table.add_row(
            str(image.id), escape(image.slug), escape(image.name), escape(image.os),
            f"{image.size_mb} MiB", f"{image.min_disk_gb} GiB", _memory(image.min_memory_mb),
            image.status,
        )  # fmt: skip
    # Piped tables must not be cut at 80 columns: scripts grep them.
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


@app.command("list")
def list_images(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """List the available images, newest first.

    Create a server from one with: vpsctl servers create --image SLUG ...

    A server's disk and memory must be at least the image's MIN DISK and MIN MEMORY.

    'blank' (an empty disk, no guest) is always accepted too, and not listed.
    """
    with open_client(ctx) as client:
        body = client.images.list_json()
        if output is OutputFormat.json:
            print_json(body)
        else:
            images_table(ImageOut.model_validate(i) for i in body["results"])
