"""Images: which builds this data dir offers, and choosing one for a new server.

The files live in ``<data dir>/images/<slug>-<version>/`` (see
``vpsd.hypervisor.images.store``), placed there by the host's agent (``vpsd.agent.images``);
a row per build records it. The newest build of each
slug is ``available`` to new servers, older ones ``deprecated``: kept for the servers whose
disks are backed by them, removable once no server uses them.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vpsd.config import Settings
from vpsd.db.models import Backup, BackupStatus, Image, ImageStatus, Server, ServerStatus
from vpsd.db.session import Database
from vpsd.schemas import BLANK_IMAGE
from vpsd.services.common import PageRequest
from vpsd.services.errors import Invalid, InvalidState, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageView:
    """An image as the API shows it."""

    id: int
    slug: str
    version: str
    name: str
    os: str
    size_mb: int
    min_disk_gb: int
    min_memory_mb: int
    status: ImageStatus
    servers: int
    """Servers (not deleted) whose disks are backed by this build."""


class BuildRecord(Protocol):
    """What is recorded of a build placed in a data dir (``hypervisor.images.store``)."""

    @property
    def slug(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def build_name(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def os(self) -> str: ...
    @property
    def size_mb(self) -> int: ...
    @property
    def min_disk_gb(self) -> int: ...
    @property
    def min_memory_mb(self) -> int: ...
    @property
    def cmdline(self) -> str: ...


class ImageService:
    """Records the builds placed in data dirs and answers which images servers can use."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def list(
        self, page: PageRequest, *, include_deprecated: bool = False
    ) -> tuple[int, builtins.list[ImageView]]:
        """Images new servers can use (every build, for operators), newest first."""
        statuses = [ImageStatus.AVAILABLE]
        if include_deprecated:
            statuses.append(ImageStatus.DEPRECATED)
        with self.db.read() as session:
            count = session.scalar(
                select(func.count()).select_from(Image).where(Image.status.in_(statuses))
            )
            rows = session.scalars(
                select(Image)
                .where(Image.status.in_(statuses))
                .order_by(Image.id.desc())
                .offset(page.offset)
                .limit(page.page_size)
            ).all()
            return count or 0, [_view(session, image) for image in rows]

    def get(self, image_id: int) -> ImageView:
        """One image new servers can use; NotFound for others (deprecated, unknown)."""
        with self.db.read() as session:
            image = session.scalar(
                select(Image).where(Image.id == image_id, Image.status == ImageStatus.AVAILABLE)
            )
            if image is None:
                raise NotFound("image not found")
            return _view(session, image)

    def register(self, build: BuildRecord) -> ImageView | None:
        """Record ``build`` (already placed in the data dir) as its slug's available image;
        older builds of the slug become deprecated. None when it is already recorded."""
        with self.db.write() as session:
            known = session.scalar(
                select(Image).where(Image.slug == build.slug, Image.version == build.version)
            )
            if known is not None:
                return None
            session.execute(
                update(Image)
                .where(Image.slug == build.slug, Image.status == ImageStatus.AVAILABLE)
                .values(status=ImageStatus.DEPRECATED)
            )
            image = Image(
                slug=build.slug,
                version=build.version,
                name=build.name,
                os=build.os,
                size_mb=build.size_mb,
                min_disk_gb=build.min_disk_gb,
                min_memory_mb=build.min_memory_mb,
                cmdline=build.cmdline,
                status=ImageStatus.AVAILABLE,
            )
            session.add(image)
            session.flush()
            log.info("image %s registered", build.build_name)
            return _view(session, image)

    def delete(self, name: str, remove_files: Callable[[str], None]) -> ImageView:
        """Remove a build (``slug-version``, or a slug: its available build); its files go
        with ``remove_files(build_name)``, called before the commit (a failure keeps the row).

        Raises NotFound, or InvalidState while a server's disk is backed by it.
        """
        with self.db.write() as session:
            image = session.scalar(
                select(Image)
                .where(
                    (Image.slug + "-" + Image.version == name)
                    | ((Image.slug == name) & (Image.status == ImageStatus.AVAILABLE))
                )
                .with_for_update()
            )
            if image is None:
                raise NotFound(f"no image {name!r}")
            view = _view(session, image)
            if view.servers:
                raise InvalidState(
                    f"image {image.build_name} is in use by {view.servers} server(s); "
                    "delete them first"
                )
            backups = session.scalar(
                select(func.count())
                .select_from(Backup)
                .where(Backup.image_id == image.id, Backup.status != BackupStatus.DELETING)
            )
            if backups:
                raise InvalidState(
                    f"image {image.build_name} is needed by {backups} backup(s): servers made "
                    "from them boot it; delete the backups first"
                )
            session.delete(image)
            remove_files(image.build_name)
        return view


def resolve_image(session: Session, settings: Settings, slug: str | None) -> Image | None:
    """The image a new server gets: ``slug``'s available build, the default image when
    ``slug`` is None, None for ``blank``. Raises ``Invalid`` for an unknown slug."""
    wanted = slug or settings.default_image
    if wanted == BLANK_IMAGE:
        return None
    image = session.scalar(
        select(Image).where(Image.slug == wanted, Image.status == ImageStatus.AVAILABLE)
    )
    if image is None:
        available = session.scalars(
            select(Image.slug).where(Image.status == ImageStatus.AVAILABLE).order_by(Image.slug)
        ).all()
        offer = ", ".join([*available, BLANK_IMAGE])
        hint = "" if slug else " (the default image is not installed on this host)"
        raise Invalid("body.image", f"unknown image {wanted!r}{hint}; available: {offer}")
    return image


def _view(session: Session, image: Image) -> ImageView:
    servers = session.scalar(
        select(func.count())
        .select_from(Server)
        .where(Server.image_id == image.id, Server.status != ServerStatus.DELETED)
    )
    return ImageView(
        id=image.id,
        slug=image.slug,
        version=image.version,
        name=image.name,
        os=image.os,
        size_mb=image.size_mb,
        min_disk_gb=image.min_disk_gb,
        min_memory_mb=image.min_memory_mb,
        status=image.status,
        servers=servers or 0,
    )
