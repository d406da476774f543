"""``vpsd image build``: build with progress on the terminal, then install in a data dir."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from vpsd.config import Settings
from vpsd.core.errors import HostError
from vpsd.db.session import Database
from vpsd.hypervisor.images import build, store
from vpsd.hypervisor.images.recipes import Recipe
from vpsd.services.images import ImageService


def build_and_install(
    recipe: Recipe, settings: Settings, database: Database, mirror: str | None, err: Console
) -> None:
    """Build ``recipe`` (or reuse the cached build) and register it in ``settings``' data
    dir; exit 1 with the reason when the build fails."""
    started = time.monotonic()
    cached = store.find_build(settings.image_cache_dir, recipe.build_name)
    try:
        if cached is None:
            err.print(
                f"building image {recipe.build_name} (Debian {recipe.suite}, "
                f"{len(recipe.packages)} packages and their dependencies); this takes 1-3 "
                "minutes and is done once per recipe"
            )
            sources = build.mirror_sources(recipe.suite, mirror) if mirror else None
            built = _build_with_progress(recipe, settings, sources, err)
        else:
            built = cached
        installed = store.place(built, settings.images_dir)
    except HostError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    ImageService(database, settings).register(installed)
    took = time.monotonic() - started
    verb = "built" if cached is None else "found in the cache"
    err.print(
        f"image {installed.build_name} {verb} ({took:.0f} s): {installed.size_mb} MiB of data, "
        f"servers need {installed.min_disk_gb} GiB of disk; installed in {settings.images_dir}"
    )


def _build_with_progress(
    recipe: Recipe, settings: Settings, sources: build.Sources | None, err: Console
) -> store.BuiltImage:
    started = time.monotonic()

    def elapsed() -> str:
        return f"[{time.monotonic() - started:5.0f}s]"

    if not err.is_terminal:  # CI logs: one plain line per step and per mmdebstrap line
        return build.build(
            recipe,
            settings.image_cache_dir,
            sources=sources,
            progress=lambda line: err.print(f"{elapsed()} {line}", markup=False, highlight=False),
        )
    with err.status("starting") as status:

        def show(line: str) -> None:
            status.update(f"{elapsed()} {line[:100]}")
            if not line.startswith(("I: ", "W: ", "  ")):
                err.print(f"{elapsed()} {line}", markup=False, highlight=False)

        return build.build(recipe, settings.image_cache_dir, sources=sources, progress=show)
