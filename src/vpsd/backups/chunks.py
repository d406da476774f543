"""A disk shown to restic as fixed-size chunk files, so that a backup reads only what changed.

The layout of a disk ``disk0`` of a backup::

    disk0/<group offset>/<chunk offset>     16 lowercase hex digits each, in byte offsets

Chunk files are ``chunk_bytes`` long (the last one shorter) and grouped ``GROUP_BYTES`` of
the disk to a directory, so no directory grows past a thousand entries. A chunk that reads
as zeros at the backup's point is left out: a restore writes zeros wherever no file is.

restic 0.14 reuses a file's stored blobs without reading it when the parent snapshot holds
the same path with the same size, mtime, ctime and inode (``fileChanged`` in its
archiver). So every chunk file shows a time that changes only when the chunk does: the time
of the backup that last saw it change. A chunk untouched since the previous backup (by the
driver's change record, ``DiskChanges``) shows the previous backup's time again; any other
shows a new time, later than every time of the parent, and is read. The times shown are kept
(``ChunkTimes``) for the next backup, keyed by the restic snapshot they went into and the
checkpoint whose changes they assume: a record of another checkpoint is never paired with
them. Inodes are the chunk's index, the same in every backup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vpsd.backups.fuse import ROOT_INODE, Attributes
from vpsd.core.disks import DiskSource

CHUNK_BYTES = 1024 * 1024
"""Bytes per chunk file: restic's mean blob size, and the unit a changed cluster costs."""
GROUP_BYTES = 1024**3
"""Bytes of the disk per directory of chunk files."""
FORMAT = "chunks"
"""How a backup disk stored this way is recorded (``SavedDisk.layout``)."""
_DISK_INODE = 2
_GROUP_INODES = 3
_FILE_INODES = 1 << 32
_DIRECTORY_TIME = 0


def hex_name(offset: int) -> bytes:
    """The file or directory name of a chunk or group starting at ``offset``."""
    return b"%016x" % offset


