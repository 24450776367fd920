"""Pure verdicts over what a chaos run recorded: no I/O, no clock, histories are data.

- :func:`check_acknowledged`: every acknowledged write is on every node exactly once, failed ones
  nowhere, unknown ones at most once (and on all nodes or none).
- :func:`check_log_prefixes` / :func:`check_logs_identical`: the nodes' logs agree where they
  overlap during a run, and are equal after heal.
- :func:`check_sampled_prefixes`: the same during the run, from log tails sampled while faults fire.
- :func:`check_linearizable`: a Wing–Gong–Lowe search per register key.
- :func:`failover_gaps`, :func:`recovery_times`, :func:`availability`, :func:`check_bound`:
  data-plane gaps and write recovery after each fault.
- :func:`fault_window`, :func:`check_gaps`, :func:`check_no_failures`:
  per data-plane fault, the longest stretch without a successful new connection, the time to
  recover, failures once recovered; the pass criteria over them.

Every checker returns a :class:`CheckResult`; its ``to_dict()`` is what the JSON report holds.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any, TypeVar

import attrs

from simulations.chaos.history import Operation, by_key

__all__ = [
    "CheckResult",
    "Violation",
    "WindowStats",
    "availability",
    "check_acknowledged",
    "check_bound",
    "check_gaps",
    "check_no_failures",
    "fault_window",
    "check_linearizable",
    "check_log_prefixes",
    "check_logs_identical",
    "check_sampled_prefixes",
    "failover_gaps",
    "recovery_times",
]

DEFAULT_MAX_STEPS = 1_000_000
"""Search steps per key before :func:`check_linearizable` gives up (about a second of CPU)."""

_MAX_LISTED = 50

Node = TypeVar("Node", bound=Hashable)


# -- results ----------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Operation):
        return _jsonable(value.to_dict())
    return repr(value)


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


def _as_violations(value: Iterable[Violation]) -> tuple[Violation, ...]:
    return tuple(value)


def _no_reserved_keys(instance: Violation, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    if "kind" in value or "message" in value:
        raise ValueError("violation data may not use the keys 'kind' or 'message'")


@attrs.frozen
class Violation:
    """One broken rule: a ``kind`` tag, a sentence for people, and the ids / nodes involved."""

    kind: str
    message: str
    data: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict, validator=_no_reserved_keys, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, **_jsonable(self.data)}


@attrs.frozen
class CheckResult:
    """A checker's verdict. ``inconclusive`` (the check gave up) is never ``ok``."""

    name: str
    ok: bool
    violations: tuple[Violation, ...] = attrs.field(default=(), converter=_as_violations)
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict, hash=False)
    inconclusive: bool = False

    def __attrs_post_init__(self) -> None:
        if self.ok and (self.violations or self.inconclusive):
            raise ValueError("a result with violations or that gave up is not ok")

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``unknown`` (gave up without finding a violation)."""
        if self.ok:
            return "pass"
        return "unknown" if self.inconclusive and not self.violations else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "verdict": self.verdict,
            "violations": [v.to_dict() for v in self.violations],
            "details": _jsonable(self.details),
        }

    @classmethod
    def of(cls, name: str, violations: Iterable[Violation], details: Mapping[str, Any] | None = None,
           *, inconclusive: bool = False) -> CheckResult:
        """A result that is ok exactly when there is no violation and the check finished."""
        vs = tuple(violations)
        return cls(name, not vs and not inconclusive, vs, dict(details or {}), inconclusive)


def _sorted_ids(ids: Iterable[Any]) -> list[Any]:
    return sorted(ids, key=lambda x: (type(x).__name__, repr(x)))


# -- acknowledged writes ----------------------------------------------------------------------------


def check_acknowledged(
    acked: Collection[Hashable],
    failed: Collection[Hashable],
    unknown: Collection[Hashable],
    present_by_node: Mapping[Node, Iterable[Hashable]],
    *,
    ignore_unexpected: bool = False,
    name: str = "acknowledged_writes",
) -> CheckResult:
    """Each node's list of the workload's ids, judged against what the clients were told.

    Run it after heal and catch-up: a node that is merely behind shows up as ``lost``.
    Violation kinds: ``lost`` (acked, missing on some nodes), ``duplicated`` (present more than
    once on a node), ``failed_present`` (a refused write landed), ``divergent`` (an unknown write
    on some nodes only), ``unexpected`` (an id the workload never wrote; off with
    ``ignore_unexpected`` when the lists hold other objects too).
    """
    acked_s, failed_s, unknown_s = set(acked), set(failed), set(unknown)
    for a_name, a, b_name, b in (("acked", acked_s, "failed", failed_s), ("acked", acked_s, "unknown", unknown_s),
                                 ("failed", failed_s, "unknown", unknown_s)):
        both = a & b
        if both:
            raise ValueError(f"ids both {a_name} and {b_name}: {_sorted_ids(both)[:5]}")
    nodes = sorted(present_by_node, key=repr)
    details: dict[str, Any] = {"acked": len(acked_s), "failed": len(failed_s), "unknown": len(unknown_s), "nodes": nodes}
    if not nodes:
        return CheckResult.of(name, [], details, inconclusive=True)
    counts = {node: Counter(present_by_node[node]) for node in nodes}
    violations: list[Violation] = []

    for wid in _sorted_ids(acked_s):
        missing = [n for n in nodes if counts[n][wid] == 0]
        if missing:
            violations.append(Violation("lost", f"acknowledged write {wid!r} is missing on {missing}",
                                        {"id": wid, "nodes": missing}))
    for wid in _sorted_ids(failed_s):
        present = [n for n in nodes if counts[n][wid] > 0]
        if present:
            violations.append(Violation("failed_present", f"failed write {wid!r} is present on {present}",
                                        {"id": wid, "nodes": present}))
    unknown_applied = 0
    for wid in _sorted_ids(unknown_s):
        present = [n for n in nodes if counts[n][wid] > 0]
        if present and len(present) < len(nodes):
            violations.append(Violation("divergent", f"unknown write {wid!r} is on {present} only",
                                        {"id": wid, "nodes": present}))
        elif present:
            unknown_applied += 1
    for wid in _sorted_ids(acked_s | unknown_s):
        twice = {n: counts[n][wid] for n in nodes if counts[n][wid] > 1}
        if twice:
            violations.append(Violation("duplicated", f"write {wid!r} is present more than once: {twice}",
                                        {"id": wid, "counts": twice}))
    if not ignore_unexpected:
        known = acked_s | failed_s | unknown_s
        strays: dict[Hashable, list[Hashable]] = {}
        for n in nodes:
            for wid in counts[n]:
                if wid not in known:
                    strays.setdefault(wid, []).append(n)
        for wid in _sorted_ids(strays):
            violations.append(Violation("unexpected", f"{wid!r} on {strays[wid]} was never written by the workload",
                                        {"id": wid, "nodes": strays[wid]}))
    details["unknown_applied"] = unknown_applied
    details["by_kind"] = dict(Counter(v.kind for v in violations))
    return CheckResult.of(name, violations, details)


# -- logs -------------------------------------------------------------------------------------------


def _first_difference(start_a: int, log_a: Sequence[Any], start_b: int, log_b: Sequence[Any]) -> int | None:
    lo = max(start_a, start_b)
    hi = min(start_a + len(log_a), start_b + len(log_b))
    if lo >= hi:
        return None
    a = log_a[lo - start_a:hi - start_a]
    b = log_b[lo - start_b:hi - start_b]
    if list(a) == list(b):
        return None
    for offset, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return lo + offset
    return None  # pragma: no cover - unequal slices of equal length differ somewhere


def _short(entry: Any, limit: int = 120) -> str:
    text = repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_log_prefixes(
    logs_by_node: Mapping[Node, Sequence[Any]],
    *,
    first_index_by_node: Mapping[Node, int] | None = None,
    name: str = "log_prefixes",
) -> CheckResult:
    """Every two nodes' logs agree wherever both have an entry, so each is a prefix of the longest.

    Entries are compared with ``==`` (bytes, tuples of revision and command id, ...). A node
    whose log was compacted gives the index of its first entry in ``first_index_by_node``
    (default 0); entries before it are not compared.
    """
    starts = {n: (first_index_by_node or {}).get(n, 0) for n in logs_by_node}
    nodes = sorted(logs_by_node, key=repr)
    ends = {n: starts[n] + len(logs_by_node[n]) for n in nodes}
    violations: list[Violation] = []
    for a, b in combinations(nodes, 2):
        index = _first_difference(starts[a], logs_by_node[a], starts[b], logs_by_node[b])
        if index is not None:
            ea = logs_by_node[a][index - starts[a]]
            eb = logs_by_node[b][index - starts[b]]
            violations.append(Violation(
                "divergent", f"logs of {a!r} and {b!r} differ at index {index}: {_short(ea)} != {_short(eb)}",
                {"nodes": [a, b], "index": index, "entries": [_short(ea), _short(eb)]}))
    longest = max(nodes, key=lambda n: ends[n]) if nodes else None
    details = {"nodes": nodes, "ends": ends, "longest": longest}
    return CheckResult.of(name, violations, details)


def check_logs_identical(
    logs_by_node: Mapping[Node, Sequence[Any]],
    *,
    first_index_by_node: Mapping[Node, int] | None = None,
    name: str = "logs_identical",
) -> CheckResult:
    """After heal: the logs agree (as :func:`check_log_prefixes`) and every node has the last entry."""
    prefixes = check_log_prefixes(logs_by_node, first_index_by_node=first_index_by_node, name=name)
    ends: dict[Node, int] = prefixes.details["ends"]
    violations = list(prefixes.violations)
    if ends:
        top = max(ends.values())
        for node in prefixes.details["nodes"]:
            if ends[node] < top:
                violations.append(Violation("behind", f"log of {node!r} ends at {ends[node]}, others at {top}",
                                            {"node": node, "end": ends[node], "expected_end": top}))
    return CheckResult.of(name, violations, prefixes.details)


def check_sampled_prefixes(
    samples: Iterable[tuple[float, Node, Sequence[Sequence[Any]]]],
    *,
    name: str = "log_prefixes_during_run",
) -> CheckResult:
    """Logs sampled during a run are prefixes of each other: every node holds the same record at every
    revision two nodes both hold.

    A sample is ``(at, node, records)``: the records ``node`` returned at time ``at`` that it had not
    returned before (its new log tail), each ``[raft_index, first_revision, count, payload]``. Samples
    are folded in the order given; a record is compared with the first record any node returned at
    its ``first_revision`` (the same as comparing every pair, as equality is transitive). A record
    that differs is a ``divergent`` violation naming the revision and both nodes (the same node twice:
    it returned two different records at one revision, its own log was rewritten).
    """
    first: dict[int, tuple[Node, tuple[Any, ...]]] = {}
    violations: list[Violation] = []
    total = 0
    rounds: set[float] = set()
    nodes: set[Node] = set()
    records_by_node: Counter[Node] = Counter()
    compared = 0
    for at, node, records in samples:
        rounds.add(at)
        nodes.add(node)
        for record in records:
            total += 1
            records_by_node[node] += 1
            entry = tuple(record)
            revision = int(entry[1])
            seen = first.get(revision)
            if seen is None:
                first[revision] = (node, entry)
                continue
            compared += 1
            if seen[1] != entry:
                violations.append(Violation(
                    "divergent", f"at revision {revision} {seen[0]!r} holds {_short(seen[1])} and {node!r} {_short(entry)} "
                    f"(sampled at {at:.3f})", {"revision": revision, "nodes": [seen[0], node], "at": round(at, 3)}))
    details = {"samples": len(rounds), "nodes": _sorted_ids(nodes), "records": total,
               "records_by_node": {repr(n) if not isinstance(n, str) else n: c for n, c in records_by_node.items()},
               "compared": compared, "revisions": len(first), "violations_total": len(violations)}
    return CheckResult.of(name, violations[:_MAX_LISTED], details, inconclusive=not compared and not violations)


# -- linearizability --------------------------------------------------------------------------------

_READ, _WRITE, _CAS = 0, 1, 2
_ARRIVE, _SCAN_OK, _SCAN_UNKNOWN, _BACKTRACK = 0, 1, 2, 3
_KINDS = {"read": _READ, "write": _WRITE, "cas": _CAS}


@attrs.frozen
class _KeyVerdict:
    ok: bool | None  # None: gave up
    steps: int
    configurations: int
    checked: int
    dropped: Mapping[str, int]
    failing: Operation | None = None
    states: tuple[Any, ...] = ()
    reason: str = "search"  # or "impossible": observed a value never written


def _relevant(ops: Sequence[Operation]) -> tuple[list[Operation], dict[str, int]]:
    """The ops that constrain the search; the others cannot change the verdict.

    A failed op took no effect and an unknown read told nothing. An unknown write (or cas) of a
    value no op ever observes can be dropped: in any linearization that includes it, only blind
    writes can follow it before the next state change, so leaving it out is a linearization too.
    """
    observed: set[Any] = set()
    for op in ops:
        if op.type == "read" and op.outcome == "ok":
            observed.add(op.value)
        elif op.type == "cas" and op.outcome != "fail":
            observed.add(op.expected)
    kept: list[Operation] = []
    dropped = {"failed": 0, "unknown_reads": 0, "unobserved_unknown_writes": 0}
    for op in ops:
        if op.outcome == "fail":
            dropped["failed"] += 1
        elif op.outcome == "unknown" and op.type == "read":
            dropped["unknown_reads"] += 1
        elif op.outcome == "unknown" and (op.value if op.type == "write" else op.new) not in observed:
            dropped["unobserved_unknown_writes"] += 1
        else:
            kept.append(op)
    return kept, dropped


def _impossible_observation(ops: Sequence[Operation], initial: Any) -> Operation | None:
    """The first ok op (by completion) that observed a value nothing could have written by then."""
    first_written: dict[Any, float] = {}
    for op in ops:
        if op.type != "read":
            v = op.value if op.type == "write" else op.new
            first_written[v] = min(first_written.get(v, math.inf), op.invoked_at)
    for op in sorted(ops, key=lambda op: op.completed_at if op.completed_at is not None else math.inf):
        if op.outcome != "ok" or op.type == "write":
            continue
        seen = op.value if op.type == "read" else op.expected
        if seen != initial and not first_written.get(seen, math.inf) <= (op.completed_at or 0.0):
            return op
    return None


def _check_register(ops: Sequence[Operation], initial: Any, max_steps: int) -> _KeyVerdict:
    """Lowe's just-in-time WGL search over one key's register history.

    Calls and returns of the ok ops form a doubly linked list in time order (calls first at equal
    times, so touching intervals count as concurrent). The candidates of a configuration are the
    calls before the first return left in the list. Linearizing a candidate lifts its two entries
    out of the list; reaching the first return without a way on undoes the last choice. The
    search succeeds when the list is empty. On top of that:

    - configurations are cached as (ok ops in, value) -> (unknown ops in, needy): one is skipped
      if one with the same ok ops and value and a subset of its unknown ops was explored, since
      fewer unknown ops used up leaves at least the same futures (for plain histories this is
      Lowe's exact cache);
    - a candidate read whose value holds is taken without trying alternatives (moving a read to
      a point where it is a candidate and its value holds keeps a linearization valid);
    - unknown ops have no return: they are tried after the ok candidates, never needed, only
      right before an op that observes their value (``needy``), and equal ones in call order.
    """
    kept, dropped = _relevant(ops)
    n = len(kept)
    impossible = _impossible_observation(kept, initial)
    if impossible is not None:
        return _KeyVerdict(False, 0, 0, n, dropped, impossible, (), "impossible")
    kinds = [_KINDS[op.type] for op in kept]
    arg_a = [op.expected if op.type == "cas" else op.value for op in kept]
    arg_b = [op.new for op in kept]
    is_unknown = [op.outcome == "unknown" for op in kept]
    # Ok ops and unknown ops are numbered apart, each into its own bitmask.
    bits = [0] * n
    counts = [0, 0]
    for i in range(n):
        bits[i] = 1 << counts[is_unknown[i]]
        counts[is_unknown[i]] += 1
    # Unknown ops with the same effect are interchangeable once invoked, so they are linearized
    # in invocation order only: ``gate[i]`` is the bit of the previous one, which must be in first.
    gate = [0] * n
    last_of_class: dict[tuple[Any, ...], int] = {}
    for i in sorted(range(n), key=lambda i: kept[i].invoked_at):
        op = kept[i]
        if is_unknown[i]:
            cls = (op.type, op.value) if op.type == "write" else (op.type, op.expected, op.new)
            if cls in last_of_class:
                gate[i] = bits[last_of_class[cls]]
            last_of_class[cls] = i

    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(kept):
        events.append((op.invoked_at, 0, i))
        if op.outcome == "ok":
            assert op.completed_at is not None
            events.append((op.completed_at, 1, i))
    events.sort()
    m = len(events)
    head, tail = m, m + 1
    is_call = [kind == 0 for _, kind, _ in events]
    op_of = [i for _, _, i in events]
    node_of_return = {i: j for j, (_, kind, i) in enumerate(events) if kind == 1}
    match = [node_of_return.get(op_of[j], -1) if is_call[j] else -1 for j in range(m)]
    # The list holds the ok ops' entries (nodes are positions in time order; head and tail are
    # sentinels). Unknown ops stay out of it: they are tried after the ok candidates, in call order.
    listed = [j for j in range(m) if not is_unknown[op_of[j]]]
    nxt = [tail] * (m + 2)
    prv = [head] * (m + 2)
    for a, b in zip([head] + listed, listed + [tail], strict=False):
        nxt[a], prv[b] = b, a
    unknown_calls = [j for j in range(m) if is_unknown[op_of[j]]]

    # (ok bitmask, value) -> the (unknown bitmask, needy) configurations explored from there.
    cache: dict[tuple[int, Any], list[tuple[int, bool]]] = {}
    configurations = 0
    # Per choice: the node, where the unknown scan was, and what to restore.
    stack: list[tuple[int, int, Any, bool, int, bool]] = []
    lin_ok = lin_unknown = 0
    state = initial
    # An unknown op is only worth linearizing right before an op that observes what it wrote (a
    # read of its value, a cas from it); ``needy`` forbids a blind write next. Any linearization
    # can be reduced to one of that shape by dropping unknown ops, which is always allowed.
    needy = False
    mode = _ARRIVE
    entry = head
    k = 0  # next index into unknown_calls in _SCAN_UNKNOWN
    first_return = tail  # the return that ends the current candidates
    steps = 0
    best_node = -1
    best_states: list[Any] = []

    def verdict(ok: bool | None) -> _KeyVerdict:
        failing = kept[op_of[best_node]] if ok is False and best_node >= 0 else None
        return _KeyVerdict(ok, steps, configurations, n, dropped, failing, tuple(best_states))

    while True:
        steps += 1
        if steps > max_steps:
            return verdict(None)
        forced = False
        if mode == _ARRIVE:
            # A read the register allows now can be linearized now without loss: moving a read
            # earlier, to a point where it is a candidate and its value holds, keeps any
            # linearization valid. So it is taken without trying the alternatives.
            node = nxt[head]
            if node == tail:
                return verdict(True)
            while is_call[node] and not (kinds[op_of[node]] == _READ and arg_a[op_of[node]] == state):
                node = nxt[node]
            if is_call[node]:
                forced = True
            else:
                first_return = node
                if node > best_node:
                    best_node, best_states = node, []
                if node == best_node and len(best_states) < 8 and state not in best_states:
                    best_states.append(state)
                mode, entry = _SCAN_OK, nxt[head]
                continue
        elif mode == _SCAN_OK:
            if not is_call[entry]:
                mode, k = _SCAN_UNKNOWN, 0
                continue
            node = entry
            entry = nxt[entry]
        elif mode == _SCAN_UNKNOWN:
            while k < len(unknown_calls) and lin_unknown & bits[op_of[unknown_calls[k]]]:
                k += 1
            if k < len(unknown_calls) and unknown_calls[k] < first_return:
                node = unknown_calls[k]
                k += 1
            else:
                mode = _BACKTRACK
                continue
        else:
            if not stack:
                return verdict(False)
            node, k, state, needy, first_return, was_forced = stack.pop()
            i = op_of[node]
            if is_unknown[i]:
                lin_unknown ^= bits[i]
                mode = _SCAN_UNKNOWN
            else:
                lin_ok ^= bits[i]
                r = match[node]
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                nxt[prv[node]] = node
                prv[nxt[node]] = node
                mode, entry = _SCAN_OK, nxt[node]
            if was_forced:
                mode = _BACKTRACK
            continue

        i = op_of[node]
        kind = kinds[i]
        if kind == _READ:
            allowed, new_state = state == arg_a[i], state
        elif kind == _WRITE:
            allowed, new_state = not needy, arg_a[i]
        else:
            allowed, new_state = state == arg_a[i], arg_b[i]
        if not allowed or lin_unknown & gate[i] != gate[i]:
            continue
        unknown = is_unknown[i]
        if unknown:
            new_ok, new_unknown = lin_ok, lin_unknown | bits[i]
        else:
            new_ok, new_unknown = lin_ok | bits[i], lin_unknown
        seen = cache.get((new_ok, new_state))
        if seen is None:
            cache[(new_ok, new_state)] = [(new_unknown, unknown)]
        elif any(u & new_unknown == u and (unknown or not nd) for u, nd in seen):
            if forced:
                mode = _BACKTRACK
            continue
        else:
            seen[:] = [(u, nd) for u, nd in seen if not (u & new_unknown == new_unknown and (nd or not unknown))]
            seen.append((new_unknown, unknown))
        configurations += 1
        stack.append((node, k, state, needy, first_return, forced))
        lin_ok, lin_unknown, state, needy = new_ok, new_unknown, new_state, unknown
        if not unknown:
            # Lift the call, then its return; unlifting restores them in reverse.
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]
            r = match[node]
            nxt[prv[r]] = nxt[r]
            prv[nxt[r]] = prv[r]
        mode = _ARRIVE


def _context(ops: Sequence[Operation], failing: Operation, limit: int = 12) -> list[str]:
    """The ops around ``failing``: the last few that completed before it began, and those overlapping it."""
    end = failing.completed_at if failing.completed_at is not None else math.inf
    before = sorted((op for op in ops if op.outcome == "ok" and op.completed_at is not None
                     and op.completed_at < failing.invoked_at), key=lambda op: op.completed_at or 0.0)[-3:]
    overlapping = [op for op in ops if op.invoked_at <= end and op.outcome != "fail"
                   and (op.outcome == "unknown" or (op.completed_at or 0.0) >= failing.invoked_at)]
    return [op.describe() for op in (before + overlapping)[:limit]]


def check_linearizable(
    history: Iterable[Operation],
    *,
    initial: Any = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    name: str = "linearizable",
) -> CheckResult:
    """Whether the history is linearizable as one read/write/cas register per key.

    Keys are checked independently (linearizability is compositional). ``initial`` is the value
    a read of a key that was never written returns. Values must be hashable. A key whose search
    takes more than ``max_steps`` steps is reported as given up: the result is then inconclusive
    (verdict ``unknown``) unless another key has a violation.
    """
    parts = by_key(history)
    violations: list[Violation] = []
    gave_up: list[Hashable] = []
    totals = Counter({"ops": 0, "checked": 0, "steps": 0, "configurations": 0,
                      "failed": 0, "unknown_reads": 0, "unobserved_unknown_writes": 0})
    for key in sorted(parts, key=repr):
        ops = parts[key]
        result = _check_register(ops, initial, max_steps)
        totals["ops"] += len(ops)
        totals["checked"] += result.checked
        totals["steps"] += result.steps
        totals["configurations"] += result.configurations
        totals.update(result.dropped)
        if result.ok is None:
            gave_up.append(key)
        elif result.ok is False:
            failing = result.failing
            assert failing is not None
            states = list(result.states)
            if result.reason == "impossible":
                why = "observed a value no write or cas could have produced by then"
            else:
                why = f"the register could only hold one of {states!r} there"
            violations.append(Violation(
                "not_linearizable",
                f"key {key!r}: no linearization gets past {failing.describe()}; {why}",
                {"key": key, "op": failing, "possible_values": states, "context": _context(ops, failing)}))
    details: dict[str, Any] = {"keys": len(parts), **totals, "max_steps": max_steps, "gave_up": gave_up[:_MAX_LISTED]}
    return CheckResult.of(name, violations, details, inconclusive=bool(gave_up))


# -- availability -----------------------------------------------------------------------------------


def _success_times(successes: Iterable[tuple[float, bool]]) -> list[float]:
    return sorted(t for t, ok in successes if ok)


def failover_gaps(successes: Iterable[tuple[float, bool]], fault_times: Iterable[float]) -> list[float]:
    """Per fault, how long no request succeeded around it, in the order of ``fault_times``.

    ``successes`` are ``(time, succeeded)`` samples (each new connection to a VIP, or each write).
    A fault's gap runs from the last success at or before it (or the fault itself, if none) to the
    first success after it; ``inf`` if nothing succeeded after it.
    """
    times = _success_times(successes)
    gaps: list[float] = []
    for fault in fault_times:
        before = bisect.bisect_right(times, fault)
        start = times[before - 1] if before else fault
        gaps.append(times[before] - start if before < len(times) else math.inf)
    return gaps


def recovery_times(successes: Iterable[tuple[float, bool]], fault_times: Iterable[float]) -> list[float]:
    """Per fault, seconds from the fault to the first success after it (``inf`` if none).

    For writes, build the samples with ``history.write_samples`` (stamped when the ack arrived).
    """
    times = _success_times(successes)
    out: list[float] = []
    for fault in fault_times:
        after = bisect.bisect_right(times, fault)
        out.append(times[after] - fault if after < len(times) else math.inf)
    return out


def availability(successes: Iterable[tuple[float, bool]]) -> float:
    """The fraction of samples that succeeded (1.0 for no samples)."""
    samples = list(successes)
    return sum(1 for _, ok in samples if ok) / len(samples) if samples else 1.0


def check_bound(name: str, values: Sequence[float], limit: float, *, what: str = "value") -> CheckResult:
    """Every value is at most ``limit`` (a scenario's pass criterion for gaps or recovery times)."""
    violations = [Violation("over_limit", f"{what} #{i} is {v:.3f}, over the limit of {limit:.3f}",
                            {"index": i, "value": v, "limit": limit})
                  for i, v in enumerate(values) if not v <= limit]
    details = {"count": len(values), "limit": limit, "worst": max(values) if values else None, "values": list(values)}
    return CheckResult.of(name, violations, details)


# -- data plane -------------------------------------------------------------------------------------

Request = tuple[float, float, bool]
"""One data-plane request: (started, ended, succeeded)."""


@attrs.frozen
class WindowStats:
    """What the new-connection probes show about one fault, within ``[fault, until)``.

    - ``gap``: the longest time without a successful request, from the last success at or
      before the fault through every success in the window (by end time); ``inf`` when nothing
      succeeded in the window.
    - ``recovery``: from the fault to the end of the first successful request *started* after it
      (``inf`` if none): the VIP is served again.
    - ``failures_after_recovery``: failed requests started at or after that moment and ended
      before ``until`` (one still in flight when the next fault hits is that fault's casualty:
      a connection the dying SE had accepted may fail).
    - ``failed`` / ``requests``: every request started in the window.
    """

    gap: float
    recovery: float
    failures_after_recovery: int
    failed: int
    requests: int

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(attrs.asdict(self))  # type: ignore[no-any-return]


def fault_window(requests: Iterable[Request], fault: float, until: float) -> WindowStats:
    """The :class:`WindowStats` of one fault (requests of one kind: new connections)."""
    reqs = sorted(requests, key=lambda r: r[1])
    in_window = [r for r in reqs if fault <= r[0] < until]
    ok_ends = [end for _start, end, ok in reqs if ok]
    before = [e for e in ok_ends if e <= fault]
    after = [e for e in ok_ends if fault < e <= until]
    if after:
        window = [before[-1] if before else fault, *after]
        gap = max(b - a for a, b in zip(window, window[1:], strict=False))
    else:
        gap = math.inf
    first = min((end for start, end, ok in in_window if ok), default=None)
    recovery = math.inf if first is None else first - fault
    after_recovery = 0 if first is None else sum(1 for start, end, ok in in_window if not ok and start >= first and end < until)
    return WindowStats(gap, recovery, after_recovery, sum(1 for r in in_window if not r[2]), len(in_window))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def check_gaps(values: Sequence[float], *, median_limit: float | None = None, worst_limit: float | None = None,
               name: str = "failover_gaps") -> CheckResult:
    """The data-plane gap of each fault: median at most ``median_limit``, each at most ``worst_limit``.

    No fault at all is inconclusive (nothing was measured).
    """
    violations: list[Violation] = []
    median = _median(values)
    if median_limit is not None and values and not median <= median_limit:
        violations.append(Violation("median_over_limit", f"median gap {median:.3f} s is over {median_limit:.3f} s",
                                    {"value": median, "limit": median_limit}))
    if worst_limit is not None:
        violations.extend(Violation("over_limit", f"gap #{i} is {v:.3f} s, over the limit of {worst_limit:.3f} s",
                                    {"index": i, "value": v, "limit": worst_limit})
                          for i, v in enumerate(values) if not v <= worst_limit)
    details = {"count": len(values), "median": median if values else None, "worst": max(values) if values else None,
               "median_limit": median_limit, "worst_limit": worst_limit, "values": list(values)}
    return CheckResult.of(name, violations, details, inconclusive=not values)


def check_no_failures(name: str, failures: Sequence[Mapping[str, Any]], *, what: str = "request",
                      details: Mapping[str, Any] | None = None) -> CheckResult:
    """Every item of ``failures`` (one per failed request, with its times and error) is a violation."""
    violations = [Violation("failed", f"{what} failed: {_short(dict(f), 160)}", {k: v for k, v in f.items() if k not in ("kind", "message")})
                  for f in failures[:_MAX_LISTED]]
    return CheckResult.of(name, violations, {"failed": len(failures), **(details or {})})

