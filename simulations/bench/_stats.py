"""Small, dependency-free statistics for benchmark reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["latency_summary", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """``n``, ``p50``, ``p99``, ``max`` and ``mean`` of latencies in milliseconds, rounded to 0.001 ms."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "n": len(values_ms),
        "p50": r(percentile(values_ms, 50)),
        "p99": r(percentile(values_ms, 99)),
        "max": r(max(values_ms) if values_ms else None),
        "mean": r(sum(values_ms) / len(values_ms) if values_ms else None),
    }
