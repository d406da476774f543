"""Backup points: a snapshot of every disk plus the start of a new change record, taken at
one instant, and random access to the snapshot for the backup store.

While the VM runs, one QMP ``transaction`` (between the guest's filesystem freeze and thaw)
takes the internal snapshot, adds the new persistent bitmap (``bitmaps.record_name``) and,
when the previous record can be trusted, copies it into a temporary disabled bitmap: that
copy holds exactly the clusters written between the previous backup's point and this one.
The previous record itself stays enabled until the backup is kept, so a failed backup
leaves the chain as it was. QEMU's own NBD server exports the copy, whose dirty extents
``nbdinfo`` lists; the data is read from the snapshot through ``qemu-nbd``, as
``snapshot_reader`` does. While the VM is stopped nothing writes, and ``qemu-img`` does the
same in three steps.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from vpsd.core import commands
from vpsd.core.disks import DiskChanges
from vpsd.hypervisor.base import BackupPoint, Consistency, DriverError
from vpsd.hypervisor.qemu import bitmaps, disk_stream, img, nbd, process
from vpsd.hypervisor.qemu.driver_base import DriverBase
from vpsd.hypervisor.qemu.qmp import QmpError, QmpSession
from vpsd.hypervisor.qemu.quiesce import quiesced

log = logging.getLogger(__name__)

QMP_TIMEOUT = 30.0
READ_TIMEOUT = 600.0
"""Seconds one read of a snapshot may take before it counts as failed."""
NBD_SOCKET = "nbd.sock"
"""The running VM's own NBD server, in the server's folder, while a backup point is taken."""


class BackupPoints(DriverBase):
    """The ``Driver`` methods of incremental backups (see the module's docstring)."""

    def backup_point_create(
        self, server_id: int, tag: str, checkpoint: str, since: str | None
    ) -> BackupPoint:
        """See ``Driver.backup_point_create``."""
        img.check_tag(tag)
        bitmaps.check_checkpoint(checkpoint)
        if since is not None and bitmaps.check_checkpoint(since) == checkpoint:
            raise DriverError("a backup point cannot be based on its own checkpoint")
        with self._lock(server_id):
            paths = self._paths(server_id)
            disks = self._require_disks(server_id, paths)
            running = process.alive_pid(paths, server_id) is not None
            reset = bitmaps.reset_reason(paths.folder)
            if running:
                consistency, changes = self._point_running(paths, disks, tag, checkpoint, since)
            else:
                changes = self._point_stopped(disks, tag, checkpoint, since)
                consistency = "filesystem" if paths.clean_shutdown_marker.exists() else "crash"
            bitmaps.clear_reset(paths.folder)
            captured = sum(
                img.captured_bytes(d, tag, force_share=running, timeout=self.command_timeout)
                for d in disks
            )
        if reset is not None:
            # vpsd itself dropped the records: say what it did rather than "no record".
            changes = [
                c if c.chain_break is None else DiskChanges(c.name, c.size_bytes, None, (), reset)
                for c in changes
            ]
        return BackupPoint(captured, consistency, tuple(changes))

    @contextmanager
    def backup_source(
        self, server_id: int, tag: str, changes: DiskChanges
    ) -> Iterator[SnapshotSource]:
        """``qemu-nbd`` serving snapshot ``tag`` of the disk read-only (the running VM holds
        the image; a snapshot's clusters are never written in place, see ``disk_stream``).
        The server's lock is not held while it is read."""
        img.check_tag(tag)
        path = self._disk_path(server_id, changes.name)
        with tempfile.TemporaryDirectory(prefix="vpsd-nbd-") as folder:
            socket = Path(folder) / "disk.sock"
            args = [
                disk_stream.QEMU_NBD,
                "--read-only",
                "--persistent",
                "--shared=32",
                f"--load-snapshot=snapshot.name={tag}",
                f"--socket={socket}",
                "--image-opts",
                disk_stream.image_options(path),
            ]
            try:
                with commands.serving(args, ready=socket):
                    source = SnapshotSource(changes, socket)
                    try:
                        yield source
                    finally:
                        source.close()
            except commands.CommandError as exc:
                error = DriverError(
                    "the disk could not be read (the operator's log has the details)"
                )
                error.detail = str(exc)
                raise error from exc

    def backup_point_finish(self, server_id: int, tag: str, checkpoint: str, *, kept: bool) -> None:
        """See ``Driver.backup_point_finish``."""
        img.check_tag(tag)
        new = f"{bitmaps.PREFIX}{bitmaps.check_checkpoint(checkpoint)}."
        with self._lock(server_id):
            paths = self._paths(server_id)
            disks = paths.disks()
            if not disks:
                return

            def dropped(name: str) -> bool:
                if name.startswith(bitmaps.FROZEN_PREFIX):
                    return True
                return not name.startswith(new) if kept else name.startswith(new)

            if process.alive_pid(paths, server_id) is None:
                for disk in disks:
                    info = img.info(disk, timeout=self.command_timeout)
                    for name in bitmaps.ours(bitmaps.of_image_info(info)):
                        if dropped(name):
                            img.bitmap_remove(disk, name, timeout=self.command_timeout)
                    if tag in _snapshot_names(info):
                        img.snapshot_delete(disk, tag, timeout=self.command_timeout)
                return
            with QmpSession(paths.qmp_socket, timeout=self.command_timeout) as qmp:
                for index, node in enumerate(_nodes(qmp, len(disks))):
                    for name in bitmaps.ours(bitmaps.of_block_node(node)):
                        if dropped(name):
                            _remove_bitmap(qmp, index, name)
                    if tag in _snapshot_names(node.get("image", {})):
                        qmp.execute(
                            "blockdev-snapshot-delete-internal-sync",
                            {"device": f"disk{index}", "name": tag},
                        )

    # -- internals ---------------------------------------------------------------------------

    def _point_stopped(
        self, disks: list[Path], tag: str, checkpoint: str, since: str | None
    ) -> list[DiskChanges]:
        changes = []
        for disk in disks:
            info = img.info(disk, timeout=self.command_timeout)
            size = int(info["virtual-size"])
            base, why = bitmaps.judge(bitmaps.of_image_info(info), since, size)
            for name in bitmaps.ours(bitmaps.of_image_info(info)):
                if name != base:
                    img.bitmap_remove(disk, name, timeout=self.command_timeout)
            if tag in _snapshot_names(info):
                img.snapshot_delete(disk, tag, timeout=self.command_timeout)
            img.snapshot_create(disk, tag, timeout=self.command_timeout)
            img.bitmap_add(
                disk, bitmaps.record_name(checkpoint, size), timeout=self.command_timeout
            )
            if base is None:
                changes.append(DiskChanges(disk.stem, size, chain_break=why or None))
            else:
                dirty = bitmaps.dirty_extents_stopped(disk, base, timeout=self.command_timeout)
                changes.append(DiskChanges(disk.stem, size, since, dirty))
        return changes

    def _point_running(
        self,
        paths: process.ServerPaths,
        disks: list[Path],
        tag: str,
        checkpoint: str,
        since: str | None,
    ) -> tuple[Consistency, list[DiskChanges]]:
        actions: list[dict[str, Any]] = []
        judged: list[tuple[int, str | None, str]] = []
        frozen = bitmaps.frozen_name(checkpoint)
        # QMP is connected before the freeze: the guest stays frozen for the transaction only.
        with QmpSession(paths.qmp_socket, timeout=self.command_timeout) as qmp:
            for index, node in enumerate(_nodes(qmp, len(disks))):
                device = f"disk{index}"
                size = int(node.get("image", {}).get("virtual-size", 0))
                found = bitmaps.of_block_node(node)
                base, why = bitmaps.judge(found, since, size)
                for name in bitmaps.ours(found):
                    if name != base:
                        _remove_bitmap(qmp, index, name)
                if tag in _snapshot_names(node.get("image", {})):
                    qmp.execute(
                        "blockdev-snapshot-delete-internal-sync", {"device": device, "name": tag}
                    )
                judged.append((size, base, why))
                actions += [
                    {
                        "type": "blockdev-snapshot-internal-sync",
                        "data": {"device": device, "name": tag},
                    },
                    {
                        "type": "block-dirty-bitmap-add",
                        "data": {
                            "node": device,
                            "name": bitmaps.record_name(checkpoint, size),
                            "persistent": True,
                        },
                    },
                ]
                if base is not None:
                    actions += [
                        {
                            "type": "block-dirty-bitmap-add",
                            "data": {
                                "node": device,
                                "name": frozen,
                                "persistent": False,
                                "disabled": True,
                            },
                        },
                        {
                            "type": "block-dirty-bitmap-merge",
                            "data": {"node": device, "target": frozen, "bitmaps": [base]},
                        },
                    ]
            try:
                # All-or-nothing: QEMU aborts every action if one fails.
                with quiesced(paths.qga_socket, paths.frozen_marker) as quiet:
                    qmp.execute("transaction", {"actions": actions})
            except QmpError as exc:
                raise DriverError(f"backup point {tag!r} failed: {exc.desc or exc}") from exc
            consistency: Consistency = "filesystem" if quiet else "crash"
            changes = []
            exported = [i for i, (_, base, _) in enumerate(judged) if base is not None]
            dirty = self._dirty_running(qmp, paths, exported, frozen) if exported else {}
        for index, (size, base, why) in enumerate(judged):
            name = f"disk{index}"
            if base is None:
                changes.append(DiskChanges(name, size, chain_break=why or None))
            else:
                changes.append(DiskChanges(name, size, since, dirty[index]))
        return consistency, changes

    def _dirty_running(
        self, qmp: QmpSession, paths: process.ServerPaths, indexes: list[int], frozen: str
    ) -> dict[int, tuple[tuple[int, int], ...]]:
        """The dirty runs of each disk's frozen copy, read through QEMU's NBD server; the
        copies are removed afterwards."""
        socket = paths.folder / NBD_SOCKET
        with suppress(QmpError):
            qmp.execute("nbd-server-stop")  # left by a vpsd killed here
        socket.unlink(missing_ok=True)
        found: dict[int, tuple[tuple[int, int], ...]] = {}
        qmp.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket)}}})
        try:
            for index in indexes:
                device = f"disk{index}"
                qmp.execute(
                    "block-export-add",
                    {
                        "type": "nbd",
                        "id": f"vpsd-{device}",
                        "node-name": device,
                        "name": device,
                        "writable": False,
                        "bitmaps": [frozen],
                    },
                )
                found[index] = bitmaps.dirty_extents_exported(
                    socket, device, frozen, timeout=self.command_timeout
                )
        finally:
            with suppress(QmpError):
                qmp.execute("nbd-server-stop")
            socket.unlink(missing_ok=True)
            for index in indexes:
                # An export still closing keeps its bitmap busy for a moment; a copy left
                # behind is in memory only and goes at the next backup point or VM exit.
                with suppress(QmpError):
                    _remove_bitmap(qmp, index, frozen)
        return found


