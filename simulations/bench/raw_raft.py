"""The baseline: raw pysyncobj on N local processes, driven from the leader's process.

:func:`run_raw_baseline` starts N ``simulations.bench._raw_node`` children on 127.0.0.1 (free
ports, ``password`` set, journal and dump files in a temporary directory), waits for the
leader's ``result`` line, stops every child and returns a :class:`RawResult`. Every wait is
bounded; every child (and its process group: pysyncobj forks to write dumps) is killed in a
``finally`` block.

:func:`pysyncobj_default_conf` and :func:`tuned_conf` are the two settings the control-plane
benchmark compares.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import attrs

from simulations.bench._stats import latency_summary
from simulations.local_cluster import free_port

__all__ = ["RawResult", "pysyncobj_default_conf", "run_raw_baseline", "tuned_conf"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def pysyncobj_default_conf() -> dict[str, Any]:
    """pysyncobj's own timing settings: pass nothing, let ``SyncObjConf`` choose."""
    return {}


def tuned_conf() -> dict[str, Any]:
    """Our ``cluster.raft.RaftTuning()`` values, as ``SyncObjConf`` keyword arguments.

    Only timing and batching: the durable journal (``RaftTuning.durable_journal``) is an avictl
    patch, not a pysyncobj setting, so the baseline stays raw pysyncobj.
    """
    from cluster.raft import (
        RaftTuning,  # late: the baseline children never import avictl code
    )

    t = RaftTuning()
    return {
        "raftMinTimeout": t.raft_min_timeout,
        "raftMaxTimeout": t.raft_max_timeout,
        "appendEntriesPeriod": t.append_entries_period,
        "autoTickPeriod": t.auto_tick_period,
        "appendEntriesUseBatch": t.use_batch,
        "appendEntriesBatchSizeBytes": t.batch_size_bytes,
        "leaderFallbackTimeout": t.leader_fallback_timeout,
        "connectionRetryTime": t.connection_retry_time,
        "connectionTimeout": t.connection_timeout,
    }


@attrs.frozen
class RawResult:
    label: str
    conf: dict[str, Any]
    events_per_s: float
    duration_s: float
    payload_bytes: int
    submitted: int
    committed_in_window: int
    failures: dict[str, int]
    undrained: int
    per_second: list[int]
    leader_cpu_fraction: float
    lone: dict[str, float | None]
    lone_errors: int
    leader_after_s: float
    still_leader: bool

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _pump(index: int, stream: IO[bytes], lines: queue.Queue[tuple[int, str | None]]) -> None:
    for raw in stream:
        lines.put((index, raw.decode(errors="replace")))
    lines.put((index, None))


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    for proc in procs:
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        # Each child leads its own process group (start_new_session): this reaches its dump forks too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def run_raw_baseline(
    label: str,
    conf: dict[str, Any],
    *,
    duration_s: float,
    payload_bytes: int = 300,
    max_inflight: int = 2000,
    lone_writes: int = 200,
    lone_budget_s: float = 10.0,
    nodes: int = 3,
    leader_timeout_s: float = 20.0,
    drain_timeout_s: float = 10.0,
    tmp_root: str | None = None,
) -> RawResult:
    """Run one baseline trial; raises RuntimeError (with the children's stderr tails) when it cannot finish."""
    ports = [free_port() for _ in range(nodes)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    password = secrets.token_urlsafe(16)
    budget_s = leader_timeout_s * 2 + duration_s + drain_timeout_s + lone_budget_s + 15.0
    procs: list[subprocess.Popen[bytes]] = []
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    with tempfile.TemporaryDirectory(prefix=f"bench-raw-{label}-", dir=tmp_root) as tmp:
        tmp_path = Path(tmp)
        try:
            for i, addr in enumerate(addrs):
                cfg = {
                    "self_addr": addr,
                    "peers": [a for a in addrs if a != addr],
                    "password": password,
                    "data_dir": str(tmp_path / f"n{i + 1}"),
                    "conf": conf,
                    "payload_bytes": payload_bytes,
                    "duration_s": duration_s,
                    "max_inflight": max_inflight,
                    "lone_writes": lone_writes,
                    "lone_budget_s": lone_budget_s,
                    "leader_timeout_s": leader_timeout_s,
                    "drain_timeout_s": drain_timeout_s,
                    "max_lifetime_s": budget_s + 5.0,
                }
                with open(tmp_path / f"n{i + 1}.stderr", "wb") as err:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "simulations.bench._raw_node", json.dumps(cfg)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        cwd=str(REPO_ROOT),
                        start_new_session=True,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                procs.append(proc)
                assert proc.stdout is not None
                threading.Thread(target=_pump, args=(i, proc.stdout, lines), daemon=True).start()
            result = _collect(procs, lines, time.monotonic() + budget_s, tmp_path)
        finally:
            _stop(procs, grace_s=5.0)
    tp, lone = result["throughput"], result["lone"]
    return RawResult(
        label=label,
        conf=conf,
        events_per_s=round(tp["committed_in_window"] / duration_s, 1),
        duration_s=duration_s,
        payload_bytes=int(result["payload_bytes"]),
        submitted=int(tp["submitted"]),
        committed_in_window=int(tp["committed_in_window"]),
        failures=dict(tp["failures"]),
        undrained=int(tp["undrained"]),
        per_second=list(tp["per_second"]),
        leader_cpu_fraction=float(tp["leader_cpu_fraction"]),
        lone=latency_summary(lone["latencies_ms"]),
        lone_errors=int(lone["errors"]),
        leader_after_s=float(result["leader_after_s"]),
        still_leader=bool(result["still_leader"]),
    )


def _collect(
    procs: list[subprocess.Popen[bytes]],
    lines: queue.Queue[tuple[int, str | None]],
    deadline: float,
    tmp_path: Path,
) -> dict[str, Any]:
    """Read the children's lines until the leader's result; bounded by ``deadline``."""
    closed: set[int] = set()
    followers: set[int] = set()
    problems: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            problems.append("timed out waiting for the leader's result")
            break
        try:
            index, line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if line is None:
            closed.add(index)
            if len(closed) == len(procs):
                problems.append("every node exited without a result")
                break
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("event") == "result":
            return dict(msg)
        if msg.get("event") == "follower":
            followers.add(index)
            if len(followers) == len(procs):
                problems.append("every node saw another node as leader (leadership moved during start-up)")
                break
        if msg.get("event") == "error":
            problems.append(f"n{index + 1}: {msg.get('error')}")
            break
    tails = "\n".join(f"--- n{i + 1} stderr ---\n{_tail(tmp_path / f'n{i + 1}.stderr')}" for i in range(len(procs)))
    raise RuntimeError("raw pysyncobj baseline failed: " + "; ".join(problems) + "\n" + tails)
