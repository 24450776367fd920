"""FileLog recovery: torn tails are cut and kept aside, any other damage is refused."""

from __future__ import annotations

import shutil
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import pytest
from structlog.testing import capture_logs

from storage.file import FileLog
from storage.log import (
    HEADER,
    CorruptLogError,
    FrameError,
    MalformedBodyError,
    Record,
    TruncatedFrameError,
    encode_record,
    parse_frame,
    scan_frames,
)

SEGMENT_BYTES = 256


def build(directory: Path) -> list[Record]:
    """A log of two segments, the last holding several records of varied sizes."""
    records = []
    revision = 1
    for n in range(16):
        count = n % 3 + 1
        records.append(Record(n * 2 + 1, revision, count, bytes([65 + n]) * (5 + (n * 7) % 17)))
        revision += count
    with FileLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        log.append(records)
    return records


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def frame_ends(data: bytes) -> list[int]:
    return [end for end, *_ in scan_frames(data)]


def open_all(directory: Path) -> list[Record]:
    with FileLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        return log.read_from_revision(0)


def flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.fixture
def original(tmp_path: Path) -> tuple[Path, list[Record]]:
    directory = tmp_path / "original"
    records = build(directory)
    last = segments(directory)[-1]
    assert (2, True) == (len(segments(directory)), len(frame_ends(last.read_bytes())) >= 4)
    return directory, records


def test_every_cut_of_the_last_segment_keeps_the_whole_records_before_it(
    tmp_path: Path, original: tuple[Path, list[Record]]
) -> None:
    """Cut anywhere, the last segment reopens with exactly the records wholly before the cut."""
    directory, records = original
    last = segments(directory)[-1]
    data = last.read_bytes()
    ends = frame_ends(data)
    earlier = len(records) - len(ends)
    wrong = []
    for cut in range(len(data) + 1):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(directory, copy)
        (copy / last.name).write_bytes(data[:cut])
        good = max([0] + [end for end in ends if end <= cut])
        expected_bins = {} if good == cut else {f"torn-{last.name}-{good}.bin": data[good:cut]}
        expected = (records[: earlier + sum(end <= cut for end in ends)], good, expected_bins)
        got = (
            open_all(copy),
            (copy / last.name).stat().st_size,
            {p.name: p.read_bytes() for p in copy.glob("torn-*.bin")},
        )
        if got != expected:
            wrong.append(cut)
    assert [] == wrong


def test_cut_inside_an_earlier_segment_is_corruption(original: tuple[Path, list[Record]]) -> None:
    """Only the newest segment may be torn: a short earlier segment is refused, not cut."""
    directory, _ = original
    first = segments(directory)[0]
    data = first.read_bytes()
    first.write_bytes(data[:-3])
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert (first.name, len(data) - 3) == (Path(caught.value.path).name, first.stat().st_size)


def test_bit_flip_in_a_middle_record_is_corruption_at_its_offset(
    original: tuple[Path, list[Record]],
) -> None:
    """Any single flipped bit in a record followed by others is refused, naming file and offset."""
    directory, _ = original
    last = segments(directory)[-1]
    data = last.read_bytes()
    ends = frame_ends(data)
    start, end = ends[1], ends[2]
    wrong = []
    for offset in range(start, end):
        for bit in range(8):
            last.write_bytes(data)
            flip(last, offset, bit)
            flipped = last.read_bytes()
            try:
                open_all(directory)
                wrong.append((offset, bit, "opened"))
                continue
            except CorruptLogError as exc:
                message = str(exc)
            named = last.name in message and f"offset {start}" in message
            untouched = flipped == last.read_bytes() and not list(directory.glob("torn-*"))
            if not (named and untouched):
                wrong.append((offset, bit, message))
    assert [] == wrong


def test_bit_flip_in_the_last_record_is_a_torn_tail(
    tmp_path: Path, original: tuple[Path, list[Record]]
) -> None:
    """Any single flipped bit in the newest record cuts just that record, keeping its bytes."""
    directory, records = original
    last = segments(directory)[-1]
    data = last.read_bytes()
    start = frame_ends(data)[-2]
    wrong = []
    for offset in range(start, len(data)):
        copy = tmp_path / f"flip-{offset}"
        shutil.copytree(directory, copy)
        flip(copy / last.name, offset, offset % 8)
        flipped = (copy / last.name).read_bytes()
        kept = open_all(copy)
        saved = (copy / f"torn-{last.name}-{start}.bin").read_bytes()
        if (kept, saved) != (records[:-1], flipped[start:]):
            wrong.append(offset)
    assert [] == wrong


def test_bit_flip_at_the_end_of_an_earlier_segment_is_corruption(
    original: tuple[Path, list[Record]],
) -> None:
    """The last record of a non-newest segment is never treated as torn."""
    directory, _ = original
    first = segments(directory)[0]
    start = frame_ends(first.read_bytes())[-2]
    flip(first, start + HEADER.size + 1, 3)
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert (first.name, start) == (Path(caught.value.path).name, caught.value.offset)


