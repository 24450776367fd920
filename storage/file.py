"""An :class:`~storage.log.EventLog` kept in segment files, with crash recovery.

A directory holds segments ``seg-<first revision, 20 digits>.log``, each a run of framed records
(see :mod:`storage.log`). Records are appended to the newest segment; once it holds
``segment_bytes`` or more the next record starts a new one. A segment is fsynced before its
successor is created, so only the newest segment can end in a torn write.

Recovery on open reads every frame. A bad frame in the newest segment with no valid frame anywhere
after it is a torn write: the bytes from it on are copied to ``torn-<segment>-<offset>.bin`` and
cut off. Any other bad frame raises :class:`~storage.log.CorruptLogError`; nothing before the tail
is ever cut.

Memory is a sparse index: the first record of each segment and every ``INDEX_STRIDE``-th record
after it. A read seeks to the nearest index point at or before what it wants and scans forward.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import re
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import structlog

from storage import failpoints
from storage.log import (
    HEADER,
    MAX_RECORD_BYTES,
    CorruptLogError,
    FrameError,
    MalformedBodyError,
    Record,
    check_order,
    decode_body,
    encode_record,
    scan_frames,
)

__all__ = ["INDEX_STRIDE", "SEGMENT_BYTES", "FileLog", "segment_name"]

log = structlog.get_logger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
INDEX_STRIDE = 64

_SEGMENT = re.compile(r"seg-(\d{20})\.log")
_WRITE_BUFFER = 256 * 1024
_fdatasync = getattr(os, "fdatasync", os.fsync)


def segment_name(first_revision: int) -> str:
    return f"seg-{first_revision:020d}.log"


class FileLog:
    """Segment files in ``directory``; opening it recovers (or refuses) what a crash left.

    One ``FileLog`` at a time may hold a directory (an advisory lock enforces it), used from one
    thread. After an I/O error during ``append`` or ``sync`` the instance refuses further writes:
    reopen to recover.
    """

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_directory(self._dir)
        # First revision of each segment, oldest first.
        self._segments: list[int] = []
        # The sparse index: parallel arrays, one entry per indexed record, in log order.
        self._index_revision = array("q")
        self._index_raft = array("q")
        self._index_segment = array("q")
        self._index_offset = array("q")
        self._last_revision = 0
        self._last_raft_index = 0
        self._active: BinaryIO | None = None
        self._active_size = 0
        self._active_count = 0
        self._dir_dirty = False
        self._failed: BaseException | None = None
        self._closed = False
        try:
            self._recover()
            if self._segments:
                self._active = open(self._path(self._segments[-1]), "ab", buffering=_WRITE_BUFFER)
                # What a crashed process left in the page cache is durable before it is reported.
                _fdatasync(self._active.fileno())
                failpoints.synced(self._active.fileno())
                _fsync_directory(self._dir)
        except BaseException:
            self._lock.close()
            raise

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def first_revision(self) -> int:
        return self._segments[0] if self._segments else 1

    @property
    def last_revision(self) -> int:
        return self._last_revision

    @property
    def last_raft_index(self) -> int:
        return self._last_raft_index

    def append(self, records: Sequence[Record]) -> None:
        self._check_writable()
        check_order(self._last_revision, self._last_raft_index, records)
        frames = [encode_record(record) for record in records]
        try:
            for record, frame in zip(records, frames, strict=True):
                if self._active is None or self._active_size >= self._segment_bytes:
                    self._roll(record.first_revision)
                assert self._active is not None
                self._active.write(frame)
                if self._active_count % INDEX_STRIDE == 0:
                    self._index(record, self._segments[-1], self._active_size)
                self._active_size += len(frame)
                self._active_count += 1
                self._last_revision = record.last_revision
                self._last_raft_index = record.raft_index
        except BaseException as exc:
            self._failed = exc
            raise
        failpoints.hit("store.after_append")

    def sync(self) -> None:
        self._check_writable()
        try:
            if self._active is not None:
                self._active.flush()
                _fdatasync(self._active.fileno())
                failpoints.synced(self._active.fileno())
            # The new segment's directory entry is made durable after its data.
            if self._dir_dirty:
                _fsync_directory(self._dir)
                self._dir_dirty = False
        except BaseException as exc:
            # After a failed fsync the page cache cannot be trusted to hold what was written.
            self._failed = exc
            raise

    def prepare_sync(self) -> Callable[[], None]:
        """Hand what was appended to the OS now; return a function that makes it durable.

        The returned function touches no state of this log (it syncs a duplicate descriptor), so
        it may run on another thread while appends go on; what is appended after this call is
        not covered by it.
        """
        self._check_writable()
        fd = -1
        if self._active is not None:
            self._active.flush()
            fd = os.dup(self._active.fileno())
            failpoints.sync_started(fd)
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        directory = self._dir

        def make_durable() -> None:
            try:
                if fd >= 0:
                    failpoints.hit("store.before_sync")
                    _fdatasync(fd)
                    failpoints.synced(fd)
                if dir_dirty:
                    _fsync_directory(directory)
            finally:
                if fd >= 0:
                    os.close(fd)

        return make_durable

    def read_from_revision(self, revision: int, limit: int | None = None) -> list[Record]:
        start = max(bisect.bisect_right(self._index_revision, revision) - 1, 0)
        return self._scan(start, lambda record: record.last_revision >= revision, limit)

    def read_after_raft_index(self, raft_index: int, limit: int | None = None) -> list[Record]:
        start = max(bisect.bisect_right(self._index_raft, raft_index) - 1, 0)
        return self._scan(start, lambda record: record.raft_index > raft_index, limit)

    def compact_before(self, revision: int) -> None:
        """Delete the segments wholly below ``revision``, except the one with the newest record."""
        self._check_writable()
        newest = len(self._segments) - (1 if self._active_count else 2)
        drop = 0
        while drop < newest and self._segments[drop + 1] <= revision:
            drop += 1
        if drop == 0:
            return
        # The kept newest record is durable before anything older is deleted.
        self.sync()
        # Oldest first, so a crash part-way leaves a gapless suffix.
        for first in self._segments[:drop]:
            self._path(first).unlink()
        _fsync_directory(self._dir)
        del self._segments[:drop]
        cut = bisect.bisect_left(self._index_segment, self._segments[0])
        for column in (
            self._index_revision,
            self._index_raft,
            self._index_segment,
            self._index_offset,
        ):
            del column[:cut]

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            if self._active is not None:
                try:
                    self._active.close()
                except OSError:
                    pass
            self._lock.close()

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise ValueError("the log is closed")
        if self._failed is not None:
            raise OSError(f"the log failed earlier ({self._failed!r}); reopen it to recover")

    def _roll(self, first_revision: int) -> None:
        if self._active is not None:
            # The old segment is durable before its successor exists (only the last can be torn).
            self._active.flush()
            _fdatasync(self._active.fileno())
            failpoints.synced(self._active.fileno())
            self._active.close()
            self._active = None
        self._active = open(self._path(first_revision), "xb", buffering=_WRITE_BUFFER)
        self._segments.append(first_revision)
        self._active_size = 0
        self._active_count = 0
        self._dir_dirty = True

    def _index(self, record: Record, segment: int, offset: int) -> None:
        self._index_revision.append(record.first_revision)
        self._index_raft.append(record.raft_index)
        self._index_segment.append(segment)
        self._index_offset.append(offset)

    def _path(self, first_revision: int) -> Path:
        return self._dir / segment_name(first_revision)

    # -- reading ---------------------------------------------------------------------------

    def _scan(
        self, start: int, wanted: Callable[[Record], bool], limit: int | None
    ) -> list[Record]:
        """Records from index entry ``start`` on, skipping those before the first ``wanted`` one."""
        if self._closed:
            raise ValueError("the log is closed")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        out: list[Record] = []
        if limit == 0 or not self._index_segment:
            return out
        if self._active is not None and self._failed is None:
            self._active.flush()
        segment = self._index_segment[start]
        offset = self._index_offset[start]
        taking = False
        for first in self._segments[self._segments.index(segment) :]:
            path = self._path(first)
            with open(path, "rb") as f:
                f.seek(offset)
                for record in _frames(f, path, offset):
                    if taking or wanted(record):
                        taking = True
                        out.append(record)
                        if limit is not None and len(out) >= limit:
                            return out
            offset = 0
        return out

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        found = sorted(
            (int(match.group(1)), entry.name)
            for entry in os.scandir(self._dir)
            if (match := _SEGMENT.fullmatch(entry.name))
        )
        for position, (first, _name) in enumerate(found):
            self._recover_segment(first, last=position == len(found) - 1)

    def _recover_segment(self, first: int, *, last: bool) -> None:
        path = self._path(first)
        expected = self._last_revision + 1 if self._segments else first
        if first != expected:
            raise CorruptLogError(
                str(path), 0, f"segment name says revision {first}, the log continues at {expected}"
            )
        with open(path, "rb") as f:
            data = f.read()
        if not data and not last:
            raise CorruptLogError(str(path), 0, "empty segment before the newest one")
        if not data and not self._segments and first != 1:
            raise CorruptLogError(str(path), 0, f"only segment is empty but named revision {first}")
        view = memoryview(data)
        offset = 0
        count = 0
        last_revision = expected - 1
        last_raft_index = self._last_raft_index
        try:
            for end, raft_index, first_revision, revisions in scan_frames(view):
                if first_revision != last_revision + 1:
                    raise CorruptLogError(
                        str(path),
                        offset,
                        f"record starts at revision {first_revision}, expected {last_revision + 1}",
                    )
                if raft_index <= last_raft_index:
                    raise CorruptLogError(
                        str(path),
                        offset,
                        f"raft index {raft_index} is not greater than {last_raft_index}",
                    )
                if count % INDEX_STRIDE == 0:
                    self._index_revision.append(first_revision)
                    self._index_raft.append(raft_index)
                    self._index_segment.append(first)
                    self._index_offset.append(offset)
                count += 1
                last_revision = first_revision + revisions - 1
                last_raft_index = raft_index
                offset = end
        except FrameError as exc:
            # A torn write can only be the newest segment's tail, with nothing valid after it; a
            # body that passed its checksum was written whole, so it is never torn.
            torn = last and not isinstance(exc, MalformedBodyError)
            if not torn or _valid_frame_after(view, offset + 1):
                raise CorruptLogError(str(path), offset, str(exc)) from None
            self._cut_torn_tail(path, data, offset, str(exc))
        self._segments.append(first)
        self._last_revision = last_revision
        self._last_raft_index = last_raft_index
        self._active_size = offset
        self._active_count = count

    def _cut_torn_tail(self, path: Path, data: bytes, offset: int, reason: str) -> None:
        saved = self._dir / f"torn-{path.name}-{offset}.bin"
        with open(saved, "wb") as f:
            f.write(data[offset:])
            f.flush()
            os.fsync(f.fileno())
        # The cut bytes are durable elsewhere before the segment loses them.
        _fsync_directory(self._dir)
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())
        log.warning(
            "event_log_torn_tail_truncated",
            segment=str(path),
            offset=offset,
            cut_bytes=len(data) - offset,
            reason=reason,
            saved_to=str(saved),
        )


def _frames(f: BinaryIO, path: Path, offset: int) -> Iterator[Record]:
    """The records framed in ``f`` from ``offset`` (its current position) to its end."""
    while True:
        header = f.read(HEADER.size)
        if not header:
            return
        if len(header) < HEADER.size:
            raise CorruptLogError(str(path), offset, "incomplete header")
        length, crc = HEADER.unpack(header)
        # The cap is checked before the body is read (a bad length must not allocate).
        if length == 0 or length > MAX_RECORD_BYTES:
            raise CorruptLogError(
                str(path), offset, f"length field {length} outside 1..{MAX_RECORD_BYTES}"
            )
        body = f.read(length)
        if len(body) < length:
            raise CorruptLogError(str(path), offset, f"length field {length} runs past the end")
        try:
            record = decode_body(body, crc)
        except FrameError as exc:
            raise CorruptLogError(str(path), offset, str(exc)) from None
        yield record
        offset += HEADER.size + length


def _valid_frame_after(view: memoryview, start: int) -> bool:
    """Whether a valid frame starts at any offset from ``start`` on."""
    size = len(view)
    for offset in range(start, size - HEADER.size + 1):
        length, crc = HEADER.unpack_from(view, offset)
        body_start = offset + HEADER.size
        if not 0 < length <= min(size - body_start, MAX_RECORD_BYTES):
            continue
        body = view[body_start : body_start + length]
        if zlib.crc32(body) != crc:
            continue
        try:
            decode_body(body, crc)
        except FrameError:
            continue
        return True
    return False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_directory(directory: Path) -> BinaryIO:
    lock = open(directory / "LOCK", "ab")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OSError(f"{directory} is already open in another FileLog") from None
    return lock
