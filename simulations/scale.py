"""Scale simulation: the real placement and reconcile code on a simulated fleet and a fake clock.

    python -m simulations.scale [--vss 10000] [--ses 1000] [--steps 1000] [--seed 7]
                                [--through placement|reconcile|both] [--reconcile-steps N] [--first-rounds 3]

The fleet: SE groups of every HA mode (N+M packed, N+M distributed, active/active, and many
legacy active/standby pairs) sharing ``--ses`` SEs, with ``--vss`` VSs of mixed L4 / HTTP / SSL
load. The initial placement (from scratch) is timed; then each step is 10 simulated seconds in
which the load ramps (up to twice the base connections at mid-run, then down), SEs fail (most
come back minutes later, some are lost for good), SEs are disabled for placement for a while, VSs
come and go, and a fake cloud starts the SEs the plan requests (they register 45 s later). Every
step re-places from the previous plan, checks the invariants of :func:`cluster.placement.check_invariants`
and times both. The last line of the output is one JSON object; the exit status is 1 when any
invariant was broken.

A second phase (``--through reconcile``, or ``both``, the default) runs the leader's real
reconcile core (:func:`cluster.reconcile.reconcile`, then :func:`cluster.autoscale.autoscale`) on a
:class:`cluster.views.ConfigView`. The same fleet is built as committed config through the API's
decide functions (groups, pools, SEs requested then registered, every VS with a vsvip of its own
127.x.y.z); the first reconcile round, which places everything from scratch, is timed apart from
the commit of its commands (each proposal checked and folded as a node applies it). Then each step
is 5 simulated seconds in which SEs stop reporting or exit (their standbys report VIP takeovers at
the current placement epoch) and come back, standbys take over from live primaries, SEs are
disabled (for placement) for a while, VSs come and go, the load ramps (SE CPU reports fed to
autoscale) and a fake cloud registers the SEs the leader requests 45 s later. Each step runs one
round and commits it, then checks on the view: the placement invariants over the inputs reconcile
gives ``place`` (``placement_inputs``), nothing on a down or vanished SE, no VIP on the SEs of two
VSs, SE liveness verdicts, and convergence: a second round right away has nothing to do (after a
round that recorded takeovers, the following rounds must converge and the checks run then).
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
import uuid as uuidlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from cluster import decide as d
from cluster.apply import apply
from cluster.autoscale import autoscale
from cluster.placement import (
    APPLICATION_HTTP,
    APPLICATION_L4,
    HA_MODE_LEGACY_ACTIVE_STANDBY,
    HA_MODE_SHARED,
    HA_MODE_SHARED_PAIR,
    PLACEMENT_ALGO_DISTRIBUTED,
    PLACEMENT_ALGO_PACKED,
    SE_STATE_DISABLED,
    SE_STATE_DISABLED_FOR_PLACEMENT,
    SE_STATE_ENABLED,
    PlacementPlan,
    SeGroupPolicy,
    SeState,
    Unplaced,
    VsDemand,
    check_invariants,
    place,
)
from cluster.reconcile import Observed, SeObservation, Settings, placement_inputs, reconcile
from cluster.views import Accepted, ConfigView, ref_uuid
from simulations.clock import FakeClock
from storage.events import AutoscaleAlerted, Proposal, ServiceEngineRequested, ServiceEngineStatusChanged, VirtualServicePlaced

__all__ = ["Fleet", "ViewWorld", "build_fleet", "build_view", "check_liveness", "check_view", "reconcile_round", "run", "run_reconcile"]

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



# -- through the reconciler -----------------------------------------------------------------------

RECONCILE_STEP_SECONDS = 5.0
REPORT_INTERVALS = (1.0, 2.0)
#: rounds after a step's first one within which the reconciler must have converged
CONVERGE_ROUNDS = 3


@attrs.define
class SeRuntime:
    """What the simulated SE process does (the reconciler sees it through ``SeObservation``)."""

    name: str
    interval: float
    silent_since: float | None = None  # stopped reporting at (None: reporting)
    exited: bool = False  # the cloud driver knows its process is gone
    ha: dict[str, dict[str, Any]] = attrs.Factory(dict)  # vs uuid -> HA state it reports


@attrs.define
class ViewWorld:
    """A config view built through the real decide functions, and the simulated SEs around it."""

    view: ConfigView
    se: dict[str, SeRuntime]  # se uuid -> runtime
    vip: dict[str, str]  # vs uuid -> its VIP address
    rng: random.Random
    settings: Settings = Settings()
    leader_since: float = 0.0
    next_command: int = 0
    rejected: list[str] = attrs.Factory(list)
    group_uuid: dict[str, str] = attrs.Factory(dict)  # fleet group name -> serviceenginegroup uuid
    pool_of: dict[str, str] = attrs.Factory(dict)  # fleet group name -> its pool's uuid
    vips_made: int = 0
    vs_cpu: dict[str, float] = attrs.Factory(dict)  # vs uuid -> its CPU percent on one SE at load 1

    def commit(self, events: Any, preconditions: Any = ()) -> Any:
        """Propose one command as the leader does and apply it when the view accepts it; None when applied."""
        self.next_command += 1
        proposal = Proposal(f"sim-{self.next_command}", self.view.revision, 0.0, tuple(preconditions), tuple(events))
        ((_command_id, outcome),) = apply(self.view, self.view.raft_index + 1, proposal).outcomes
        return None if isinstance(outcome, Accepted) else outcome

    def apply(self, decision: d.Decision) -> str:
        outcome = self.commit(decision.events, decision.preconditions)
        if outcome is not None:
            raise AssertionError(f"building the fleet: {outcome}")
        return decision.uuid

    def new_uuid(self, kind: str) -> str:
        return f"{kind}-{uuidlib.UUID(int=self.rng.getrandbits(128), version=4)}"

    def register(self, name: str) -> str:
        """An SE process starts and registers (it joins the group that requested it)."""
        uuid = self.apply(d.decide_register_se(self.view, {"name": name}, uuid=self.new_uuid("serviceengine")))
        self.se[uuid] = SeRuntime(name, self.rng.choice(REPORT_INTERVALS))
        return uuid

    def add_vs(self, vs: VsDemand) -> str:
        """Create ``vs`` (its group named as in the fleet) and a vsvip of its own, as the API would."""
        addr = vip_address(self.vips_made)
        self.vips_made += 1
        view = self.view
        vip = self.apply(d.decide_create(view, "vsvip", {"name": f"{vs.name}-vip", "vip": [{"ip_address": {"addr": addr, "type": "V4"}}]},
                                         tenant="admin", uuid=self.new_uuid("vsvip")))
        profile = "System-L4-Application" if vs.application == APPLICATION_L4 else "System-HTTP"
        body = {"name": vs.name, "services": [{"port": 443 if vs.ssl else 80, "enable_ssl": vs.ssl}],
                "application_profile_ref": f"/api/applicationprofile?name={profile}", "pool_ref": f"/api/pool/{self.pool_of[vs.group]}",
                "vsvip_ref": f"/api/vsvip/{vip}", "se_group_ref": f"/api/serviceenginegroup/{self.group_uuid[vs.group]}"}
        uuid = self.apply(d.decide_create(view, "virtualservice", body, tenant="admin", uuid=self.new_uuid("virtualservice")))
        self.vip[uuid] = addr
        return uuid

    def delete_vs(self, uuid: str) -> None:
        """Delete the VS, then its vsvip."""
        vs = self.view.get(uuid)
        assert vs is not None
        vsvip = ref_uuid(vs.body.get("vsvip_ref") or "")
        self.apply(d.decide_delete(self.view, vs))
        self.apply(d.decide_delete(self.view, self.view.get(vsvip)))  # type: ignore[arg-type]
        self.vip.pop(uuid, None)

    def cpu_samples(self, level: float, rng: random.Random) -> dict[str, dict[str, float]]:
        """Each reporting SE's CPU: the VSs it serves (an active/active VS's load split over its SEs,
        an active/standby VS's on its active only), times the load ``level``, with noise."""
        cpu: dict[str, float] = {}
        view = self.view
        for vs_uuid in self.vip:
            placed = view.placement(vs_uuid)
            if not placed:
                continue
            base = self.vs_cpu.setdefault(vs_uuid, min(40.0, rng.lognormvariate(1.0, 0.6)))
            serving = placed if self.mode_of(vs_uuid) == HA_MODE_SHARED_PAIR else placed[:1]
            for se in serving:
                cpu[se] = cpu.get(se, 0.0) + base * level / len(serving)
        return {uuid: {"cpu_percent": min(100.0, cpu.get(uuid, 0.0) * rng.uniform(0.9, 1.1))}
                for uuid, rt in self.se.items() if rt.silent_since is None}

    def mode_of(self, vs_uuid: str) -> str:
        vs = self.view.get(vs_uuid)
        group = self.view.get(ref_uuid(vs.body.get("se_group_ref") or "")) if vs else None
        return (group.body.get("ha_mode") if group else None) or HA_MODE_SHARED

    def observed(self, now: float, cloud: bool = True) -> Observed:
        ses = {
            uuid: SeObservation(last_report=now if rt.silent_since is None else rt.silent_since, report_interval=rt.interval, ha=rt.ha)
            for uuid, rt in self.se.items()
        }
        exited = frozenset(rt.name for rt in self.se.values() if rt.exited)
        return Observed(now=now, leader_since=self.leader_since, ses=ses, cloud=cloud, exited=exited)


