"""One raw pysyncobj node of the baseline benchmark (child process; never imports avictl code).

Run as ``python -m simulations.bench._raw_node CONFIG_JSON``. The node waits for a leader; the
leader drives the load itself and reports one ``result`` line; every other node reports
``follower`` and waits. All nodes then wait for ``stop`` on stdin (or stdin closing, or their
``max_lifetime_s``) and exit. Protocol: one JSON object per line on stdout.

Load, on the leader only:
1. warm-up: sync writes until one commits (all peers connected, a commit in this term);
2. throughput: callback writes, at most ``max_inflight`` outstanding, for ``duration_s``; a
   commit counts when its callback runs (entry applied on the leader) before the window ends;
3. drain: wait (bounded) for every outstanding callback;
4. lone writes: sequential ``sync=True`` writes, at most ``lone_writes`` or ``lone_budget_s``.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import select
import sys
import threading
import time
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.config import FAIL_REASON

__all__ = ["main"]


class _BenchObj(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, peers, conf)
        self.applied = 0

    @replicated  # type: ignore[misc]
    def commit_payload(self, payload: bytes) -> int:
        # Runs on the tick thread on every node; must never raise.
        self.applied += 1
        return self.applied


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _warm_up(obj: _BenchObj, payload: bytes, deadline: float) -> int:
    """Sync writes until one commits; returns the number of failed attempts. Raises TimeoutError."""
    failures = 0
    while time.monotonic() < deadline:
        try:
            obj.commit_payload(payload, sync=True, timeout=2.0)
            return failures
        except SyncObjException:
            failures += 1
    raise TimeoutError("no warm-up write committed")


def _throughput(obj: _BenchObj, payload: bytes, duration_s: float, max_inflight: int, drain_timeout_s: float) -> dict[str, Any]:
    cond = threading.Condition()
    state = {"inflight": 0, "ok": 0, "ok_in_window": 0}
    failures: collections.Counter[str] = collections.Counter()
    per_second: list[int] = [0] * (int(duration_s) + 1)
    start = time.monotonic()
    end = start + duration_s

    def done(result: Any, error: int) -> None:
        # Runs on pysyncobj's tick thread.
        now = time.monotonic()
        with cond:
            state["inflight"] -= 1
            if error == FAIL_REASON.SUCCESS:
                state["ok"] += 1
                if now <= end:
                    state["ok_in_window"] += 1
                    per_second[min(int(now - start), len(per_second) - 1)] += 1
            else:
                failures[str(error)] += 1
            cond.notify()

    submitted = 0
    cpu0 = _cpu_seconds()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        with cond:
            if state["inflight"] >= max_inflight:
                cond.wait(min(0.05, end - now))
                continue
            state["inflight"] += 1
        obj.commit_payload(payload, callback=done)
        submitted += 1
    window_end = time.monotonic()
    cpu1 = _cpu_seconds()
    with cond:
        drained = cond.wait_for(lambda: state["inflight"] == 0, timeout=drain_timeout_s)
        outstanding = state["inflight"]
    drain_s = time.monotonic() - window_end
    return {
        "submitted": submitted,
        "committed_in_window": state["ok_in_window"],
        "committed_total": state["ok"],
        "failures": dict(failures),
        "undrained": 0 if drained else outstanding,
        "drain_s": round(drain_s, 3),
        "window_s": round(window_end - start, 3),
        "per_second": per_second[: int(duration_s)] if duration_s >= 1 else per_second,
        "leader_cpu_fraction": round((cpu1 - cpu0) / max(window_end - start, 1e-9), 3),
    }


def _lone_writes(obj: _BenchObj, payload: bytes, count: int, budget_s: float) -> dict[str, Any]:
    latencies_ms: list[float] = []
    errors = 0
    deadline = time.monotonic() + budget_s
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        t0 = time.perf_counter()
        try:
            obj.commit_payload(payload, sync=True, timeout=2.0)
        except SyncObjException:
            errors += 1
            continue
        latencies_ms.append((time.perf_counter() - t0) * 1000.0)
    return {"latencies_ms": [round(x, 4) for x in latencies_ms], "errors": errors}


def _wait_for_stop(deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        readable, _, _ = select.select([sys.stdin], [], [], min(remaining, 1.0))
        if readable:
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                return


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    born = time.monotonic()
    lifetime_deadline = born + float(cfg["max_lifetime_s"])
    payload = os.urandom(int(cfg["payload_bytes"]))
    os.makedirs(cfg["data_dir"], exist_ok=True)
    conf = SyncObjConf(
        password=cfg["password"],
        journalFile=os.path.join(cfg["data_dir"], "journal.bin"),
        fullDumpFile=os.path.join(cfg["data_dir"], "dump.bin"),
        **cfg["conf"],
    )
    obj = _BenchObj(cfg["self_addr"], list(cfg["peers"]), conf)
    try:
        leader_deadline = time.monotonic() + float(cfg["leader_timeout_s"])
        while obj._getLeader() is None:
            if time.monotonic() >= leader_deadline:
                _emit(event="error", error="no leader elected", node=cfg["self_addr"])
                return 2
            time.sleep(0.01)
        leader_after_s = time.monotonic() - born
        if not obj._isLeader():
            _emit(event="follower", node=cfg["self_addr"], leader=str(obj._getLeader()))
            _wait_for_stop(lifetime_deadline)
            return 0
        _emit(event="leader", node=cfg["self_addr"], leader_after_s=round(leader_after_s, 3))
        try:
            warmup_failures = _warm_up(obj, payload, time.monotonic() + float(cfg["leader_timeout_s"]))
        except TimeoutError as exc:
            _emit(event="error", error=str(exc), node=cfg["self_addr"])
            return 2
        throughput = _throughput(obj, payload, float(cfg["duration_s"]), int(cfg["max_inflight"]), float(cfg["drain_timeout_s"]))
        time.sleep(0.2)  # let followers catch up before measuring at low load
        lone = _lone_writes(obj, payload, int(cfg["lone_writes"]), float(cfg["lone_budget_s"]))
        _emit(
            event="result",
            node=cfg["self_addr"],
            still_leader=bool(obj._isLeader()),
            leader_after_s=round(leader_after_s, 3),
            warmup_failures=warmup_failures,
            payload_bytes=len(payload),
            throughput=throughput,
            lone=lone,
        )
        _wait_for_stop(lifetime_deadline)
        return 0
    finally:
        obj.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
