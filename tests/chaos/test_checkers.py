"""The chaos checkers: each one passes what is correct and catches a planted fault.

The linearizability checker is also compared with an exhaustive reference search on small random
histories, and fed executions of a real sequential register with random concurrent timing.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulations.chaos.checkers import (
    CheckResult,
    Violation,
    availability,
    check_acknowledged,
    check_bound,
    check_linearizable,
    check_log_prefixes,
    check_logs_identical,
    check_sampled_prefixes,
    failover_gaps,
    recovery_times,
)
from simulations.chaos.history import HistoryBuilder, Operation, by_key, write_outcomes, write_samples
from simulations.writers import WriteResult

R, W, CAS = Operation.read, Operation.write, Operation.cas


def kinds(result: CheckResult) -> list[str]:
    return [v.kind for v in result.violations]


# -- history ----------------------------------------------------------------------------------------


def test_ok_operation_needs_a_completion() -> None:
    """Only an unknown outcome may lack a completion time."""
    with pytest.raises(ValueError, match="needs completed_at"):
        W("p", "k", 1, 0.0, None, "ok")
    assert W("p", "k", 1, 0.0, None, "unknown").completed_at is None


def test_completion_before_invocation_is_refused() -> None:
    """An operation cannot complete before it was invoked."""
    with pytest.raises(ValueError, match="before invoked_at"):
        R("p", "k", 1, 2.0, 1.0)


def test_builder_turns_pending_invocations_into_unknown_ones() -> None:
    """What never got an answer is recorded as unknown, in invocation order."""
    b = HistoryBuilder()
    w = b.invoke("a", "write", "k", at=1.0, value="x")
    r = b.invoke("b", "read", "k", at=2.0)
    b.complete(r, "ok", at=3.0, value=None)
    assert [
        Operation.write("a", "k", "x", 1.0, None, "unknown"),
        Operation.read("b", "k", None, 2.0, 3.0, "ok"),
    ] == b.history()
    with pytest.raises(ValueError, match="already completed"):
        b.complete(r, "ok", at=4.0)
    assert w.index == 0


def test_by_key_keeps_the_order_within_each_key() -> None:
    """Splitting by key keeps each key's operations in their original order."""
    h = [W(1, "a", 1, 0, 1), W(1, "b", 2, 1, 2), R(2, "a", 1, 2, 3)]
    assert {"a": [h[0], h[2]], "b": [h[1]]} == by_key(h)


def test_writer_results_split_into_outcomes_and_samples() -> None:
    """The write workload's results give the id sets and the (finished, acked) samples."""
    results = [
        WriteResult("w-1", "c1", "acked", 0.0, 1.0, 201, 5),
        WriteResult("w-2", "c2", "failed", 0.5, 2.0, 400),
        WriteResult("w-3", "c3", "unknown", 1.5, 9.0),
    ]
    outcomes = write_outcomes(results)
    assert (frozenset({"w-1"}), frozenset({"w-2"}), frozenset({"w-3"})) == (outcomes.acked, outcomes.failed, outcomes.unknown)
    assert frozenset({"c1"}) == write_outcomes(results, id_attr="command_id").acked
    assert [(1.0, True), (2.0, False), (9.0, False)] == write_samples(results)
    assert [(9.0, False)] == write_samples(results, started_after=1.0)


# -- acknowledged writes ----------------------------------------------------------------------------


def test_everything_in_its_place_passes() -> None:
    """Acked writes everywhere once, failed nowhere, an unknown one on every node: pass."""
    nodes = {n: ["a1", "a2", "u1"] for n in ("n1", "n2", "n3")}
    result = check_acknowledged({"a1", "a2"}, {"f1"}, {"u1", "u2"}, nodes)
    assert (True, "pass", []) == (result.ok, result.verdict, kinds(result))
    assert 1 == result.details["unknown_applied"]


def test_planted_duplicate_is_caught() -> None:
    """An acknowledged write applied twice on one node is a duplicate, with its id and count."""
    nodes = {"n1": ["a1", "a2"], "n2": ["a1", "a2", "a1"], "n3": ["a1", "a2"]}
    result = check_acknowledged({"a1", "a2"}, set(), set(), nodes)
    assert ["duplicated"] == kinds(result)
    assert {"kind": "duplicated", "id": "a1", "counts": {"n2": 2}} == {
        k: v for k, v in result.violations[0].to_dict().items() if k != "message"
    }


