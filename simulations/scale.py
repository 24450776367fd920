"""Scale simulation: the real placement code on a simulated fleet and a fake clock.

    python -m simulations.scale [--vss 10000] [--ses 1000] [--steps 1000] [--seed 7]

The fleet: SE groups of every HA mode (N+M packed, N+M distributed, active/active, and many
legacy active/standby pairs) sharing ``--ses`` SEs, with ``--vss`` VSs of mixed L4 / HTTP / SSL
load. The initial placement (from scratch) is timed; then each step is 10 simulated seconds in
which the load ramps (up to twice the base connections at mid-run, then down), SEs fail (most
come back minutes later, some are lost for good), SEs are disabled for placement for a while, VSs
come and go, and a fake cloud starts the SEs the plan requests (they register 45 s later). Every
step re-places from the previous plan, checks the invariants of :func:`cluster.placement.check_invariants`
and times both. The last line of the output is one JSON object; the exit status is 1 when any
invariant was broken.

The reconciler and the cloud driver are not exercised: the plan is applied as it is.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs

from cluster.placement import (
    APPLICATION_HTTP,
    APPLICATION_L4,
    HA_MODE_LEGACY_ACTIVE_STANDBY,
    HA_MODE_SHARED,
    HA_MODE_SHARED_PAIR,
    PLACEMENT_ALGO_DISTRIBUTED,
    PLACEMENT_ALGO_PACKED,
    SE_STATE_DISABLED_FOR_PLACEMENT,
    SE_STATE_ENABLED,
    PlacementPlan,
    SeGroupPolicy,
    SeState,
    VsDemand,
    check_invariants,
    place,
)
from simulations.clock import FakeClock

__all__ = ["Fleet", "build_fleet", "run"]

STEP_SECONDS = 10.0
SE_BOOT_SECONDS = 45.0
PEAK_LOAD = 2.0


@attrs.define
class Fleet:
    groups: list[SeGroupPolicy]
    ses: dict[str, SeState]
    vss: dict[str, VsDemand]
    base_connections: dict[str, int]  # vs uuid -> connections at load factor 1
    group_weights: list[tuple[str, float]]  # where new VSs go
    next_id: int = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def _connections(rng: random.Random) -> int:
    # median ~ 665, mean ~ 1100, a long tail capped at 20 000
    return int(min(20000, rng.lognormvariate(6.5, 1.0)))


def _new_vs(fleet: Fleet, rng: random.Random, group: str) -> VsDemand:
    n = fleet.new_id()
    app = APPLICATION_L4 if rng.random() < 0.3 else APPLICATION_HTTP
    ssl = app == APPLICATION_HTTP and rng.random() < 0.3
    base = _connections(rng)
    vs = VsDemand(f"virtualservice-{n:08d}", f"vs-{n:06d}", group, app, ssl, base)
    fleet.vss[vs.uuid] = vs
    fleet.base_connections[vs.uuid] = base
    return vs


def _new_se(fleet: Fleet, group: str) -> SeState:
    n = fleet.new_id()
    se = SeState(f"serviceengine-{n:08d}", f"{group}-se-{n:06d}", group)
    fleet.ses[se.uuid] = se
    return se


def build_fleet(n_vss: int, n_ses: int, seed: int) -> Fleet:
    """A fleet of ``n_ses`` SEs and ``n_vss`` VSs over SE groups of every HA mode."""
    rng = random.Random(seed)
    n_legacy = max(1, n_ses // 50)
    rest = max(3, n_ses - 2 * n_legacy)
    legacy_vss = max(n_legacy, n_vss * 2 // 100)
    rest_vss = max(3, n_vss - legacy_vss)
    nm_ses, nm_vss = rest * 30 // 100, rest_vss * 40 // 100
    nmd_ses, nmd_vss = rest * 30 // 100, rest_vss * 33 // 100
    aa_ses, aa_vss = rest - nm_ses - nmd_ses, rest_vss - nm_vss - nmd_vss
    per_legacy = max(1, legacy_vss // n_legacy)

    def headroom(ses: int) -> int:
        return ses + ses // 7 + 4

    plan: list[tuple[SeGroupPolicy, int, int]] = [  # policy, SEs, VSs
        (SeGroupPolicy("nm-packed", ha_mode=HA_MODE_SHARED, algo=PLACEMENT_ALGO_PACKED, max_vs_per_se=24,
                       buffer_se=2, memory_per_se=4096, max_se=headroom(nm_ses)), nm_ses, nm_vss),
        (SeGroupPolicy("nm-distributed", ha_mode=HA_MODE_SHARED, algo=PLACEMENT_ALGO_DISTRIBUTED, max_vs_per_se=24,
                       buffer_se=1, memory_per_se=2048, max_se=headroom(nmd_ses)), nmd_ses, nmd_vss),
        (SeGroupPolicy("active-active", ha_mode=HA_MODE_SHARED_PAIR, algo=PLACEMENT_ALGO_PACKED, min_scaleout_per_vs=2,
                       max_scaleout_per_vs=4, max_vs_per_se=32, buffer_se=0, memory_per_se=4096, max_se=headroom(aa_ses)),
         aa_ses, aa_vss),
    ]
    for k in range(n_legacy):
        plan.append((SeGroupPolicy(f"active-standby-{k:03d}", ha_mode=HA_MODE_LEGACY_ACTIVE_STANDBY,
                                   max_vs_per_se=2 * per_legacy, buffer_se=0, memory_per_se=8192, max_se=3), 2, per_legacy))
    fleet = Fleet([], {}, {}, {}, [])
    for policy, se_count, vs_count in plan:
        fleet.groups.append(policy)
        for _ in range(se_count):
            _new_se(fleet, policy.name)
        for _ in range(vs_count):
            _new_vs(fleet, rng, policy.name)
        fleet.group_weights.append((policy.name, float(vs_count)))
    return fleet


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run(n_vss: int = 10000, n_ses: int = 1000, steps: int = 1000, seed: int = 7,
        out: Callable[[str], None] = print, max_violations_shown: int = 5) -> dict[str, Any]:
    """Run the simulation; returns the summary that ``main`` prints as its JSON line."""
    fleet = build_fleet(n_vss, n_ses, seed)
    rng = random.Random(seed + 1)
    clock = FakeClock()
    policies = {g.name: g for g in fleet.groups}
    out(f"fleet: {len(fleet.vss)} VSs, {len(fleet.ses)} SEs, {len(fleet.groups)} SE groups")

    initial: list[float] = []
    plan: PlacementPlan | None = None
    for _ in range(3):
        t0 = time.perf_counter()
        again = place(fleet.groups, fleet.ses.values(), fleet.vss.values(), {})
        initial.append(time.perf_counter() - t0)
        if plan is not None and again != plan:
            raise AssertionError("placement is not deterministic")
        plan = again
    assert plan is not None
    violations: list[str] = list(check_invariants(fleet.groups, fleet.ses.values(), fleet.vss.values(), plan, {}))
    out(f"initial placement: {statistics.median(initial) * 1000:.1f} ms (median of 3: "
        + ", ".join(f"{t * 1000:.1f}" for t in initial) + f" ms); {len(plan.placements)} placed, "
        f"{len(plan.unplaced)} unplaced, {len(plan.se_requests)} SE requests")

    counters = {name: 0 for name in ("se_failures", "se_recoveries", "se_lost", "se_disabled_for_placement",
                                     "ses_provisioned", "vss_added", "vss_removed", "moves", "new_placements")}
    pending: dict[str, int] = {}  # group -> SEs the fake cloud is starting

    def fail(uuid: str) -> None:
        se = fleet.ses[uuid]
        counters["se_failures"] += 1
        fleet.ses[uuid] = attrs.evolve(se, healthy=False)
        if rng.random() < 0.15:
            clock.call_later(30.0, lambda: lose(uuid))
        else:
            clock.call_later(rng.uniform(60.0, 900.0), lambda: recover(uuid))

    def lose(uuid: str) -> None:
        counters["se_lost"] += 1
        del fleet.ses[uuid]

    def recover(uuid: str) -> None:
        counters["se_recoveries"] += 1
        fleet.ses[uuid] = attrs.evolve(fleet.ses[uuid], healthy=True)

    def enable(uuid: str) -> None:
        if uuid in fleet.ses:
            fleet.ses[uuid] = attrs.evolve(fleet.ses[uuid], enable_state=SE_STATE_ENABLED)

    def boot(group: str) -> None:
        pending[group] -= 1
        counters["ses_provisioned"] += 1
        _new_se(fleet, group)

    current: dict[str, tuple[str, ...]] = dict(plan.placements)
    step_times: list[float] = []
    check_times: list[float] = []
    unplaced_counts: list[int] = []
    group_names = [g for g, _ in fleet.group_weights]
    group_cum = list(_cumulative(w for _, w in fleet.group_weights))
    for step in range(steps):
        clock.advance(STEP_SECONDS)
        # load ramp: 1 -> PEAK_LOAD at mid-run -> 1; 1 % of the VSs see the new level each step
        phase = (step + 1) / steps
        level = 1.0 + (PEAK_LOAD - 1.0) * (1.0 - abs(2.0 * phase - 1.0))
        uuids = list(fleet.vss)
        for uuid in rng.sample(uuids, max(1, len(uuids) // 100)):
            noisy = int(fleet.base_connections[uuid] * level * rng.uniform(0.9, 1.1))
            fleet.vss[uuid] = attrs.evolve(fleet.vss[uuid], expected_connections=noisy)
        if rng.random() < 0.3:
            healthy = [u for u, se in fleet.ses.items() if se.healthy]
            if healthy:
                fail(rng.choice(healthy))
        if rng.random() < 0.02:
            uuid = rng.choice(list(fleet.ses))
            if fleet.ses[uuid].enable_state == SE_STATE_ENABLED:
                counters["se_disabled_for_placement"] += 1
                fleet.ses[uuid] = attrs.evolve(fleet.ses[uuid], enable_state=SE_STATE_DISABLED_FOR_PLACEMENT)
                clock.call_later(rng.uniform(60.0, 600.0), functools.partial(enable, uuid))
        if rng.random() < 0.3:
            group = group_names[_pick(group_cum, rng.random())]
            _new_vs(fleet, rng, group)
            counters["vss_added"] += 1
        if rng.random() < 0.3 and fleet.vss:
            uuid = rng.choice(list(fleet.vss))
            del fleet.vss[uuid]
            fleet.base_connections.pop(uuid, None)
            current.pop(uuid, None)
            counters["vss_removed"] += 1

        t0 = time.perf_counter()
        plan = place(fleet.groups, fleet.ses.values(), fleet.vss.values(), current)
        step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        problems = check_invariants(fleet.groups, fleet.ses.values(), fleet.vss.values(), plan, current)
        check_times.append(time.perf_counter() - t0)
        violations.extend(f"step {step}: {p}" for p in problems)
        for uuid in plan.changed:
            counters["moves" if current.get(uuid) else "new_placements"] += 1
        unplaced_counts.append(len(plan.unplaced))
        current = dict(plan.placements)

        for request in plan.se_requests:
            policy = policies[request.group]
            listed = sum(1 for se in fleet.ses.values() if se.group == request.group)
            starting = pending.get(request.group, 0)
            more = min(request.count - starting, policy.max_se - listed - starting)
            for _ in range(max(0, more)):
                pending[request.group] = pending.get(request.group, 0) + 1
                clock.call_later(SE_BOOT_SECONDS, functools.partial(boot, request.group))
        if (step + 1) % max(1, steps // 10) == 0:
            out(f"step {step + 1:5d} t={clock.time():7.0f}s load x{level:.2f}: place {step_times[-1] * 1000:6.1f} ms, "
                f"check {check_times[-1] * 1000:6.1f} ms, {len(plan.placements)} placed, {len(plan.unplaced)} unplaced, "
                f"{len(plan.degraded)} degraded, {sum(r.count for r in plan.se_requests)} SEs requested, "
                f"{sum(1 for se in fleet.ses.values() if not se.healthy)} SEs down")

    for v in violations[:max_violations_shown]:
        out(f"VIOLATION {v}")
    summary: dict[str, Any] = {
        "simulation": "scale",
        "seed": seed,
        "vss": n_vss,
        "ses": n_ses,
        "groups": len(fleet.groups),
        "steps": steps,
        "simulated_seconds": clock.time(),
        "initial_place_ms": round(statistics.median(initial) * 1000, 1),
        "initial_place_runs_ms": [round(t * 1000, 1) for t in initial],
        "step_place_ms": {"p50": _ms(step_times, 0.5), "p99": _ms(step_times, 0.99), "max": _ms(step_times, 1.0)},
        "check_ms": {"p50": _ms(check_times, 0.5), "p99": _ms(check_times, 0.99)},
        "violations": len(violations),
        "unplaced": {"final": unplaced_counts[-1] if unplaced_counts else len(plan.unplaced),
                     "max": max(unplaced_counts, default=len(plan.unplaced))},
        "degraded_final": len(plan.degraded),
        "final_vss": len(fleet.vss),
        "final_ses": len(fleet.ses),
        **counters,
    }
    out(f"initial placement {summary['initial_place_ms']} ms; per step p50 {summary['step_place_ms']['p50']} ms, "
        f"p99 {summary['step_place_ms']['p99']} ms; {len(violations)} invariant violations")
    return summary


def _ms(values: list[float], q: float) -> float:
    return round(_percentile(values, q) * 1000, 2)


def _cumulative(weights: Any) -> Any:
    total = 0.0
    ws = list(weights)
    whole = sum(ws) or 1.0
    for w in ws:
        total += w
        yield total / whole


def _pick(cumulative: list[float], x: float) -> int:
    for i, edge in enumerate(cumulative):
        if x < edge:
            return i
    return len(cumulative) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.scale", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--vss", type=int, default=10000)
    parser.add_argument("--ses", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    summary = run(args.vss, args.ses, args.steps, args.seed)
    print(json.dumps(summary, sort_keys=True))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