def vip_address(i: int) -> str:
    """The ``i``-th VIP: 127.2.0.1 onwards, distinct for every ``i`` < 253 * 254 * 256."""
    return f"127.{2 + i // (254 * 256)}.{(i // 254) % 256}.{i % 254 + 1}"


def build_view(fleet: Fleet, seed: int, leader_since: float = 0.0) -> ViewWorld:
    """``fleet`` as committed config: its groups, SEs (requested, then registered) and VSs (each with its vsvip)."""
    world = ViewWorld(ConfigView.with_builtins(d.builtin_events()), {}, {}, random.Random(seed + 2), leader_since=leader_since)
    view = world.view
    group_uuid: dict[str, str] = {}
    pool_of: dict[str, str] = {}
    se_count: dict[str, int] = {}
    for se in fleet.ses.values():
        se_count[se.group] = se_count.get(se.group, 0) + 1
    for policy in fleet.groups:
        body = {"name": policy.name, "ha_mode": policy.ha_mode, "algo": policy.algo, "min_scaleout_per_vs": policy.min_scaleout_per_vs,
                "max_scaleout_per_vs": policy.max_scaleout_per_vs, "max_se": policy.max_se, "max_vs_per_se": policy.max_vs_per_se,
                "buffer_se": policy.buffer_se, "memory_per_se": policy.memory_per_se, "se_name_prefix": policy.name,
                "auto_rebalance": policy.ha_mode == HA_MODE_SHARED_PAIR or policy.algo == PLACEMENT_ALGO_DISTRIBUTED,
                "max_cpu_usage": 80, "min_cpu_usage": 30, "auto_rebalance_interval": 300}
        group = world.apply(d.decide_create(view, "serviceenginegroup", body, tenant="admin", uuid=world.new_uuid("serviceenginegroup")))
        group_uuid[policy.name] = group
        pool_of[policy.name] = world.apply(d.decide_create(
            view, "pool", {"name": f"{policy.name}-pool", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 8080}]},
            tenant="admin", uuid=world.new_uuid("pool")))
        names = [f"{policy.name}-{n}" for n in range(1, se_count.get(policy.name, 0) + 1)]
        if names:
            outcome = world.commit([ServiceEngineRequested(name, group, "initial fleet") for name in names])
            assert outcome is None, outcome
        for name in names:
            world.register(name)
    world.group_uuid, world.pool_of = group_uuid, pool_of
    for vs in fleet.vss.values():
        world.add_vs(vs)
    return world


