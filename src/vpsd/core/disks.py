"""What a driver hands a backup store of a disk, and the store reads: the disk's changes
since an earlier backup point (``DiskChanges``) and its bytes at a point (``DiskSource``).
Here because both ``hypervisor`` and ``backups`` speak of them, and neither imports the
other."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DiskChanges:
    """What a backup point knows of one disk: which regions were written since the point of
    an earlier checkpoint (a backup of the same disk).

    ``since`` names that checkpoint when the change record is whole: then every byte outside
    ``dirty`` (sorted, disjoint ``(offset, length)`` runs) is as it was at that point. When
    ``since`` is None the changes are unknown and a backup must read the whole disk;
    ``chain_break`` then says why, in words fit for the server's owner (None for a first
    backup, which had no earlier checkpoint to ask for).
    """

    name: str
    size_bytes: int
    since: str | None = None
    dirty: tuple[tuple[int, int], ...] = ()
    chain_break: str | None = None

    @property
    def dirty_bytes(self) -> int:
        """Bytes written since ``since`` (at the change record's granularity)."""
        return sum(length for _, length in self.dirty)

    def changed(self, offset: int, length: int) -> bool:
        """True when ``[offset, offset + length)`` may differ from the checkpoint's point:
        always when the changes are unknown."""
        if self.since is None:
            return True
        index = bisect_right(self.dirty, (offset, 1 << 63)) - 1
        if index >= 0 and self.dirty[index][0] + self.dirty[index][1] > offset:
            return True
        return index + 1 < len(self.dirty) and self.dirty[index + 1][0] < offset + length


class DiskSource(Protocol):
    """One disk's bytes at a backup point, read at any offset (several threads at once).

    ``changes`` is the point's ``DiskChanges`` for this disk; ``read_bytes`` counts what was
    read so far. ``data_extents`` lists the regions that may hold other bytes than zeros
    (sorted ``(offset, length)``): the rest of the disk reads as zeros and need not be read.
    """

    changes: DiskChanges

    @property
    def read_bytes(self) -> int:
        """Bytes read from the disk so far."""
        ...

    def data_extents(self) -> list[tuple[int, int]]:
        """The regions that may hold non-zero bytes, in order."""
        ...

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the disk's bytes from ``offset``; raises ``HostError``."""
        ...
