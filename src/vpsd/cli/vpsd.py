"""``vpsd``: run the service, manage API tokens, migrate the database."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from vpsd import __version__, logs
from vpsd.config import Settings
from vpsd.db import migrate
from vpsd.db.session import Database
from vpsd.hypervisor.images.recipes import RECIPES
from vpsd.services import quotas, tokens, web_sessions
from vpsd.services.errors import DomainError
from vpsd.services.installation import InstallationMismatch

app = typer.Typer(help="vpsd: snapshots of QEMU virtual private servers.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
account_app = typer.Typer(
    help="Show accounts, set their quotas and panel passwords.", no_args_is_help=True
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
image_app = typer.Typer(help="Build, list and delete guest images.", no_args_is_help=True)
backups_app = typer.Typer(help="The backup repository.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(account_app, name="account")
app.add_typer(db_app, name="db")
app.add_typer(image_app, name="image")
app.add_typer(backups_app, name="backups")
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


PRIVATE_UMASK = 0o077
"""What vpsd, and the QEMU and qemu-img it starts, create is its user's alone: files 0600,
folders 0700 (disks and the database hold tenants' data and token hashes)."""


def _settings(data_dir: Path | None, **flags: Any) -> Settings:
    """The settings, ``--data-dir`` and other ``flags`` (those not None) first; every
    command working on a data dir calls this first, so it also sets the private umask
    before anything is written there."""
    os.umask(PRIVATE_UMASK)
    overrides = {key: value for key, value in flags.items() if value is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return Settings(**overrides)
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
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="log every HTTP request [env: VPSD_ACCESS_LOG; default off]",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes; with more than one, operations run in this parent process "
            "(no broker) or in each host's `vpsd agent` (VPSD_BROKER_URL)",
        ),
    ] = 1,
) -> None:
    """Run the API, with this host's agent (operation runner, VM monitor, QEMU driver) in
    the same process unless a broker is set (VPSD_BROKER_URL: each host runs `vpsd agent`).

    One per data dir: it locks the data dir (and a PostgreSQL database) and binds its port
    before migrating or recovering anything, and exits 1 with the reason when another
    instance or program is in the way."""
    import uvicorn
    from rich.markup import escape

    from vpsd.runtime import http_protocol, instance
    from vpsd.runtime import workers as worker_processes

    settings = _settings(data_dir)
    if workers > 1:  # before prometheus_client is imported (by the app's module)
        worker_processes.prepare_metrics_dir(settings)
    from vpsd.runtime.app import create_app

    logs.configure(log_level)
    try:
        claimed = instance.claim_instance(settings, host, port)
    except instance.StartupError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    try:
        _check_installation(settings)
    except InstallationMismatch as error:
        claimed.release()
        err.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    instance.tighten_permissions(settings)
    cap = instance.connection_cap(settings, instance.raise_descriptor_limit())
    enabled_access_log = settings.access_log if access_log is None else access_log
    _log_start(settings, claimed.url, cap)
    if workers > 1:
        assert claimed.socket is not None  # serve always listens
        try:
            served = worker_processes.serve_workers(
                settings, claimed.socket, workers, cap, log_level, enabled_access_log
            )
        finally:
            claimed.release()
        if not served:
            raise typer.Exit(3)
        return
    application = create_app(settings)
    config = uvicorn.Config(
        application,
        http=http_protocol.guarded_protocol(cap, settings.header_timeout_seconds),
        ws="none",
        # asyncio's accept loop takes at most `backlog` connections per wake-up, so a flood
        # overshoots the cap by a bounded number of descriptors (uvloop's has no bound).
        loop="asyncio",
        backlog=instance.BACKLOG,
        log_level=log_level.lower(),
        access_log=enabled_access_log,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[claimed.socket] if claimed.socket else None)
    finally:
        claimed.release()
    if not server.started:
        raise typer.Exit(3)


@app.command()
def agent(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="this hypervisor host's name [env: VPSD_HOST_NAME; default: the hostname]",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="serve Prometheus metrics (its operations) on this port",
            show_default=False,
        ),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option(help="address the metrics port listens on")
    ] = "127.0.0.1",
) -> None:
    """Run a hypervisor host's agent, without the API: it registers the host, recovers its
    servers, then runs their operations, watches their VMs and heartbeats until SIGTERM.

    Give it the database of a ``vpsd serve`` elsewhere (VPSD_DATABASE_URL: PostgreSQL, or
    the same SQLite file on one machine) and its own data dir. One per data dir."""
    from rich.markup import escape

    from vpsd.runtime import instance
    from vpsd.runtime.agent_process import run_agent

    settings = _settings(data_dir, host_name=host)
    logs.configure(log_level)
    try:
        claimed = instance.claim_instance(settings, None)
    except instance.StartupError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    try:
        _check_installation(settings)
        instance.tighten_permissions(settings)
        run_agent(settings, (metrics_address, metrics_port) if metrics_port else None)
    except (InstallationMismatch, instance.StartupError) as error:
        err.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from None
    finally:
        claimed.release()


def _check_installation(settings: Settings) -> None:
    """Migrate, and refuse a database and a data dir that were not made together, before
    the app (its recovery) touches either; the app checks again at start, for every other
    entry point."""
    from vpsd.runtime.assembly import prepare_database

    database = Database(settings.effective_database_url)
    try:
        prepare_database(database, settings)
    finally:
        database.dispose()


