"""``vpsd``: run the service, manage API tokens, migrate the database."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from vpsd import __version__
from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.session import Database
from vpsd.hypervisor.images.recipes import RECIPES
from vpsd.services import tokens
from vpsd.services.errors import DomainError

app = typer.Typer(help="vpsd: snapshots of QEMU virtual private servers.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
image_app = typer.Typer(help="Build, list and delete guest images.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(image_app, name="image")
err = Console(stderr=True, soft_wrap=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="where disks and the default SQLite database live "
        "[env: VPSD_DATA_DIR; default /var/lib/vpsd as root, else ~/.local/share/vpsd]",
        show_default=False,
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    overrides = {"data_dir": data_dir} if data_dir is not None else {}
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            err.print(f"[red]error:[/red] invalid setting {field}: {problem['msg']}")
        raise typer.Exit(2) from None


def _database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.effective_database_url)
    migrate.upgrade(database)
    return database


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the API, the operation runner and the QEMU driver in one process."""
    import uvicorn

    from vpsd.api.app import create_app

    settings = _settings(data_dir)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # qemu.qmp logs every closed QMP connection at INFO; those are routine here.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    application = create_app(settings)
    err.print(
        f"vpsd {__version__}: http://{host}:{port}/api/v1/ "
        f"(data dir {settings.data_dir}, driver {settings.driver})"
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_keep_alive=settings.keep_alive_seconds,
    )


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Option(help="account name; created if new")],
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token; the token alone is printed on the last line of stdout."""
    database = _database(_settings(data_dir))
    try:
        info, secret = tokens.create_token(database, account)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    err.print(f"token {info.id} ({info.prefix}…) for account {info.account!r}; it is shown once:")
    print(secret)


@token_app.command("list")
def token_list(
    account: Annotated[str | None, typer.Option(help="only this account's tokens")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """List tokens (id, account, prefix, created, revoked); secrets are never shown."""
    database = _database(_settings(data_dir))
    table = Table("id", "account", "prefix", "created", "revoked")
    for info in tokens.list_tokens(database, account):
        table.add_row(
            str(info.id),
            info.account,
            info.prefix + "…",
            info.created_at.isoformat(),
            info.revoked_at.isoformat() if info.revoked_at else "",
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="the token's id, from `vpsd token list`")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    database = _database(_settings(data_dir))
    try:
        info = tokens.revoke_token(database, token_id)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    err.print(f"token {info.id} ({info.prefix}…) of {info.account!r} is revoked")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Apply pending migrations (``vpsd serve`` does this at start too)."""
    _database(_settings(data_dir))
    err.print("database is up to date")


@db_app.command("check")
def db_check(data_dir: DataDirOption = None) -> None:
    """Fail if the models have changes no migration describes (run in CI)."""
    migrate.check(_database(_settings(data_dir)))
    err.print("models and migrations agree")


@image_app.command("build")
def image_build(
    slug: Annotated[str, typer.Argument(help="the image to build: " + ", ".join(RECIPES))],
    data_dir: DataDirOption = None,
    mirror: Annotated[
        str | None,
        typer.Option(help="a Debian mirror URL instead of this machine's apt sources"),
    ] = None,
) -> None:
    """Build a guest image with mmdebstrap (root; 1-3 minutes the first time) and install
    it in the data dir. Builds are cached by a hash of their recipe
    ([env: VPSD_IMAGE_CACHE_DIR]); an unchanged recipe is built once per host."""
    from vpsd.cli.image_build import build_and_install

    settings = _settings(data_dir)
    if slug not in RECIPES:
        err.print(f"[red]error:[/red] unknown image {slug!r}; known: {', '.join(RECIPES)}")
        raise typer.Exit(2)
    build_and_install(RECIPES[slug], settings, _database(settings), mirror, err)


@image_app.command("list")
def image_list(data_dir: DataDirOption = None) -> None:
    """List the data dir's images (every build, with the servers using it)."""
    from vpsd.services.common import PageRequest
    from vpsd.services.images import ImageService

    settings = _settings(data_dir)
    images = ImageService(_database(settings), settings)
    images.sync()
    _, rows = images.list(PageRequest(page_size=1000), include_deprecated=True)
    table = Table("id", "slug", "build", "name", "size", "min disk", "status", "servers")
    for image in rows:
        table.add_row(
            str(image.id), image.slug, f"{image.slug}-{image.version}", image.name,
            f"{image.size_mb} MiB", f"{image.min_disk_gb} GiB", image.status, str(image.servers),
        )  # fmt: skip
    Console().print(table)


@image_app.command("delete")
def image_delete(
    name: Annotated[str, typer.Argument(help="a build (slug-version) or a slug")],
    data_dir: DataDirOption = None,
) -> None:
    """Delete an image from the data dir; refused while servers' disks are backed by it."""
    from vpsd.services.images import ImageService

    settings = _settings(data_dir)
    try:
        view = ImageService(_database(settings), settings).delete(name)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    err.print(f"image {view.slug}-{view.version} deleted")


@app.command()
def version() -> None:
    """Print vpsd's version."""
    print(__version__)


def main() -> None:
    """Entry point of the ``vpsd`` command."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
