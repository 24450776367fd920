"""Storage faults for the chaos harness: crash points (failpoints) and power loss of a minority.

``crash-points``: every ~8 s a node (alternately a follower and the leader, as the cluster sees
them when the step fires) is killed -9 and restarted with one failpoint armed (name and hit
count drawn from the seed, see :mod:`cluster.failpoints`); it dies there by itself (exit 137,
``failpoint ... fired`` in its log) while it recovers and catches up - the leader's stale tail
truncated, entries appended and synced, the event store appended and synced. ``hold`` s after the
step the node is restarted unarmed (killed first if the point was not reached) and must catch up.
A failpoint can only be armed at a start, so it fires in a node that just restarted (a follower
then, an ex-leader for the "leader" steps); the acting leader's write path is hit by the kill -9
itself, not at a named point.

``power-loss-minority``: every ~10 s one node (a follower first, then the leader, alternately) is
stopped at a moment when it holds written but not yet fsync'ed data (SIGSTOP, look, SIGCONT,
retry for up to 3 s), killed -9, and every traced file in its data directory is cut back to what
it had fsync'ed (:mod:`simulations.chaos.power`); it is restarted ``hold`` s later and must catch
up. Every second pair of power losses is *torn*: the event store keeps a seeded fraction of its
unsynced tail (a partial write-back, usually half a record), which the restart must truncate.
All nodes run with ``AVICTL_POWER_TRACE=1``.

Both use :class:`StorageNemesis` (a :class:`~simulations.chaos.nemesis.Nemesis` that also knows
:class:`StorageStep`) and add the check :func:`check_restarts`: after every storage fault the
node came back (caught up), and no node ever refused to start (no ``CorruptLogError`` and no
traceback at all in any controller log); failpoints must have fired (crash-points) and the power losses must have
dropped something in at least one fault (otherwise the run proved nothing).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import attrs

from cluster.failpoints import ENV as FAILPOINTS_ENV
from cluster.failpoints import TRACE_ENV
from simulations.chaos.checkers import CheckResult, Violation
from simulations.chaos.nemesis import Fault, FaultStep, Nemesis
from simulations.chaos.power import lose_power, unsynced

__all__ = ["CRASH_POINTS", "MODES", "StorageFault", "StorageNemesis", "StorageStep", "TRACE_CLUSTER_ENV",
           "check_restarts", "crash_points_schedule", "power_loss_schedule"]

MODES = ("crash-point", "power-loss")
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


@attrs.frozen
class StorageStep(FaultStep):
    """A kill -9 of ``target`` with a storage twist: ``mode`` "crash-point" (restart armed with
    ``failpoint`` = ``count``) or "power-loss" (cut back to what was fsync'ed)."""

    mode: str = attrs.field(default="power-loss", validator=attrs.validators.in_(MODES))
    failpoint: str = ""
    count: int = 0
    torn: float = 0.0  # power-loss: fraction of the event store's unsynced tail kept (0: exactly the synced state)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["mode"] = self.mode
        if self.mode == "crash-point":
            out["failpoint"] = f"{self.failpoint}={self.count}"
        elif self.torn:
            out["torn"] = self.torn
        return out


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

    def to_dict(self, t0: float) -> dict[str, Any]:
        out = super().to_dict(t0)
        out["mode"] = self.mode
        if self.mode == "crash-point":
            out.update({"failpoint": self.failpoint, "fired": self.fired, "exit_code": self.exit_code,
                        "fired_after_s": None if self.fired_after is None else round(self.fired_after, 3)})
        else:
            out.update({"dropped": self.dropped, "unsynced_when_stopped": self.window_found, "tries": self.window_tries})
        return out


def _alternating(mode: str, every: float, hold: float, pick_point: bool) -> Callable[[random.Random, float], list[FaultStep]]:
    """A follower, then the leader, alternately. Power losses: the first pair cut exactly to the
    synced state, the next pair torn (part of the store's unsynced tail kept), and so on."""

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
            steps.append(StorageStep(round(at, 3), "kill", targets[i % 2], hold, pick=rng.random(), mode=mode,
                                     failpoint=failpoint, count=count, torn=torn))
            i += 1
            at += every + rng.uniform(-0.5, 0.5)
        return steps

    return schedule


crash_points_schedule = _alternating("crash-point", 8.0, 5.0, pick_point=True)
power_loss_schedule = _alternating("power-loss", 10.0, 2.0, pick_point=False)


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
            self.cluster.kill(node, signal.SIGKILL)
            fault.failpoint = f"{step.failpoint}={step.count}"
            self._start(node, fault.failpoint)
            self._armed[node] = fault
        return fault

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


def scenarios(scenario_cls: Any = None, criteria_cls: Any = None) -> list[Any]:
    """The two scenarios, built with the given ``Scenario`` / ``Criteria`` classes
    (:mod:`simulations.chaos.scenarios` passes its own, so neither module imports the other's at import)."""
    if scenario_cls is None or criteria_cls is None:
        from simulations.chaos.scenarios import Criteria, Scenario

        scenario_cls, criteria_cls = Scenario, Criteria
    storage = {"storage": True} if "storage" in attrs.fields_dict(scenario_cls) else {}
    return [
        scenario_cls("crash-points", "kill -9 a follower / the leader (alternately) every 8 s and restart it with a "
                     "failpoint from the seed armed; it dies there, is restarted unarmed 5 s after the step and "
                     "catches up within 10 s; nothing acked lost, logs identical, no refused start.",
                     crash_points_schedule, criteria_cls(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1),
                     **storage),
        scenario_cls("power-loss-minority", "power loss of a follower, then of the leader (alternately), every 10 s, "
                     "while it holds unsynced data: kill -9, every file cut back to what it fsync'ed (every second "
                     "pair torn: part of the store's unsynced tail kept), restart 2 s later; it catches up within "
                     "10 s, writes resume within 3 s, nothing acked lost, logs identical, no refused start.",
                     power_loss_schedule, criteria_cls(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1),
                     **storage),
    ]


def run(name: str, *, duration: float, seed: int, progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run ``crash-points`` or ``power-loss-minority`` with :func:`simulations.chaos.runner.run_scenario`.

    When :mod:`simulations.chaos.scenarios` lists them (``storage=True``) this is
    ``runner.run_scenario``. Otherwise (a tree without that wiring) it swaps in (for the call only) the scenario
    lookup, the nemesis, a cluster whose nodes trace their syncs, and the evidence collection, and
    adds :func:`check_restarts` to the report.
    """
    from simulations.chaos import runner
    from simulations.chaos.scenarios import SCENARIOS

    mine = {s.name: s for s in scenarios()}
    if name not in mine or getattr(SCENARIOS.get(name), "storage", False):
        # The runner knows the scenario (and its storage flag) itself.
        return runner.run_scenario(name, duration=duration, seed=seed, progress=progress)
    made: list[StorageNemesis] = []
    saved = (runner.get, runner.Nemesis, runner.LocalCluster, runner.collect_logs)
    real_cluster, real_collect = runner.LocalCluster, runner.collect_logs

    def nemesis(*args: Any, **kwargs: Any) -> StorageNemesis:
        made.append(StorageNemesis(*args, **kwargs))
        return made[-1]

    def cluster(*args: Any, **kwargs: Any) -> Any:
        kwargs["env"] = {**(kwargs.get("env") or {}), **TRACE_CLUSTER_ENV}
        return real_cluster(*args, **kwargs)

    def collect_logs(c: Any) -> Any:
        logs = real_collect(c)
        for n in made:
            n.collect_evidence()
        return logs

    runner.get, runner.Nemesis, runner.LocalCluster, runner.collect_logs = (
        lambda n: mine[n], nemesis, cluster, collect_logs)
    try:
        report = runner.run_scenario(name, duration=duration, seed=seed, progress=progress)
    finally:
        runner.get, runner.Nemesis, runner.LocalCluster, runner.collect_logs = saved
    check = check_restarts(made[0])
    report["checks"].append(check.to_dict())
    report["verdict"] = "pass" if all(c["ok"] for c in report["checks"]) else "fail"
    report["storage_evidence"] = made[0].evidence
    return report


def main() -> None:  # pragma: no cover - a thin CLI
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description="Run a storage-fault chaos scenario.")
    parser.add_argument("scenario", choices=["crash-points", "power-loss-minority"])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--out", default=None)
    args = parser.parse_args()
    report = run(args.scenario, duration=args.duration, seed=args.seed, progress=lambda m: print(m, file=sys.stderr))
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    from simulations.chaos.runner import verdict_rows

    for row in verdict_rows(report):
        print(" | ".join(str(x) for x in row), file=sys.stderr)
    sys.exit(0 if report["verdict"] == "pass" else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
