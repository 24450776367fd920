"""Run one chaos scenario end to end and judge it: ``avictl chaos run`` calls :func:`run_scenario`.

1. A fresh 3-node :class:`LocalCluster` in a temp dir (never the user's context), closed in ``finally``.
2. The workloads (config writes, cas registers) run for ``duration`` s while the nemesis fires the
   scenario's schedule (from ``random.Random(seed)``) and a watcher records the leader.
3. Heal (restart / resume everything), wait for a leader and for convergence.
4. Checkers: acknowledged writes (per node, stale reads after convergence), acked command ids
   once in the log, logs identical with gapless revisions, linearizability of the registers,
   write recovery after each fault, catch-up, leader changes — per the scenario's criteria.

The report is plain data; ``verdict`` is ``pass`` only when every check passed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Optional

import aiohttp

from simulations.chaos import checkers
from simulations.chaos.checkers import CheckResult, Violation
from simulations.chaos.history import write_outcomes, write_samples
from simulations.chaos.nemesis import Nemesis
from simulations.chaos.scenarios import Scenario, get
from simulations.chaos.workloads import RegisterWorkload, WriteWorkload, no_retry_session
from simulations.local_cluster import LocalCluster

__all__ = ["collect_present", "run_scenario", "verdict_rows"]

WRITE_PREFIX = "cw"
REGISTER_PREFIX = "creg"


def collect_present(cluster: LocalCluster, prefix: str = WRITE_PREFIX) -> dict[str, list[str]]:
    """Per node, the names of the write workload's pools it holds (local view, after convergence)."""
    out: dict[str, list[str]] = {}
    for node in cluster.ids:
        out[node] = [n for n in cluster.object_names(node, "pool", stale=True) if n.startswith(prefix + "-")]
    return out


def collect_logs(cluster: LocalCluster) -> dict[str, list[list[Any]]]:
    return {node: cluster.raw_records(node) for node in cluster.ids}


def _check_log_shape(reference: list[list[Any]], acked_command_ids: set[str]) -> CheckResult:
    """Revisions gapless from 1; every acked command id in exactly one committed record."""
    from storage import codec
    from storage import events as _events  # noqa: F401 - registers the event tags before decode

    violations: list[Violation] = []
    revisions = [r[1] + i for r in reference for i in range(r[2])]
    if revisions != list(range(1, len(revisions) + 1)):
        first_bad = next((i for i, rev in enumerate(revisions) if rev != i + 1), len(revisions))
        violations.append(Violation("gap", f"revisions are not gapless near position {first_bad}", {"position": first_bad}))
    seen: Counter[str] = Counter()
    for r in reference:
        for command in codec.decode(r[3]).commands:
            seen[command.command_id] += 1
    for cid in sorted(acked_command_ids):
        if seen[cid] != 1:
            violations.append(Violation("command_count", f"acked command {cid} is in {seen[cid]} records", {"id": cid, "count": seen[cid]}))
    return CheckResult.of("log_commands_once", violations[:50], {"revisions": len(revisions), "records": len(reference),
                                                                 "violations_total": len(violations)})


def _history_excerpt(history: list[Any], lin: CheckResult, t0: float, notes: dict[Any, str], window: float = 1.5) -> list[dict[str, Any]]:
    """For a linearizability violation: every op on that key within ``window`` s of the failing op (times from t0)."""
    if not lin.violations:
        return []
    failing = lin.violations[0].data["op"]
    lo, hi = failing.invoked_at - window, (failing.completed_at or failing.invoked_at) + window
    out = []
    for op in history:
        if op.key == failing.key and op.invoked_at <= hi and (op.completed_at is None or op.completed_at >= lo):
            d = op.to_dict()
            if (op.process, op.invoked_at) in notes:
                d["answer"] = notes[(op.process, op.invoked_at)]
            d["invoked_at"] = round(op.invoked_at - t0, 4)
            d["completed_at"] = None if op.completed_at is None else round(op.completed_at - t0, 4)
            out.append(d)
    return out


