"""The chunk layout of incremental backups: which chunks a backup shows restic, which keep
their parent's time (and so are not read), and how a restore turns chunk files back into
the disk's bytes."""

from __future__ import annotations

import io
import tarfile

import pytest

from vpsd.backups import chunks
from vpsd.backups.restic_chunks import _nanoseconds
from vpsd.core.disks import DiskChanges
from vpsd.hypervisor.fake import FakeDiskSource

CHUNK = 4096


def source(data: bytes, since: str | None = None, dirty: tuple[tuple[int, int], ...] = ()):
    return FakeDiskSource(DiskChanges("disk0", len(data), since, dirty), data)


def test_only_chunks_holding_data_are_shown() -> None:
    data = bytearray(10 * CHUNK)
    data[CHUNK + 5] = 1  # chunk 1
    data[4 * CHUNK - 1 : 4 * CHUNK + 1] = b"\x01\x01"  # the end of chunk 3, start of chunk 4
    plan = chunks.plan(source(bytes(data)), None, "a", now_ns=100, chunk_bytes=CHUNK)
    assert sorted(plan.times.times) == [CHUNK, 3 * CHUNK, 4 * CHUNK]
    assert not plan.incremental and plan.changed_bytes == 3 * CHUNK


def test_present_chunks_of_overlapping_and_unaligned_runs() -> None:
    runs = [(0, 10), (5, 3 * CHUNK), (7 * CHUNK + 1, 1), (9 * CHUNK, 10 * CHUNK)]
    assert list(chunks.present_chunks(runs, 10 * CHUNK - 100, CHUNK)) == [
        0, CHUNK, 2 * CHUNK, 3 * CHUNK, 7 * CHUNK, 9 * CHUNK
    ]  # fmt: skip


def test_unchanged_chunks_keep_the_parents_time_and_the_rest_get_a_later_one() -> None:
    data = b"\x07" * (4 * CHUNK)
    parent = chunks.plan(source(data), None, "a", now_ns=1_000, chunk_bytes=CHUNK).times
    # Written since checkpoint a: a few bytes of chunk 2.
    plan = chunks.plan(
        source(data, "a", ((2 * CHUNK + 10, 5),)), parent, "b", now_ns=500, chunk_bytes=CHUNK
    )
    assert plan.incremental and plan.changed_bytes == CHUNK
    assert plan.times.times == {0: 1_000, CHUNK: 1_000, 2 * CHUNK: 1_001, 3 * CHUNK: 1_000}
    assert plan.times.checkpoint == "b"


@pytest.mark.parametrize(
    ("since", "size", "chunk"),
    [("other", 4 * CHUNK, CHUNK), (None, 4 * CHUNK, CHUNK), ("a", 5 * CHUNK, CHUNK),
     ("a", 4 * CHUNK, 2 * CHUNK)],
    ids=["another-checkpoint", "no-record", "resized", "other-chunk-size"],
)  # fmt: skip
def test_a_parent_that_does_not_fit_is_not_trusted(
    since: str | None, size: int, chunk: int
) -> None:
    parent = chunks.plan(source(b"\x07" * (4 * CHUNK)), None, "a", 1_000, CHUNK).times
    plan = chunks.plan(source(b"\x07" * size, since), parent, "b", 2_000, chunk)
    assert not plan.incremental
    assert set(plan.times.times.values()) == {2_000}


def test_chunk_times_survive_their_json_form() -> None:
    times = chunks.ChunkTimes("a", 10 * CHUNK, CHUNK, {0: 5, CHUNK: 5, 3 * CHUNK: 5, 4 * CHUNK: 9})
    text = times.to_json()
    assert len(text) < 200
    assert chunks.ChunkTimes.from_json(text) == times


def _tar(files: list[tuple[str, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_700_000_000.123456789  # PAX headers, as restic writes for ns times
            tar.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def test_a_restore_writes_the_chunks_at_their_offsets_and_zeros_between() -> None:
    group = "0000000000000000"
    tar = _tar(
        [
            (f"disk0/{group}/{CHUNK:016x}", b"\x01" * CHUNK),
            (f"disk0/{group}/{3 * CHUNK:016x}", b"\x03" * 100),  # the disk's end
        ]
    )
    sink = io.BytesIO()
    stored = chunks.write_disk(tar, "disk0", 3 * CHUNK + 100, sink)
    assert stored == CHUNK + 100
    assert sink.getvalue() == bytes(CHUNK) + b"\x01" * CHUNK + bytes(CHUNK) + b"\x03" * 100


@pytest.mark.parametrize(
    "files",
    [
        [
            (f"disk0/0000000000000000/{CHUNK:016x}", b"x"),
            ("disk0/0000000000000000/" + "0" * 16, b"y"),
        ],
        [(f"disk0/0000000000000000/{9 * CHUNK:016x}", b"x" * CHUNK)],
        [("disk0/0000000000000000/not-a-chunk", b"x")],
        [("disk1/0000000000000000/" + "0" * 16, b"x")],
    ],
    ids=["out-of-order", "past-the-end", "foreign-name", "another-disk"],
)
def test_a_restore_refuses_files_that_are_not_this_disks_chunks(
    files: list[tuple[str, bytes]],
) -> None:
    with pytest.raises(chunks.LayoutError):
        chunks.write_disk(_tar(files), "disk0", 4 * CHUNK, io.BytesIO())


def test_a_cut_stream_is_an_error_not_a_short_disk() -> None:
    whole = _tar([("disk0/0000000000000000/" + "0" * 16, b"\x05" * CHUNK)]).getvalue()
    with pytest.raises(chunks.LayoutError):
        chunks.write_disk(io.BytesIO(whole[: len(whole) // 2]), "disk0", CHUNK, io.BytesIO())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-08T01:42:55.370329279Z", 1_796_694_175_370_329_279),
        ("2026-12-08T02:42:55.370329279+01:00", 1_796_694_175_370_329_279),
        ("2026-12-08T01:42:55.5Z", 1_796_694_175_500_000_000),
        ("2026-12-08T01:42:55Z", 1_796_694_175_000_000_000),
    ],
)
def test_restics_times_are_read_to_the_nanosecond(text: str, expected: int) -> None:
    assert _nanoseconds(text) == expected