@dataclass(frozen=True, slots=True)
class ChunkTimes:
    """The time each chunk file of a stored backup showed (nanoseconds), and what they
    assume: the backup's checkpoint, the disk's size, the chunk size."""

    checkpoint: str
    size_bytes: int
    chunk_bytes: int
    times: dict[int, int] = field(default_factory=dict)
    """Chunk offset -> time, for the chunks present (not all zeros)."""

    def to_json(self) -> str:
        """A compact form: runs of consecutive chunks sharing a time."""
        runs: list[list[int]] = []
        for offset in sorted(self.times):
            time = self.times[offset]
            last = runs[-1] if runs else None
            if last and last[0] + last[1] * self.chunk_bytes == offset and last[2] == time:
                last[1] += 1
            else:
                runs.append([offset, 1, time])
        return json.dumps(
            {
                "checkpoint": self.checkpoint,
                "size_bytes": self.size_bytes,
                "chunk_bytes": self.chunk_bytes,
                "runs": runs,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ChunkTimes:
        """Parse ``to_json``'s form; raises ``ValueError`` (or ``KeyError``) when malformed."""
        data = json.loads(text)
        chunk = int(data["chunk_bytes"])
        times = {
            int(first) + index * chunk: int(time)
            for first, count, time in data["runs"]
            for index in range(int(count))
        }
        return cls(str(data["checkpoint"]), int(data["size_bytes"]), chunk, times)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a backup of one disk shows restic: every present chunk and its time, whether
    the parent's times were reused (``incremental``), and the bytes of chunks to be read."""

    times: ChunkTimes
    incremental: bool
    changed_bytes: int


def plan(
    source: DiskSource,
    parent: ChunkTimes | None,
    checkpoint: str,
    now_ns: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Plan:
    """The chunk times of a backup of ``source`` at checkpoint ``checkpoint``.

    The parent's times are reused only for chunks the change record says are untouched, and
    only when the record is relative to the parent's own checkpoint and the disk's size and
    chunk size are the parent's; otherwise every chunk shows a new time and is read.
    """
    changes = source.changes
    size = changes.size_bytes
    usable = (
        parent is not None
        and changes.since is not None
        and parent.checkpoint == changes.since
        and parent.size_bytes == size
        and parent.chunk_bytes == chunk_bytes
    )
    previous = parent.times if usable and parent is not None else {}
    new_time = max(now_ns, max(previous.values(), default=0) + 1)
    times: dict[int, int] = {}
    changed = 0
    for offset in present_chunks(source.data_extents(), size, chunk_bytes):
        length = min(chunk_bytes, size - offset)
        if offset in previous and not changes.changed(offset, length):
            times[offset] = previous[offset]
        else:
            times[offset] = new_time
            changed += length
    return Plan(ChunkTimes(checkpoint, size, chunk_bytes, times), usable, changed)


def present_chunks(
    data: Sequence[tuple[int, int]], size_bytes: int, chunk_bytes: int
) -> Iterator[int]:
    """Offsets of the chunks that overlap a data run (``data`` sorted), in order."""
    following = 0
    for start, length in data:
        end = min(start + length, size_bytes)
        for offset in range(max(start - start % chunk_bytes, following), end, chunk_bytes):
            yield offset
            following = offset + chunk_bytes


class ChunkTree:
    """The FUSE tree of one disk's chunk files (``fuse.Tree``), read from ``source``."""

    def __init__(self, disk: str, times: ChunkTimes, source: DiskSource) -> None:
        self.source = source
        self.times = times
        self._disk = disk.encode()
        self._chunk = times.chunk_bytes
        groups: dict[int, list[int]] = {}
        for offset in sorted(times.times):
            groups.setdefault(offset - offset % GROUP_BYTES, []).append(offset)
        self._groups = groups
        self._group_inode = {group: _GROUP_INODES + group // GROUP_BYTES for group in groups}
        self._inode_group = {inode: group for group, inode in self._group_inode.items()}

    def _file_offset(self, inode: int) -> int | None:
        if inode < _FILE_INODES:
            return None
        offset = (inode - _FILE_INODES) * self._chunk
        return offset if offset in self.times.times else None

    def attributes(self, inode: int) -> Attributes | None:
        """See ``fuse.Tree``."""
        if inode in (ROOT_INODE, _DISK_INODE) or inode in self._inode_group:
            return Attributes(inode, True, 0, _DIRECTORY_TIME)
        offset = self._file_offset(inode)
        if offset is None:
            return None
        length = min(self._chunk, self.times.size_bytes - offset)
        return Attributes(inode, False, length, self.times.times[offset])

    def lookup(self, parent: int, name: bytes) -> int | None:
        """See ``fuse.Tree``."""
        if parent == ROOT_INODE:
            return _DISK_INODE if name == self._disk else None
        offset = _parse_hex(name)
        if offset is None:
            return None
        if parent == _DISK_INODE:
            return self._group_inode.get(offset)
        group = self._inode_group.get(parent)
        if group is None or offset - offset % GROUP_BYTES != group or offset % self._chunk:
            return None
        inode = _FILE_INODES + offset // self._chunk
        return inode if offset in self.times.times else None

    def entries(self, directory: int) -> Sequence[tuple[bytes, int]]:
        """See ``fuse.Tree``."""
        if directory == ROOT_INODE:
            return [(self._disk, _DISK_INODE)]
        if directory == _DISK_INODE:
            return [(hex_name(g), self._group_inode[g]) for g in sorted(self._groups)]
        group = self._inode_group.get(directory)
        if group is None:
            return []
        return [(hex_name(o), _FILE_INODES + o // self._chunk) for o in self._groups[group]]

    def read(self, inode: int, offset: int, size: int) -> bytearray:
        """See ``fuse.Tree``: the chunk's bytes, read from the disk."""
        start = self._file_offset(inode)
        if start is None:
            raise FileNotFoundError(inode)
        length = min(self._chunk, self.times.size_bytes - start)
        size = max(0, min(size, length - offset))
        buffer = bytearray(size)
        if size:
            self.source.read_into(start + offset, memoryview(buffer))
        return buffer


def _parse_hex(name: bytes) -> int | None:
    if len(name) != 16 or name != name.lower():
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None


# -- restore: a tar of the chunk files back into the disk's bytes ---------------------------

_ZEROS = bytes(1024 * 1024)
_BLOCK = 512


class LayoutError(ValueError):
    """The stored files are not a chunked disk of the expected size."""


def write_disk(tar: IO[bytes], disk: str, size_bytes: int, sink: IO[bytes]) -> int:
    """Write the disk whose chunk files ``tar`` holds (``restic dump`` of ``disk``'s
    directory) to ``sink`` as its raw bytes, zeros where no chunk file is; returns the
    bytes of chunk files written. Raises ``LayoutError`` when the files are out of order,
    overlap, or do not fit ``size_bytes``."""
    position = 0
    stored = 0
    for name, length in _tar_members(tar):
        parts = name.strip("/").split("/")
        if len(parts) != 3 or parts[0] != disk:
            if length:
                raise LayoutError(f"unexpected file {name!r} in a chunked disk")
            continue  # a directory
        offset = _parse_hex(parts[2].encode())
        group = _parse_hex(parts[1].encode())
        if offset is None or group is None or offset < position or offset + length > size_bytes:
            raise LayoutError(f"chunk file {name!r} out of place")
        _write_zeros(sink, offset - position)
        _copy(tar, sink, length)
        _skip(tar, -length % _BLOCK)
        position = offset + length
        stored += length
    _write_zeros(sink, size_bytes - position)
    return stored


def _tar_members(tar: IO[bytes]) -> Iterator[tuple[str, int]]:
    """(name, size) of each regular file or directory of a tar stream; the caller reads each
    file's data (and its padding) before asking for the next."""
    long_name: str | None = None
    while True:
        header = _read_exactly(tar, _BLOCK)
        if header == bytes(_BLOCK):
            return
        kind = header[156:157]
        size = _tar_number(header[124:136])
        if kind in (b"x", b"g", b"L"):
            data = _read_exactly(tar, size)
            _skip(tar, -size % _BLOCK)
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode()
            elif kind == b"x":
                for key, value in _pax_records(data):
                    if key == "path":
                        long_name = value
            continue
        name = long_name or _ustar_name(header)
        long_name = None
        if kind in (b"0", b"\0", b"5"):
            yield name, size if kind != b"5" else 0
        else:
            raise LayoutError(f"unexpected tar entry type {kind!r} for {name!r}")


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    return (prefix + b"/" + name if prefix else name).decode()


def _tar_number(field_bytes: bytes) -> int:
    if field_bytes[0] & 0x80:  # base-256, for sizes past 8 GiB
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> Iterator[tuple[str, str]]:
    while data:
        length_text, _, rest = data.partition(b" ")
        length = int(length_text)
        record = rest[: length - len(length_text) - 2]
        key, _, value = record.partition(b"=")
        yield key.decode(), value.decode(errors="replace")
        data = data[length:]


def _read_exactly(stream: IO[bytes], length: int) -> bytes:
    data = stream.read(length)
    while len(data) < length:
        more = stream.read(length - len(data))
        if not more:
            raise LayoutError("the stored disk ended early")
        data += more
    return data


def _skip(stream: IO[bytes], length: int) -> None:
    if length:
        _read_exactly(stream, length)


def _copy(source: IO[bytes], sink: IO[bytes], length: int) -> None:
    buffer = bytearray(min(length, len(_ZEROS)) or 1)
    view = memoryview(buffer)
    while length:
        want = min(length, len(buffer))
        got = source.readinto(view[:want])  # type: ignore[attr-defined]
        if not got:
            raise LayoutError("the stored disk ended early")
        sink.write(view[:got])
        length -= got


def _write_zeros(sink: IO[bytes], length: int) -> None:
    view = memoryview(_ZEROS)
    while length:
        step = min(length, len(_ZEROS))
        sink.write(view[:step])
        length -= step


# -- the times kept for the next backup ----------------------------------------------------


def times_path(folder: Path, snapshot: str) -> Path:
    """Where the chunk times of stored snapshot ``snapshot`` are kept below ``folder``."""
    if not snapshot.isalnum():
        raise ValueError(f"invalid snapshot id {snapshot!r}")
    return folder / f"{snapshot}.json"


def save_times(folder: Path, snapshot: str, times: ChunkTimes) -> None:
    """Keep ``times`` for ``snapshot`` (written whole, then renamed)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = times_path(folder, snapshot)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(times.to_json())
    partial.replace(path)


def load_times(folder: Path, snapshot: str) -> ChunkTimes | None:
    """The times kept for ``snapshot``, None when there are none (or they are unreadable)."""
    try:
        return ChunkTimes.from_json(times_path(folder, snapshot).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_times(folder: Path, snapshots: list[str]) -> None:
    """Drop the times of snapshots that no longer exist."""
    for snapshot in snapshots:
        if snapshot.isalnum():
            (folder / f"{snapshot}.json").unlink(missing_ok=True)