def test_planted_missing_ack_is_caught() -> None:
    """An acknowledged write missing from a node is lost, naming the id and the node."""
    nodes = {"n1": ["a1", "a2"], "n2": ["a1"], "n3": ["a1", "a2"]}
    result = check_acknowledged({"a1", "a2"}, set(), set(), nodes)
    assert [Violation("lost", "acknowledged write 'a2' is missing on ['n2']", {"id": "a2", "nodes": ["n2"]})] == list(
        result.violations
    )
    assert "fail" == result.verdict


def test_failed_write_that_landed_is_caught() -> None:
    """A write the client was told failed must be absent everywhere."""
    result = check_acknowledged(set(), {"f1"}, set(), {"n1": ["f1"], "n2": ["f1"]})
    assert ["failed_present"] == kinds(result)


def test_unknown_write_twice_or_on_some_nodes_is_caught() -> None:
    """An unknown write may land at most once, and then on every node."""
    twice = check_acknowledged(set(), set(), {"u1"}, {"n1": ["u1", "u1"], "n2": ["u1", "u1"]})
    partial = check_acknowledged(set(), set(), {"u1"}, {"n1": ["u1"], "n2": []})
    absent = check_acknowledged(set(), set(), {"u1"}, {"n1": [], "n2": []})
    assert (["duplicated"], ["divergent"], []) == (kinds(twice), kinds(partial), kinds(absent))


def test_ids_nobody_wrote_are_caught_unless_ignored() -> None:
    """A phantom id is a violation, unless the lists also hold objects of other workloads."""
    nodes = {"n1": ["a1", "other"], "n2": ["a1", "other"]}
    assert ["unexpected"] == kinds(check_acknowledged({"a1"}, set(), set(), nodes))
    assert check_acknowledged({"a1"}, set(), set(), nodes, ignore_unexpected=True).ok


def test_an_id_in_two_outcome_sets_is_refused() -> None:
    """The workload cannot have told a client both acked and failed."""
    with pytest.raises(ValueError, match="both acked and failed"):
        check_acknowledged({"x"}, {"x"}, set(), {"n1": []})


def test_no_nodes_is_inconclusive() -> None:
    """Without any node to look at, the check cannot pass."""
    result = check_acknowledged({"a1"}, set(), set(), {})
    assert (False, "unknown") == (result.ok, result.verdict)


def test_report_is_json() -> None:
    """A result's dict survives json.dumps, with tuples, bytes and infinities made plain."""
    result = check_acknowledged({1, 2}, set(), set(), {("n", 1): [1], ("n", 2): [1, 2, 2]})
    text = json.dumps(result.to_dict())
    assert {"lost", "duplicated"} == {v["kind"] for v in json.loads(text)["violations"]}
    assert '"inf"' in json.dumps(check_bound("gaps", [math.inf], 1.0).to_dict())
    assert ["b'hi'", "b'ho'"] == json.loads(json.dumps(check_log_prefixes({"a": [b"hi"], "b": [b"ho"]}).to_dict()))[
        "violations"][0]["entries"]


# -- logs -------------------------------------------------------------------------------------------


def test_lagging_logs_are_prefixes() -> None:
    """During a run a node may be behind; a prefix of the longest log is fine."""
    logs = {"n1": [b"a", b"b", b"c"], "n2": [b"a", b"b"], "n3": []}
    result = check_log_prefixes(logs)
    assert (True, "n1", {"n1": 3, "n2": 2, "n3": 0}) == (result.ok, result.details["longest"], result.details["ends"])


def test_divergent_logs_are_caught_at_the_first_difference() -> None:
    """Two logs that disagree are reported with the index of the first differing entry."""
    logs = {"n1": [(1, "c1"), (2, "c2"), (3, "c3")], "n2": [(1, "c1"), (2, "cX")], "n3": [(1, "c1")]}
    result = check_log_prefixes(logs)
    assert [("divergent", ["n1", "n2"], 1)] == [(v.kind, v.data["nodes"], v.data["index"]) for v in result.violations]


