"""The services' log format, set up the same way in every process (``vpsd serve``, its worker
processes, ``vpsd agent``)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str) -> None:
    """Log at ``level`` (debug, info, warning or error) to stderr, with time and level."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # qemu.qmp logs every closed QMP connection at INFO; those are routine here.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
