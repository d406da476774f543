"""``ResticStore``: backups in a restic repository (a local path, ``sftp:`` or ``s3:``).

restic deduplicates content-defined chunks across every backup in the repository, so the
second backup of a disk stores only what changed, and encrypts everything with the
repository's password. Each disk is one restic snapshot made with ``backup --stdin`` and
tagged ``key=value`` (the backup's uuid, the disk's name), which is how a rerun after a
crash finds what an interrupted attempt left.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from vpsd.backups import restic_repository
from vpsd.backups.base import BackupStoreError, Progress, SavedDisk, Tags
from vpsd.backups.restic_repository import (
    COMMAND_TIMEOUT,
    RepositoryGate,
    gives_up,
    storage_errors,
)
from vpsd.core import commands
from vpsd.core.disks import DiskSource

log = logging.getLogger(__name__)

RESTIC = "restic"
LOCK_WAIT = 120.0
"""Seconds a command waits for a repository lock held by another restic (on another host,
or a prune) before failing; restic 0.14 itself does not wait."""
_PASSED_THROUGH = re.compile(r"(AWS|B2|AZURE|GOOGLE|OS|ST)_[A-Z0-9_]+|HOME|USER|SSH_AUTH_SOCK")
"""Environment a repository's backend reads (S3 and other credentials, ssh's config)."""
_T = TypeVar("_T")


class ResticStore(RepositoryGate):
    """A restic repository; see the module's docstring. Thread-safe.

    Within this process, commands that need the repository to themselves (``forget`` and
    ``prune``, which restic locks exclusively) wait for the others to finish, and the others
    for them, instead of failing on restic's lock.
    """

    def __init__(
        self,
        repository: str,
        password_file: Path,
        cache_dir: Path,
        *,
        sftp_command: str | None = None,
        stream_timeout: float = 6 * 3600.0,
        program: str = RESTIC,
        work_dir: Path | None = None,
    ) -> None:
        self.repository = repository
        self.password_file = password_file
        self.cache_dir = cache_dir
        self.sftp_command = sftp_command
        self.stream_timeout = stream_timeout
        self.program = program
        self.work_dir = work_dir or cache_dir.parent / "backup-work"
        """Disks' views while they are backed up, and the chunk times kept for the next."""
        self._ready = False
        self._ready_lock = threading.Lock()
        self._access = _SharedExclusiveLock()

    # -- the contract --------------------------------------------------------------------------

    def save(
        self, stream: IO[bytes], filename: str, tags: Tags, on_progress: Progress | None = None
    ) -> SavedDisk:
        """``restic backup --stdin``; the stream is handed to restic (closed here). Progress
        comes from restic's JSON status lines (one a second)."""
        self.ensure_ready()
        # -vv: the file's line says what the repository grew by (compressed), which the
        # summary's data_added (before compression) does not.
        args = self._args(
            "backup", "--stdin", "--stdin-filename", filename, "--json", "-vv", *_tag_args(tags)
        )
        fd = _pipe_end(stream)
        with (
            self._access.shared(),
            storage_errors(),
            commands.streaming(
                args,
                stdin=subprocess.PIPE if fd is None else fd,
                stdout=subprocess.PIPE,
                env=self._env(),
                timeout=self.stream_timeout,
                kill_on=gives_up,
            ) as process,
        ):
            feeder = _feed(stream, process)
            assert process.stdout is not None
            summary = _read_output(process.stdout, on_progress)
            if feeder is not None:
                feeder.join()
        # Checked once restic has ended: a failed restic's own words (above) come first.
        if summary is None:
            raise BackupStoreError(
                "the backup storage failed (the operator's log has the details)",
                "restic backup exited 0 without a summary",
            )
        short_id = str(summary["snapshot_id"])
        # The summary names the snapshot by a prefix; keep the full id, never ambiguous.
        full = [s for s in self.find(tags) if s.startswith(short_id)]
        return SavedDisk(
            full[0] if len(full) == 1 else short_id,
            int(summary["total_bytes_processed"]),
            int(summary.get("data_size_in_repo", summary["data_added"])),
        )

    def save_disk(
        self,
        source: DiskSource,
        tags: Tags,
        *,
        checkpoint: str,
        parent: str | None,
        on_progress: Progress | None = None,
    ) -> SavedDisk:
        """The disk as chunk files through a FUSE view (``restic_chunks``)."""
        from vpsd.backups import restic_chunks  # it builds on this module

        return restic_chunks.save_disk(
            self, source, tags, checkpoint=checkpoint, parent=parent, on_progress=on_progress
        )

    def load_disk(self, snapshot: str, disk: str, size_bytes: int, sink: IO[bytes]) -> None:
        """``restic dump`` of the disk's chunk files, back into raw bytes (``restic_chunks``)."""
        from vpsd.backups import restic_chunks

        restic_chunks.load_disk(self, snapshot, disk, size_bytes, sink)

    def load(self, snapshot: str, filename: str, sink: IO[bytes]) -> None:
        """``restic dump`` into ``sink`` (closed here)."""
        self.ensure_ready()
        args = self._args("dump", snapshot, f"/{filename}")
        with self._access.shared(), storage_errors():
            fd = _pipe_end(sink)
            with commands.streaming(
                args,
                stdout=subprocess.PIPE if fd is None else fd,
                env=self._env(),
                timeout=self.stream_timeout,
                kill_on=gives_up,
            ) as process:
                if fd is None:
                    assert process.stdout is not None
                    with sink:
                        for chunk in iter(lambda: process.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                            sink.write(chunk)
                else:
                    sink.close()  # restic holds its own copy; ours would hide its end

    def find(self, tags: Tags) -> list[str]:
        """``restic snapshots --tag k=v,...``: full ids, oldest first."""
        self.ensure_ready()
        listed = self._run("snapshots", "--json", "--tag", _tag_list(tags))
        return [str(item["id"]) for item in json.loads(listed or "[]")]

    def forget(self, snapshots: list[str]) -> None:
        """``restic forget --prune``; no-op for an empty list."""
        if not snapshots:
            return
        self.ensure_ready()
        self._run("unlock")  # a restic killed mid-command left a lock --prune would wait on
        self._run("forget", "--prune", *snapshots, exclusive=True)
        from vpsd.backups import restic_chunks

        restic_chunks.forget_times(self.work_dir, snapshots)

    def unlock_stale(self) -> None:
        """``restic unlock``: removes only locks whose process is gone (or 30 min old)."""
        self.ensure_ready()
        self._run("unlock")

    def absent(self, snapshots: list[str]) -> list[str]:
        """``restic snapshots ID...``: the ids it does not list (ids may be prefixes)."""
        if not snapshots:
            return []
        self.ensure_ready()
        listed = self._run("snapshots", "--json", *snapshots)
        found = [str(item["id"]) for item in json.loads(listed or "[]")]
        return [wanted for wanted in snapshots if not any(s.startswith(wanted) for s in found)]

    # -- beyond the contract ---------------------------------------------------------------

    def check(self) -> None:
        """``restic check``: raises ``BackupStoreError`` when the repository has errors."""
        self.ensure_ready()
        self._run("check", exclusive=True)

    # -- internals -----------------------------------------------------------------------------

    def _run(self, *args: str, exclusive: bool = False) -> str:
        """A restic command that streams no disk data; its stdout."""
        access = self._access.exclusive if exclusive else self._access.shared

        def attempt() -> str:
            with access():
                return restic_repository.run(
                    self._args(*args), env=self._env(), timeout=COMMAND_TIMEOUT
                )

        with storage_errors():
            return _waiting_for_lock(attempt)

    def _args(self, *args: str) -> list[str]:
        options = ["-o", f"sftp.command={self.sftp_command}"] if self.sftp_command else []
        return [self.program, *options, *args]

    def _env(self) -> dict[str, str]:
        passed = {k: v for k, v in os.environ.items() if _PASSED_THROUGH.fullmatch(k)}
        return {
            **passed,
            "RESTIC_REPOSITORY": self.repository,
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": str(self.cache_dir),
            "RESTIC_PROGRESS_FPS": "1",
        }


def _tag_list(tags: Tags) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(tags.items()))