def _log_start(settings: Settings, url: str, connections: int) -> None:
    """Say what this ``vpsd serve`` serves, and how to make a token for exactly its data."""
    from sqlalchemy.engine import make_url

    database = make_url(settings.effective_database_url).render_as_string(hide_password=True)
    logging.getLogger("vpsd").info(
        "vpsd %s on %s: data dir %s, database %s, driver %s, at most %d connections",
        __version__,
        url,
        settings.data_dir,
        database,
        settings.driver,
        connections,
    )
    command = shlex.join(
        [sys.argv[0], "token", "create", "--account", "NAME", "--data-dir", str(settings.data_dir)]
    )
    same_database = " (with the same VPSD_DATABASE_URL)" if settings.database_url else ""
    password = shlex.join(
        [sys.argv[0], "account", "set-password", "NAME", "--data-dir", str(settings.data_dir)]
    )
    err.print(f"vpsd {__version__}: {url}/api/v1/", markup=False, highlight=False)
    err.print(
        f"API tokens for this data dir: {command}{same_database}", markup=False, highlight=False
    )
    err.print(
        f"web panel: {url}/ (a password to sign in with: {password})",
        markup=False,
        highlight=False,
    )


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Option(help="account name; created if new")],
    admin: Annotated[
        bool, typer.Option("--admin", help="make the account an admin (it sees the hosts)")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token; the token alone is printed on the last line of stdout."""
    database = _database(_settings(data_dir))
    try:
        info, secret = tokens.create_token(database, account, admin=admin)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    role = "admin account" if admin else "account"
    err.print(f"token {info.id} ({info.prefix}…) for {role} {info.account!r}; it is shown once:")
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


@account_app.command("set-password")
def account_set_password(
    name: Annotated[str, typer.Argument(help="the account's name; created if new")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="read the password from the first line of stdin (scripts)"
        ),
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Set the password an account signs in to the web panel with; its panel sessions end.
    Asked for twice, unless given on stdin. At least 8 characters."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    database = _database(_settings(data_dir))
    try:
        created = web_sessions.set_password(database, name, password)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        database.dispose()
    made = "created account" if created else "account"
    err.print(f"{made} {name!r} can sign in to the panel with this password", markup=False)


def _quota_option(what: str) -> Any:
    return typer.Option(min=0, show_default=False, help=f"at most this many {what}")


@account_app.command("set-quota")
def account_set_quota(
    name: Annotated[str, typer.Argument(help="the account's name")],
    servers: Annotated[int | None, _quota_option("servers")] = None,
    vcpus: Annotated[int | None, _quota_option("vCPUs, summed over its servers")] = None,
    memory_mb: Annotated[int | None, _quota_option("MiB of memory, summed")] = None,
    disk_gb: Annotated[int | None, _quota_option("GiB of disk, summed")] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="return every quota not given to the default")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Set an account's own quotas; the others keep the defaults (env VPSD_QUOTA_*).
    Existing servers are kept even above a lowered quota: it only refuses new ones."""
    settings = _settings(data_dir)
    values = {"servers": servers, "vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb}
    try:
        view = quotas.set_quota(_database(settings), settings, name, values, reset=reset)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    _print_quota(view)


@account_app.command("show")
def account_show(
    name: Annotated[str, typer.Argument(help="the account's name")],
    data_dir: DataDirOption = None,
) -> None:
    """Show an account's quotas (its own or the default) and what its servers use."""
    settings = _settings(data_dir)
    try:
        view = quotas.show_quota(_database(settings), settings, name)
    except DomainError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    _print_quota(view)


def _print_quota(view: quotas.QuotaView) -> None:
    table = Table("resource", "used", "quota", "set by", title=f"account {view.account}")
    for resource in ("servers", "vcpus", "memory_mb", "disk_gb"):
        table.add_row(
            resource,
            str(getattr(view.used, resource)),
            str(getattr(view.quota, resource)),
            "account" if resource in view.overridden else "default",
        )
    Console().print(table)


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


@backups_app.command("init")
def backups_init(data_dir: DataDirOption = None) -> None:
    """Make the backup repository (VPSD_BACKUP_REPOSITORY) if there is none.

    vpsd makes one by itself only on first use. Once it has used one, a repository that is
    gone (an unmounted volume, a moved folder) fails every backup and restore ("the backup
    storage is missing") until it is back, or until this command makes a new, empty one
    under the same password: the backups in the old one cannot be restored from it.
    """
    from rich.markup import escape
    from sqlalchemy import func, select

    from vpsd.backups import make_backup_store
    from vpsd.backups.base import BackupStoreError, StorageState
    from vpsd.db.models import Backup, BackupStatus

    settings = _settings(data_dir)
    logs.configure("warning")
    store = make_backup_store(settings)
    before = store.health()
    try:
        made = store.init()
    except BackupStoreError as error:
        err.print(f"[red]error:[/red] {escape(error.detail or str(error))}")
        raise typer.Exit(1) from None
    repository = settings.effective_backup_repository
    if not made:
        err.print(f"the backup repository {repository} is there already: nothing was made")
        return
    err.print(f"made a new, empty backup repository at {repository}")
    if before.state is StorageState.MISSING:
        database = _database(settings)
        try:
            with database.read() as session:
                recorded = session.scalar(
                    select(func.count())
                    .select_from(Backup)
                    .where(Backup.status == BackupStatus.COMPLETED)
                )
        finally:
            database.dispose()
        err.print(
            f"[yellow]warning:[/yellow] it replaces one that is gone: the {recorded} completed "
            "backups vpsd recorded are not in it, and fail to restore until the old repository "
            "is back in its place"
        )


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
    from vpsd.agent.images import install_images
    from vpsd.services.common import PageRequest
    from vpsd.services.images import ImageService

    settings = _settings(data_dir)
    database = _database(settings)
    install_images(database, settings)
    images = ImageService(database, settings)
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
    from vpsd.hypervisor.images import store
    from vpsd.services.images import ImageService

    settings = _settings(data_dir)
    try:
        view = ImageService(_database(settings), settings).delete(
            name, lambda build_name: store.remove(settings.images_dir, build_name)
        )
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
