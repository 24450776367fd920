"""An :class:`~storage.log.EventLog` held in memory, for tests and simulations."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from storage.log import Record, check_order

__all__ = ["MemoryLog"]


class MemoryLog:
    """A list of records; ``sync`` and ``close`` do nothing."""

    def __init__(self) -> None:
        self._records: list[Record] = []
        # Parallel to _records, for bisection.
        self._last_revisions: list[int] = []
        self._raft_indexes: list[int] = []
        self._last_revision = 0
        self._last_raft_index = 0

    @property
    def first_revision(self) -> int:
        return self._records[0].first_revision if self._records else 1

    @property
    def last_revision(self) -> int:
        return self._last_revision

    @property
    def last_raft_index(self) -> int:
        return self._last_raft_index

    def append(self, records: Sequence[Record]) -> None:
        check_order(self._last_revision, self._last_raft_index, records)
        for record in records:
            self._records.append(record)
            self._last_revisions.append(record.last_revision)
            self._raft_indexes.append(record.raft_index)
        if records:
            self._last_revision = records[-1].last_revision
            self._last_raft_index = records[-1].raft_index

    def sync(self) -> None:
        pass

    def read_from_revision(self, revision: int, limit: int | None = None) -> list[Record]:
        start = bisect.bisect_left(self._last_revisions, revision)
        return self._records[start : _stop(start, limit)]

    def read_after_raft_index(self, raft_index: int, limit: int | None = None) -> list[Record]:
        start = bisect.bisect_right(self._raft_indexes, raft_index)
        return self._records[start : _stop(start, limit)]

    def compact_before(self, revision: int) -> None:
        # The newest record is kept so the log still knows where it ends.
        drop = min(bisect.bisect_left(self._last_revisions, revision), len(self._records) - 1)
        if drop > 0:
            del self._records[:drop]
            del self._last_revisions[:drop]
            del self._raft_indexes[:drop]

    def close(self) -> None:
        pass


def _stop(start: int, limit: int | None) -> int | None:
    if limit is None:
        return None
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return start + limit
