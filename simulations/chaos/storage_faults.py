"""Storage faults for the chaos harness: crash points (failpoints) and power loss of a minority.

``crash-points``: every ~8 s one failpoint (name and hit count drawn from the seed, see
:mod:`storage.failpoints`) is armed on a node, which then dies there by itself (exit 137,
``failpoint ... fired`` in its log). The steps cycle through four kinds:

1. a follower, armed *live*: the node keeps running and dies at the Nth hit from then on, in the
   follower's write path (entries from ``append_entries`` added and synced, the store appended);
2. the acting leader, armed live: the node that is the leader when the step fires (the nemesis asks
   every node's ``/internal/status``), so it dies in the leader's write path (its own new entries,
   the commit, the store) - a leader crash at a named point, not only a kill -9;
3. a follower killed -9 and restarted armed: it dies while it recovers and catches up (its stale
   tail truncated, entries appended and synced, the event store appended and synced);
4. the acting leader again, armed live.

Live arming needs the nodes started through :mod:`simulations.chaos._armed_node` (an
:class:`ArmableCluster`); the harness writes the spec to the node's arm file and waits for the
acknowledgement. Each fault's report entry has ``role`` (the role the node itself reported right
after it was armed: leader / follower; ``restarting`` for kind 3) and ``armed`` (live / at
restart). A live fault that fired starts (``at``, what write recovery is measured from) at the
node's death, read from its log's mtime; ``armed_at`` is when it was armed, ``leader_when_fired``
the leader the nemesis saw last before the death (it looks every 0.5 s). ``hold`` s after the
arming the node is restarted unarmed (killed first if the point was not reached) and must catch up.

``power-loss-minority``: every ~10 s one node (a follower first, then the leader, alternately) is
stopped at a moment when it holds written but not yet fsync'ed data (SIGSTOP, look, SIGCONT,
retry for up to 3 s), killed -9, and every traced file in its data directory is cut back to what
it had fsync'ed (:mod:`simulations.chaos.power`); it is restarted ``hold`` s later and must catch
up. Every second pair of power losses is *torn*: the event store keeps a seeded fraction of its
unsynced tail (a partial write-back, usually half a record), which the restart must truncate.
All nodes run with ``AVICTL_POWER_TRACE=1``.

Both use :class:`StorageNemesis` (a :class:`~simulations.chaos.nemesis.Nemesis` that also knows
:class:`~simulations.chaos.model.StorageStep`) and add the check :func:`check_restarts`: after
every storage fault the node came back (caught up), and no node ever refused to start (no
``CorruptLogError`` and no traceback at all in any controller log); failpoints must have fired
(crash-points) and the power losses must have dropped something in at least one fault (otherwise
the run proved nothing).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import attrs

from simulations.chaos._armed_node import ARM_FILE_ENV, ARMED_SUFFIX, REFUSED_SUFFIX
from simulations.chaos.checkers import CheckResult, Violation
from simulations.chaos.model import Criteria, FaultStep, Scenario, StorageStep
from simulations.chaos.nemesis import Fault, Nemesis
from simulations.chaos.power import lose_power, unsynced
from simulations.local_cluster import LocalCluster
from storage.failpoints import ENV as FAILPOINTS_ENV
from storage.failpoints import TRACE_ENV

__all__ = ["ArmableCluster", "CRASH_POINTS", "STORAGE_SCENARIOS", "StorageFault", "StorageNemesis", "TRACE_CLUSTER_ENV",
           "check_restarts", "crash_points_schedule", "power_loss_schedule"]

ARM_ACK_LIMIT = 2.0  # s to wait for a running node to acknowledge a live arming
POWER_WINDOW_LIMIT = 3.0  # s to look for a moment with unsynced data before a power loss
TRACE_CLUSTER_ENV = {TRACE_ENV: "1"}

# The failpoints a crash-point step picks from, with the range of the hit count (a restarted node
# passes through each of them many times while it catches up). ``raft.dump.before_rename`` is left
# out: a dump is written only every 20 000 entries, more than a run commits.
CRASH_POINTS: dict[str, tuple[int, int]] = {
    "raft.journal.after_add": (1, 60),
    "raft.journal.before_sync": (1, 20),
    "raft.journal.after_sync": (1, 20),
    "raft.meta.before_rename": (1, 3),
    "store.after_append": (1, 40),
    "store.before_sync": (1, 20),
    "store.after_sync": (1, 20),
}


@attrs.define
class StorageFault(Fault):
    mode: str = ""
    failpoint: str = ""
    fired: Optional[bool] = None  # crash-point: did the node die at its failpoint within the hold
    fired_after: Optional[float] = None  # s from the armed restart to its death
    exit_code: Optional[int] = None
    dropped: Optional[dict[str, Any]] = None  # power-loss: what the cut dropped
    window_found: Optional[bool] = None  # power-loss: stopped while something was unsynced
    window_tries: int = 0
    role: Optional[str] = None  # crash-point: leader / follower as the node reported it once armed; "restarting"
    armed: str = ""  # crash-point: "live" / "at restart"
    term: Optional[int] = None  # crash-point, live: the node's term once armed
    arm_error: str = ""  # crash-point, live: why the arming was not acknowledged
    armed_at: Optional[float] = None  # crash-point, live: monotonic, when armed (``started`` becomes the death once fired)
    leader_when_fired: Optional[str] = None  # crash-point, live: the leader the nemesis last saw before the death

    def to_dict(self, t0: float) -> dict[str, Any]:
        out = super().to_dict(t0)
        out["mode"] = self.mode
        if self.mode == "crash-point":
            out.update({"failpoint": self.failpoint, "role": self.role, "armed": self.armed, "term": self.term,
                        "armed_at": None if self.armed_at is None else round(self.armed_at - t0, 3),
                        "leader_when_fired": self.leader_when_fired,
                        "fired": self.fired, "exit_code": self.exit_code,
                        "fired_after_s": None if self.fired_after is None else round(self.fired_after, 3)})
            if self.arm_error:
                out["arm_error"] = self.arm_error
        else:
            out.update({"dropped": self.dropped, "unsynced_when_stopped": self.window_found, "tries": self.window_tries})
        return out


def _alternating(mode: str, every: float, hold: float, pick_point: bool) -> Callable[[random.Random, float], list[FaultStep]]:
    """A follower, then the leader, alternately. Power losses: the first pair cut exactly to the
    synced state, the next pair torn (part of the store's unsynced tail kept), and so on. Crash
    points: armed live, except every second follower step, armed at a restart (see the module doc)."""

    def schedule(rng: random.Random, duration: float) -> list[FaultStep]:
        steps: list[FaultStep] = []
        at = rng.uniform(2.0, 4.0)
        targets = ("follower", "leader")
        i = 0
        while at + hold + 1.0 <= duration:
            failpoint, count, torn = "", 0, 0.0
            if pick_point:
                failpoint = rng.choice(sorted(CRASH_POINTS))
                lo, hi = CRASH_POINTS[failpoint]
                count = rng.randint(lo, hi)
            elif (i // 2) % 2 == 1:
                torn = round(rng.uniform(0.05, 0.95), 3)
            arm = "restart" if i % 4 == 2 else "live"
            steps.append(StorageStep(round(at, 3), "kill", targets[i % 2], hold, pick=rng.random(), mode=mode,
                                     failpoint=failpoint, count=count, torn=torn, arm=arm))
            i += 1
            at += every + rng.uniform(-0.5, 0.5)
        return steps

    return schedule


crash_points_schedule = _alternating("crash-point", 8.0, 5.0, pick_point=True)
power_loss_schedule = _alternating("power-loss", 10.0, 2.0, pick_point=False)


class ArmableCluster(LocalCluster):
    """A :class:`LocalCluster` whose nodes run through :mod:`simulations.chaos._armed_node`, so that a
    failpoint can be armed on a running node (:meth:`arm_file`); otherwise the same."""

    def arm_file(self, node_id: str) -> Path:
        return self.base_dir / node_id / "failpoints.arm"

    controller_module = "simulations.chaos._armed_node"

    def node_env(self, node_id: str) -> dict[str, str]:
        return {ARM_FILE_ENV: str(self.arm_file(node_id))}

    def start(self, node_id: str) -> None:
        # A stale arming must not reach the new process.
        for suffix in ("", ARMED_SUFFIX, REFUSED_SUFFIX):
            Path(f"{self.arm_file(node_id)}{suffix}").unlink(missing_ok=True)
        super().start(node_id)

    def arm(self, node_id: str, spec: str, timeout: float = ARM_ACK_LIMIT) -> Optional[str]:
        """Arm ``spec`` on the running ``node_id``; None once acknowledged, else why not."""
        target = self.arm_file(node_id)
        ack, refused = Path(f"{target}{ARMED_SUFFIX}"), Path(f"{target}{REFUSED_SUFFIX}")
        ack.unlink(missing_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(spec + "\n")
        os.replace(tmp, target)
        deadline = time.monotonic() + timeout
        while True:
            if ack.exists():
                return None
            if refused.exists():
                return f"refused: {refused.read_text().strip()}"
            if not self.alive(node_id):
                target.unlink(missing_ok=True)
                return "the node exited before it acknowledged"
            if time.monotonic() >= deadline:
                target.unlink(missing_ok=True)
                return f"not acknowledged within {timeout:g} s"
            time.sleep(0.005)


class StorageNemesis(Nemesis):
    """A :class:`Nemesis` that also runs :class:`StorageStep` s (other steps as before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._armed: dict[str, StorageFault] = {}
        self._log_offsets: dict[str, int] = {}
        self.evidence: dict[str, Any] = {}

    def _log(self, node: str) -> Path:
        return Path(self.cluster.base_dir) / node / "controller.log"

    def _start(self, node: str, failpoints: str = "") -> None:
        base = dict(self.cluster.env)
        try:
            if failpoints:
                self.cluster.env = {**base, FAILPOINTS_ENV: failpoints}
            else:
                self.cluster.env = {k: v for k, v in base.items() if k != FAILPOINTS_ENV}
            self.cluster.start(node)
        finally:
            self.cluster.env = base

    def _inject(self, step: FaultStep) -> Fault:
        if not isinstance(step, StorageStep):
            return super()._inject(step)
        nodes, leader = self._targets(step)
        started, started_wall = time.monotonic(), time.time()
        fault = StorageFault(step, nodes, started, leader_before=leader, started_wall=started_wall, mode=step.mode)
        for node in nodes:
            if step.mode == "power-loss":
                data_dir = self.cluster.configs[node].data_dir
                fault.window_found, fault.window_tries = self._stop_while_unsynced(node, data_dir, store_only=step.torn > 0)
                self.cluster.kill(node, signal.SIGKILL)
                # The fault is the power loss itself, not the search for its moment.
                fault.started, fault.started_wall = time.monotonic(), time.time()
                fault.dropped = lose_power(data_dir, torn=step.torn)
                self.killed.add(node)
                continue
            fault.failpoint = f"{step.failpoint}={step.count}"
            if step.arm == "live" and isinstance(self.cluster, ArmableCluster):
                self._arm_live(node, fault, leader)
            else:
                self.cluster.kill(node, signal.SIGKILL)
                fault.role, fault.armed = "restarting", "at restart"
                self._start(node, fault.failpoint)
            self._armed[node] = fault
        return fault

    def _arm_live(self, node: str, fault: StorageFault, leader: Optional[str]) -> None:
        """Arm the running ``node``, picked just before from every node's status (``leader``: the
        leader then); the point counts its hits from the acknowledgement on. ``role`` is what the
        node reports right after it, or the role it was picked in when it is already gone."""
        assert isinstance(self.cluster, ArmableCluster)
        fault.armed = "live"
        fault.role = "leader" if node == leader else "follower"
        error = self.cluster.arm(node, fault.failpoint)
        fault.started, fault.started_wall = time.monotonic(), time.time()
        if error is not None:
            fault.arm_error = error
        st = self.cluster.status(node)
        if st is not None:
            fault.role, fault.term = st.get("role", fault.role), st.get("term")

    def _stop_while_unsynced(self, node: str, data_dir: str, limit: float = POWER_WINDOW_LIMIT, *,
                             store_only: bool = False) -> tuple[bool, int]:
        """SIGSTOP ``node`` at a moment when it holds written but not yet fsync'ed data (tries for
        ``limit`` s, SIGCONT and a few ms between tries); returns (found, tries). The node is left
        stopped either way: the caller kills it, so the power goes while that data is unsynced."""
        deadline = time.monotonic() + limit
        tries = 0
        while True:
            tries += 1
            self.cluster.pause(node)
            # SIGSTOP is delivered asynchronously: look only once every thread is stopped.
            _wait_stopped(self.cluster.procs[node].pid)
            if unsynced(data_dir, store_only=store_only):
                return True, tries
            if time.monotonic() >= deadline:
                return False, tries
            self.cluster.resume(node)
            time.sleep(random.uniform(0.0, 0.01))

    def _heal_nodes(self, nodes: list[str]) -> None:
        for node in nodes:
            fault = self._armed.pop(node, None)
            if fault is None:
                continue
            proc = self.cluster.procs.get(node)
            code = proc.poll() if proc is not None else None
            if code is None:
                fault.fired = False
                self.cluster.kill(node, signal.SIGKILL)
                code = proc.poll() if proc is not None else None
            else:
                fault.fired = code == 137 and self._fired_in_log(node, fault.failpoint.split("=")[0])
                fault.fired_after = self._death_time(node, fault)
                if fault.armed == "live" and fault.fired and fault.fired_after is not None:
                    # A live arming is no fault until the node dies: recovery is measured from the death.
                    fault.armed_at = fault.started
                    fault.started += fault.fired_after
                    fault.started_wall += fault.fired_after
                    seen = [leader for at, leader, _ in self.leaders if at <= fault.started and leader is not None]
                    fault.leader_when_fired = seen[-1] if seen else None
            fault.exit_code = code
            self.killed.add(node)
        for node in nodes:
            if node in self.killed or not self.cluster.alive(node):
                self._start(node)
                self.killed.discard(node)
            if node in self.paused:
                self.cluster.resume(node)
                self.paused.discard(node)

    def _fired_in_log(self, node: str, name: str) -> bool:
        try:
            text = self._log(node).read_text(errors="replace")
        except OSError:
            return False
        return f"failpoint {name} fired" in text

    def _death_time(self, node: str, fault: StorageFault) -> Optional[float]:
        # The node's exit is noticed at the heal; its log's mtime is when it last wrote (its death line).
        try:
            return max(0.0, self._log(node).stat().st_mtime - fault.started_wall)
        except OSError:
            return None

    def heal_all(self) -> None:
        for node in list(self._armed):
            self._heal_nodes([node])
        super().heal_all()

    def collect_evidence(self) -> dict[str, Any]:
        """Per node, what its log says about recoveries (call while the cluster's files exist)."""
        out: dict[str, Any] = {}
        for node in self.cluster.ids:
            try:
                text = self._log(node).read_text(errors="replace")
            except OSError:
                text = ""
            out[node] = {
                "failpoints_fired": text.count("failpoint "),
                "torn_tails_truncated": text.count("event_log_torn_tail_truncated"),
                "corrupt_log_refusals": text.count("CorruptLogError"),
                "tracebacks": text.count("Traceback"),
                "traceback_excerpt": _first_traceback(text),
            }
        self.evidence = out
        return out


def _wait_stopped(pid: int, timeout: float = 1.0) -> bool:
    """Wait until every thread of ``pid`` is stopped (state T in /proc); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = []
            for task in Path(f"/proc/{pid}/task").iterdir():
                stat = (task / "stat").read_text()
                states.append(stat[stat.rindex(")") + 2])
        except (OSError, ValueError):
            return False
        if all(state in "tT" for state in states):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def _first_traceback(text: str) -> Optional[str]:
    at = text.find("Traceback")
    return None if at < 0 else text[at: at + 1500]


def check_restarts(nemesis: StorageNemesis) -> CheckResult:
    """Every storage fault's node came back and caught up; no refused start; the faults did something."""
    violations: list[Violation] = []
    faults = [f for f in nemesis.faults if isinstance(f, StorageFault) and f.nodes]
    evidence = nemesis.evidence or nemesis.collect_evidence()
    for f in faults:
        if f.catch_up is None:
            violations.append(Violation("no_recovery", f"{f.nodes} did not catch up after its {f.mode} fault",
                                        {"nodes": f.nodes, "mode": f.mode}))
    for node, ev in evidence.items():
        if ev["corrupt_log_refusals"] or ev["tracebacks"]:
            violations.append(Violation("refused_start", f"{node} logged a CorruptLogError or a traceback",
                                        {"node": node, "excerpt": ev["traceback_excerpt"]}))
    crash = [f for f in faults if f.mode == "crash-point"]
    power = [f for f in faults if f.mode == "power-loss"]
    fired = sum(1 for f in crash if f.fired)
    if crash and not fired:
        violations.append(Violation("no_failpoint_fired", "no armed failpoint was reached; run longer", {"armed": len(crash)}))
    dropped = sum(1 for f in power if _dropped_something(f.dropped))
    if power and not dropped:
        violations.append(Violation("nothing_dropped", "no power loss dropped unsynced data", {"power_losses": len(power)}))
    details = {
        "faults": len(faults),
        "failpoints_armed": len(crash),
        "failpoints_fired": fired,
        "fired": sorted(f.failpoint for f in crash if f.fired),
        "not_reached": sorted(f.failpoint for f in crash if f.fired is False),
        "power_losses": len(power),
        "power_losses_dropping_data": dropped,
        "torn_tails_truncated": sum(ev["torn_tails_truncated"] for ev in evidence.values()),
        "refused_starts": sum(ev["corrupt_log_refusals"] for ev in evidence.values()),
    }
    return CheckResult.of("storage_fault_recovery", violations, details)


def _dropped_something(dropped: Optional[dict[str, Any]]) -> bool:
    if not dropped:
        return False
    journal = dropped.get("journal") or {}
    return bool(dropped.get("segments")) or bool(journal.get("changed"))


STORAGE_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("crash-points", "every 8 s arm a failpoint from the seed on a follower, then on the acting leader "
                 "(alternately; armed on the running node, every fourth step on a follower killed -9 and "
                 "restarted armed); it dies there, is restarted unarmed 5 s after the step and catches up "
                 "within 10 s; writes resume within 3 s, nothing acked lost, logs identical, no refused start.",
                 crash_points_schedule, Criteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1),
                 storage=True),
        Scenario("power-loss-minority", "power loss of a follower, then of the leader (alternately), every 10 s, "
                 "while it holds unsynced data: kill -9, every file cut back to what it fsync'ed (every second "
                 "pair torn: part of the store's unsynced tail kept), restart 2 s later; it catches up within "
                 "10 s, writes resume within 3 s, nothing acked lost, logs identical, no refused start.",
                 power_loss_schedule, Criteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1),
                 storage=True),
    ]
}
"""``crash-points`` and ``power-loss-minority`` by name (registered in :mod:`simulations.chaos.scenarios`;
``storage`` true: :func:`simulations.chaos.runner.run_scenario` runs them with an :class:`ArmableCluster`
whose nodes trace their syncs, a :class:`StorageNemesis` and :func:`check_restarts`)."""