def test_compacted_logs_are_compared_where_they_overlap() -> None:
    """A log that starts later (after a snapshot) is compared from its first index on."""
    logs = {"n1": ["a", "b", "c", "d"], "n2": ["c", "d", "e"]}
    assert check_log_prefixes(logs, first_index_by_node={"n2": 2}).ok
    bad = check_log_prefixes({"n1": ["a", "b", "c"], "n2": ["x", "d"]}, first_index_by_node={"n2": 2})
    assert [2] == [v.data["index"] for v in bad.violations]


def test_identical_after_heal_requires_equal_length() -> None:
    """After heal a node that is still behind is reported; equal logs pass."""
    assert check_logs_identical({"n1": [b"a", b"b"], "n2": [b"a", b"b"]}).ok
    result = check_logs_identical({"n1": [b"a", b"b"], "n2": [b"a"]})
    assert [("behind", "n2", 1, 2)] == [(v.kind, v.data["node"], v.data["end"], v.data["expected_end"]) for v in result.violations]


@given(st.lists(st.binary(max_size=3), max_size=20), st.lists(st.integers(0, 20), min_size=1, max_size=4), st.data())
def test_prefixes_of_one_log_always_agree_and_a_changed_entry_never_does(log: list[bytes], cuts: list[int], data: st.DataObject) -> None:
    """Any prefixes of one log pass; changing one entry that another node also holds fails."""
    logs = {f"n{i}": log[:cut] for i, cut in enumerate(cuts)}
    logs["full"] = log
    assert check_log_prefixes(logs).ok
    assume(log)
    index = data.draw(st.integers(0, len(log) - 1))
    changed = list(log)
    changed[index] = changed[index] + b"!"
    assert not check_log_prefixes({"full": log, "bad": changed}).ok


def _rec(raft_index: int, revision: int, payload: bytes) -> list[Any]:
    return [raft_index, revision, 1, payload]


def test_sampled_tails_that_lag_agree() -> None:
    """Tails sampled at different moments, one node behind and catching up later, pass."""
    samples = [
        (1.0, "n1", [_rec(1, 1, b"a"), _rec(2, 2, b"b")]), (1.0, "n2", [_rec(1, 1, b"a")]), (1.0, "n3", []),
        (2.0, "n1", [_rec(3, 3, b"c")]), (2.0, "n2", [_rec(2, 2, b"b"), _rec(3, 3, b"c")]),
        (2.0, "n3", [_rec(1, 1, b"a"), _rec(2, 2, b"b")]),
    ]
    result = check_sampled_prefixes(samples)
    assert (True, 2, 8, 5) == (result.ok, result.details["samples"], result.details["records"], result.details["compared"])


def test_planted_divergence_in_a_sample_is_caught_with_revision_and_nodes() -> None:
    """A node that returns other bytes at a revision another node already returned fails the check."""
    samples = [
        (1.0, "n1", [_rec(1, 1, b"a"), _rec(2, 2, b"b")]),
        (1.0, "n2", [_rec(1, 1, b"a")]),
        (2.0, "n2", [_rec(2, 2, b"B")]),  # planted: n2 holds other bytes at revision 2
        (2.0, "n3", [_rec(1, 1, b"a"), _rec(2, 2, b"b")]),
    ]
    result = check_sampled_prefixes(samples)
    assert [("divergent", 2, ["n1", "n2"], 2.0)] == [
        (v.kind, v.data["revision"], v.data["nodes"], v.data["at"]) for v in result.violations]
    assert "fail" == result.verdict


def test_sampled_record_that_differs_only_in_its_raft_index_is_caught() -> None:
    """The whole record is compared, not only its payload."""
    result = check_sampled_prefixes([(1.0, "n1", [_rec(5, 1, b"a")]), (1.0, "n2", [_rec(6, 1, b"a")])])
    assert ["divergent"] == kinds(result)


def test_no_shared_revision_sampled_is_inconclusive() -> None:
    """Samples that never put two records at one revision prove nothing."""
    result = check_sampled_prefixes([(1.0, "n1", [_rec(1, 1, b"a")]), (1.0, "n2", [])])
    assert "unknown" == result.verdict


# -- linearizability: examples ----------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    """No operations, nothing to refute."""
    assert check_linearizable([]).ok


def test_sequential_history_passes() -> None:
    """One client writing and reading back its own values is linearizable."""
    h = [R(1, "k", None, 0, 1), W(1, "k", "a", 2, 3), R(1, "k", "a", 4, 5), W(1, "k", "b", 6, 7), R(1, "k", "b", 8, 9)]
    result = check_linearizable(h)
    assert (True, 5) == (result.ok, result.details["checked"])


