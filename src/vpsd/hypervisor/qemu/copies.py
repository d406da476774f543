"""Disks as streams and copies, for backups and new servers made from a snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vpsd.core import commands
from vpsd.hypervisor.base import DiskInfo, DriverError, VmSpec
from vpsd.hypervisor.qemu import disk_stream, img, process
from vpsd.hypervisor.qemu.backup_points import drop_change_records
from vpsd.hypervisor.qemu.driver_base import DriverBase

GIB = 1024**3
STREAM_TIMEOUT = 6 * 3600.0
"""Seconds a disk may take to stream to or from the backup repository."""
FALLBACK_TAG = "vpsd-before-rewrite"
"""The internal snapshot holding a disk's state before ``disk_writer`` wrote it in place,
until ``finish_rewrite``: while it is there, the disk is incomplete."""


class DiskCopies(DriverBase):
    """The ``Driver`` methods that read a snapshot out, write a disk in, or clone one."""

    def disks(self, server_id: int) -> list[DiskInfo]:
        """The server's qcow2 disks with their guest-visible sizes."""
        return [DiskInfo(d.stem, img.virtual_size(d)) for d in self._paths(server_id).disks()]

    @contextmanager
    def snapshot_reader(self, server_id: int, tag: str, disk: str) -> Iterator[IO[bytes]]:
        """``disk``'s raw bytes as of ``tag`` through NBD (see ``disk_stream``).

        The server's lock is not held while the bytes flow (minutes for a large disk): its
        operations run one at a time anyway, and the monitor must go on asking the VM.
        """
        path = self._disk_path(server_id, disk)
        with (
            _stream_errors("the disk could not be read"),
            disk_stream.snapshot_reader(path, tag, timeout=STREAM_TIMEOUT) as stream,
        ):
            yield stream

    @contextmanager
    def disk_writer(self, spec: VmSpec, disk: str, size_bytes: int) -> Iterator[IO[bytes]]:
        """Overwrite ``disk`` through NBD, its state kept first as the internal snapshot
        ``FALLBACK_TAG`` (copy-on-write: the clusters written meanwhile take space twice
        until ``finish_rewrite``), or build a missing one aside and move it in place once
        complete, so that a cut stream never leaves a disk that looks whole."""
        paths = self._paths(spec.server_id)
        path = self._disk_path(spec.server_id, disk)
        with self._lock(spec.server_id):
            if process.alive_pid(paths, spec.server_id) is not None:
                raise DriverError(f"server {spec.server_id} is running; stop it first")
            paths.clean_shutdown_marker.unlink(missing_ok=True)
            if path.exists():
                if img.virtual_size(path) != size_bytes:
                    # The tail of a larger disk would keep what it holds now.
                    raise DriverError(f"{disk} is no longer the size it had ({size_bytes} bytes)")
                if FALLBACK_TAG not in self._stopped_tags(path):  # a rerun keeps the first
                    img.snapshot_create(path, FALLBACK_TAG, timeout=self.command_timeout)
        if path.exists():
            if img.virtual_size(path) != size_bytes:
                # The tail of a larger disk would keep what it holds now.
                raise DriverError(f"{disk} is no longer the size it had ({size_bytes} bytes)")
            drop_change_records(
                paths.folder,
                [path],
                "the server was restored from a backup",
                timeout=self.command_timeout,
            )
            with (
                _stream_errors("the disk could not be written"),
                disk_stream.disk_writer(path, timeout=STREAM_TIMEOUT) as stream,
            ):
                yield stream
            return
        paths.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.restoring")
        partial.unlink(missing_ok=True)
        size = max(size_bytes, spec.disk_gb * GIB)
        img.create(partial, size, timeout=self.command_timeout)
        with (
            _stream_errors("the disk could not be written"),
            disk_stream.disk_writer(partial, timeout=STREAM_TIMEOUT) as stream,
        ):
            yield stream
        partial.replace(path)

    def finish_rewrite(self, server_id: int, *, keep: bool) -> None:
        """Delete ``FALLBACK_TAG`` from the disks that have it, after reverting each to it
        unless ``keep`` (every revert before any delete: a rerun after a crash finishes)."""
        with self._lock(server_id):
            paths = self._paths(server_id)
            pending = [d for d in paths.disks() if FALLBACK_TAG in self._stopped_tags(d)]
            if not pending:
                return
            if process.alive_pid(paths, server_id) is not None:
                raise DriverError(f"server {server_id} is running; stop it first")
            if not keep:
                for path in pending:
                    img.snapshot_apply(path, FALLBACK_TAG, timeout=self.command_timeout)
            for path in pending:
                img.snapshot_delete(path, FALLBACK_TAG, timeout=self.command_timeout)

    def incomplete_disks(self, server_id: int) -> list[str]:
        """The disks holding ``FALLBACK_TAG`` (read from their snapshot tables)."""
        with self._lock(server_id):
            disks = self._paths(server_id).disks()
            return [path.stem for path in disks if FALLBACK_TAG in self._stopped_tags(path)]

    def snapshot_clone(self, source_server_id: int, tag: str, spec: VmSpec) -> None:
        """Copy the source's disks at ``tag`` into ``spec``'s new server (see ``Driver``).

        Built aside and moved into place, ``disk0`` last: its presence means "done".
        """
        img.check_tag(tag)
        with self._lock(spec.server_id):
            paths = self._paths(spec.server_id)
            if paths.disk(0).exists():
                return
            sources = self._require_disks(source_server_id, self._paths(source_server_id))
            paths.folder.mkdir(parents=True, exist_ok=True)
            partials: list[tuple[Path, Path]] = []
            for index, source in enumerate(sources):
                target = paths.disk(index)
                partial = target.with_name(f"{target.name}.cloning")
                partial.unlink(missing_ok=True)
                backing = spec.image.disk if index == 0 and spec.image is not None else None
                disk_stream.clone_snapshot(
                    source, tag, partial, backing=backing, timeout=self.command_timeout
                )
                if index == 0 and img.virtual_size(partial) < spec.disk_gb * GIB:
                    img.resize(partial, spec.disk_gb * GIB, timeout=self.command_timeout)
                partials.append((partial, target))
            for partial, target in reversed(partials):
                partial.replace(target)


@contextmanager
def _stream_errors(reason: str) -> Iterator[None]:
    """A failed disk stream as the tenant may read it; nbdcopy's words (paths) are logged."""
    try:
        yield
    except commands.CommandError as exc:
        error = DriverError(f"{reason} (the operator's log has the details)")
        error.detail = str(exc)
        raise error from exc