def check_view(view: ConfigView, vip: Mapping[str, str] | None = None, before: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """What is wrong with the placement the view holds (empty when nothing is).

    The placement is read from the view and checked with :func:`cluster.placement.check_invariants`
    against the inputs the reconciler gives ``place`` (``placement_inputs``): every VS placed per
    its HA mode, or unplaced only when no SE of its group has room; no SE over its VS slots or
    memory; nothing on an unhealthy SE. The VSs' degradations and unplaced reasons are taken from
    ``place`` run on the same inputs. Then, on the view itself: nothing on an SE declared down or
    on an SE that no longer exists, and no VIP address on the SEs of two different VSs (``vip``:
    vs uuid -> address; by default read through the VSs' vsvips). With ``before`` (the placement
    before the round), also that no VS was newly put on an SE disabled for placement.
    """
    policies, states, demands, current = placement_inputs(view)
    plan = place(policies, states, demands, current)
    placements = {uuid: ses for uuid, ses in current.items() if ses}
    reasons = {u.vs_uuid: u.reason for u in plan.unplaced}
    held = PlacementPlan(
        placements=placements,
        se_requests=plan.se_requests,
        unplaced=tuple(Unplaced(vs.uuid, reasons.get(vs.uuid, "not placed yet")) for vs in demands if vs.uuid not in placements),
        degraded=plan.degraded,
    )
    problems = check_invariants(policies, states, demands, held, before)
    by_addr: dict[str, str] = {}
    for vs_uuid, ses in placements.items():
        for se in ses:
            if view.get(se) is None:
                problems.append(f"{vs_uuid}: placed on {se}, which does not exist")
            elif view.se_down(se) is not None:
                problems.append(f"{vs_uuid}: placed on SE {view.get(se).name}, which is down")  # type: ignore[union-attr]
        for addr in _vips(view, vs_uuid, vip):
            other = by_addr.setdefault(addr, vs_uuid)
            if other != vs_uuid and set(ses) != set(placements[other]):
                problems.append(f"VIP {addr}: on the SEs of both {other} and {vs_uuid}")
    return problems


def check_liveness(world: ViewWorld, now: float) -> list[str]:
    """After a round at ``now``: an SE is down in the view exactly when it exited or has been silent
    longer than ``down_after_reports`` of its report intervals (at least ``down_after_min``)."""
    problems = []
    settings = world.settings
    for uuid, rt in world.se.items():
        limit = max(settings.down_after_min, settings.down_after_reports * rt.interval)
        should = rt.exited or (rt.silent_since is not None and now - rt.silent_since > limit)
        down = world.view.se_down(uuid)
        if should and down is None:
            problems.append(f"SE {rt.name}: " + ("exited" if rt.exited else f"silent for {now - rt.silent_since:.1f} s") + ", not declared down")  # type: ignore[operator]
        elif not should and down is not None:
            problems.append(f"SE {rt.name}: declared down ({down}) although it " + ("reports" if rt.silent_since is None else "is within its limit"))
    return problems


def _vips(view: ConfigView, vs_uuid: str, vip: Mapping[str, str] | None) -> list[str]:
    if vip is not None and vs_uuid in vip:
        return [vip[vs_uuid]]
    vs = view.get(vs_uuid)
    vsvip = view.get(ref_uuid(vs.body.get("vsvip_ref") or "")) if vs else None
    if vsvip is None:
        return []
    return [((v or {}).get("ip_address") or {}).get("addr") for v in vsvip.body.get("vip") or [] if ((v or {}).get("ip_address") or {}).get("addr")]


@attrs.define
class RoundResult:
    commands: list[d.Decision]
    reconcile_s: float
    commit_s: float


def reconcile_round(world: ViewWorld, observed: Observed, on_request: Callable[[str], None] | None = None) -> RoundResult:
    """One round of the leader's reconciler: ``reconcile`` and the commit of each command it returns (timed apart)."""
    t0 = time.perf_counter()
    commands = reconcile(world.view, observed, world.settings)
    t1 = time.perf_counter()
    for command in commands:
        outcome = world.commit(command.events, command.preconditions)
        if outcome is not None:
            world.rejected.append(f"{[type(e).__name__ for e in command.events]}: {outcome}")
    t2 = time.perf_counter()
    if on_request is not None:
        for command in commands:
            for event in command.events:
                if isinstance(event, ServiceEngineRequested):
                    on_request(event.name)
    return RoundResult(commands, t1 - t0, t2 - t1)


def _takeover(world: ViewWorld, failed: str, vs_uuids: Any, reason: str) -> int:
    """The standby (first reporting SE after ``failed``) of each VS ``failed`` is primary for reports it took the VIP over."""
    view, n = world.view, 0
    for vs_uuid in sorted(vs_uuids):
        placed = view.placement(vs_uuid)
        if len(placed) < 2 or placed[0] != failed:
            continue
        for standby in placed[1:]:
            rt = world.se.get(standby)
            if rt is not None and rt.silent_since is None:
                rt.ha[vs_uuid] = {"role": "active", "epoch": view.placement_revision(vs_uuid), "took_over_from": world.se[failed].name,
                                  "reason": reason}
                n += 1
                break
    return n


def run_reconcile(n_vss: int = 10000, n_ses: int = 1000, steps: int = 1000, seed: int = 7,
                  out: Callable[[str], None] = print, max_violations_shown: int = 5, first_rounds: int = 1) -> dict[str, Any]:
    """The reconciler (``cluster.reconcile``) and the config view on the simulated fleet; returns the summary figures.

    ``first_rounds``: how many times the first round (placing everything from scratch) is timed,
    each on a freshly built view (the median is reported).
    """
    fleet = build_fleet(n_vss, n_ses, seed)
    clock = FakeClock(1000.0)
    first: list[tuple[float, float, int]] = []
    build_s: list[float] = []
    world: ViewWorld | None = None
    for _ in range(first_rounds):
        t0 = time.perf_counter()
        world = build_view(fleet, seed, leader_since=clock.time())
        build_s.append(time.perf_counter() - t0)
        r = reconcile_round(world, world.observed(clock.time()))
        first.append((r.reconcile_s, r.commit_s, len(r.commands)))
    assert world is not None
    view = world.view
    objects = len(view)
    out(f"view: {len(view.list('virtualservice'))} VSs, {len(view.list('vsvip'))} vsvips, {len(view.list('serviceengine'))} SEs, "
        f"{len(view.list('serviceenginegroup'))} SE groups, {len(view)} objects; built through decide in "
        f"{statistics.median(build_s):.2f} s")
    rec_s = statistics.median(f[0] for f in first)
    com_s = statistics.median(f[1] for f in first)
    placed = sum(1 for vs in view.list("virtualservice") if view.placement(vs.uuid))
    out(f"first reconcile round: reconcile {rec_s * 1000:.1f} ms + commit {com_s * 1000:.1f} ms of {first[-1][2]} commands "
        f"(runs: " + ", ".join(f"{a * 1000:.0f}+{b * 1000:.0f}" for a, b, _ in first) + f" ms); {placed} VSs placed")
    violations: list[str] = [f"first round: {p}" for p in check_view(view, world.vip)]

    rng = random.Random(seed + 3)
    counters = {name: 0 for name in ("se_silent", "se_exited", "se_back", "ses_booted", "takeover_reports", "takeovers_recorded",
                                     "declared_down", "declared_up", "placements", "se_requests", "commands", "se_disabled",
                                     "se_disabled_for_placement", "vss_added", "vss_removed",
                                     "autoscale_moves", "autoscale_alerts", "autoscale_rejected")}
    booting: set[str] = set()
    group_names = [g for g, _ in fleet.group_weights]
    group_cum = list(_cumulative(w for _, w in fleet.group_weights))

    def boot(name: str) -> None:
        booting.discard(name)
        if view.by_name("serviceengine", name) is None and name in view.se_requested():
            world.register(name)
            counters["ses_booted"] += 1

    def on_request(name: str) -> None:
        if name not in booting:
            booting.add(name)
            clock.call_later(SE_BOOT_SECONDS, functools.partial(boot, name))

    def back(uuid: str) -> None:
        rt = world.se.get(uuid)
        if rt is not None and rt.silent_since is not None:
            counters["se_back"] += 1
            rt.silent_since, rt.exited, rt.ha = None, False, {}

    def set_enable_state(uuid: str, state: str) -> None:
        se = view.get(uuid)
        if se is not None:
            world.apply(d.decide_patch(view, se, {"replace": {"enable_state": state}}))

    def count(commands: list[d.Decision]) -> None:
        for command in commands:
            counters["commands"] += 1
            for event in command.events:
                if isinstance(event, VirtualServicePlaced):
                    counters["takeovers_recorded" if "took the VIP over" in event.reason else "placements"] += 1
                elif isinstance(event, ServiceEngineStatusChanged):
                    counters["declared_down" if event.status == "down" else "declared_up"] += 1
                elif isinstance(event, ServiceEngineRequested):
                    counters["se_requests"] += 1

    reconcile_times: list[float] = []
    commit_times: list[float] = []
    check_times: list[float] = []
    converge_times: list[float] = []
    rounds_needed: dict[int, int] = {}  # rounds until a round had nothing to do -> steps
    autoscale_times: list[float] = []
    last_scaled: dict[str, float] = {}
    for step in range(steps):
        clock.advance(RECONCILE_STEP_SECONDS)
        now = clock.time()
        # SE failures: silent (a hung or partitioned SE) or exited (the cloud driver sees the process gone);
        # the standby of each VS the failed SE is primary for takes its VIP over and says so in its reports.
        if rng.random() < 0.3:
            up = sorted(u for u, rt in world.se.items() if rt.silent_since is None)
            if up:
                uuid = rng.choice(up)
                rt = world.se[uuid]
                rt.silent_since = now - rng.uniform(0.0, RECONCILE_STEP_SECONDS)
                if rng.random() < 0.25:
                    rt.exited = True
                    counters["se_exited"] += 1
                else:
                    counters["se_silent"] += 1
                counters["takeover_reports"] += _takeover(world, uuid, view.placed_on(uuid), "peer lost")
                clock.call_later(rng.uniform(20.0, 600.0), functools.partial(back, uuid))
        # A standby takes over from a primary that is still reporting (a lost HA link): one VS of an
        # active/active group, or the whole pair of an active/standby group.
        if rng.random() < 0.05:
            multi = sorted(u for u, ses in placement_inputs(view)[3].items() if len(ses) >= 2)
            if multi:
                vs_uuid = rng.choice(multi)
                primary = view.placement(vs_uuid)[0]
                group = view.get(ref_uuid(view.get(vs_uuid).body.get("se_group_ref") or ""))  # type: ignore[union-attr]
                legacy = group is not None and group.body.get("ha_mode") == HA_MODE_LEGACY_ACTIVE_STANDBY
                if primary in world.se:
                    counters["takeover_reports"] += _takeover(world, primary, view.placed_on(primary) if legacy else [vs_uuid],
                                                              "HA link lost")

        # An operator takes an SE out of placement for a while (its VSs stay), or disables it (they move).
        if rng.random() < 0.02:
            uuid = rng.choice(sorted(world.se))
            se = view.get(uuid)
            if se is not None and se.body.get("enable_state", SE_STATE_ENABLED) == SE_STATE_ENABLED:
                state = SE_STATE_DISABLED if rng.random() < 0.3 else SE_STATE_DISABLED_FOR_PLACEMENT
                counters["se_disabled" if state == SE_STATE_DISABLED else "se_disabled_for_placement"] += 1
                set_enable_state(uuid, state)
                clock.call_later(rng.uniform(60.0, 600.0), functools.partial(set_enable_state, uuid, SE_STATE_ENABLED))

        # VSs come and go.
        if rng.random() < 0.3:
            world.add_vs(_new_vs(fleet, rng, group_names[_pick(group_cum, rng.random())]))
            counters["vss_added"] += 1
        if rng.random() < 0.3:
            world.delete_vs(rng.choice(sorted(world.vip)))
            counters["vss_removed"] += 1

        before = {vs.uuid: view.placement(vs.uuid) for vs in view.list("virtualservice")}
        observed = world.observed(now)
        r = reconcile_round(world, observed, on_request)
        reconcile_times.append(r.reconcile_s)
        commit_times.append(r.commit_s)
        count(r.commands)
        # A round that records takeovers leaves those VSs to be re-placed by the next round (their
        # old primary may be down by then): the invariants are checked once the rounds that follow
        # have converged. After any other round they are checked at once, and a second round right
        # away must have nothing to do.
        steady = not any(isinstance(e, VirtualServicePlaced) and "took the VIP over" in e.reason for c in r.commands for e in c.events)
        violations.extend(f"step {step}: {p}" for p in check_liveness(world, now))
        if steady:
            t0 = time.perf_counter()
            violations.extend(f"step {step}: {p}" for p in check_view(view, world.vip, before))
            check_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rounds = 1
        for _ in range(CONVERGE_ROUNDS):
            again = reconcile_round(world, observed, on_request)
            count(again.commands)
            if not again.commands:
                break
            rounds += 1
            if steady:
                violations.append(f"step {step}: not converged: a second round made {_summary(again.commands)}")
                steady = False  # reported once
        else:
            violations.append(f"step {step}: not converged after {CONVERGE_ROUNDS + 1} rounds")
        converge_times.append(time.perf_counter() - t0)
        rounds_needed[rounds] = rounds_needed.get(rounds, 0) + 1
        if rounds > 1 or not steady:
            t0 = time.perf_counter()
            violations.extend(f"step {step} (after {rounds} rounds): {p}" for p in check_view(view, world.vip, before))
            check_times.append(time.perf_counter() - t0)

        # Load ramps: the SEs report CPU from the load of the VSs they carry; autoscale (the leader
        # runs it after reconcile) scales hot active/active VSs out, moves N+M ones off hot SEs, and
        # raises alerts where auto_rebalance is off. The next step's rounds must absorb what it did.
        level = 1.0 + (PEAK_LOAD - 1.0) * (1.0 - abs(2.0 * (step + 1) / steps - 1.0))
        t0 = time.perf_counter()
        scaled = autoscale(view, world.cpu_samples(level, rng), now, last_scaled, cloud=True)
        for command in scaled:
            outcome = world.commit(command.events, command.preconditions)
            if outcome is not None:
                counters["autoscale_rejected"] += 1
                continue
            for event in command.events:
                if isinstance(event, ServiceEngineRequested):
                    on_request(event.name)
                    counters["se_requests"] += 1
                    continue
                last_scaled[event.vs_uuid] = now
                counters["autoscale_alerts" if isinstance(event, AutoscaleAlerted) else "autoscale_moves"] += 1
        autoscale_times.append(time.perf_counter() - t0)
        if (step + 1) % max(1, steps // 10) == 0:
            down = sum(1 for se in view.list("serviceengine") if view.se_down(se.uuid))
            out(f"step {step + 1:5d} t={now - 1000.0:6.0f}s: reconcile {r.reconcile_s * 1000:6.1f} ms + commit {r.commit_s * 1000:5.1f} ms "
                f"({len(r.commands)} commands), check {check_times[-1] * 1000:6.1f} ms; {down} SEs down, "
                f"{sum(1 for vs in view.list('virtualservice') if view.placement(vs.uuid))} VSs placed")
    violations.extend(f"rejected command: {x}" for x in world.rejected)
    for v in violations[:max_violations_shown]:
        out(f"VIOLATION {v}")
    summary = {
        "build_view_s": round(statistics.median(build_s), 2),
        "objects": objects,
        "first_round_reconcile_ms": round(rec_s * 1000, 1),
        "first_round_commit_ms": round(com_s * 1000, 1),
        "first_round_commands": first[-1][2],
        "first_round_runs_ms": [[round(a * 1000, 1), round(b * 1000, 1)] for a, b, _ in first],
        "steps": steps,
        "simulated_seconds": clock.time() - 1000.0,
        "step_reconcile_ms": {"p50": _ms(reconcile_times, 0.5), "p99": _ms(reconcile_times, 0.99), "max": _ms(reconcile_times, 1.0)},
        "step_commit_ms": {"p50": _ms(commit_times, 0.5), "p99": _ms(commit_times, 0.99), "max": _ms(commit_times, 1.0)},
        "check_ms": {"p50": _ms(check_times, 0.5), "p99": _ms(check_times, 0.99)},
        "converge_ms": {"p50": _ms(converge_times, 0.5), "p99": _ms(converge_times, 0.99)},
        "autoscale_ms": {"p50": _ms(autoscale_times, 0.5), "p99": _ms(autoscale_times, 0.99)},
        "violations": len(violations),
        "rejected_commands": len(world.rejected),
        "rounds_to_converge": {str(k): v for k, v in sorted(rounds_needed.items())},
        "final_ses": len(view.list("serviceengine")),
        "final_ses_down": sum(1 for se in view.list("serviceengine") if view.se_down(se.uuid)),
        "final_vss": len(view.list("virtualservice")),
        "final_vss_placed": sum(1 for vs in view.list("virtualservice") if view.placement(vs.uuid)),
        **counters,
    }
    out(f"reconcile: first round {summary['first_round_reconcile_ms']} ms + commit {summary['first_round_commit_ms']} ms; "
        f"per step p50 {summary['step_reconcile_ms']['p50']} ms, p99 {summary['step_reconcile_ms']['p99']} ms; "
        f"{len(violations)} invariant violations")
    return summary


def _summary(commands: list[d.Decision]) -> str:
    kinds: dict[str, int] = {}
    for command in commands:
        for event in command.events:
            kinds[type(event).__name__] = kinds.get(type(event).__name__, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.scale", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--vss", type=int, default=10000)
    parser.add_argument("--ses", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--through", choices=("placement", "reconcile", "both"), default="both",
                        help="placement: the pure placement function only; reconcile: the reconciler on a config view; both (default)")
    parser.add_argument("--reconcile-steps", type=int, default=None, help="steps of the reconcile phase (default: --steps)")
    parser.add_argument("--first-rounds", type=int, default=3,
                        help="how many times the reconciler's first round is timed, each on a fresh view (default 3)")
    args = parser.parse_args(argv)
    if args.through in ("placement", "both"):
        summary = run(args.vss, args.ses, args.steps, args.seed)
    else:
        summary = {"simulation": "scale", "seed": args.seed, "vss": args.vss, "ses": args.ses, "steps": 0, "violations": 0}
    if args.through in ("reconcile", "both"):
        print()
        steps = args.steps if args.reconcile_steps is None else args.reconcile_steps
        summary["reconcile"] = run_reconcile(args.vss, args.ses, steps, args.seed, first_rounds=max(1, args.first_rounds))
    print(json.dumps(summary, sort_keys=True))
    return 1 if summary["violations"] or summary.get("reconcile", {}).get("violations") else 0


if __name__ == "__main__":
    sys.exit(main())
