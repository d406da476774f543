"""Probes for the backup store contract suite: what an operator can do to a repository
(move it away, bring it back, make it read-only) and measure (what it takes on disk), for
the fake store in memory and for restic on a local folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from vpsd.backups.fake import FakeBackupStore


class StoreProbe(Protocol):
    def vanish(self) -> None:
        """Move the repository away, as an unmounted volume would."""

    def come_back(self) -> None:
        """Put the repository that vanished back where it was."""

    def there(self) -> bool:
        """Whether a repository is at its place (restic: its config file; a restic cut off
        in the middle of storing may have made folders for its data there)."""

    def stored_bytes(self) -> int:
        """What the repository takes (for restic: the bytes of its files)."""

    def read_only(self) -> AbstractContextManager[None]:
        """For the body of the ``with``, the repository cannot be written."""


class FakeStoreProbe:
    def __init__(self, store: FakeBackupStore) -> None:
        self.store = store

    def vanish(self) -> None:
        self.store.vanish()

    def come_back(self) -> None:
        self.store.come_back()

    def there(self) -> bool:
        return self.store.exists

    def stored_bytes(self) -> int:
        return self.store.stored_bytes()

    @contextmanager
    def read_only(self) -> Iterator[None]:
        self.store.read_only = True
        try:
            yield
        finally:
            self.store.read_only = False


class ResticProbe:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.aside = repository.with_name(f"{repository.name}.aside")

    def vanish(self) -> None:
        self.repository.rename(self.aside)

    def come_back(self) -> None:
        self.aside.rename(self.repository)

    def there(self) -> bool:
        return (self.repository / "config").exists()

    def stored_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.repository.rglob("*") if path.is_file())

    @contextmanager
    def read_only(self) -> Iterator[None]:
        """A read-only bind mount over the repository (root only; skipped otherwise)."""
        if os.geteuid() != 0:
            pytest.skip("a read-only bind mount needs root")
        target = str(self.repository)
        for step in (["mount", "--bind", target, target],
                     ["mount", "-o", "remount,bind,ro", target, target]):  # fmt: skip
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", target], capture_output=True, check=False)
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", target], capture_output=True, check=True)