def test_concurrent_overlapping_writes_may_be_seen_in_either_order() -> None:
    """Reads overlapping two overlapping writes may see them in either order, but consistently."""
    writes = [W(1, "k", "a", 0, 10), W(2, "k", "b", 1, 9)]
    assert check_linearizable(writes + [R(3, "k", "a", 11, 12)]).ok
    assert check_linearizable(writes + [R(3, "k", "b", 11, 12)]).ok
    assert check_linearizable(writes + [R(3, "k", "b", 2, 3), R(4, "k", "a", 4, 5), R(3, "k", "a", 11, 12)]).ok
    flip_back = writes + [R(3, "k", "b", 2, 3), R(4, "k", "a", 4, 5), R(3, "k", "b", 11, 12)]
    assert not check_linearizable(flip_back).ok


def test_touching_intervals_count_as_concurrent() -> None:
    """An op invoked at the instant another completes may be ordered before it (clock resolution)."""
    assert check_linearizable([W(1, "k", "a", 0, 1), R(2, "k", None, 1, 2)]).ok


def test_cas_successes_and_failures_pass() -> None:
    """A successful cas needs its expected value; a failed cas has no effect."""
    h = [
        W(1, "k", 0, 0, 1),
        CAS(1, "k", 0, 1, 2, 3),
        CAS(2, "k", 0, 2, 4, 5, "fail"),
        R(2, "k", 1, 6, 7),
        CAS(3, "k", 1, 3, 8, 9),
        R(1, "k", 3, 10, 11),
    ]
    assert check_linearizable(h).ok


def test_cas_from_a_value_the_register_did_not_hold_is_caught() -> None:
    """Two sequential successful cas from the same value: the second lost the first one's update."""
    h = [W(1, "k", 0, 0, 1), CAS(1, "k", 0, 1, 2, 3), CAS(2, "k", 0, 2, 4, 5), R(1, "k", 2, 6, 7)]
    assert ["not_linearizable"] == kinds(check_linearizable(h))


def test_unknown_write_that_took_effect_passes() -> None:
    """A timed-out write may land later, even after its client moved on."""
    h = [W(1, "k", "a", 0, 1), W(2, "k", "b", 2, None, "unknown"), R(1, "k", "a", 3, 4), R(1, "k", "b", 50, 51)]
    result = check_linearizable(h)
    assert (True, 0) == (result.ok, result.details["unobserved_unknown_writes"])


def test_unknown_write_that_did_not_take_effect_passes() -> None:
    """A timed-out write may never land; one whose value nobody read is set aside up front."""
    h = [W(1, "k", "a", 0, 1), W(2, "k", "b", 2, 5, "unknown"), R(1, "k", "a", 6, 7), R(1, "k", "a", 50, 51)]
    result = check_linearizable(h)
    assert (True, 1) == (result.ok, result.details["unobserved_unknown_writes"])


def test_unknown_write_seen_before_it_was_sent_is_caught() -> None:
    """An unknown write still cannot take effect before it was invoked."""
    h = [W(1, "k", "a", 0, 1), R(1, "k", "b", 2, 3), W(2, "k", "b", 4, None, "unknown")]
    assert not check_linearizable(h).ok


def test_failed_write_has_no_effect() -> None:
    """Reading the value of a write that definitely failed is a violation."""
    h = [W(1, "k", "a", 0, 1), W(2, "k", "b", 2, 3, "fail"), R(1, "k", "b", 4, 5)]
    result = check_linearizable(h)
    assert (["not_linearizable"], 1) == (kinds(result), result.details["failed"])


def test_unknown_reads_tell_nothing() -> None:
    """A read without an answer is ignored, whatever value field it carries."""
    assert check_linearizable([W(1, "k", "a", 0, 1), R(2, "k", "zzz", 2, None, "unknown")]).ok


