"""Per-virtual-service counters that the data path bumps on its hot path.

Increments are plain attribute arithmetic on ``__slots__`` objects: the data path runs on one event
loop thread, so there are no locks, and a reader (``snapshot``) runs on the same loop. Counters are
monotonic except ``open_connections``; a VS whose config is swapped in place keeps its counters
(they are keyed by VS uuid).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from typing import Any, Optional

__all__ = ["LATENCY_BUCKETS", "Telemetry", "VsStats"]

# Upper bounds in seconds, Prometheus style (``le``); the last, implicit bucket is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


LOG_CAPACITY = 1000


class VsStats:
    """The counters of one virtual service."""

    __slots__ = (
        "uuid",
        "name",
        "open_connections",
        "total_connections",
        "bytes_in",
        "bytes_out",
        "requests",
        "responses",
        "latency_counts",
        "latency_sum",
        "connect_failures",
        "logs",
    )

    def __init__(self, uuid: str, name: str) -> None:
        self.uuid = uuid
        self.name = name
        self.open_connections = 0
        self.total_connections = 0
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
        self.requests = 0
        self.responses = [0] * len(_CLASSES)  # index status // 100, 0 for anything outside 1xx-5xx
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.connect_failures = 0  # backend connects that failed or timed out
        # The newest client request logs, bounded: the oldest are dropped when nobody collects them.
        self.logs: deque[tuple[float, str, bytes, bytes, int, float, Optional[str]]] = deque(maxlen=LOG_CAPACITY)

    def take_logs(self, limit: int) -> list[dict[str, Any]]:
        """Remove and return up to ``limit`` of the oldest logs, as JSON-able records."""
        out: list[dict[str, Any]] = []
        logs = self.logs
        while logs and len(out) < limit:
            when, client, method, url, status, latency, server = logs.popleft()
            out.append({"time": when, "client": client, "method": method.decode("latin-1"), "uri": url.decode("latin-1"),
                        "status": status, "latency_ms": round(latency * 1000, 3), "server": server})
        return out

    def exchange(self, client: str, method: bytes, url: bytes, status: int, latency: float, server: Optional[str]) -> None:
        """An L7 response ended (once per request): count it by status class and latency, and log the request."""
        cls = status // 100
        self.responses[cls if 1 <= cls <= 5 else 0] += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.logs.append((time.time(), client, method, url, status, latency, server))

    def snapshot(self) -> dict[str, Any]:
        cumulative = []
        running = 0
        for count in self.latency_counts:
            running += count
            cumulative.append(running)
        return {
            "uuid": self.uuid,
            "name": self.name,
            "open_connections": self.open_connections,
            "total_connections": self.total_connections,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "requests": self.requests,
            "responses": dict(zip(_CLASSES, self.responses, strict=True)),
            "connect_failures": self.connect_failures,
            "latency": {
                "buckets": [[str(le), n] for le, n in zip((*LATENCY_BUCKETS, "+Inf"), cumulative, strict=True)],
                "count": running,
                "sum": self.latency_sum,
            },
        }


class Telemetry:
    """All VS counters of one Service Engine, keyed by VS uuid."""

    def __init__(self) -> None:
        self._by_uuid: dict[str, VsStats] = {}

    def for_vs(self, uuid: str, name: str) -> VsStats:
        """The counters of a VS, created on first use; a renamed VS keeps its counters."""
        stats = self._by_uuid.get(uuid)
        if stats is None:
            stats = self._by_uuid[uuid] = VsStats(uuid, name)
        stats.name = name
        return stats

    def retain(self, uuids: set[str]) -> None:
        """Drop the counters of VSs no longer served."""
        for uuid in [u for u in self._by_uuid if u not in uuids]:
            del self._by_uuid[uuid]

    def take_logs(self, limit_per_vs: int) -> dict[str, list[dict[str, Any]]]:
        """Request logs collected since the last call, keyed by VS uuid (at most ``limit_per_vs`` each)."""
        out = {}
        for uuid, stats in self._by_uuid.items():
            if stats.logs:
                out[uuid] = stats.take_logs(limit_per_vs)
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-able counters keyed by VS name (cumulative latency buckets, ``le`` as strings)."""
        return {stats.name: stats.snapshot() for stats in self._by_uuid.values()}
