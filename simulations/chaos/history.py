"""Histories of client operations, as plain data for the checkers.

An :class:`Operation` is one client request on one register key: when it was invoked, when its
answer arrived (if one did) and what the answer said. Outcomes follow Jepsen's convention:

- ``ok``: the request took effect (a read observed ``value``; a cas found ``expected``);
- ``fail``: the request definitely took no effect (a refusal, a 412 on ``If-Match``);
- ``unknown``: no definite answer (timeout, connection lost, 504); the request may take effect
  at any time after ``invoked_at``, or never, so its completion counts as +infinity.

Times are whatever clock the workload used (``loop.time()`` or a fake clock); only their order
matters. Nothing here reads a clock: the caller passes ``at=``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Protocol

import attrs

__all__ = [
    "HistoryBuilder",
    "Operation",
    "OperationType",
    "Outcome",
    "PendingOperation",
    "WriteOutcomes",
    "by_key",
    "write_outcomes",
    "write_samples",
]

OperationType = str  # "read" | "write" | "cas"
Outcome = str  # "ok" | "fail" | "unknown"

_TYPES = frozenset({"read", "write", "cas"})
_OUTCOMES = frozenset({"ok", "fail", "unknown"})


def _check_times(instance: Operation, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        if instance.outcome != "unknown":
            raise ValueError(f"an operation with outcome {instance.outcome!r} needs completed_at")
        return
    if value < instance.invoked_at:
        raise ValueError(f"completed_at {value!r} is before invoked_at {instance.invoked_at!r}")


@attrs.frozen
class Operation:
    """One client request on one register key.

    ``value`` is the value written by a write, or the value a read observed (``None`` for a key
    that does not exist). A cas replaces ``expected`` by ``new``. ``completed_at`` may be ``None``
    only for an ``unknown`` outcome, and is ignored for one: an unknown request may still land.
    """

    process: Hashable
    type: OperationType = attrs.field(validator=attrs.validators.in_(_TYPES))
    key: Hashable
    invoked_at: float
    completed_at: float | None = attrs.field(validator=_check_times)
    outcome: Outcome = attrs.field(validator=attrs.validators.in_(_OUTCOMES))
    value: Any = None
    expected: Any = None
    new: Any = None
    id: Hashable | None = None

    @classmethod
    def read(cls, process: Hashable, key: Hashable, value: Any, invoked_at: float, completed_at: float | None,
             outcome: Outcome = "ok", *, id: Hashable | None = None) -> Operation:
        """A read of ``key`` that observed ``value``."""
        return cls(process, "read", key, invoked_at, completed_at, outcome, value=value, id=id)

    @classmethod
    def write(cls, process: Hashable, key: Hashable, value: Any, invoked_at: float, completed_at: float | None,
              outcome: Outcome = "ok", *, id: Hashable | None = None) -> Operation:
        """A blind write of ``value`` to ``key``."""
        return cls(process, "write", key, invoked_at, completed_at, outcome, value=value, id=id)

    @classmethod
    def cas(cls, process: Hashable, key: Hashable, expected: Any, new: Any, invoked_at: float,
            completed_at: float | None, outcome: Outcome = "ok", *, id: Hashable | None = None) -> Operation:
        """A compare-and-set of ``key`` from ``expected`` to ``new``."""
        return cls(process, "cas", key, invoked_at, completed_at, outcome, expected=expected, new=new, id=id)

    def to_dict(self) -> dict[str, Any]:
        """The operation as JSON-friendly data, for reports."""
        out: dict[str, Any] = {
            "process": self.process,
            "type": self.type,
            "key": self.key,
            "invoked_at": self.invoked_at,
            "completed_at": self.completed_at,
            "outcome": self.outcome,
        }
        if self.type == "cas":
            out["expected"] = self.expected
            out["new"] = self.new
        else:
            out["value"] = self.value
        if self.id is not None:
            out["id"] = self.id
        return out

    def describe(self) -> str:
        """One line for a violation message, e.g. ``p3 read k -> 'a' [1.5, 2.0] ok``."""
        if self.type == "read":
            what = f"read {self.key!r} -> {self.value!r}"
        elif self.type == "write":
            what = f"write {self.key!r} := {self.value!r}"
        else:
            what = f"cas {self.key!r} {self.expected!r} -> {self.new!r}"
        end = "inf" if self.completed_at is None or self.outcome == "unknown" else repr(self.completed_at)
        return f"{self.process} {what} [{self.invoked_at!r}, {end}] {self.outcome}"


@attrs.frozen
class PendingOperation:
    """An invocation the builder is waiting to hear back about."""

    index: int
    process: Hashable
    type: OperationType
    key: Hashable
    invoked_at: float
    value: Any = None
    expected: Any = None
    new: Any = None
    id: Hashable | None = None


class HistoryBuilder:
    """Records invocations and completions as a workload makes them; ``history()`` returns the result.

    Invocations never completed count as ``unknown``: the request may still have landed.
    """

    def __init__(self) -> None:
        self._slots: list[Operation | None] = []
        self._pending: dict[int, PendingOperation] = {}

    def invoke(self, process: Hashable, type: OperationType, key: Hashable, *, at: float, value: Any = None,
               expected: Any = None, new: Any = None, id: Hashable | None = None) -> PendingOperation:
        """Record that ``process`` sent a request at ``at``."""
        if type not in _TYPES:
            raise ValueError(f"unknown operation type {type!r}")
        pending = PendingOperation(len(self._slots), process, type, key, at, value, expected, new, id)
        self._slots.append(None)
        self._pending[pending.index] = pending
        return pending

    def complete(self, pending: PendingOperation, outcome: Outcome, *, at: float | None, value: Any = None) -> Operation:
        """Record the answer to ``pending``; for a read, ``value`` is what it observed."""
        if self._pending.pop(pending.index, None) is None:
            raise ValueError(f"operation {pending.index} was already completed")
        observed = value if pending.type == "read" else pending.value
        op = Operation(pending.process, pending.type, pending.key, pending.invoked_at, at, outcome,
                       value=observed, expected=pending.expected, new=pending.new, id=pending.id)
        self._slots[pending.index] = op
        return op

    def history(self) -> list[Operation]:
        """Every operation in invocation order; ones still pending are ``unknown``."""
        out: list[Operation] = []
        for index, slot in enumerate(self._slots):
            if slot is None:
                p = self._pending[index]
                slot = Operation(p.process, p.type, p.key, p.invoked_at, None, "unknown",
                                 value=None if p.type == "read" else p.value, expected=p.expected, new=p.new, id=p.id)
            out.append(slot)
        return out


def by_key(history: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
    """The history split per key, each part in the original order."""
    parts: dict[Hashable, list[Operation]] = {}
    for op in history:
        parts.setdefault(op.key, []).append(op)
    return parts


class WriteRecord(Protocol):
    """What the write workload records (``simulations.writers.WriteResult`` fits)."""

    name: str
    command_id: str
    outcome: str  # acked | failed | unknown
    started: float
    finished: float


@attrs.frozen
class WriteOutcomes:
    """The ids of the write workload's writes, by outcome."""

    acked: frozenset[Hashable]
    failed: frozenset[Hashable]
    unknown: frozenset[Hashable]


_WRITE_OUTCOMES = {"acked": "acked", "failed": "failed", "unknown": "unknown"}


def write_outcomes(results: Iterable[WriteRecord], *, id_attr: str = "name") -> WriteOutcomes:
    """Split the write workload's results into acked / failed / unknown ids (by ``name`` by default)."""
    sets: dict[str, set[Hashable]] = {"acked": set(), "failed": set(), "unknown": set()}
    for r in results:
        if r.outcome not in _WRITE_OUTCOMES:
            raise ValueError(f"unknown write outcome {r.outcome!r}")
        sets[r.outcome].add(getattr(r, id_attr))
    return WriteOutcomes(frozenset(sets["acked"]), frozenset(sets["failed"]), frozenset(sets["unknown"]))


def write_samples(results: Iterable[WriteRecord], *, started_after: float | None = None) -> list[tuple[float, bool]]:
    """``(finished, acked)`` per write, in time order: the input of the availability checkers.

    ``started_after`` keeps only writes sent after that time, so a request already in flight
    when a fault hit does not count as proof of recovery.
    """
    return sorted(
        (r.finished, r.outcome == "acked")
        for r in results
        if started_after is None or r.started > started_after
    )