def test_planted_stale_read_is_caught() -> None:
    """A read that returns an old value after a later write completed before it began fails."""
    h = [
        W(1, "k", "a", 0, 1),
        R(2, "k", "a", 2, 3),
        W(1, "k", "b", 4, 5),
        R(3, "k", "b", 6, 7),
        R(2, "k", "a", 8, 9),  # stale: b was acknowledged before this read began
    ]
    result = check_linearizable(h)
    assert ["not_linearizable"] == kinds(result)
    violation = result.violations[0]
    assert (R(2, "k", "a", 8, 9), ["b"]) == (violation.data["op"], violation.data["possible_values"])
    assert "2 read 'k' -> 'a' [8, 9] ok" in violation.message


def test_planted_lost_write_is_caught() -> None:
    """An acked write that every later read misses, while later writes are seen, fails."""
    h = [
        W(1, "k", "a", 0, 1),
        W(2, "k", "b", 2, 3),  # acknowledged, then lost
        R(3, "k", "a", 4, 5),
        R(1, "k", "a", 6, 7),
        W(1, "k", "c", 8, 9),
        R(3, "k", "c", 10, 11),
        R(2, "k", "c", 12, 13),
    ]
    result = check_linearizable(h)
    assert ["not_linearizable"] == kinds(result)
    assert R(3, "k", "a", 4, 5) == result.violations[0].data["op"]


def test_lost_write_never_read_back_is_caught() -> None:
    """An acked write of the only value, then reads of the initial value forever, fails."""
    h = [W(1, "k", "a", 0, 1)] + [R(2, "k", None, 2 + 2 * i, 3 + 2 * i) for i in range(5)]
    assert not check_linearizable(h).ok


def test_impossible_value_is_reported_without_a_search() -> None:
    """A read of a value nothing wrote is found before the search and named as such."""
    result = check_linearizable([W(1, "k", "a", 0, 1), R(2, "k", "ghost", 2, 3)])
    assert 0 == result.details["steps"]
    assert "no write or cas could have produced" in result.violations[0].message


def test_keys_are_checked_independently() -> None:
    """A violation on one key is reported for that key only; interleaving keys is fine."""
    h = [W(1, "x", 1, 0, 1), W(2, "y", 1, 0, 1), W(1, "x", 2, 2, 3), R(2, "y", 1, 4, 5), R(3, "x", 1, 4, 5)]
    result = check_linearizable(h)
    assert (2, ["x"]) == (result.details["keys"], [v.data["key"] for v in result.violations])


def test_initial_value_is_configurable() -> None:
    """A read before any write returns the initial value of the register."""
    assert check_linearizable([R(1, "k", 0, 0, 1)], initial=0).ok
    assert not check_linearizable([R(1, "k", 0, 0, 1)]).ok


def test_search_budget_gives_up_instead_of_hanging() -> None:
    """Past max_steps the verdict is unknown, never pass."""
    h = _random_execution(random.Random(3), 200, 5)
    result = check_linearizable(h, max_steps=50)
    assert (False, "unknown", ["k"]) == (result.ok, result.verdict, result.details["gave_up"])


# -- linearizability: properties --------------------------------------------------------------------


@st.composite
def executions(draw: st.DrawFn, max_procs: int = 10, max_ops: int = 40) -> list[Operation]:
    """A history made by running a sequential register at a point inside each op's interval.

    Clients issue ops one after another; some writes and cas time out (unknown) and land or not.
    Times are small integers so intervals often touch and linearization points tie.
    """
    procs = draw(st.integers(1, max_procs))
    specs: list[dict[str, Any]] = []
    clocks = [0] * procs
    for index in range(draw(st.integers(1, max_ops))):
        p = draw(st.integers(0, procs - 1))
        start = clocks[p] + draw(st.integers(0, 3))
        end = start + draw(st.integers(0, 6))
        clocks[p] = end
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        fate = "ok" if kind == "read" else draw(st.sampled_from(["ok", "ok", "ok", "landed", "lost"]))
        spec = {"index": index, "p": p, "start": start, "end": end, "kind": kind, "fate": fate,
                "value": draw(st.integers(0, 3)), "expected": draw(st.sampled_from([None, 0, 1, 2, 3])),
                "at": draw(st.integers(start, end)), "gave_up_at": draw(st.sampled_from([None, end]))}
        specs.append(spec)
    return _run_register(specs)


