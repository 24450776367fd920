"""The EventLog contract, run against every implementation (one subclass per backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.file import INDEX_STRIDE, FileLog
from storage.log import EventLog, LogOrderError, Record
from storage.memory import MemoryLog


def chain(
    counts: list[int], raft_step: int = 1, start_revision: int = 1, start_raft: int = 1
) -> list[Record]:
    """Gapless records with the given revision counts, raft indexes ``raft_step`` apart."""
    records = []
    revision, raft_index = start_revision, start_raft
    for n, count in enumerate(counts):
        records.append(Record(raft_index, revision, count, f"payload-{n}".encode() * (n % 4 + 1)))
        revision += count
        raft_index += raft_step
    return records


class LogContract:
    """What every EventLog does; a subclass supplies ``make_log``."""

    def make_log(self, tmp_path: Path) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self, tmp_path: Path) -> Iterator[EventLog]:
        log = self.make_log(tmp_path)
        yield log
        log.close()

    def test_empty_log_positions(self, log: EventLog) -> None:
        """An empty log starts at revision 1 and has seen nothing."""
        assert (1, 0, 0) == (log.first_revision, log.last_revision, log.last_raft_index)

    def test_empty_log_reads_nothing(self, log: EventLog) -> None:
        """Reads of an empty log are empty."""
        assert ([], []) == (log.read_from_revision(1), log.read_after_raft_index(0))

    def test_append_then_read_everything(self, log: EventLog) -> None:
        """Appended records read back in order, before any sync."""
        records = chain([1, 3, 2])
        log.append(records)
        assert records == log.read_from_revision(1)

    def test_positions_follow_the_last_record(self, log: EventLog) -> None:
        """last_revision and last_raft_index are those of the newest record."""
        log.append(chain([1, 3, 2], raft_step=5))
        assert (6, 11) == (log.last_revision, log.last_raft_index)

    def test_separate_appends_concatenate(self, log: EventLog) -> None:
        """Two appends read back as one sequence."""
        records = chain([2, 1, 4, 1])
        log.append(records[:2])
        log.sync()
        log.append(records[2:])
        assert records == log.read_from_revision(1)

    def test_empty_batch_changes_nothing(self, log: EventLog) -> None:
        """Appending no records leaves the log as it was."""
        log.append(chain([2]))
        log.append([])
        assert (2, 1) == (log.last_revision, log.last_raft_index)

    def test_first_record_must_start_at_revision_1(self, log: EventLog) -> None:
        """An empty log refuses a record that does not start at revision 1."""
        with pytest.raises(LogOrderError):
            log.append([Record(1, 2, 1, b"x")])

    def test_revision_gap_refuses_whole_batch(self, log: EventLog) -> None:
        """A gap anywhere in a batch refuses the batch and writes none of it."""
        log.append(chain([1]))
        good, gapped = chain([1, 1], start_revision=2, start_raft=2)
        gapped = Record(gapped.raft_index, gapped.first_revision + 1, 1, b"gap")
        with pytest.raises(LogOrderError):
            log.append([good, gapped])
        assert (chain([1]), 1, 1) == (
            log.read_from_revision(1),
            log.last_revision,
            log.last_raft_index,
        )

    def test_overlapping_revision_refused(self, log: EventLog) -> None:
        """A record that starts inside the previous one is refused."""
        log.append(chain([3]))
        with pytest.raises(LogOrderError):
            log.append([Record(2, 3, 1, b"x")])

    def test_repeated_raft_index_refused(self, log: EventLog) -> None:
        """A raft index equal to the previous one is refused."""
        log.append(chain([1]))
        with pytest.raises(LogOrderError):
            log.append([Record(1, 2, 1, b"x")])

    def test_decreasing_raft_index_within_batch_refuses_whole_batch(self, log: EventLog) -> None:
        """A raft index going backwards inside a batch refuses all of the batch."""
        with pytest.raises(LogOrderError):
            log.append([Record(5, 1, 1, b"a"), Record(6, 2, 1, b"b"), Record(4, 3, 1, b"c")])
        assert (0, []) == (log.last_revision, log.read_from_revision(1))

    def test_raft_indexes_may_skip(self, log: EventLog) -> None:
        """Raft indexes need only increase (entries that carry no events leave holes)."""
        log.append([Record(3, 1, 1, b"a"), Record(10, 2, 1, b"b")])
        assert 10 == log.last_raft_index

    def test_read_from_inside_a_multi_event_record(self, log: EventLog) -> None:
        """Reading from a revision inside a record returns that whole record first."""
        records = chain([1, 3, 2])
        log.append(records)
        assert records[1:] == log.read_from_revision(3)

    def test_read_from_a_record_boundary(self, log: EventLog) -> None:
        """Reading from a record's first revision starts at that record."""
        records = chain([1, 3, 2])
        log.append(records)
        assert records[2:] == log.read_from_revision(5)

    def test_read_past_the_end_is_empty(self, log: EventLog) -> None:
        """No record holds a revision after last_revision."""
        log.append(chain([1, 3]))
        assert [] == log.read_from_revision(5)

    def test_read_from_revision_zero_reads_everything(self, log: EventLog) -> None:
        """Revision 0 is before every record."""
        records = chain([2, 2])
        log.append(records)
        assert records == log.read_from_revision(0)

    def test_limit_caps_the_result(self, log: EventLog) -> None:
        """A limit returns at most that many records, oldest first."""
        records = chain([1] * 10)
        log.append(records)
        assert records[3:5] == log.read_from_revision(4, limit=2)

    def test_limit_zero_reads_nothing(self, log: EventLog) -> None:
        """A limit of 0 returns no records."""
        log.append(chain([1, 1]))
        assert [] == log.read_after_raft_index(0, limit=0)

    def test_negative_limit_refused(self, log: EventLog) -> None:
        """A negative limit is a caller error."""
        log.append(chain([1]))
        with pytest.raises(ValueError):
            log.read_from_revision(1, limit=-1)

    def test_read_after_raft_index(self, log: EventLog) -> None:
        """Records whose raft index is strictly greater come back, even across a hole."""
        records = [Record(2, 1, 1, b"a"), Record(5, 2, 2, b"b"), Record(9, 4, 1, b"c")]
        log.append(records)
        assert (records[1:], records[2:]) == (
            log.read_after_raft_index(4),
            log.read_after_raft_index(5),
        )

    def test_read_after_raft_index_with_limit(self, log: EventLog) -> None:
        """read_after_raft_index honours its limit."""
        records = chain([1] * 6)
        log.append(records)
        assert records[1:3] == log.read_after_raft_index(1, limit=2)

    def test_every_revision_reads_from_its_record(self, log: EventLog) -> None:
        """Across many records and index points, each revision reads from the record holding it."""
        records = chain([1, 2, 3] * (INDEX_STRIDE + 10))
        log.append(records)
        starts = {}
        for position, record in enumerate(records):
            for revision in range(record.first_revision, record.last_revision + 1):
                starts[revision] = position
        wrong = [
            r for r, p in starts.items() if log.read_from_revision(r, limit=2) != records[p : p + 2]
        ]
        assert [] == wrong

    def test_every_raft_index_reads_after_itself(self, log: EventLog) -> None:
        """Across many records, read_after_raft_index(i) starts at the first raft index above i."""
        records = chain([1] * (3 * INDEX_STRIDE), raft_step=2)
        log.append(records)
        wrong = [
            i
            for i in range(0, records[-1].raft_index + 2)
            if log.read_after_raft_index(i, limit=1) != [r for r in records if r.raft_index > i][:1]
        ]
        assert [] == wrong

    def test_compaction_keeps_what_is_asked_for(self, log: EventLog) -> None:
        """After compact_before(r) every record holding r or later still reads back."""
        records = chain([1, 2] * 60)
        log.append(records)
        log.compact_before(100)
        assert [r for r in records if r.last_revision >= 100] == log.read_from_revision(100)

    def test_compaction_moves_first_revision_to_a_kept_record(self, log: EventLog) -> None:
        """first_revision is the first kept record's, no later than the compaction point."""
        records = chain([1, 2] * 60)
        log.append(records)
        log.compact_before(100)
        kept = log.read_from_revision(0)
        assert (kept[0].first_revision, True) == (log.first_revision, log.first_revision <= 100)

    def test_compaction_drops_old_records(self, log: EventLog) -> None:
        """Records wholly below the compaction point are (at least partly) gone."""
        log.append(chain([1, 2] * 60))
        log.compact_before(150)
        assert log.first_revision > 1

    def test_compaction_keeps_the_newest_record(self, log: EventLog) -> None:
        """Compacting past the end keeps the newest record and the log's positions."""
        records = chain([1, 2] * 60)
        log.append(records)
        log.compact_before(10_000)
        assert (records[-1:], records[-1].last_revision, records[-1].raft_index) == (
            log.read_from_revision(0)[-1:],
            log.last_revision,
            log.last_raft_index,
        )

    def test_append_after_compaction(self, log: EventLog) -> None:
        """A compacted log goes on accepting the next record."""
        records = chain([1, 2] * 60)
        log.append(records)
        log.compact_before(150)
        more = chain(
            [1], start_revision=records[-1].last_revision + 1, start_raft=records[-1].raft_index + 1
        )
        log.append(more)
        assert more == log.read_from_revision(more[0].first_revision)

    def test_compaction_of_empty_log_is_harmless(self, log: EventLog) -> None:
        """Compacting an empty log leaves it empty."""
        log.compact_before(10)
        assert (1, 0) == (log.first_revision, log.last_revision)


