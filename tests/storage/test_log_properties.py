"""Property: appends, syncs, reopens and compactions on a FileLog read like a MemoryLog."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from storage.file import FileLog
from storage.log import LogOrderError, Record
from storage.memory import MemoryLog

# Small segments so that rolls, multi-segment reads and compaction all happen in short runs.
SEGMENT_BYTES = 96

batches = st.lists(
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.binary(max_size=40)), min_size=0, max_size=4
)


class FileLogMatchesMemoryLog(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="filelog-"))
        self.file = FileLog(self.directory, segment_bytes=SEGMENT_BYTES)
        self.memory = MemoryLog()

    def teardown(self) -> None:
        self.file.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _next(self, spec: list[tuple[int, int, bytes]]) -> list[Record]:
        records = []
        revision, raft_index = self.memory.last_revision + 1, self.memory.last_raft_index
        for count, raft_step, payload in spec:
            raft_index += raft_step
            records.append(Record(raft_index, revision, count, payload))
            revision += count
        return records

    @rule(spec=batches)
    def append(self, spec: list[tuple[int, int, bytes]]) -> None:
        records = self._next(spec)
        self.memory.append(records)
        self.file.append(records)

    @rule(
        spec=batches.filter(bool),
        position=st.integers(0, 3),
        kind=st.sampled_from(["revision_gap", "stale_raft_index"]),
    )
    def append_out_of_order(
        self, spec: list[tuple[int, int, bytes]], position: int, kind: str
    ) -> None:
        records = self._next(spec)
        position %= len(records)
        bad = records[position]
        previous = records[position - 1].raft_index if position else self.memory.last_raft_index
        if kind == "stale_raft_index" and previous > 0:
            records[position] = attrs.evolve(bad, raft_index=previous)
        else:
            records[position] = attrs.evolve(bad, first_revision=bad.first_revision + 1)
        for log in (self.memory, self.file):
            with pytest.raises(LogOrderError):
                log.append(records)

    @rule()
    def sync(self) -> None:
        self.file.sync()

    @rule()
    def reopen(self) -> None:
        self.file.close()
        self.file = FileLog(self.directory, segment_bytes=SEGMENT_BYTES)

    @precondition(lambda self: self.memory.last_revision > 0)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        revision = data.draw(st.integers(0, self.memory.last_revision + 2))
        self.memory.compact_before(revision)
        self.file.compact_before(revision)

    @rule(data=st.data(), limit=st.none() | st.integers(0, 5))
    def read_from_revision(self, data: st.DataObject, limit: int | None) -> None:
        revision = data.draw(st.integers(self.memory.first_revision, self.memory.last_revision + 2))
        expected = self.memory.read_from_revision(revision, limit)
        assert expected == self.file.read_from_revision(revision, limit)

    @rule(data=st.data(), limit=st.none() | st.integers(0, 5))
    def read_after_raft_index(self, data: st.DataObject, limit: int | None) -> None:
        kept = self.memory.read_from_revision(0, 1)
        floor = kept[0].raft_index - 1 if kept else 0
        raft_index = data.draw(st.integers(floor, self.memory.last_raft_index + 2))
        expected = self.memory.read_after_raft_index(raft_index, limit)
        assert expected == self.file.read_after_raft_index(raft_index, limit)

    @invariant()
    def same_positions(self) -> None:
        assert (self.memory.last_revision, self.memory.last_raft_index) == (
            self.file.last_revision,
            self.file.last_raft_index,
        )

    @invariant()
    def file_keeps_at_least_what_memory_keeps(self) -> None:
        # Compaction drops whole segments, so the file may keep more than memory, never less.
        first = self.memory.first_revision
        assert (True, self.memory.read_from_revision(first)) == (
            self.file.first_revision <= first,
            self.file.read_from_revision(first),
        )


FileLogMatchesMemoryLog.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_file_log_matches_memory_log = FileLogMatchesMemoryLog.TestCase