def _run_register(specs: Sequence[dict[str, Any]]) -> list[Operation]:
    state: Any = None
    seen: dict[int, Any] = {}
    for s in sorted((s for s in specs if s["fate"] != "lost"), key=lambda s: (s["at"], s["index"])):
        if s["kind"] == "read":
            seen[s["index"]] = state
        elif s["kind"] == "write":
            state = s["value"]
        else:
            seen[s["index"]] = state == s["expected"]
            if seen[s["index"]]:
                state = s["value"]
    history: list[Operation] = []
    for s in specs:
        p, start, end, i = s["p"], s["start"], s["end"], s["index"]
        if s["kind"] == "read":
            history.append(R(p, "k", seen[i], start, end))
        elif s["fate"] in ("landed", "lost"):
            if s["kind"] == "write":
                history.append(W(p, "k", s["value"], start, s["gave_up_at"], "unknown"))
            else:
                history.append(CAS(p, "k", s["expected"], s["value"], start, s["gave_up_at"], "unknown"))
        elif s["kind"] == "write":
            history.append(W(p, "k", s["value"], start, end))
        else:
            history.append(CAS(p, "k", s["expected"], s["value"], start, end, "ok" if seen[i] else "fail"))
    return history


@settings(max_examples=300, deadline=None)
@given(executions())
def test_executions_of_a_register_are_linearizable(history: list[Operation]) -> None:
    """Whatever the concurrency and the unknown outcomes, a real register's history passes."""
    result = check_linearizable(history)
    assert (True, ()) == (result.ok, result.violations)


@settings(max_examples=300, deadline=None)
@given(executions(), st.data())
def test_a_read_of_a_never_written_value_is_rejected(history: list[Operation], data: st.DataObject) -> None:
    """Mutating one read to a value nobody wrote makes any execution non-linearizable."""
    reads = [i for i, op in enumerate(history) if op.type == "read"]
    assume(reads)
    i = data.draw(st.sampled_from(reads))
    mutated = list(history)
    mutated[i] = attrs.evolve(history[i], value="never-written")
    result = check_linearizable(mutated)
    assert (False, "fail") == (result.ok, result.verdict)


def _reference(history: Sequence[Operation], initial: Any = None) -> bool:
    """Exhaustive search over every subset of unknown ops and every order real time allows."""
    ops = [op for op in history if op.outcome != "fail" and not (op.outcome == "unknown" and op.type == "read")]
    required = frozenset(i for i, op in enumerate(ops) if op.outcome == "ok")

    def before(a: Operation, b: Operation) -> bool:
        return a.outcome == "ok" and a.completed_at is not None and a.completed_at < b.invoked_at

    def search(done: frozenset[int], state: Any) -> bool:
        if required <= done:
            return True
        for i, op in enumerate(ops):
            if i in done or any(j not in done and before(ops[j], op) for j in required):
                continue
            if op.type == "write":
                new = op.value
            elif op.type == "read" and state == op.value:
                new = state
            elif op.type == "cas" and state == op.expected:
                new = op.new
            else:
                continue
            if search(done | {i}, new):
                return True
        return False

    return search(frozenset(), initial)


small_ops = st.builds(
    lambda p, kind, a, d, outcome, v, e, no_end: Operation(
        p, kind, "k", a, None if outcome == "unknown" and no_end else a + d, outcome,
        value=v if kind != "cas" else None, expected=e if kind == "cas" else None, new=v if kind == "cas" else None),
    st.integers(0, 3), st.sampled_from(["read", "write", "cas"]), st.integers(0, 8), st.integers(0, 5),
    st.sampled_from(["ok", "ok", "ok", "fail", "unknown"]), st.sampled_from([None, 0, 1, 2]),
    st.sampled_from([None, 0, 1, 2]), st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(small_ops, max_size=7))
def test_agrees_with_exhaustive_search_on_small_histories(history: list[Operation]) -> None:
    """On arbitrary small histories (mostly not linearizable) the verdict equals brute force."""
    assert _reference(history) == check_linearizable(history).ok


# -- linearizability: performance -------------------------------------------------------------------


