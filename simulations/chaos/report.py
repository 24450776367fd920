"""The report every chaos run returns, and its verdict table.

:func:`report_of` builds the part every scenario family shares (verdict, scenario, seed, schedule,
faults, operations, criteria, checks, the register history around a linearizability violation);
the runner adds ``data_plane`` and ``storage_evidence``, the network scenarios ``network``.
:func:`verdict_rows` is the [CHECK, VERDICT, DETAIL] table ``avictl chaos run`` prints from any
of them. The report is plain data; ``verdict`` is ``pass`` only when every check passed.
"""

from __future__ import annotations

from typing import Any

from simulations.chaos.checkers import CheckResult
from simulations.chaos.model import TAKEOVER
from simulations.chaos.nemesis import Nemesis
from simulations.chaos.workloads import RegisterWorkload

__all__ = ["history_excerpt", "report_of", "verdict_rows"]


def history_excerpt(history: list[Any], lin: CheckResult, t0: float, notes: dict[Any, str], window: float = 1.5) -> list[dict[str, Any]]:
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


def report_of(scenario: Any, seed: int, duration: float, started_wall: float, schedule: list[Any], nemesis: Nemesis,
              t0: float, outcomes: Any, registers: RegisterWorkload, criteria: dict[str, Any], checks: list[CheckResult],
              excerpt: list[dict[str, Any]]) -> dict[str, Any]:
    """The report every scenario family shares; a family adds its own sections (data_plane, network)."""
    return {
        "verdict": "pass" if all(c.ok for c in checks) else "fail",
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
        "criteria": criteria,
        "checks": [c.to_dict() for c in checks],
        "register_history_excerpt": excerpt,
    }


def verdict_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The verdict table: [CHECK, VERDICT, DETAIL] rows."""
    rows: list[list[Any]] = []
    if report.get("reason"):
        rows.append(["reason", report["verdict"], report["reason"]])
    w = report["operations"]["writes"]
    reg = report["operations"]["register"]
    rows.append(["operations (writes)", "-", f"acknowledged {w['acknowledged']} / failed {w['failed']} / unknown {w['unknown']}"])
    rows.append(["operations (register)", "-", f"ok {reg['ok']} / fail {reg['fail']} / unknown {reg['unknown']}"])
    dp = report.get("data_plane")
    if dp is not None:
        c = dp["counts"]
        rows.append(["operations (data plane)", "-",
                     f"{dp['requests']} requests to {dp['vip']}: new {c['new']['ok']}/{c['new']['requests']} ok, keep-alive "
                     f"{c['keepalive']['ok']}/{c['keepalive']['requests']} ok ({c['keepalive']['drops']} dropped); "
                     f"availability {dp['availability']}"])
        rows.append(["data-plane gaps", "-", f"worst {dp['worst_gap_s']} s, median {dp['median_gap_s']} s, per fault {dp['gaps_s']}"])
    rows.append(["faults", "-", ", ".join(f"{f['action']} {'+'.join(f['nodes']) or f['target']} @{f['at']}s" for f in report["faults"]) or "none"])
    for c in report["checks"]:
        d = c["details"]
        if c["name"] == "acknowledged_writes":
            kinds = d.get("by_kind", {})
            detail = (f"lost {kinds.get('lost', 0)}, duplicated {kinds.get('duplicated', 0)}, failed present "
                      f"{kinds.get('failed_present', 0)}, divergent {kinds.get('divergent', 0)}, unknown applied {d.get('unknown_applied', 0)}")
        elif c["name"] == "logs_identical":
            detail = f"ends {d.get('ends')}"
        elif c["name"] == "log_prefixes_during_run":
            detail = (f"{d.get('samples')} samples of {len(d.get('nodes') or [])} nodes, {d.get('compared')} records "
                      f"compared at shared revisions, {d.get('violations_total')} divergent")
        elif c["name"] == "log_commands_once":
            detail = f"{d.get('revisions')} revisions gapless, acked commands once"
        elif c["name"] == "linearizable":
            detail = f"{d.get('ops')} ops on {d.get('keys')} keys, {d.get('steps')} steps"
        elif c["name"] in ("write_recovery", "catch_up"):
            worst = d.get("worst")
            detail = f"worst {worst:.3f} s (limit {d.get('limit')} s) over {d.get('count')}" if isinstance(worst, float) else (
                f"worst {worst} (limit {d.get('limit')} s) over {d.get('count')}")
        elif c["name"] in ("write_recovery_after_heal", "pair_settled"):
            worst = d.get("worst")
            detail = f"worst {worst:.3f} s (limit {d.get('limit')} s) over {d.get('count')}" if isinstance(worst, float) else (
                f"worst {worst} (limit {d.get('limit')} s) over {d.get('count')}")
        elif c["name"] == "failover_gaps":
            med, worst = d.get("median"), d.get("worst")
            fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
            detail = (f"median {fmt(med)} s (limit {d.get('median_limit')}), worst {fmt(worst)} s (limit {d.get('worst_limit')}) "
                      f"over {d.get('count')} faults")
        elif c["name"] in ("failures_after_recovery", "no_failed_requests"):
            detail = f"{d.get('failed')} failed"
        elif c["name"] == "takeover_events":
            detail = (f"{d.get('recorded')} of {d.get('faults')} takeovers recorded ({d.get('worded')} worded '{TAKEOVER}'), "
                      f"slowest {d['worst_delay']:.3f} s after the fault" if isinstance(d.get("worst_delay"), float) else "none")
        elif c["name"] == "no_leader_change":
            detail = f"leaders seen {d.get('leaders')}"
        else:
            detail = ", ".join(f"{k} {v}" for k, v in d.items())
        if c["violations"]:
            detail += f"; {len(c['violations'])} violation(s), e.g. {c['violations'][0]['message']}"
        rows.append([c["name"], c["verdict"], detail])
    rows.append(["VERDICT", report["verdict"], f"{report['scenario']} seed {report['seed']} {report['duration_s']:g} s"])
    return rows
