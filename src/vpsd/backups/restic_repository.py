"""Opening a restic repository, failing closed; running restic so that it fails at once.

vpsd makes a repository by itself only on first use: when it has no password file (it
never had a repository) and there is none. A repository that is gone once vpsd has used it
(the password file is there) is ``StorageMissing``: never a new, empty one in its place,
which would take new backups while every earlier one could no longer be restored. The
operator makes one explicitly with ``vpsd backups init`` (``RepositoryGate.init``).

restic retries a failed access to the repository for a minute or more (a read-only
filesystem, a permission refused, a repository gone in the middle of a command), holding
the backup ``in_progress`` and whatever waits behind it; ``run`` kills it at the first retry
no retry can fix instead (``gives_up``), and the error is classified at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from vpsd.backups.base import (
    FULL,
    NOT_PERMITTED,
    READ_ONLY,
    BackupStoreError,
    StorageHealth,
    StorageMissing,
    StorageState,
)
from vpsd.core import commands

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 600.0
"""Seconds a restic command that moves no disk data (list, forget, prune...) may take."""
_REMOTE = ("sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:")
_CONFIG_UNREADABLE = "unable to open config file"
_CONFIG_LOAD = "load(<config/"
"""How restic names the config file in a retry line (its ``Load`` of it failed)."""
_NOT_THERE = ("no such file or directory", "file does not exist", "does not exist", "not found")
"""restic's words (by backend: local, sftp, s3, rest) for a file that is not there, as
opposed to one it could not reach or was refused."""
_RETRYING = "returned error, retrying after"
_GIVES_UP = (
    "read-only file system",
    "permission denied",
    "no space left on device",
    "disk quota exceeded",
    *_NOT_THERE,
)
"""Errors that, when restic retries them, no retry can fix (a repository whose files are
gone mid-command is one that vanished: its volume was unmounted)."""

Probe = Literal["ok", "missing"]


def is_missing(stderr: str) -> bool:
    """Whether restic's error output says the repository is not there (its config file is
    absent, or its files went away in the middle of a command), rather than unreachable or
    refused."""
    lowered = stderr.lower()
    about = _CONFIG_UNREADABLE in lowered or _CONFIG_LOAD in lowered or _RETRYING in lowered
    return about and any(words in lowered for words in _NOT_THERE)


def gives_up(stderr_line: str) -> bool:
    """Whether a line restic printed says it retries an error no retry can fix (a mere
    warning, an unwritable cache say, is no reason to stop it)."""
    lowered = stderr_line.lower()
    return _RETRYING in lowered and any(words in lowered for words in _GIVES_UP)


def classify(error: commands.CommandError) -> BackupStoreError:
    """What the tenant is told of a failed restic command; its own words are the
    operator's (``detail``)."""
    text = f"{error} {error.stderr}".lower()
    if is_missing(text):
        return StorageMissing(str(error))
    if "read-only file system" in text:
        return BackupStoreError(READ_ONLY, str(error))
    if "permission denied" in text:
        return BackupStoreError(NOT_PERMITTED, str(error))
    if "no space left" in text or "disk quota exceeded" in text:
        return BackupStoreError(FULL, str(error))
    if "already locked" in text:
        reason = "the backup storage is busy with another operation; try again later"
    elif any(
        marker in text
        for marker in (
            "unable to open repository",
            "connection refused",
            "connection reset",
            "ssh:",
            "dial tcp",
            "no such host",
            "timed out",
            "unable to start the sftp session",
        )
    ):
        reason = "the backup storage cannot be reached"
    else:
        reason = "the backup storage failed"
    return BackupStoreError(f"{reason} (the operator's log has the details)", str(error))


@contextmanager
def storage_errors() -> Iterator[None]:
    """Failed restic commands in the body become ``classify``'s ``BackupStoreError``."""
    try:
        yield
    except commands.CommandError as error:
        raise classify(error) from error


def run(args: list[str], *, env: dict[str, str], timeout: float) -> str:
    """Run a restic command that streams no disk data; its stdout. Raises ``CommandError``
    (or ``Cancelled``) as ``commands.streaming`` does, at once on an error restic would only
    retry (``gives_up``)."""
    with commands.streaming(
        args, stdout=subprocess.PIPE, env=env, timeout=timeout, kill_on=gives_up
    ) as process:
        assert process.stdout is not None
        out = process.stdout.read()
    return out.decode(errors="replace")


