"""The images this host's servers boot: placed from the host's image cache into the data
dir, and recorded (``ImageService.register``) so new servers can be given them."""

from __future__ import annotations

import logging

from vpsd.config import Settings
from vpsd.core.errors import HostError
from vpsd.db.session import Database
from vpsd.hypervisor.images import store
from vpsd.hypervisor.images.recipes import RECIPES
from vpsd.services.images import ImageService, ImageView

log = logging.getLogger(__name__)


def install_images(db: Database, settings: Settings) -> list[ImageView]:
    """Place the cached builds of the current recipes in the data dir and register every
    build found there. Idempotent; run at start-up. Returns the new rows.

    A build that cannot be placed (a full disk) is logged and left out, never fatal.
    """
    for recipe in RECIPES.values():
        try:
            cached = store.find_build(settings.image_cache_dir, recipe.build_name)
            if cached is not None:
                store.place(cached, settings.images_dir)
        except (OSError, HostError) as exc:
            # vpsd runs on without it (servers of other images, blank ones); say why.
            log.error("image %s not installed in the data dir: %s", recipe.build_name, exc)
    images = ImageService(db, settings)
    registered = []
    if settings.images_dir.is_dir():
        for folder in sorted(settings.images_dir.iterdir()):
            if folder.name.startswith("."):
                continue  # a placement in progress, or left by a crash
            try:
                build = store.read_build(folder)
            except HostError as exc:
                log.warning("skipping %s: %s", folder, exc)
                continue
            view = images.register(build)
            if view is not None:
                registered.append(view)
    return registered
