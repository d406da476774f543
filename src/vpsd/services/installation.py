"""Which installation a data dir and a database belong to, checked before vpsd uses them.

Names on disk (server folders, VM names, snapshot tags) come from database ids. A database
that is not the one the data dir was made with (deleted and recreated, replaced, restored
from another installation) would hand a new tenant an old tenant's folder, running VM and
snapshots. So each database gets an installation id (a UUID, made at its first start) and the
data dir a marker file with the same id; vpsd refuses to start when they disagree, and
changes neither.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import func, select

from vpsd.config import Settings
from vpsd.db.models import Installation, Server
from vpsd.db.session import Database

MARKER = "installation-id"


class InstallationMismatch(Exception):
    """The data dir and the database were not made together; the message says what to do."""


def verify(db: Database, settings: Settings) -> str:
    """The installation id of ``db``, once the data dir is known to belong to it.

    On a database's first start its id is made; on a data dir's first start (or one made
    by a vpsd older than the marker) the marker is written, unless the data dir holds
    servers' folders the database does not know at all. Raises ``InstallationMismatch``.
    """
    with db.write() as session:
        installation = session.get(Installation, 1)
        if installation is None:
            installation = Installation(id=1, installation_id=str(uuid.uuid4()))
            session.add(installation)
        ours = installation.installation_id
        servers = session.scalar(select(func.count()).select_from(Server)) or 0
    marker = settings.data_dir / MARKER
    database = db.engine.url.render_as_string(hide_password=True)
    if marker.exists():
        theirs = marker.read_text().strip()
        if theirs != ours:
            raise InstallationMismatch(
                f"the data dir {settings.data_dir} belongs to vpsd installation {theirs}, but "
                f"the database {database} to installation {ours}: they were not made "
                "together (a database deleted, replaced or restored from elsewhere). Put the "
                "data dir's own database back; or, to start afresh, stop the data dir's VMs "
                "and move it aside. vpsd has changed neither."
            )
        return ours
    folders = _server_folders(settings.servers_dir)
    if folders and servers == 0:
        raise InstallationMismatch(
            f"the data dir {settings.data_dir} holds {len(folders)} servers' folders, but the "
            f"database {database} has never had a server: it is new or was emptied. Put the "
            "data dir's own database back; or, to start afresh, stop the data dir's VMs and "
            "move it aside. vpsd has changed neither."
        )
    _write_marker(marker, ours)
    return ours


def _server_folders(servers_dir: Path) -> list[Path]:
    if not servers_dir.is_dir():
        return []
    return [path for path in servers_dir.iterdir() if path.is_dir()]


def _write_marker(marker: Path, installation_id: str) -> None:
    partial = marker.with_name(f".{marker.name}.partial")
    partial.write_text(f"{installation_id}\n")
    partial.chmod(0o600)
    partial.replace(marker)