class RepositoryGate:
    """The readiness part of ``ResticStore``: made on first use only (see the module)."""

    repository: str
    password_file: Path
    _ready: bool
    _ready_lock: threading.Lock

    def _args(self, *args: str) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        raise NotImplementedError

    def ensure_ready(self) -> None:
        """Make the repository (and its password file, 0600) on first use; raise
        ``StorageMissing`` when vpsd had one and it is gone.

        Refuses to make a new password for a repository that exists: backups made under
        the lost one could never be read again, and the operator must know.
        """
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if not self.password_file.exists():
                self._first_use()
            elif self._probe() == "missing":
                raise StorageMissing(self._missing_detail())
            self._ready = True

    def init(self) -> bool:
        """``vpsd backups init``: make the repository unless one is there, under the
        existing password file (or a new one when there is none); True when it made one."""
        with self._ready_lock:
            if not self.password_file.exists():
                made = self._first_use()
            elif self._probe() == "ok":
                made = False
            else:
                self._create(self.password_file)
                made = True
            self._ready = True
            return made

    def health(self) -> StorageHealth:
        """Open the repository (``restic cat config``) and say how it went."""
        try:
            if not self.password_file.exists():
                if self._probe(secrets.token_hex(16)) == "missing":
                    return StorageHealth(StorageState.NEW)
                return StorageHealth(StorageState.UNAVAILABLE, self._password_lost_detail())
            if self._probe() == "missing":
                return StorageHealth(StorageState.MISSING, self._missing_detail())
        except BackupStoreError as error:
            return StorageHealth(StorageState.UNAVAILABLE, error.detail or str(error))
        return StorageHealth(StorageState.OK)

    # -- internals -----------------------------------------------------------------------------

    def _first_use(self) -> bool:
        """Make the password file and the repository; True when a repository was made."""
        partial = self.password_file.with_name(f".{self.password_file.name}.partial")
        if partial.exists() and self._probe(password_file=partial, missing_ok=True) == "ok":
            partial.replace(self.password_file)  # made, then vpsd died before this rename
            return False
        if self._probe(secrets.token_hex(16)) != "missing":
            raise BackupStoreError(
                "the backup storage is not usable (the operator's log has the details)",
                self._password_lost_detail(),
            )
        _write_secret(partial, secrets.token_urlsafe(32))
        self._create(partial)
        # Only now: a password file means "this repository exists", so it is never kept for
        # a repository that was not made.
        partial.replace(self.password_file)
        return True

    def _create(self, password_file: Path) -> None:
        if not self.repository.startswith(_REMOTE):
            Path(self.repository).parent.mkdir(parents=True, exist_ok=True)
        env = {**self._env(), "RESTIC_PASSWORD_FILE": str(password_file)}
        try:
            run(self._args("init"), env=env, timeout=COMMAND_TIMEOUT)
        except commands.CommandError as error:
            raise BackupStoreError(
                "the backup storage could not be made (the operator's log has the details)",
                str(error),
            ) from error
        log.warning(
            "created the backup repository %s; its password is in %s: keep a copy of that file "
            "apart from this host, or the backups cannot be read without it",
            self.repository,
            self.password_file,
        )

    def _probe(
        self, password: str | None = None, *, password_file: Path | None = None,
        missing_ok: bool = False,
    ) -> Probe:  # fmt: skip
        """``ok`` when the repository opens (or, with a trial ``password``, exists),
        ``missing`` when there is none; raises ``BackupStoreError`` otherwise (unreachable
        storage, a wrong password...), or with ``missing_ok`` says ``missing`` then too."""
        env = self._env()
        if password is not None:
            env.pop("RESTIC_PASSWORD_FILE")
            env["RESTIC_PASSWORD"] = password
        elif password_file is not None:
            env["RESTIC_PASSWORD_FILE"] = str(password_file)
        try:
            run(self._args("cat", "config", "--no-lock"), env=env, timeout=COMMAND_TIMEOUT)
        except commands.CommandError as error:
            if is_missing(error.stderr):
                return "missing"
            if password is not None and "wrong password" in error.stderr:
                return "ok"
            if missing_ok:
                return "missing"
            raise classify(error) from error
        return "ok"

    def _missing_detail(self) -> str:
        return (
            f"the backup repository {self.repository} is gone, although vpsd has used one "
            f"(its password file {self.password_file} is there): is its volume mounted? "
            "Backups and restores fail until it is back; `vpsd backups init` makes a new, "
            "empty one (the backups in the old one are then not restorable from it)"
        )

    def _password_lost_detail(self) -> str:
        return (
            f"the repository {self.repository} exists but its password file "
            f"{self.password_file} is missing: restore the file"
        )


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret)
        file.flush()
        os.fsync(file.fileno())
