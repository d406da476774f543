"""Disks stored as chunk files in restic (``backups/chunks.py``): the backup through a FUSE
view of the disk, the restore from ``restic dump``'s tar of the chunk directory.

restic runs in the view's mount point and backs up the relative path of the disk
(``disk0``), so the snapshot's tree is the same whatever the mount point, and the parent's
nodes are found by path. The times each backup showed are kept in the store's work folder
for the next one; when they are missing (a new host, a lost folder) they are read back
from the parent snapshot with ``restic ls``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from contextlib import ExitStack, suppress
from datetime import datetime
from pathlib import Path
from typing import IO

from vpsd.backups import chunks, fuse, restic
from vpsd.backups.base import BackupStoreError, Progress, SavedDisk, Tags
from vpsd.backups.restic import ResticStore
from vpsd.backups.restic_repository import gives_up, storage_errors
from vpsd.core import commands
from vpsd.core.disks import DiskSource

log = logging.getLogger(__name__)
VIEW_THREADS = 4
"""Threads serving one disk's view: restic reads two files at a time, each ahead."""


def save_disk(
    store: ResticStore,
    source: DiskSource,
    tags: Tags,
    *,
    checkpoint: str,
    parent: str | None,
    on_progress: Progress | None,
) -> SavedDisk:
    """See ``BackupStore.save_disk``."""
    store.ensure_ready()
    disk = source.changes.name
    parent_times = _parent_times(store, parent) if parent and source.changes.since else None
    plan = chunks.plan(source, parent_times, checkpoint, time.time_ns())
    if parent_times is not None and not plan.incremental:
        log.info("%s: the parent's chunk times do not fit this backup point; reading all", disk)
    labels = {
        **tags,
        "checkpoint": checkpoint,
        "chunks": str(plan.times.chunk_bytes),
        "size": str(plan.times.size_bytes),
    }
    # --force when there is no parent: restic would otherwise look for one by path.
    base = ["--parent", str(parent)] if plan.incremental else ["--force"]
    args = store._args("backup", "--json", "--host", "vpsd", *base, *restic._tag_args(labels), disk)
    tree = chunks.ChunkTree(disk, plan.times, source)
    started = time.time()
    with ExitStack() as stack:
        try:
            mount = stack.enter_context(
                fuse.mounted(tree, store.work_dir / "views", threads=VIEW_THREADS)
            )
        except fuse.FuseError as exc:
            log.warning("%s; %s is stored whole, as one file read to its end", exc, disk)
            return _save_whole(store, source, tags, on_progress)
        stack.enter_context(store._access.shared())
        stack.enter_context(storage_errors())
        process = stack.enter_context(
            commands.streaming(
                args,
                stdout=subprocess.PIPE,
                env=store._env(),
                timeout=store.stream_timeout,
                cwd=mount.mountpoint,
                kill_on=gives_up,
            )
        )
        assert process.stdout is not None
        summary = restic._read_output(process.stdout, on_progress)
    if mount.errors:
        raise BackupStoreError(
            "the disk could not be read (the operator's log has the details)",
            f"{disk}: {len(mount.errors)} reads failed, the first: {mount.errors[0]!r}",
        )
    if summary is None:
        raise BackupStoreError(
            "the backup storage failed (the operator's log has the details)",
            "restic backup exited 0 without a summary",
        )
    snapshot = _full_id(store, str(summary["snapshot_id"]), labels, started)
    chunks.save_times(store.work_dir / "chunk-times", snapshot, plan.times)
    return SavedDisk(
        snapshot,
        plan.times.size_bytes,
        int(summary["data_added"]),
        layout=chunks.FORMAT,
        incremental=plan.incremental,
        read_bytes=source.read_bytes,
    )


def _save_whole(
    store: ResticStore, source: DiskSource, tags: Tags, on_progress: Progress | None
) -> SavedDisk:
    """Where FUSE cannot be mounted: the whole disk into ``restic backup --stdin``, as
    ``<disk>.raw`` (layout ``raw``, restored with ``load``). Zero regions are not read."""
    size = source.changes.size_bytes
    reader, writer = os.pipe()
    failed: list[BaseException] = []

    def feed() -> None:
        zeros = bytes(chunks.CHUNK_BYTES)
        buffer = bytearray(chunks.CHUNK_BYTES)
        try:
            with open(writer, "wb", buffering=0) as pipe:  # noqa: PTH123
                position = 0
                for start, length in [*source.data_extents(), (size, 0)]:
                    while position < start:
                        step = min(start - position, len(zeros))
                        pipe.write(zeros[:step])
                        position += step
                    while position < start + length:
                        view = memoryview(buffer)[: min(start + length - position, len(buffer))]
                        source.read_into(position, view)
                        pipe.write(view)
                        position += len(view)
        except BaseException as exc:  # restic's death (EPIPE) or a failed read
            failed.append(exc)

    thread = threading.Thread(target=feed, name=f"whole-{source.changes.name}", daemon=True)
    thread.start()
    try:
        with open(reader, "rb") as stream:  # noqa: PTH123
            saved = store.save(stream, f"{source.changes.name}.raw", tags, on_progress)
    finally:
        thread.join()
    if failed:
        raise BackupStoreError(
            "the disk could not be read (the operator's log has the details)", repr(failed[0])
        )
    return dataclasses.replace(saved, incremental=False, read_bytes=source.read_bytes)


