"""The event log contract and the on-disk framing of its records.

A record is what one committed Raft entry adds to the store: ``count`` consecutive revisions
starting at ``first_revision``, carried as opaque ``payload`` bytes. Revisions are gapless and raft
indexes strictly increase along the log; every implementation refuses a batch that would break
either, and writes nothing of it.

A framed record is ``[u32 length][u32 crc32(body)][body]`` (big-endian), where body is the msgpack
array ``[raft_index, first_revision, count, payload]``. The framing functions do no I/O.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import attrs
import msgpack

__all__ = [
    "HEADER",
    "MAX_RECORD_BYTES",
    "CorruptLogError",
    "EventLog",
    "FrameError",
    "LogOrderError",
    "MalformedBodyError",
    "Record",
    "TruncatedFrameError",
    "check_order",
    "decode_body",
    "encode_record",
    "parse_frame",
    "scan_frames",
]

# A frame whose length field exceeds this is refused before its body is allocated or read.
MAX_RECORD_BYTES = 64 * 1024 * 1024

HEADER = struct.Struct(">II")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen
class Record:
    """``count`` revisions from ``first_revision``, committed at ``raft_index``."""

    raft_index: int = attrs.field(validator=_positive)
    first_revision: int = attrs.field(validator=_positive)
    count: int = attrs.field(validator=_positive)
    payload: bytes = attrs.field(validator=attrs.validators.instance_of(bytes), repr=False)

    @property
    def last_revision(self) -> int:
        return self.first_revision + self.count - 1


class LogOrderError(ValueError):
    """A batch that would leave a revision gap or a non-increasing raft index; none was written."""


class CorruptLogError(Exception):
    """Stored bytes that are not a valid log and cannot be a torn final write."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt log at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class FrameError(ValueError):
    """Bytes at an offset that are not a valid frame."""


class TruncatedFrameError(FrameError):
    """The buffer ends before the frame does (what a torn write leaves behind)."""


class MalformedBodyError(FrameError):
    """A frame whose checksum matches but whose body is not a record: never a torn write."""


class EventLog(Protocol):
    """An append-only, gapless log of records.

    ``append`` may buffer; only ``sync`` makes appended records durable, so a caller syncs before
    it acknowledges them. Reads see every appended record, synced or not.
    """

    @property
    def first_revision(self) -> int:
        """1, or the first revision still kept after compaction."""
        ...

    @property
    def last_revision(self) -> int:
        """The last revision appended; 0 when nothing was ever appended."""
        ...

    @property
    def last_raft_index(self) -> int:
        """The raft index of the last record; 0 when nothing was ever appended."""
        ...

    def append(self, records: Sequence[Record]) -> None:
        """Append all of ``records`` or, raising :class:`LogOrderError`, none of them."""
        ...

    def sync(self) -> None:
        """Make every appended record durable."""
        ...

    def read_from_revision(self, revision: int, limit: int | None = None) -> list[Record]:
        """Kept records whose ``last_revision >= revision``, oldest first, at most ``limit``.

        Records below :attr:`first_revision` were compacted away and are not returned; a caller
        that needs them all compares ``revision`` with ``first_revision`` first.
        """
        ...

    def read_after_raft_index(self, raft_index: int, limit: int | None = None) -> list[Record]:
        """Kept records whose ``raft_index`` is greater than ``raft_index``, oldest first."""
        ...

    def compact_before(self, revision: int) -> None:
        """Let records wholly below ``revision`` be discarded; the newest record is always kept."""
        ...

    def close(self) -> None:
        """Sync and release the log; it is not used afterwards."""
        ...


def check_order(last_revision: int, last_raft_index: int, records: Sequence[Record]) -> None:
    """Raise :class:`LogOrderError` unless ``records`` continue a log ending at these positions."""
    for position, record in enumerate(records):
        if not isinstance(record, Record):
            raise LogOrderError(f"batch item {position} is a {type(record).__name__}, not a Record")
        if record.first_revision != last_revision + 1:
            raise LogOrderError(
                f"batch item {position} starts at revision {record.first_revision}, "
                f"expected {last_revision + 1}"
            )
        if record.raft_index <= last_raft_index:
            raise LogOrderError(
                f"batch item {position} has raft index {record.raft_index}, "
                f"not greater than {last_raft_index}"
            )
        last_revision = record.last_revision
        last_raft_index = record.raft_index


def encode_record(record: Record) -> bytes:
    body: bytes = msgpack.packb(
        [record.raft_index, record.first_revision, record.count, record.payload], use_bin_type=True
    )
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def decode_body(body: bytes | memoryview, crc: int) -> Record:
    """The record framed by ``body`` whose header carried ``crc``; raises :class:`FrameError`."""
    return Record(*_fields(body, crc))


def parse_frame(buffer: bytes | memoryview, offset: int) -> tuple[Record, int]:
    """The record framed at ``offset`` in ``buffer`` and the offset just after it.

    Raises :class:`TruncatedFrameError` when the buffer ends inside the frame (checked on the
    length field alone, before any body is touched) and :class:`FrameError` when the frame is bad.
    """
    size = len(buffer)
    if size - offset < HEADER.size:
        raise TruncatedFrameError(f"incomplete header ({size - offset} of {HEADER.size} bytes)")
    length, crc = HEADER.unpack_from(buffer, offset)
    if length == 0 or length > MAX_RECORD_BYTES:
        raise FrameError(f"length field {length} outside 1..{MAX_RECORD_BYTES}")
    start = offset + HEADER.size
    end = start + length
    if end > size:
        raise TruncatedFrameError(f"length field {length} runs {end - size} bytes past the end")
    return decode_body(buffer[start:end], crc), end


def scan_frames(buffer: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """``(end, raft_index, first_revision, count)`` of each frame from ``offset`` to the end.

    The same checks as :func:`parse_frame` without building records; the first bad frame (it
    starts where the last yielded one ended) raises :class:`FrameError` or
    :class:`TruncatedFrameError`.
    """
    size = len(buffer)
    unpack_header = HEADER.unpack_from
    header_size = HEADER.size
    fields = _fields
    while offset < size:
        if size - offset < header_size:
            raise TruncatedFrameError(f"incomplete header ({size - offset} of {header_size} bytes)")
        length, crc = unpack_header(buffer, offset)
        if length == 0 or length > MAX_RECORD_BYTES:
            raise FrameError(f"length field {length} outside 1..{MAX_RECORD_BYTES}")
        start = offset + header_size
        offset = start + length
        if offset > size:
            raise TruncatedFrameError(
                f"length field {length} runs {offset - size} bytes past the end"
            )
        raft_index, first_revision, count, _ = fields(buffer[start:offset], crc)
        yield offset, raft_index, first_revision, count


def _fields(body: bytes | memoryview, crc: int) -> list[Any]:
    """``[raft_index, first_revision, count, payload]`` of a frame body, checked."""
    if zlib.crc32(body) != crc:
        raise FrameError("checksum mismatch")
    try:
        fields = msgpack.unpackb(body)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedBodyError(f"body is not msgpack: {exc}") from None
    if type(fields) is not list or len(fields) != 4:
        raise MalformedBodyError("body is not [raft_index, first_revision, count, payload]")
    raft_index, first_revision, count, payload = fields
    if not (type(raft_index) is int and type(first_revision) is int and type(count) is int):
        raise MalformedBodyError("raft_index, first_revision and count must be ints")
    if raft_index < 1 or first_revision < 1 or count < 1 or type(payload) is not bytes:
        raise MalformedBodyError(
            "body is not [raft_index >= 1, first_revision >= 1, count >= 1, bytes]"
        )
    return fields
