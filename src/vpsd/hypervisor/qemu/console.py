"""A VM's serial console log: its tail for the API, and trimming it in place."""

from __future__ import annotations

import os
from pathlib import Path

from vpsd.hypervisor.qemu import process


def console_tail(paths: process.ServerPaths, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the serial console: this boot's, preceded by as much of
    the previous boot's as fits. Empty when the server never booted."""
    chunks: list[bytes] = []
    remaining = max_bytes
    for log_file in (paths.console_log, paths.previous_console_log):
        if remaining <= 0:
            break
        chunk = _tail(log_file, remaining)
        chunks.insert(0, chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def trim_console(log_file: Path, max_bytes: int) -> bool:
    """Keep the console log under ``max_bytes``: when longer, cut it to its last half.

    QEMU appends (``append=on``), so the file is cut in place and QEMU goes on writing
    at its new end; the few bytes written while it is cut are lost. True if it was cut.
    """
    try:
        if log_file.stat().st_size <= max_bytes:
            return False
        with log_file.open("r+b") as file:
            file.seek(-(max_bytes // 2), os.SEEK_END)
            kept = file.read()
            file.seek(0)
            file.write(kept)
            file.truncate()
    except FileNotFoundError:
        return False
    return True


def _tail(path: Path, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of ``path`` (empty when it does not exist)."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - max_bytes))
            return file.read(max_bytes)
    except FileNotFoundError:
        return b""