def load_disk(
    store: ResticStore, snapshot: str, disk: str, size_bytes: int, sink: IO[bytes]
) -> None:
    """See ``BackupStore.load_disk``: ``restic dump`` of the disk's directory (a tar, in
    path order: offset order), turned back into the disk's bytes here."""
    store.ensure_ready()
    args = store._args("dump", snapshot, f"/{disk}")
    try:
        with (
            store._access.shared(),
            storage_errors(),
            commands.streaming(
                args,
                stdout=subprocess.PIPE,
                env=store._env(),
                timeout=store.stream_timeout,
                kill_on=gives_up,
            ) as process,
            sink,
        ):
            assert process.stdout is not None
            chunks.write_disk(process.stdout, disk, size_bytes, sink)
            process.stdout.read()  # tar's closing blocks: restic must not die on a closed pipe
    except chunks.LayoutError as exc:
        raise BackupStoreError(
            "the stored backup is not readable (the operator's log has the details)",
            f"{snapshot}: {exc}",
        ) from exc


def _full_id(store: ResticStore, short_id: str, labels: Tags, since: float) -> str:
    """The full id of the snapshot just saved: restic's summary gives a prefix, which could
    become ambiguous as the repository grows. restic's cache holds the snapshot file it
    just wrote (``<cache>/<repository id>/snapshots/<2 hex>/<id>``, written after
    ``since``); failing that, the repository is listed (without a lock: restic's lock
    costs a fixed 200 ms wait, and a listing racing with a forget is harmless)."""
    folder = store.cache_dir / _repository_id(store) / "snapshots" / short_id[:2]
    with suppress(OSError):
        fresh = [
            path.name
            for path in folder.glob(f"{short_id}*")
            if path.stat().st_mtime >= since - 1.0 and path.name.isalnum()
        ]
        if len(fresh) == 1:
            return fresh[0]
    listed = store._run("--no-lock", "snapshots", "--json", "--tag", restic._tag_list(labels))
    full = [str(item["id"]) for item in json.loads(listed or "[]")]
    found = [snapshot for snapshot in full if snapshot.startswith(short_id)]
    return found[0] if len(found) == 1 else short_id


_REPOSITORY_IDS: dict[tuple[str, Path], str] = {}


def _repository_id(store: ResticStore) -> str:
    """The repository's id (its config's), read once per process."""
    key = (store.repository, store.password_file)
    if key not in _REPOSITORY_IDS:
        config = json.loads(store._run("--no-lock", "cat", "config"))
        _REPOSITORY_IDS[key] = str(config["id"])
    return _REPOSITORY_IDS[key]


def _parent_times(store: ResticStore, parent: str) -> chunks.ChunkTimes | None:
    """The chunk times shown by ``parent``: kept here, else read from the repository."""
    kept = chunks.load_times(store.work_dir / "chunk-times", parent)
    if kept is not None:
        return kept
    try:
        return _times_from_repository(store, parent)
    except (BackupStoreError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the chunk times of %s (%s): reading the whole disk", parent, exc)
        return None


def _times_from_repository(store: ResticStore, parent: str) -> chunks.ChunkTimes | None:
    """``restic ls --json`` of the parent: its tags say its checkpoint and layout, its file
    nodes the times (to the nanosecond)."""
    lines = store._run("--no-lock", "ls", "--json", parent).splitlines()
    if not lines:
        return None
    snapshot = json.loads(lines[0])
    labels = dict(tag.split("=", 1) for tag in snapshot.get("tags") or [] if "=" in tag)
    if not {"checkpoint", "chunks", "size"} <= labels.keys():
        return None
    times: dict[int, int] = {}
    for line in lines[1:]:
        node = json.loads(line)
        if node.get("type") != "file":
            continue
        offset = int(str(node["name"]), 16)
        times[offset] = _nanoseconds(str(node["mtime"]))
    return chunks.ChunkTimes(
        labels["checkpoint"], int(labels["size"]), int(labels["chunks"]), times
    )


def _nanoseconds(text: str) -> int:
    """An RFC 3339 time with up to nine decimals (restic's) as nanoseconds since the epoch."""
    head, dot, rest = text.partition(".")
    if not dot:
        return int(datetime.fromisoformat(text).timestamp()) * 1_000_000_000
    digits = len(rest) - len(rest.lstrip("0123456789"))
    fraction, zone = rest[:digits], rest[digits:]
    seconds = int(datetime.fromisoformat(head + zone).timestamp())
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def forget_times(work_dir: Path, snapshots: list[str]) -> None:
    """Drop the kept times of forgotten snapshots."""
    chunks.forget_times(work_dir / "chunk-times", snapshots)