def _check_leader_stable(nemesis: Nemesis) -> CheckResult:
    seen = [(t, leader, term) for t, leader, term in nemesis.leaders if leader is not None]
    distinct = sorted({(leader, term) for _, leader, term in seen}, key=repr)
    violations = []
    if len(distinct) > 1:
        violations.append(Violation("leader_change", f"the leader changed during a run without faults: {distinct}",
                                    {"leaders": [list(d) for d in distinct]}))
    no_leader = sum(1 for _, leader, _ in nemesis.leaders if leader is None)
    if no_leader:
        violations.append(Violation("no_leader", f"{no_leader} observations found no leader", {"count": no_leader}))
    return CheckResult.of("no_leader_change", violations, {"observations": len(nemesis.leaders), "leaders": [list(d) for d in distinct]})


async def _drive(cluster: LocalCluster, scenario: Scenario, seed: int, duration: float, nemesis: Nemesis,
                 writes: WriteWorkload, registers: RegisterWorkload) -> float:
    async with aiohttp.ClientSession() as session, no_retry_session() as reg_session:
        await registers.setup(reg_session)
        t0 = time.monotonic()
        stop_at = t0 + duration
        await asyncio.gather(
            writes.run(session, stop_at),
            registers.run(reg_session, stop_at),
            nemesis.run(t0, stop_at),
            nemesis.observe(stop_at),
        )
    return t0


def run_scenario(name: str, *, duration: float, seed: int, progress: Optional[Callable[[str], None]] = None,
                 base_dir: Optional[str] = None) -> dict[str, Any]:
    """Run scenario ``name`` for ``duration`` s with ``seed``; returns the report (see module doc)."""
    say = progress or (lambda _msg: None)
    scenario = get(name)
    schedule = scenario.faults(seed, duration)
    tmp = tempfile.TemporaryDirectory(prefix="avictl-chaos-", dir=base_dir)
    cluster = LocalCluster(tmp.name, nodes=3)
    started_wall = time.time()
    try:
        say("starting a fresh 3-node cluster")
        cluster.start_all(30)
        urls = [cluster.api(n) for n in cluster.ids]
        writes = WriteWorkload(urls, cluster.token, prefix=WRITE_PREFIX, concurrency=4, rate=100.0)
        registers = RegisterWorkload(urls, cluster.token, prefix=REGISTER_PREFIX, keys=3, clients_per_key=2, seed=seed)
        nemesis = Nemesis(cluster, schedule, catch_up_limit=20.0)
        say(f"running {scenario.name} for {duration:g} s with seed {seed} ({len(schedule)} faults scheduled)")
        t0 = asyncio.run(_drive(cluster, scenario, seed, duration, nemesis, writes, registers))
        say("healing and waiting for the nodes to converge")
        nemesis.heal_all()
        cluster.wait_leader(30)
        # Converged twice in a row: a write still retrying could otherwise land after the first.
        time.sleep(0.5)
        cluster.wait_converged(60)

        say("checking")
        checks: list[CheckResult] = []
        outcomes = write_outcomes(writes.results)
        present = collect_present(cluster)
        checks.append(checkers.check_acknowledged(outcomes.acked, outcomes.failed, outcomes.unknown, present))
        logs = collect_logs(cluster)
        checks.append(checkers.check_logs_identical(logs))
        checks.append(_check_log_shape(logs[cluster.ids[0]], {r.command_id for r in writes.writer.acked}))
        history = registers.operations()
        lin = checkers.check_linearizable(history)
        checks.append(lin)
        excerpt = _history_excerpt(history, lin, t0, registers.notes)

        crit = scenario.criteria
        if crit.min_faults:
            fired = len(nemesis.faults)
            checks.append(CheckResult.of("faults_injected", [] if fired >= crit.min_faults else [
                Violation("too_few_faults", f"{fired} faults fired, at least {crit.min_faults} needed; run longer",
                          {"fired": fired, "needed": crit.min_faults})], {"fired": fired}))
        if crit.max_write_recovery is not None:
            recov = []
            for fault in nemesis.faults:
                recov.extend(checkers.recovery_times(write_samples(writes.results, started_after=fault.started), [fault.started]))
            checks.append(checkers.check_bound("write_recovery", recov, crit.max_write_recovery, what="write recovery (s) after fault"))
        if crit.max_catch_up is not None:
            catch = [f.catch_up if f.catch_up is not None else float("inf") for f in nemesis.faults]
            checks.append(checkers.check_bound("catch_up", catch, crit.max_catch_up, what="catch-up (s) after heal"))
        if crit.no_leader_change:
            checks.append(_check_leader_stable(nemesis))

        verdict = "pass" if all(c.ok for c in checks) else "fail"
        return {
            "verdict": verdict,
            "scenario": scenario.name,
            "description": scenario.description,
            "seed": seed,
            "duration_s": duration,
            "started_at": started_wall,
            "schedule": [s.to_dict() for s in schedule],
            "faults": [f.to_dict(t0) for f in nemesis.faults],
            "operations": {
                "writes": {"acknowledged": len(outcomes.acked), "failed": len(outcomes.failed), "unknown": len(outcomes.unknown)},
                "register": dict(registers.counts),
            },
            "criteria": {
                "max_write_recovery_s": crit.max_write_recovery,
                "max_catch_up_s": crit.max_catch_up,
                "no_leader_change": crit.no_leader_change,
                "min_faults": crit.min_faults,
            },
            "checks": [c.to_dict() for c in checks],
            "register_history_excerpt": excerpt,
        }
    finally:
        cluster.close()
        tmp.cleanup()


