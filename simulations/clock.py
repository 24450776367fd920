"""A fake clock for simulations: time moves only when the simulation says so.

Callbacks scheduled with :meth:`FakeClock.call_at` run in time order (ties in the order they were
scheduled) when :meth:`FakeClock.advance` passes their time, so a seeded simulation replays
exactly.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._due: list[tuple[float, int, Callable[[], None]]] = []

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._due, (when, next(self._seq), callback))

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.call_at(self._now + delay, callback)

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, running what falls due; returns how many ran."""
        until = self._now + seconds
        ran = 0
        while self._due and self._due[0][0] <= until:
            when, _, callback = heapq.heappop(self._due)
            self._now = max(self._now, when)
            callback()
            ran += 1
        self._now = until
        return ran

    def pending(self) -> int:
        return len(self._due)