def _tag_args(tags: Tags) -> list[str]:
    return [arg for key, value in sorted(tags.items()) for arg in ("--tag", f"{key}={value}")]


def _read_output(output: IO[bytes], on_progress: Progress | None) -> dict[str, Any] | None:
    """restic backup's summary (None if it printed none), with ``data_size_in_repo`` from
    its line on the file (``-vv``: the new data as stored, compressed), passing the bytes of
    its status lines to ``on_progress``."""
    summary: dict[str, Any] | None = None
    in_repo = 0
    seen_file = False
    last = b""
    for line in output:
        last = line
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = message.get("message_type")
        if kind == "status" and on_progress is not None:
            on_progress(int(message.get("bytes_done", 0)))
        elif kind == "verbose_status" and "data_size_in_repo" in message:
            seen_file = True
            in_repo += int(message["data_size_in_repo"])
        elif kind == "summary":
            summary = message
    if summary is not None and seen_file:
        summary["data_size_in_repo"] = in_repo
    if summary is None:
        log.warning("restic backup printed no summary; its last line: %r", last[-500:])
    return summary


def _pipe_end(stream: IO[bytes]) -> int | None:
    """The stream's file descriptor, or None for an in-memory one (fed by a thread)."""
    try:
        return stream.fileno()
    except (OSError, AttributeError, ValueError):
        return None


def _feed(stream: IO[bytes], process: subprocess.Popen[bytes]) -> threading.Thread | None:
    """Hand ``stream`` to ``process``: its descriptor is already restic's stdin, so close
    ours (else restic's death would not reach the writer); an in-memory one is copied."""
    if process.stdin is None:
        stream.close()
        return None
    target = process.stdin

    def copy() -> None:
        with stream, target:
            try:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    target.write(chunk)
            except BrokenPipeError:
                pass  # restic died: its exit status tells why

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _waiting_for_lock(call: Callable[[], _T]) -> _T:
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            return call()
        except commands.CommandError as error:
            if "already locked" not in error.stderr or time.monotonic() > deadline:
                raise
            log.info("the backup repository is locked by another restic; waiting")
            time.sleep(2.0)


class _SharedExclusiveLock:
    """Many holders of ``shared``, or one of ``exclusive``; writers are not starved."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writer and not self._waiting_writers)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._waiting_writers += 1
            self._condition.wait_for(lambda: not self._writer and not self._readers)
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()