def _check(report: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    return next((c for c in report["checks"] if c["name"] == name), None)


def verdict_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The verdict table: [CHECK, VERDICT, DETAIL] rows."""
    rows: list[list[Any]] = []
    w = report["operations"]["writes"]
    reg = report["operations"]["register"]
    rows.append(["operations (writes)", "-", f"acknowledged {w['acknowledged']} / failed {w['failed']} / unknown {w['unknown']}"])
    rows.append(["operations (register)", "-", f"ok {reg['ok']} / fail {reg['fail']} / unknown {reg['unknown']}"])
    rows.append(["faults", "-", ", ".join(f"{f['action']} {'+'.join(f['nodes'])} @{f['at']}s" for f in report["faults"]) or "none"])
    for c in report["checks"]:
        d = c["details"]
        if c["name"] == "acknowledged_writes":
            kinds = d.get("by_kind", {})
            detail = (f"lost {kinds.get('lost', 0)}, duplicated {kinds.get('duplicated', 0)}, failed present "
                      f"{kinds.get('failed_present', 0)}, divergent {kinds.get('divergent', 0)}, unknown applied {d.get('unknown_applied', 0)}")
        elif c["name"] == "logs_identical":
            detail = f"ends {d.get('ends')}"
        elif c["name"] == "log_commands_once":
            detail = f"{d.get('revisions')} revisions gapless, acked commands once"
        elif c["name"] == "linearizable":
            detail = f"{d.get('ops')} ops on {d.get('keys')} keys, {d.get('steps')} steps"
        elif c["name"] in ("write_recovery", "catch_up"):
            worst = d.get("worst")
            detail = f"worst {worst:.3f} s (limit {d.get('limit')} s) over {d.get('count')}" if isinstance(worst, float) else (
                f"worst {worst} (limit {d.get('limit')} s) over {d.get('count')}")
        elif c["name"] == "no_leader_change":
            detail = f"leaders seen {d.get('leaders')}"
        else:
            detail = ", ".join(f"{k} {v}" for k, v in d.items())
        if c["violations"]:
            detail += f"; {len(c['violations'])} violation(s), e.g. {c['violations'][0]['message']}"
        rows.append([c["name"], c["verdict"], detail])
    rows.append(["VERDICT", report["verdict"], f"{report['scenario']} seed {report['seed']} {report['duration_s']:g} s"])
    return rows
