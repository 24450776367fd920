"""Network partitions between controllers, and controller clock skew, for the chaos harness.

The cluster is a :class:`simulations.netns_cluster.NetnsCluster`: each controller in its own
network namespace behind a bridge, faults are blackhole routes inside the namespaces (no
nftables, no ``tc``). The harness (clients, nemesis, checkers) stays on the host and keeps
talking to every node, the cut-off ones included.

Scenarios (``NETWORK_SCENARIOS``, registered in :mod:`simulations.chaos.scenarios`):

- ``partition-leader``: the current leader is cut off from both followers (both ways) for
  ``hold`` s, then healed, repeatedly. Besides the usual checks: the isolated side acknowledges
  no write (a write sent to it after the cut and answered before the heal is never 2xx), serves
  no stale linearizable read, the majority elects and serves within the failover limit (3 s,
  as for kill -9 of the leader) and the old leader catches up after the heal.
- ``partition-bridge``: the leader and one follower cannot talk; both talk to the other follower
  (the bridge).
- ``partition-one-way``: nothing the leader sends reaches one follower; the follower's packets
  still reach the leader.
- ``clock-skew``: a follower, then the leader, is restarted under libfaketime (``LD_PRELOAD`` +
  ``FAKETIME``) with +1 h / -30 min, each restart a kill -9; nothing is lost and the leader changes
  no more often than the restarts force. The report counts events whose time (the deciding
  node's wall clock) is off the harness's clock. Needs faketime: without
  it the run is reported as ``skip`` ("skipped: needs faketime (apt-get install faketime)").

Workloads: the runner's unique writes and cas registers (one register client per key *per node*,
so every node is asked), plus an :class:`IsolationProbe`: per node, a single-attempt write and
a linearizable read of a probe register every 0.1 s, while one sequential writer sets the probe
register to increasing values through nodes outside the cut-off side. Every HTTP answer of the
run (workloads and probe) is traced per node, which is what the isolated-side check reads. The
runner's :class:`~simulations.chaos.collect.LogTailSampler` fetches every node's new log tail each
second (the cut-off ones too: the host is never cut) for the ``log_prefixes_during_run`` check.

``avictl chaos run`` reaches :func:`run_network_scenario` through ``runner.run_scenario`` (the
scenarios are in ``scenarios.SCENARIOS`` with ``network`` true).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import tempfile
import time
import uuid
from collections import Counter
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import aiohttp
import attrs

from simulations.chaos import checkers
from simulations.chaos.checkers import CheckResult, Violation
from simulations.chaos.collect import REGISTER_PREFIX, WRITE_PREFIX, LogTailSampler, check_log_shape, collect_logs, collect_present
from simulations.chaos.history import write_outcomes, write_samples
from simulations.chaos.model import NetCriteria, NetFaultStep, NetScenario
from simulations.chaos.nemesis import Fault, Nemesis
from simulations.chaos.report import history_excerpt, report_of
from simulations.chaos.workloads import RegisterWorkload, WriteWorkload

__all__ = [
    "FAKETIME_SKIP",
    "IsolationProbe",
    "NETWORK_SCENARIOS",
    "NetFault",
    "NetNemesis",
    "RequestTrace",
    "faketime_lib",
    "run_network_scenario",
]

FAKETIME_SKIP = "skipped: needs faketime (apt-get install faketime)"
_FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
PROBE_PREFIX = "cpw"
PROBE_KEY = "cprobe"
REQUEST_TIMEOUT = 3.0
PROBE_TIMEOUT = 12.0  # longer than the controllers' own write deadline (10 s), to see what a cut-off node answers


def faketime_lib() -> Optional[str]:
    """The libfaketime to preload (``AVICTL_FAKETIME_LIB`` overrides the Debian paths), or None."""
    override = os.environ.get("AVICTL_FAKETIME_LIB")
    for path in ([override] if override else []) + list(_FAKETIME_LIBS):
        if path and os.path.isfile(path):
            return path
    return None


def faketime_env(lib: str, offset: str) -> dict[str, str]:
    """The environment libfaketime documents for a relative offset ("+1h", "-30m").

    The monotonic clock is shifted too: with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, libfaketime 0.9.10
    (Debian bookworm) makes Python 3.11's ``time.sleep`` fail with EINVAL, which kills pysyncobj's
    tick thread (measured here). A constant shift of the monotonic clock changes no interval.
    """
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}


# -- schedule ---------------------------------------------------------------------------------------


def _periodic(action: str, target: str, every: float, hold: float, first: tuple[float, float] = (3.0, 5.0),
              tail: float = 4.0) -> Callable[[random.Random, float], list[NetFaultStep]]:
    def schedule(rng: random.Random, duration: float) -> list[NetFaultStep]:
        steps: list[NetFaultStep] = []
        at = rng.uniform(*first)
        while at + hold + tail <= duration:
            steps.append(NetFaultStep(round(at, 3), action, target, hold, pick=rng.random()))
            at += hold + every + rng.uniform(-1.0, 1.0)
        return steps

    return schedule


def _skew(rng: random.Random, duration: float) -> list[NetFaultStep]:
    """A follower under +1 h for a third of the run, then the leader under -30 min for another third."""
    third = max(3.0, (duration - 8.0) / 3.0)
    first = rng.uniform(2.0, 4.0)
    steps = [NetFaultStep(round(first, 3), "skew", "follower", round(third, 3), pick=rng.random(), offset="+1h")]
    second = first + third + 2.0
    if second + third + 2.0 <= duration:
        steps.append(NetFaultStep(round(second, 3), "skew", "leader", round(third, 3), pick=rng.random(), offset="-30m"))
    return steps


NETWORK_SCENARIOS: dict[str, NetScenario] = {
    s.name: s
    for s in [
        NetScenario("partition-leader", "Cut the leader off from both followers (both ways) for 6 s, heal, every ~16 s; "
                    "the isolated side acknowledges no write and serves no stale read, the majority elects and serves "
                    "within 3 s, the old leader catches up within 10 s of the heal. Needs root (network namespaces).",
                    _periodic("partition", "leader", 10.0, 6.0),
                    NetCriteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1, isolated_side=True)),
        NetScenario("partition-bridge", "The leader and one follower cannot talk, both still talk to the other follower "
                    "(the bridge), for 6 s, every ~16 s; nothing acked is lost, writes are acknowledged within 3 s of each "
                    "cut, every node catches up within 10 s of the heal. Needs root.",
                    _periodic("partition", "bridge", 10.0, 6.0),
                    NetCriteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1, max_elections_per_fault=2)),
        NetScenario("partition-one-way", "Nothing the leader sends reaches one follower (its packets still reach the "
                    "leader) for 6 s, every ~16 s; nothing acked is lost, writes are acknowledged within 3 s of each cut, "
                    "both catch up within 10 s of the heal. Needs root.",
                    _periodic("cut", "leader-follower", 10.0, 6.0),
                    NetCriteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1, max_elections_per_fault=2)),
        NetScenario("clock-skew", "A follower runs with its wall clock +1 h, then the leader with -30 min (libfaketime, "
                    "each for a third of the run, kill -9 and restarted in and out of it); nothing is lost, every node catches "
                    "up within 10 s, and the leader changes only within 5 s of a restart, never while a node runs "
                    "skewed. Needs faketime (apt-get install faketime) and root.",
                    _skew,
                    NetCriteria(max_catch_up=10.0, min_faults=1, max_extra_leader_changes=0, needs_faketime=True)),
    ]
}


# -- nemesis ----------------------------------------------------------------------------------------


@attrs.define
class NetFault(Fault):
    isolated: list[str] = attrs.field(factory=list)  # the minority side of a partition (what must ack nothing)
    links: list[list[str]] = attrs.field(factory=list)  # [src, dst] pairs cut
    heal_started: Optional[float] = None  # monotonic, just before the cut was removed
    offset: str = ""
    forced_leader_changes: int = 0
    during: Optional[dict[str, Any]] = None  # skew: the skewed node's status at the end of the hold

    def to_dict(self, t0: float) -> dict[str, Any]:
        out = super().to_dict(t0)
        out["cut"] = [f"{a}->{b}" for a, b in self.links]
        if self.isolated:
            out["isolated"] = self.isolated
        if self.offset:
            out["offset"] = self.offset
            out["skewed_node_before_heal"] = self.during
        out["heal_started_at"] = None if self.heal_started is None else round(self.heal_started - t0, 3)
        return out


class NetNemesis(Nemesis):
    """The :class:`Nemesis` with network faults on a :class:`NetnsCluster` (and the old faults too)."""

    def __init__(self, cluster: Any, schedule: list[Any], *, catch_up_limit: float = 20.0,
                 faketime: Optional[str] = None) -> None:
        super().__init__(cluster, schedule, catch_up_limit=catch_up_limit)
        self.faketime = faketime
        self.current: Optional[NetFault] = None
        self.skewed: set[str] = set()
        self.restarts: list[tuple[float, str]] = []  # (monotonic, node) of each kill -9 + start

    def minority(self) -> list[str]:
        """The nodes now cut off on the minority side ([] when no partition-leader is in effect)."""
        current = self.current
        return list(current.isolated) if current is not None and current.heal_started is None else []

    def _restart(self, node: str, env: dict[str, str]) -> None:
        # kill -9: a graceful stop waits for the requests in flight (up to the 10 s write deadline).
        self.restarts.append((time.monotonic(), node))
        self.cluster.kill(node, signal.SIGKILL)
        self.cluster.extra_env[node] = env
        self.cluster.start(node)

    def _inject(self, step: Any) -> Fault:
        if not isinstance(step, NetFaultStep):
            return super()._inject(step)
        leader = self._leader()
        followers = sorted(n for n in self.cluster.ids if n != leader)
        if leader is None or not followers:
            return NetFault(step, [], time.monotonic(), started_wall=time.time(), leader_before=leader)
        picked = followers[int(step.pick * len(followers)) % len(followers)]
        other = [f for f in followers if f != picked]
        fault_kw: dict[str, Any] = {"leader_before": leader}
        if step.action == "partition" and step.target == "leader":
            self.cluster.partition([[leader], followers])
            nodes, fault_kw["isolated"] = [leader], [leader]
            fault_kw["links"] = sorted([[a, b] for a in self.cluster.ids for b in self.cluster.ids
                                        if a != b and (a == leader or b == leader)])
        elif step.action == "partition" and step.target == "bridge":
            end = other[0]
            self.cluster.partition([[leader], [end]])
            nodes, fault_kw["links"] = [leader, end], [[leader, end], [end, leader]]
        elif step.action == "cut" and step.target == "leader-follower":
            self.cluster.cut(leader, picked)
            nodes, fault_kw["links"] = [leader, picked], [[leader, picked]]
        elif step.action == "skew":
            if self.faketime is None:
                raise RuntimeError("a skew fault needs faketime")
            node = leader if step.target == "leader" else picked
            started, started_wall = time.monotonic(), time.time()
            self._restart(node, faketime_env(self.faketime, step.offset))
            self.skewed.add(node)
            fault = NetFault(step, [node], started, started_wall=started_wall, leader_before=leader, offset=step.offset,
                             forced_leader_changes=1 if node == leader else 0)
            self.current = fault
            return fault
        else:
            raise ValueError(f"no such network fault: {step.action} {step.target}")
        started = time.monotonic()
        fault = NetFault(step, nodes, started, started_wall=time.time(), **fault_kw)
        self.current = fault
        return fault

    def _heal_nodes(self, nodes: list[str]) -> None:
        current = self.current
        if current is None or current.nodes != nodes:
            super()._heal_nodes(nodes)
            return
        if current.offset:
            # How the skewed node did during the hold, just before it is restarted on the real clock.
            node = current.nodes[0]
            st = self.cluster.status(node)
            leader = self._leader(2.0)
            lst = self.cluster.status(leader) if leader is not None else None
            current.during = {"node": node, "role": st and st["role"], "term": st and st["term"],
                              "applied_revision": st and st["applied_revision"], "leader": leader,
                              "leader_applied_revision": lst and lst["applied_revision"]}
        current.heal_started = time.monotonic()
        if current.links:
            self.cluster.heal()
        for node in nodes:
            if node in self.skewed:
                self._restart(node, {})
                self.skewed.discard(node)
        super()._heal_nodes(nodes)

    def heal_all(self) -> None:
        self.cluster.heal()
        if self.current is not None and self.current.heal_started is None:
            self.current.heal_started = time.monotonic()
        for node in list(self.skewed):
            self._restart(node, {})
        self.skewed.clear()
        super().heal_all()


# -- tracing and the isolation probe ------------------------------------------------------------------


@attrs.frozen
class Traced:
    node: str
    method: str
    path: str
    start: float
    end: float
    status: Optional[int]
    error: str = ""


class RequestTrace:
    """Every HTTP request of the run's aiohttp sessions: node, method, path, times, status or error."""

    def __init__(self, node_of_host: dict[str, str]) -> None:
        self.node_of_host = node_of_host
        self.records: list[Traced] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._start)
        self.config.on_request_end.append(self._end)
        self.config.on_request_exception.append(self._exception)

    async def _start(self, session: Any, ctx: Any, params: Any) -> None:
        ctx.start = time.monotonic()

    def _add(self, ctx: Any, params: Any, status: Optional[int], error: str) -> None:
        parts = urlsplit(str(params.url))
        node = self.node_of_host.get(parts.netloc, parts.netloc)
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.records.append(Traced(node, params.method, path, getattr(ctx, "start", time.monotonic()), time.monotonic(),
                                   status, error))

    async def _end(self, session: Any, ctx: Any, params: Any) -> None:
        self._add(ctx, params, params.response.status, "")

    async def _exception(self, session: Any, ctx: Any, params: Any) -> None:
        self._add(ctx, params, None, type(params.exception).__name__)


