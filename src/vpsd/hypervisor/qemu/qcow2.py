"""What an internal snapshot holds, read straight from the qcow2 metadata (no process).

``qemu-img measure`` answers the same question, but costs a process and, for a disk backed by
an image, a walk of the whole backing chain through QEMU's block layer: 40-60 ms per snapshot
on these machines, most of a snapshot's latency. Reading the snapshot's L1/L2 tables (and the
backing image's, for clusters the disk does not have) in Python takes a few milliseconds.

Only the common layout is read: qcow2 version 2 or 3, standard L2 entries, no external data
file, no encryption, a qcow2 backing file with the same cluster size. For anything else
``allocated_bytes`` raises ``Unsupported`` and the caller measures with qemu-img instead.
Tables of a snapshot never change once it is taken (later writes copy them first), so they
can be read while the VM runs.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
"""Bits 9-55 of an L1 or L2 entry: the host offset of the table or cluster."""
COMPRESSED = 1 << 62
ZERO = 1
"""Bit 0 of a standard L2 entry (version 3): the cluster reads as zeros."""
INCOMPATIBLE_SUPPORTED = 0b01001
"""Incompatible features read here: dirty (lazy refcounts), compression type (zlib, zstd)."""


class Unsupported(Exception):
    """An image this reader does not handle; measure it with qemu-img."""


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of a qcow2 header this reader needs."""

    cluster_bits: int
    size: int
    l1_size: int
    l1_offset: int
    nb_snapshots: int
    snapshots_offset: int
    backing_file: str | None

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return 1 << self.cluster_bits


def read_header(image: BinaryIO) -> Header:
    """The header of the qcow2 ``image``; raises ``Unsupported`` for what is not read here."""
    image.seek(0)
    raw = image.read(112)
    if len(raw) < 72 or raw[:4] != MAGIC:
        raise Unsupported("not a qcow2 image")
    version, backing_offset, backing_size, cluster_bits, size = struct.unpack(">IQIIQ", raw[4:32])
    crypt, l1_size, l1_offset = struct.unpack(">IIQ", raw[32:48])
    nb_snapshots, snapshots_offset = struct.unpack(">IQ", raw[60:72])
    if version not in (2, 3) or crypt != 0:
        raise Unsupported(f"qcow2 version {version}, encryption {crypt}")
    if version == 3:
        (incompatible,) = struct.unpack(">Q", raw[72:80])
        if incompatible & ~INCOMPATIBLE_SUPPORTED:  # external data file, extended L2...
            raise Unsupported(f"incompatible features {incompatible:#x}")
    backing = None
    if backing_offset:
        image.seek(backing_offset)
        backing = image.read(backing_size).decode()
    return Header(cluster_bits, size, l1_size, l1_offset, nb_snapshots, snapshots_offset, backing)


def _snapshot_table(image: BinaryIO, header: Header) -> list[tuple[str, int, int]]:
    """Every internal snapshot: (name, L1 offset, L1 entries), oldest first."""
    image.seek(header.snapshots_offset)
    found = []
    for _ in range(header.nb_snapshots):
        fixed = image.read(40)
        if len(fixed) < 40:
            raise Unsupported("truncated snapshot table")
        l1_offset, l1_size, id_size, name_size = struct.unpack(">QIHH", fixed[:16])
        (extra_size,) = struct.unpack(">I", fixed[36:40])
        image.seek(extra_size + id_size, 1)
        name = image.read(name_size).decode(errors="replace")
        entry = 40 + extra_size + id_size + name_size
        image.seek((-entry) % 8, 1)  # entries are padded to 8 bytes
        found.append((name, l1_offset, l1_size))
    return found


def snapshot_l1(image: BinaryIO, header: Header, name: str) -> tuple[int, int]:
    """The L1 table (offset, entries) of internal snapshot ``name``; Unsupported if absent."""
    for found, l1_offset, l1_size in _snapshot_table(image, header):
        if found == name:
            return l1_offset, l1_size
    raise Unsupported(f"no snapshot {name!r}")