class SnapshotSource:
    """A ``DiskSource`` over ``qemu-nbd`` serving one disk's snapshot on ``socket``."""

    def __init__(self, changes: DiskChanges, socket: Path) -> None:
        self.changes = changes
        self._socket = socket
        self._reader = nbd.NbdReader(socket, timeout=READ_TIMEOUT)
        if self._reader.size != changes.size_bytes:
            self._reader.close()
            raise DriverError(
                f"{changes.name} is {self._reader.size} bytes at the snapshot, "
                f"not {changes.size_bytes}"
            )

    @property
    def read_bytes(self) -> int:
        """Bytes read from the snapshot so far."""
        return self._reader.read_bytes

    def data_extents(self) -> list[tuple[int, int]]:
        """The allocated runs of the snapshot (``base:allocation``: not "zero")."""
        runs: list[tuple[int, int]] = []
        for extent in nbd.block_status(self._socket, "base:allocation", timeout=QMP_TIMEOUT):
            if extent.flags & 2:
                continue
            if runs and runs[-1][0] + runs[-1][1] == extent.offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + extent.length)
            else:
                runs.append((extent.offset, extent.length))
        return runs

    def read_into(self, offset: int, view: memoryview) -> None:
        """Read from the snapshot; ``DriverError`` (a ``CommandError``) when that fails."""
        self._reader.read_into(offset, view)

    def close(self) -> None:
        """Close the connections."""
        self._reader.close()