def _peak_bytes_of(fn: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()  # type: ignore[operator]
    except CorruptLogError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_4_gib_length_in_the_middle_is_refused_without_allocating(
    original: tuple[Path, list[Record]],
) -> None:
    """A 4 GiB length field before valid records is corruption, found without a big allocation."""
    directory, _ = original
    last = segments(directory)[-1]
    data = bytearray(last.read_bytes())
    start = frame_ends(bytes(data))[1]
    data[start : start + 4] = b"\xff\xff\xff\xff"
    last.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert ("length field 4294967295" in str(caught.value), True) == (
        start == caught.value.offset,
        _peak_bytes_of(lambda: open_all(directory)) < 4 * 1024 * 1024,
    )


def test_4_gib_length_at_the_tail_is_a_torn_tail(original: tuple[Path, list[Record]]) -> None:
    """A header claiming 4 GiB with nothing valid after it is cut like any torn write."""
    directory, records = original
    last = segments(directory)[-1]
    size = last.stat().st_size
    tail = HEADER.pack(0xFFFFFFFF, 0) + b"abc"
    with open(last, "ab") as f:
        f.write(tail)
    assert (records, tail) == (
        open_all(directory),
        (directory / f"torn-{last.name}-{size}.bin").read_bytes(),
    )


def test_4_gib_length_found_by_a_read_is_refused_without_allocating(
    original: tuple[Path, list[Record]],
) -> None:
    """Damage appearing after open is refused by reads too, before the body is read."""
    directory, _ = original
    first = segments(directory)[0]
    with FileLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        with open(first, "r+b") as f:
            f.write(b"\xff\xff\xff\xff")
        with pytest.raises(CorruptLogError) as caught:
            log.read_from_revision(1)
        peak = _peak_bytes_of(lambda: log.read_from_revision(1))
    assert (0, True) == (caught.value.offset, peak < 4 * 1024 * 1024)


def test_zero_filled_tail_is_a_torn_tail(original: tuple[Path, list[Record]]) -> None:
    """Zeros a crash left after the last record (an extended but unwritten block) are cut."""
    directory, records = original
    last = segments(directory)[-1]
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(bytes(4096))
    assert (records, size) == (open_all(directory), last.stat().st_size)


def test_torn_tail_is_logged(original: tuple[Path, list[Record]]) -> None:
    """Cutting a torn tail logs a warning naming the segment and offset."""
    directory, _ = original
    last = segments(directory)[-1]
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(b"\x00\x00\x01")
    with capture_logs() as logs:
        open_all(directory)
    assert [("warning", str(last), size)] == [
        (e["log_level"], e["segment"], e["offset"])
        for e in logs
        if e["event"] == "event_log_torn_tail_truncated"
    ]


def test_recovered_log_appends_and_reopens_cleanly(original: tuple[Path, list[Record]]) -> None:
    """After a torn tail is cut the log takes new records, and the next open cuts nothing."""
    directory, records = original
    last = segments(directory)[-1]
    last.write_bytes(last.read_bytes()[:-2])
    more = Record(100, records[-1].first_revision, 1, b"again")
    with FileLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        log.append([more])
    with capture_logs() as logs:
        kept = open_all(directory)
    assert (records[:-1] + [more], []) == (kept, logs)


def test_checksummed_but_malformed_record_at_the_tail_is_corruption(
    original: tuple[Path, list[Record]],
) -> None:
    """A frame whose checksum matches was written whole: a bad body is never a torn write."""
    directory, _ = original
    last = segments(directory)[-1]
    size = last.stat().st_size
    body = msgpack.packb([1, 2])
    with open(last, "ab") as f:
        f.write(HEADER.pack(len(body), zlib.crc32(body)) + body)
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert size == caught.value.offset


def test_revision_gap_at_the_tail_is_corruption(original: tuple[Path, list[Record]]) -> None:
    """A whole record that does not continue the log is refused, not cut."""
    directory, records = original
    last = segments(directory)[-1]
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(encode_record(Record(1000, records[-1].last_revision + 2, 1, b"gap")))
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert size == caught.value.offset


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    """A segment missing between two others is a revision gap."""
    directory = tmp_path / "log"
    with FileLog(directory, segment_bytes=64) as log:
        log.append([Record(n, n, 1, b"x" * 40) for n in range(1, 10)])
    middle = segments(directory)[1]
    middle.unlink()
    with pytest.raises(CorruptLogError) as caught:
        open_all(directory)
    assert Path(caught.value.path).name > middle.name


def test_empty_newest_segment_opens_and_takes_appends(tmp_path: Path) -> None:
    """A crash just after a roll leaves an empty newest segment; it is reused."""
    directory = tmp_path / "log"
    records = [Record(n, n, 1, b"x" * 40) for n in range(1, 4)]
    with FileLog(directory, segment_bytes=64) as log:
        log.append(records)
    newest = segments(directory)[-1]
    newest.write_bytes(b"")
    more = Record(50, 3, 1, b"y")
    with FileLog(directory, segment_bytes=64) as log:
        log.append([more])
    assert records[:2] + [more] == open_all(directory)


def test_frame_round_trip() -> None:
    """parse_frame reads back what encode_record wrote and says where it ends."""
    record = Record(7, 3, 2, b"\x00payload")
    frame = encode_record(record)
    assert (record, len(frame)) == parse_frame(frame, 0)


def test_every_prefix_of_a_frame_is_truncated() -> None:
    """A frame cut short anywhere is reported as truncated, never as some other record."""
    frame = encode_record(Record(1, 1, 1, b"abcdef"))
    kinds = set()
    for cut in range(len(frame)):
        with pytest.raises(FrameError) as caught:
            parse_frame(frame[:cut], 0)
        kinds.add(type(caught.value))
    assert {TruncatedFrameError} == kinds


def test_body_of_the_wrong_shape_is_malformed() -> None:
    """A correctly checksummed body that is not a record is MalformedBodyError."""
    body = msgpack.packb([1, 1, 0, b"count zero"])
    with pytest.raises(MalformedBodyError):
        parse_frame(HEADER.pack(len(body), zlib.crc32(body)) + body, 0)


def test_record_needs_at_least_one_revision() -> None:
    """A record of zero revisions cannot be built."""
    with pytest.raises(ValueError):
        Record(1, 1, 0, b"")


def test_last_revision_counts_the_record_revisions() -> None:
    """last_revision is first_revision + count - 1."""
    assert 12 == Record(1, 10, 3, b"").last_revision
