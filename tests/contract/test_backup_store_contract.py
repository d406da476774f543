"""The ``BackupStore`` contract, run against every store (the fake and restic), so that the
fake the unit tests use cannot drift from restic.

Beyond round trips: a store fails closed (a repository it had and lost is never made again
by itself: issue 22, item 4), says at once and in words when the storage is read-only
(item 9), and reports what the repository really grew by (item 15).
"""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from tests.contract.store_probes import StoreProbe
from vpsd.backups.base import (
    MISSING,
    READ_ONLY,
    BackupStore,
    BackupStoreError,
    StorageMissing,
    StorageState,
)

MIB = 1024 * 1024
TAGS = {"backup": "6f1c", "disk": "disk0", "server": "7"}
HOST_PATH = re.compile(r"(?:^|[\s'\"(=:])/[\w.-]+/")


class Sink(io.BytesIO):
    """A write stream that keeps its bytes once the store has closed it."""

    data = b""

    def close(self) -> None:
        if not self.closed:
            self.data = self.getvalue()
        super().close()


def compressible(size: int) -> bytes:
    """Bytes that do not deduplicate but compress to about half (hex digits)."""
    return os.urandom(size // 2).hex().encode()


def save(store: BackupStore, data: bytes, **tags: str) -> str:
    saved = store.save(io.BytesIO(data), "disk0.raw", {**TAGS, **tags})
    assert saved.size_bytes == len(data)
    return saved.snapshot


def load(store: BackupStore, snapshot: str) -> bytes:
    sink = Sink()
    store.load(snapshot, "disk0.raw", sink)
    assert sink.closed
    return sink.data


def test_a_disk_goes_in_and_comes_back_out(store: BackupStore) -> None:
    data = os.urandom(3 * MIB) + b"tail"
    progress: list[int] = []
    saved = store.save(io.BytesIO(data), "disk0.raw", TAGS, progress.append)
    assert saved.size_bytes == len(data)
    assert load(store, saved.snapshot) == data
    other = save(store, b"other bytes", backup="77aa")

    assert store.find(TAGS) == [saved.snapshot]
    assert store.find({"server": "7"}) == [saved.snapshot, other]
    assert store.find({"backup": "77aa", "disk": "disk0"}) == [other]
    assert store.find({"backup": "no-such"}) == []
    assert not progress or progress[-1] <= len(data)


def test_forget_removes_only_what_it_names(store: BackupStore) -> None:
    kept = save(store, b"kept" * 1000)
    gone = save(store, b"gone" * 1000, backup="77aa")
    store.forget([gone])
    store.forget([])  # nothing to do
    assert store.find({"server": "7"}) == [kept]
    assert store.absent([kept, gone]) == [gone]
    assert load(store, kept) == b"kept" * 1000


def test_absent_names_what_cannot_be_loaded(store: BackupStore) -> None:
    there = save(store, b"x" * 4096)
    assert store.absent([]) == []
    assert store.absent([there]) == []
    assert store.absent([there, "0123abcd"]) == ["0123abcd"]
    with pytest.raises(BackupStoreError) as failed:
        load(store, "0123abcd")
    assert not HOST_PATH.search(str(failed.value)), failed.value


def test_the_same_bytes_again_add_nothing(store: BackupStore) -> None:
    data = compressible(4 * MIB)
    first = store.save(io.BytesIO(data), "disk0.raw", TAGS)
    again = store.save(io.BytesIO(data), "disk0.raw", {**TAGS, "backup": "second"})
    assert first.added_bytes > 0
    assert again.added_bytes == 0
    assert again.snapshot != first.snapshot


def test_added_bytes_is_what_the_repository_grew_by(
    store: BackupStore, repository: StoreProbe
) -> None:
    """Issue 22, item 15: ``stored_mb`` said 333 while restic's three backups took 98 MiB
    (restic's ``data_added`` counts the new data before compression)."""
    save(store, b"first use")  # the repository exists: its config and keys are not counted
    before = repository.stored_bytes()
    data = compressible(16 * MIB)
    saved = store.save(io.BytesIO(data), "disk0.raw", TAGS)
    grown = repository.stored_bytes() - before
    print(f"{len(data)} bytes: added_bytes {saved.added_bytes}, the repository grew {grown}")
    assert saved.added_bytes < 0.7 * len(data)  # compressed
    # What a backup adds beside its data (a tree, an index, a snapshot file) is small.
    assert 0 <= grown - saved.added_bytes <= 64 * 1024


def test_first_use_makes_the_repository(store: BackupStore, repository: StoreProbe) -> None:
    assert store.health().state is StorageState.NEW
    assert not repository.there()
    save(store, b"first")
    assert repository.there()
    health = store.health()
    assert health.state is StorageState.OK and health.usable


def test_a_vanished_repository_is_never_made_again(
    store: BackupStore, repository: StoreProbe
) -> None:
    """Issue 22, item 4: a repository moved aside (an unmounted volume) was made anew, empty;
    new backups went into it and the old ones could no longer be restored."""
    snapshot = save(store, b"before" * 1000)
    repository.vanish()

    health = store.health()
    assert health.state is StorageState.MISSING and not health.usable
    assert health.detail  # the operator's words
    calls = {
        "save": lambda: save(store, b"after"),
        "load": lambda: load(store, snapshot),
        "find": lambda: store.find(TAGS),
        "forget": lambda: store.forget([snapshot]),
        "absent": lambda: store.absent([snapshot]),
        "unlock_stale": store.unlock_stale,
    }
    for name, call in calls.items():
        with pytest.raises(StorageMissing) as failed:
            call()
        assert str(failed.value) == MISSING, name
        assert "missing" in str(failed.value)
    assert not repository.there(), "a new repository was made in the old one's place"

    repository.come_back()
    assert store.health().state is StorageState.OK
    assert load(store, snapshot) == b"before" * 1000


class VanishingMidway(io.BytesIO):
    """A disk stream during whose reading the repository goes away."""

    def __init__(self, data: bytes, repository: StoreProbe) -> None:
        super().__init__(data)
        self.repository = repository
        self.gone = False

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if not self.gone and self.tell() >= len(self.getbuffer()) // 4:
            self.gone = True
            self.repository.vanish()
        return chunk


def test_a_repository_vanishing_mid_save_fails_it_at_once(
    store: BackupStore, repository: StoreProbe
) -> None:
    """restic retried the repository's files for a minute or more once they were gone."""
    save(store, b"first")
    started = time.monotonic()
    with pytest.raises(StorageMissing):
        store.save(VanishingMidway(os.urandom(48 * MIB), repository), "disk0.raw", TAGS)
    took = time.monotonic() - started
    print(f"a save whose repository vanished failed in {took:.1f} s")
    assert took < 30
    assert not repository.there()


def test_init_makes_a_new_empty_repository_when_told(
    store: BackupStore, repository: StoreProbe
) -> None:
    old = save(store, b"old" * 1000)
    assert store.init() is False  # one is there: nothing to do
    repository.vanish()
    assert store.init() is True
    assert store.health().state is StorageState.OK
    assert store.absent([old]) == [old]
    new = save(store, b"new" * 1000)
    assert load(store, new) == b"new" * 1000
    assert store.init() is False


def test_a_read_only_repository_fails_at_once_with_words(
    store: BackupStore, repository: StoreProbe
) -> None:
    """Issue 22, item 9: restic retried a read-only repository for 87 s before failing,
    and said only that the storage failed."""
    kept = save(store, b"kept" * 1000)
    with repository.read_only():
        started = time.monotonic()
        with pytest.raises(BackupStoreError) as failed:
            save(store, compressible(MIB), backup="ro")
        took = time.monotonic() - started
        assert str(failed.value) == READ_ONLY
        assert not HOST_PATH.search(str(failed.value))
        with pytest.raises(BackupStoreError) as forgetting:
            store.forget([kept])
        assert str(forgetting.value) == READ_ONLY
    print(f"a save on a read-only repository failed in {took:.1f} s")
    assert took < 30  # not restic's minute and a half of retries
    assert store.find(TAGS) == [kept]