def _random_execution(rng: random.Random, n_ops: int, clients: int, *, p_unknown: float = 0.05) -> list[Operation]:
    """A register execution with float times: each client's ops back to back, 50% reads, unique values."""
    clocks = [0.0] * clients
    specs: list[dict[str, Any]] = []
    for index in range(n_ops):
        p = rng.randrange(clients)
        start = clocks[p] + rng.uniform(0.0, 1.0)
        end = start + rng.uniform(0.1, 5.0)
        clocks[p] = end
        roll = rng.random()
        kind = "read" if roll < 0.5 else "write" if roll < 0.8 else "cas"
        fate = "ok" if kind == "read" or rng.random() >= p_unknown else rng.choice(["landed", "lost"])
        specs.append({"index": index, "p": p, "start": start, "end": end, "kind": kind, "fate": fate,
                      "value": f"v{index}", "expected": None, "at": rng.uniform(start, end), "gave_up_at": None})
    # A cas mostly expects what the register holds, like an If-Match with a fresh ETag.
    state: Any = None
    for s in sorted((s for s in specs if s["fate"] != "lost"), key=lambda s: (s["at"], s["index"])):
        if s["kind"] == "cas":
            s["expected"] = state if rng.random() < 0.7 else f"v{rng.randrange(max(1, s['index']))}"
        if s["kind"] == "write" or (s["kind"] == "cas" and s["expected"] == state):
            state = s["value"]
    return _run_register(specs)


def test_two_thousand_ops_five_clients_check_quickly() -> None:
    """2 000 ops on one key from 5 concurrent clients, with unknown outcomes, check in well under 5 s."""
    history = _random_execution(random.Random(7), 2000, 5)
    started = time.perf_counter()
    result = check_linearizable(history)
    elapsed = time.perf_counter() - started
    print(f"\n2000 ops / 5 clients: {elapsed:.3f} s, {result.details['steps']} steps")
    assert result.ok
    assert elapsed < 5.0

    reads = [i for i, op in enumerate(history) if op.type == "read" and op.value is not None]
    stale = list(history)
    i = reads[len(reads) // 2]
    older = [op for op in history if op.type == "write" and op.outcome == "ok" and op.completed_at is not None
             and op.completed_at < history[i].invoked_at - 20]
    stale[i] = attrs.evolve(history[i], value=older[-1].value)
    started = time.perf_counter()
    caught = check_linearizable(stale)
    elapsed = time.perf_counter() - started
    print(f"2000 ops / 5 clients, one stale read: {elapsed:.3f} s, {caught.details['steps']} steps")
    assert "fail" == caught.verdict
    assert elapsed < 5.0


# -- availability -----------------------------------------------------------------------------------


def test_failover_gap_runs_from_last_success_to_first_success_after() -> None:
    """The gap around a fault is bounded by successes on both sides; failures in between don't count."""
    samples = [(0.0, True), (0.9, True), (1.1, False), (1.5, False), (2.4, True), (3.0, True)]
    assert [pytest.approx(1.5)] == failover_gaps(samples, [1.0])


def test_failover_gap_without_earlier_success_starts_at_the_fault() -> None:
    """With no success before the fault, the gap is measured from the fault."""
    assert [pytest.approx(0.5), math.inf] == failover_gaps([(1.5, True), (0.5, False)], [1.0, 2.0])


def test_recovery_time_is_from_fault_to_first_success() -> None:
    """Recovery is how long after each fault the first write succeeded; inf if none did."""
    samples = [(0.5, True), (2.0, False), (2.7, True), (9.0, True)]
    assert [pytest.approx(0.7), pytest.approx(1.0), math.inf] == recovery_times(samples, [2.0, 8.0, 10.0])


def test_availability_and_bounds() -> None:
    """Availability is the success fraction; check_bound flags each value over the limit."""
    assert 0.75 == availability([(0, True), (1, True), (2, False), (3, True)])
    result = check_bound("se_failover_gap", [0.4, 2.5, math.inf], 2.0, what="gap")
    assert ([1, 2], 3) == ([v.data["index"] for v in result.violations], result.details["count"])


def test_elections_during_counts_leader_or_term_changes_inside_the_window() -> None:
    """Term churn under a cut shows as several (leader, term) changes between the cut and the heal."""
    from simulations.chaos.partitions import elections_during

    samples = [(0.0, "n1", 1), (1.0, "n1", 1), (2.0, None, None), (2.5, "n1", 3), (3.0, "n1", 5), (4.0, "n2", 6), (9.0, "n2", 7)]
    assert elections_during(samples, 1.5, 5.0) == 3
    assert elections_during(samples, 0.0, 2.0) == 0
    assert elections_during(samples, 5.0, 10.0) == 1