def _nodes(qmp: QmpSession, count: int) -> list[dict[str, Any]]:
    """The block nodes ``disk0``... of a running VM, in order."""
    nodes: list[dict[str, Any]] = qmp.execute("query-named-block-nodes", {"flat": True})
    by_name = {node.get("node-name"): node for node in nodes}
    missing = [f"disk{i}" for i in range(count) if f"disk{i}" not in by_name]
    if missing:
        raise DriverError(f"the running VM has no block node {', '.join(missing)}")
    return [by_name[f"disk{i}"] for i in range(count)]


def _snapshot_names(image: dict[str, Any]) -> list[str]:
    return [str(snapshot["name"]) for snapshot in image.get("snapshots", [])]


def _remove_bitmap(qmp: QmpSession, index: int, name: str) -> None:
    qmp.execute("block-dirty-bitmap-remove", {"node": f"disk{index}", "name": name})


def drop_change_records(folder: Path, disks: list[Path], reason: str, *, timeout: float) -> None:
    """Before a change the records would not see (a restore) of a *stopped* server's disks:
    note ``reason`` for the next backup, then remove every vpsd bitmap."""
    bitmaps.note_reset(folder, reason)
    for disk in disks:
        bitmaps.remove_all(disk, timeout=timeout)
    log.info("server %s: change records dropped (%s)", folder.name, reason)