def traced_session(trace: RequestTrace, *, no_retry: bool = False) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(trace_configs=[trace.config])
    if no_retry:
        if not hasattr(session, "_retry_connection"):
            raise RuntimeError("this aiohttp has no _retry_connection; cannot tell a refused cas from a lost answer")
        session._retry_connection = False  # see workloads.no_retry_session
    return session


@attrs.frozen
class ProbeOp:
    node: str
    kind: str  # "write" (a unique create, one attempt) | "read" (linearizable GET of the probe key) | "set"
    start: float
    end: float
    status: Optional[int]
    value: Any = None  # read: the value seen; set: the value written; write: the pool name
    error: str = ""

    @property
    def outcome(self) -> str:
        """acked / failed / unknown, as the write workload counts them."""
        if self.status is not None and 200 <= self.status < 300:
            return "acked"
        if self.error == "ClientConnectorError" or (self.status is not None and (self.status == 503 or 400 <= self.status < 500)):
            return "failed"
        return "unknown"


class IsolationProbe:
    """Per node, a single-attempt unique write and a linearizable read every ``interval`` s (not waiting
    for earlier ones, at most ``max_in_flight`` open, each allowed ``timeout`` s); one sequential writer
    sets the probe register to increasing values through nodes outside ``avoid()``."""

    def __init__(self, urls: dict[str, str], token: str, *, interval: float = 0.2, set_interval: float = 0.2,
                 timeout: float = PROBE_TIMEOUT, max_in_flight: int = 40) -> None:
        self.urls = urls
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.token = token
        self.interval = interval
        self.set_interval = set_interval
        self.ops: list[ProbeOp] = []
        self.uuid = ""
        self.body: dict[str, Any] = {}
        self._seq = itertools.count(1)
        self._values = itertools.count(1_000)

    def _headers(self, command: bool = False) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"}
        if command:
            h["X-Avi-Command-Id"] = uuid.uuid4().hex
        return h

    async def setup(self, session: aiohttp.ClientSession) -> None:
        url = next(iter(self.urls.values()))
        body = {"name": PROBE_KEY, "default_server_port": next(self._values),
                "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}
        deadline = time.monotonic() + 20
        command = self._headers(True)
        while True:
            try:
                async with session.post(f"{url}/api/pool", json=body, headers=command,
                                        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status in (200, 201):
                        self.uuid = data["uuid"]
                        self.body = {k: v for k, v in data.items() if k not in ("runtime", "_last_modified", "url")}
                        now = time.monotonic()
                        self.ops.append(ProbeOp(next(iter(self.urls)), "set", now, now, resp.status, body["default_server_port"]))
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("could not create the probe register")
            await asyncio.sleep(0.2)

    async def _call(self, session: aiohttp.ClientSession, node: str, kind: str, method: str, path: str,
                    body: Any = None, value: Any = None) -> None:
        start = time.monotonic()
        status: Optional[int] = None
        error = ""
        seen = value
        try:
            async with session.request(method, f"{self.urls[node]}{path}", json=body, headers=self._headers(method != "GET"),
                                       timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                status = resp.status
                data = await resp.json(content_type=None)
                if kind == "read" and status == 200:
                    seen = data["default_server_port"]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            error = type(exc).__name__
        self.ops.append(ProbeOp(node, kind, start, time.monotonic(), status, seen, error))

    async def _node_client(self, session: aiohttp.ClientSession, node: str, stop_at: float) -> None:
        # Requests do not wait for each other: a node that holds them (cut off) keeps being asked.
        tasks: set[asyncio.Task[None]] = set()
        while time.monotonic() < stop_at:
            began = time.monotonic()
            if len(tasks) < self.max_in_flight:
                name = f"{PROBE_PREFIX}-{node}-{next(self._seq)}"
                for coro in (self._call(session, node, "write", "POST", "/api/pool",
                                        {"name": name, "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}, name),
                             self._call(session, node, "read", "GET", f"/api/pool/{self.uuid}")):
                    task = asyncio.create_task(coro)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _setter(self, session: aiohttp.ClientSession, stop_at: float, avoid: Callable[[], list[str]]) -> None:
        turn = 0
        while time.monotonic() < stop_at:
            began = time.monotonic()
            allowed = [n for n in self.urls if n not in avoid()] or list(self.urls)
            node = allowed[turn % len(allowed)]
            turn += 1
            value = next(self._values)
            await self._call(session, node, "set", "PUT", f"/api/pool/{self.uuid}", {**self.body, "default_server_port": value},
                             value)
            await asyncio.sleep(max(0.0, self.set_interval - (time.monotonic() - began)))

    async def run(self, session: aiohttp.ClientSession, stop_at: float, avoid: Callable[[], list[str]]) -> None:
        await asyncio.gather(self._setter(session, stop_at, avoid), *(self._node_client(session, n, stop_at) for n in self.urls))


# -- checks ---------------------------------------------------------------------------------------------


def check_stale_reads(ops: list[ProbeOp]) -> CheckResult:
    """Every linearizable read of the probe register that answered 200 saw the latest set acknowledged
    before the read began, or a newer one, or one whose outcome is unknown; never a refused one."""
    sets = sorted((o for o in ops if o.kind == "set"), key=lambda o: o.end)
    acked = [(o.end, o.value) for o in sets if o.outcome == "acked"]
    unknown = {o.value for o in sets if o.outcome == "unknown"}
    failed = {o.value for o in sets if o.outcome == "failed"}
    violations = []
    reads = [o for o in ops if o.kind == "read" and o.status == 200]
    for r in reads:
        latest = max((v for end, v in acked if end < r.start), default=None)
        if r.value in failed:
            violations.append(Violation("refused_value", f"{r.node} read {r.value}, a value whose set was refused",
                                        {"node": r.node, "value": r.value, "start": r.start}))
        elif latest is not None and r.value < latest and r.value not in unknown:
            violations.append(Violation("stale_read", f"{r.node} read {r.value} after {latest} was acknowledged",
                                        {"node": r.node, "value": r.value, "latest_acked": latest, "start": r.start}))
    return CheckResult.of("stale_reads", violations[:50], {"reads_served": len(reads), "sets_acked": len(acked),
                                                           "sets_unknown": len(unknown), "violations_total": len(violations)})


def _answer(t: Traced) -> str:
    return str(t.status) if t.status is not None else (t.error or "error")


def isolated_side(fault: NetFault, trace: list[Traced], ops: list[ProbeOp], t0: float) -> tuple[list[Violation], dict[str, Any]]:
    """What the cut-off node answered between the cut and the heal: violations (2xx to a write, a stale read)
    and a summary (answers by method and status)."""
    lo, hi = fault.started, fault.heal_started if fault.heal_started is not None else float("inf")
    inside = [t for t in trace if t.node in fault.isolated and t.start >= lo and t.end <= hi]
    violations = []
    for t in inside:
        if t.method != "GET" and t.status is not None and 200 <= t.status < 300:
            violations.append(Violation("isolated_ack", f"{t.node} (cut off) answered {t.status} to {t.method} {t.path} "
                                        f"at {t.end - t0:.3f} s", {"node": t.node, "method": t.method, "path": t.path,
                                                                   "status": t.status, "at": round(t.end - t0, 3)}))
    # The probe register: any read the cut-off node served that misses a set acked by the majority before it began.
    sets = [(o.end, o.value) for o in ops if o.kind == "set" and o.outcome == "acked"]
    served = [o for o in ops if o.kind == "read" and o.node in fault.isolated and o.status == 200 and o.start >= lo and o.end <= hi]
    for r in served:
        latest = max((v for end, v in sets if end < r.start), default=None)
        if latest is not None and r.value < latest:
            violations.append(Violation("isolated_stale_read", f"{r.node} (cut off) served {r.value} at {r.end - t0:.3f} s; "
                                        f"{latest} was acknowledged by the majority before the read began",
                                        {"node": r.node, "value": r.value, "latest_acked": latest}))
    by_answer: Counter[str] = Counter(f"{'read' if t.method == 'GET' else 'write'} {_answer(t)}" for t in inside)
    majority_sets = [o for o in ops if o.kind == "set" and o.outcome == "acked" and o.start >= lo and o.end <= hi]
    sent = [t for t in trace if t.node in fault.isolated and lo <= t.start < hi]
    sent_answers: Counter[str] = Counter(
        f"{'read' if t.method == 'GET' else 'write'} {_answer(t)} {'before' if t.end <= hi else 'after'} heal" for t in sent)
    summary = {
        "at": round(fault.started - t0, 3), "isolated": fault.isolated,
        "window_s": round(hi - lo, 3) if hi != float("inf") else None,
        "requests": len(inside), "answers": dict(sorted(by_answer.items())),
        "writes_acked": sum(1 for t in inside if t.method != "GET" and t.status is not None and 200 <= t.status < 300),
        "reads_served": sum(1 for t in inside if t.method == "GET" and t.status == 200),
        "probe_reads_served": len(served), "majority_probe_sets_acked": len(majority_sets),
        "sent_during_cut": len(sent), "sent_during_cut_answers": dict(sorted(sent_answers.items())),
    }
    return violations, summary


def _event_times(records: list[list[Any]], lo: float, hi: float, slack: float = 60.0) -> dict[str, Any]:
    """Committed commands whose time (the deciding node's wall clock) lies outside the run's real time, and
    how often event time goes backwards by more than ``slack`` s from one command to the next."""
    from storage import codec
    from storage import events as _events  # noqa: F401 - registers the event tags before decode

    times = [c.time for r in records for c in getattr(codec.decode(r[3]), "commands", ())]
    ahead = [t - hi for t in times if t > hi + slack]
    behind = [lo - t for t in times if t < lo - slack]
    backwards = sum(1 for a, b in zip(times, times[1:], strict=False) if b < a - slack)
    return {"commands": len(times), "ahead": len(ahead), "behind": len(behind),
            "max_ahead_s": round(max(ahead), 1) if ahead else 0.0, "max_behind_s": round(max(behind), 1) if behind else 0.0,
            "backwards_steps": backwards,
            "note": "an event's time is the wall clock of the node that decided it"}


def _leader_timeline(nemesis: NetNemesis, t0: float) -> list[list[Any]]:
    """[s from t0, leader, term] each time the observed (leader, term) changed (None: no leader seen)."""
    out: list[list[Any]] = []
    for at, leader, term in nemesis.leaders:
        if not out or out[-1][1:] != [leader, term]:
            out.append([round(at - t0, 2), leader, term])
    return out


def _longest_gap(times: list[float], lo: float, hi: float) -> float:
    """The longest stretch in [lo, hi] without one of ``times`` (sorted)."""
    inside = [t for t in times if lo <= t <= hi]
    edges = [lo, *inside, hi]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


RESTART_WINDOW = 5.0
"""s after a kill -9 + start of a node in which a leader change is put down to the restart, not to the skew."""


def _classify_changes(nemesis: NetNemesis, t0: float, window: float) -> list[dict[str, Any]]:
    """Each change of the observed (leader, term), with the restart it followed within ``window`` s (or None)."""
    out: list[dict[str, Any]] = []
    previous: Optional[tuple[str, int]] = None
    for at, leader, term in nemesis.leaders:
        if leader is None or term is None:
            continue
        if previous is not None and (leader, term) != previous:
            cause = next((node for r, node in reversed(nemesis.restarts) if r <= at <= r + window), None)
            out.append({"at": round(at - t0, 2), "leader": leader, "term": term, "after_restart_of": cause})
        previous = (leader, term)
    return out


def elections_during(leaders: list[tuple[float, Optional[str], Optional[int]]], lo: float, hi: float) -> int:
    """Changes of the observed (leader, term) in [lo, hi], from samples (time, leader, term) in time order."""
    changes = 0
    previous: Optional[tuple[str, int]] = None
    for at, leader, term in leaders:
        if leader is None or term is None:
            continue
        if previous is not None and (leader, term) != previous and lo <= at <= hi:
            changes += 1
        previous = (leader, term)
    return changes


def _leader_changes(nemesis: NetNemesis) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    for _, leader, term in nemesis.leaders:
        if leader is not None and term is not None and (not seen or seen[-1] != (leader, term)):
            if (leader, term) not in seen:
                seen.append((leader, term))
    return seen


# -- the run ------------------------------------------------------------------------------------------


def _skip_report(scenario: NetScenario, seed: int, duration: float, reason: str) -> dict[str, Any]:
    return {
        "verdict": "skip", "reason": reason, "scenario": scenario.name, "description": scenario.description,
        "seed": seed, "duration_s": duration, "started_at": time.time(),
        "schedule": [s.to_dict() for s in scenario.faults(seed, duration)], "faults": [],
        "operations": {"writes": {"acknowledged": 0, "failed": 0, "unknown": 0}, "register": {"ok": 0, "fail": 0, "unknown": 0}},
        "criteria": attrs.asdict(scenario.criteria), "checks": [], "register_history_excerpt": [],
    }


async def _drive(cluster: Any, nemesis: NetNemesis, writes: Any, registers: Any, probe: IsolationProbe,
                 trace: RequestTrace, duration: float, tails: Any = None) -> tuple[float, float]:
    async with traced_session(trace) as session, traced_session(trace, no_retry=True) as reg_session:
        await registers.setup(reg_session)
        await probe.setup(session)
        t0 = time.monotonic()
        stop_at = t0 + duration
        await asyncio.gather(
            writes.run(session, stop_at),
            registers.run(reg_session, stop_at),
            probe.run(session, stop_at, nemesis.minority),
            nemesis.run(t0, stop_at),
            nemesis.observe(stop_at),
            *([tails.run(t0, stop_at)] if tails is not None else []),
        )
    return t0, stop_at


def run_network_scenario(scenario: NetScenario, *, duration: float, seed: int,
                         progress: Optional[Callable[[str], None]] = None, base_dir: Optional[str] = None) -> dict[str, Any]:
    """Run a network scenario on a fresh :class:`NetnsCluster`; the report has the shared shape
    (:func:`~simulations.chaos.report.report_of`) plus ``network``."""
    from simulations.netns_cluster import NetnsCluster

    say = progress or (lambda _msg: None)
    crit = scenario.criteria
    lib = faketime_lib() if crit.needs_faketime else None
    if crit.needs_faketime and lib is None:
        say(FAKETIME_SKIP)
        return _skip_report(scenario, seed, duration, FAKETIME_SKIP)
    schedule = scenario.faults(seed, duration)
    tmp = tempfile.TemporaryDirectory(prefix="avictl-chaos-", dir=base_dir)
    cluster: Optional[NetnsCluster] = None
    started_wall = time.time()
    try:
        cluster = NetnsCluster(tmp.name, nodes=3)
        say(f"starting a fresh 3-node cluster in network namespaces on {cluster.net.subnet} (bridge {cluster.net.bridge})")
        cluster.start_all(30)
        urls = {n: cluster.api(n) for n in cluster.ids}
        trace = RequestTrace({urlsplit(u).netloc: n for n, u in urls.items()})
        writes = WriteWorkload(list(urls.values()), cluster.token, prefix=WRITE_PREFIX, concurrency=3, rate=60.0)
        registers = RegisterWorkload(list(urls.values()), cluster.token, prefix=REGISTER_PREFIX, keys=2,
                                     clients_per_key=len(urls), seed=seed)
        probe = IsolationProbe(urls, cluster.token)
        nemesis = NetNemesis(cluster, schedule, catch_up_limit=20.0, faketime=lib)
        tails = LogTailSampler(cluster)
        say(f"running {scenario.name} for {duration:g} s with seed {seed} ({len(schedule)} faults scheduled)")
        t0, stop_at = asyncio.run(_drive(cluster, nemesis, writes, registers, probe, trace, duration, tails))
        say("healing and waiting for the nodes to converge")
        nemesis.heal_all()
        cluster.wait_leader(30)
        time.sleep(0.5)
        cluster.wait_converged(60)

        say("checking")
        checks: list[CheckResult] = []
        outcomes = write_outcomes(writes.results)
        present = collect_present(cluster)
        checks.append(checkers.check_acknowledged(outcomes.acked, outcomes.failed, outcomes.unknown, present))
        # The probe's single-attempt writes: acked ones everywhere once, refused ones nowhere.
        probe_writes = [o for o in probe.ops if o.kind == "write"]
        probe_present = collect_present(cluster, PROBE_PREFIX)
        checks.append(checkers.check_acknowledged(
            {o.value for o in probe_writes if o.outcome == "acked"}, {o.value for o in probe_writes if o.outcome == "failed"},
            {o.value for o in probe_writes if o.outcome == "unknown"}, probe_present, name="probe_writes"))
        logs = collect_logs(cluster)
        checks.append(checkers.check_logs_identical(logs))
        checks.append(tails.check())
        checks.append(check_log_shape(logs[cluster.ids[0]], {r.command_id for r in writes.writer.acked}))
        history = registers.operations()
        lin = checkers.check_linearizable(history)
        checks.append(lin)
        excerpt = history_excerpt(history, lin, t0, registers.notes)
        checks.append(check_stale_reads(probe.ops))

        fired = [f for f in nemesis.faults if f.nodes]
        if crit.min_faults:
            checks.append(CheckResult.of("faults_injected", [] if len(fired) >= crit.min_faults else [
                Violation("too_few_faults", f"{len(fired)} faults fired, at least {crit.min_faults} needed; run longer",
                          {"fired": len(fired), "needed": crit.min_faults})], {"fired": len(fired)}))
        acks = sorted(r.finished for r in writes.results if r.outcome == "acked")
        write_gaps = [_longest_gap(acks, f.started, (f.heal_started or f.started) + 2.0) for f in fired]
        recov: list[float] = []
        for fault in fired:
            recov.extend(checkers.recovery_times(write_samples(writes.results, started_after=fault.started), [fault.started]))
        if crit.max_write_recovery is not None:
            checks.append(checkers.check_bound("write_recovery", recov, crit.max_write_recovery, what="write recovery (s) after fault"))
        if crit.max_catch_up is not None:
            catch = [f.catch_up if f.catch_up is not None else float("inf") for f in fired]
            checks.append(checkers.check_bound("catch_up", catch, crit.max_catch_up, what="catch-up (s) after heal"))
        isolated: list[dict[str, Any]] = []
        if crit.isolated_side:
            violations: list[Any] = []
            for fault in fired:
                if isinstance(fault, NetFault) and fault.isolated:
                    v, summary = isolated_side(fault, trace.records, probe.ops, t0)
                    violations.extend(v)
                    isolated.append(summary)
            checks.append(CheckResult.of("isolated_side", violations[:50], {
                "faults": len(isolated), "requests": sum(s["requests"] for s in isolated),
                "writes_acked": sum(s["writes_acked"] for s in isolated), "reads_served": sum(s["reads_served"] for s in isolated),
                "violations_total": len(violations)}, inconclusive=not isolated or not any(s["requests"] for s in isolated)))
        leaders = _leader_changes(nemesis)
        if crit.max_extra_leader_changes is not None:
            changes = _classify_changes(nemesis, t0, RESTART_WINDOW)
            extra = [c for c in changes if c["after_restart_of"] is None]
            checks.append(CheckResult.of("leader_changes", [
                Violation("extra_leader_change", f"the leader changed to {c['leader']} (term {c['term']}) at {c['at']} s, "
                          f"not within {RESTART_WINDOW:g} s of a restart", c) for c in extra[crit.max_extra_leader_changes:]],
                {"changes": len(changes), "after_restarts": len(changes) - len(extra), "extra": len(extra),
                 "restart_window_s": RESTART_WINDOW, "forced_by_leader_restarts": sum(
                     f.forced_leader_changes for f in fired if isinstance(f, NetFault)),
                 "timeline": changes}))

        if crit.max_elections_per_fault is not None:
            per_fault = [elections_during(nemesis.leaders, f.started, (f.heal_started or f.started) + 2.0) for f in fired]
            checks.append(CheckResult.of("elections_per_fault", [
                Violation("term_churn", f"{n} leader/term changes from the cut at {round(f.started - t0, 2)} s until 2 s "
                          f"after its heal (at most {crit.max_elections_per_fault})", {"fault": i, "changes": n})
                for i, (f, n) in enumerate(zip(fired, per_fault, strict=False)) if n > crit.max_elections_per_fault],
                {"per_fault": per_fault, "limit": crit.max_elections_per_fault}))

        event_times = _event_times(logs[cluster.ids[0]], started_wall, time.time()) if crit.needs_faketime else None

        by_node: dict[str, Counter[str]] = {n: Counter() for n in cluster.ids}
        for t in trace.records:
            if t.node in by_node:
                by_node[t.node][f"{'read' if t.method == 'GET' else 'write'} {_answer(t)}"] += 1
        report = report_of(scenario, seed, duration, started_wall, schedule, nemesis, t0, outcomes, registers,
                           attrs.asdict(crit), checks, excerpt)
        report["operations"]["probe"] = dict(Counter(f"{o.kind} {o.outcome}" for o in probe.ops))
        return {
            **report,
            "network": {
                "subnet": str(cluster.net.subnet),
                "nodes": dict(cluster.addrs),
                "mechanism": "blackhole routes inside each node's network namespace (ip route), host <-> node never cut",
                "worst_write_recovery_s": round(max(recov), 3) if recov else None,
                "write_recovery_s": [round(r, 3) if r != float("inf") else "inf" for r in recov],
                "longest_write_gap_s": [round(g, 3) for g in write_gaps],
                "longest_write_gap_note": "per fault, the longest stretch without an acknowledged write from the fault "
                                          "until 2 s after the heal",
                "leaders_seen": [list(x) for x in leaders],
                "leader_timeline": _leader_timeline(nemesis, t0),
                "isolated_side": isolated,
                "answers_by_node": {n: dict(sorted(c.items())) for n, c in by_node.items()},
                **({"event_times": event_times} if event_times is not None else {}),
            },
        }
    finally:
        if cluster is not None:
            cluster.close()
        tmp.cleanup()