class TestMemoryLog(LogContract):
    def make_log(self, tmp_path: Path) -> EventLog:
        return MemoryLog()


class TestFileLog(LogContract):
    def make_log(self, tmp_path: Path) -> EventLog:
        # Small segments, so the contract is also checked across segment boundaries.
        return FileLog(tmp_path / "log", segment_bytes=512)

    def reopen(self, log: EventLog, tmp_path: Path) -> FileLog:
        log.close()
        return FileLog(tmp_path / "log", segment_bytes=512)

    def test_records_survive_reopen(self, log: EventLog, tmp_path: Path) -> None:
        """Everything appended reads back after close and reopen."""
        records = chain([1, 3, 2] * 40)
        log.append(records)
        log.sync()
        reopened = self.reopen(log, tmp_path)
        assert records == reopened.read_from_revision(1)
        reopened.close()

    def test_positions_survive_reopen(self, log: EventLog, tmp_path: Path) -> None:
        """first, last revision and last raft index are recovered on open."""
        log.append(chain([2] * 50, raft_step=3))
        reopened = self.reopen(log, tmp_path)
        assert (1, 100, 148) == (
            reopened.first_revision,
            reopened.last_revision,
            reopened.last_raft_index,
        )
        reopened.close()

    def test_append_after_reopen_continues(self, log: EventLog, tmp_path: Path) -> None:
        """A reopened log accepts the next record and refuses a gap."""
        records = chain([1] * 30)
        log.append(records[:20])
        reopened = self.reopen(log, tmp_path)
        reopened.append(records[20:])
        with pytest.raises(LogOrderError):
            reopened.append([Record(100, 40, 1, b"gap")])
        assert records == reopened.read_from_revision(1)
        reopened.close()

    def test_compaction_survives_reopen(self, log: EventLog, tmp_path: Path) -> None:
        """Deleted segments stay deleted: first_revision is the same after reopen."""
        log.append(chain([1, 2] * 60))
        log.compact_before(150)
        first = log.first_revision
        reopened = self.reopen(log, tmp_path)
        assert (first, reopened.read_from_revision(0)[0].first_revision) == (
            reopened.first_revision,
            first,
        )
        reopened.close()

    def test_segments_are_named_by_first_revision(self, log: EventLog, tmp_path: Path) -> None:
        """Each segment file is named by the first revision of its first record."""
        records = chain([1, 2] * 30)
        log.append(records)
        log.sync()
        firsts = {r.first_revision for r in records}
        names = sorted(p.name for p in (tmp_path / "log").glob("seg-*.log"))
        assert (True, True) == (len(names) > 1, all(int(n[4:24]) in firsts for n in names))

    def test_segment_rolls_after_segment_bytes(self, log: EventLog, tmp_path: Path) -> None:
        """No segment grows past segment_bytes by more than one record."""
        log.append(chain([1] * 200))
        log.sync()
        biggest_record = max(len(r.payload) for r in log.read_from_revision(0)) + 32
        sizes = [p.stat().st_size for p in (tmp_path / "log").glob("seg-*.log")]
        assert max(sizes) < 512 + biggest_record

    def test_second_open_of_a_directory_refused(self, log: EventLog, tmp_path: Path) -> None:
        """Two FileLogs never write the same directory."""
        with pytest.raises(OSError):
            FileLog(tmp_path / "log")

    def test_closed_log_refuses_appends(self, log: EventLog) -> None:
        """A closed log is not written again."""
        log.close()
        with pytest.raises(ValueError):
            log.append(chain([1]))