def snapshot_names(path: Path) -> list[str]:
    """The internal snapshot names of ``path``, oldest first, read from its snapshot table.

    QEMU writes a new table before it points the header at it, so a reader sees the old or
    the new one. It does not wait for another process holding the image, as ``qemu-img``
    does: use it where no such process can be creating or deleting snapshots.
    """
    with path.open("rb") as image:
        header = read_header(image)
        return [name for name, _, _ in _snapshot_table(image, header)]


def _entries(image: BinaryIO, offset: int, count: int) -> array[int]:
    image.seek(offset)
    table = array("Q")
    table.frombytes(image.read(8 * count))
    if len(table) != count:
        raise Unsupported("truncated table")
    table.byteswap()  # qcow2 is big-endian
    return table


def _l2_tables(image: BinaryIO, header: Header, l1_offset: int, l1_size: int) -> list[int]:
    """The L2 table offsets of an L1 table, 0 where none is allocated."""
    return [entry & OFFSET_MASK for entry in _entries(image, l1_offset, l1_size)]


class _Layer:
    """One image of the chain: its open file, header and L2 table offsets."""

    def __init__(self, image: BinaryIO, header: Header, l2_offsets: list[int]) -> None:
        self.image, self.header, self.l2_offsets = image, header, l2_offsets

    def l2(self, index: int, entries: int) -> array[int] | None:
        offset = self.l2_offsets[index] if index < len(self.l2_offsets) else 0
        return _entries(self.image, offset, entries) if offset else None


def _is_data(entry: int) -> bool:
    return bool(entry & COMPRESSED) or (bool(entry & OFFSET_MASK) and not entry & ZERO)


# In the native-order bytes of an entry (after byteswap), where bit 0 and bits 56-63 are.
_LOW_BYTE = 0 if sys.byteorder == "little" else 7
_HIGH_BYTE = 7 - _LOW_BYTE
_BIT0 = bytes(b & 1 for b in range(256))
_BIT6 = bytes((b >> 6) & 1 for b in range(256))  # bit 62 of the entry: compressed


def _data_entries(table: array[int]) -> int:
    """How many entries of an L2 table are data, counted in C where the table allows."""
    raw = table.tobytes()
    if raw[_HIGH_BYTE::8].translate(_BIT6).count(1):  # compressed clusters: one by one
        return sum(map(_is_data, table))
    # Without them, an entry is unallocated (0), zero (bit 0 set, with or without a
    # cluster) or data.
    return len(table) - table.count(0) - raw[_LOW_BYTE::8].translate(_BIT0).count(1)


def allocated_bytes(path: Path, snapshot: str) -> int:
    """Bytes of guest data snapshot ``snapshot`` of ``path`` holds, counting the clusters of
    its backing image it still reads; what ``qemu-img measure`` reports less the metadata.

    Raises ``Unsupported`` for images this reader does not handle.
    """
    with path.open("rb") as image:
        header = read_header(image)
        top = _Layer(
            image, header, _l2_tables(image, header, *snapshot_l1(image, header, snapshot))
        )
        if header.backing_file is None:
            return _count(top, None, header) * header.cluster_size
        backing_path = Path(header.backing_file)
        if not backing_path.is_absolute():
            backing_path = path.parent / backing_path
        with backing_path.open("rb") as base_image:
            base_header = read_header(base_image)
            if (
                base_header.backing_file is not None
                or base_header.cluster_bits != header.cluster_bits
            ):
                raise Unsupported("a backing chain deeper than one image, or other clusters")
            base = _Layer(
                base_image,
                base_header,
                _l2_tables(base_image, base_header, base_header.l1_offset, base_header.l1_size),
            )
            return _count(top, base, header) * header.cluster_size


def _count(top: _Layer, base: _Layer | None, header: Header) -> int:
    """Clusters of guest data: allocated in ``top``, or unallocated there and in ``base``."""
    per_table = header.cluster_size // 8
    clusters = -(-header.size // header.cluster_size)
    data = 0
    for index in range(-(-clusters // per_table)):
        entries = min(per_table, clusters - index * per_table)
        ours = top.l2(index, entries)
        theirs = base.l2(index, entries) if base is not None else None
        if ours is None:
            data += _data_entries(theirs) if theirs is not None else 0
        elif theirs is None:
            data += _data_entries(ours)
        else:
            data += sum(
                _is_data(mine) if mine else _is_data(other)
                for mine, other in zip(ours, theirs, strict=True)
            )
    return data
