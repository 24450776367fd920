"""Properties of the reconciler on a small fleet: random SE failures, returns, takeovers, operator
changes and fake-clock steps, each followed by reconcile rounds committed into the view.

After every round the placement the view holds must satisfy ``simulations.scale.check_view``:
every VS placed per its HA mode (or unplaced only when no SE has room), no SE over its VS slots or
memory, nothing on a down or disabled SE, nothing new on an SE disabled for placement, no VIP on
the SEs of two VSs. A round that records no takeover must leave nothing for the next round
(convergence); one that does must be followed by at most a few rounds that do. And an SE is down
in the view exactly when it exited or has been silent past its limit.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from cluster import decide as d
from cluster.autoscale import autoscale
from cluster.placement import (
    HA_MODE_LEGACY_ACTIVE_STANDBY,
    HA_MODE_SHARED,
    HA_MODE_SHARED_PAIR,
    PLACEMENT_ALGO_DISTRIBUTED,
    SE_STATE_DISABLED,
    SE_STATE_DISABLED_FOR_PLACEMENT,
    SE_STATE_ENABLED,
    SeGroupPolicy,
    SeState,
    VsDemand,
)
from cluster.views import ref_uuid
from simulations.scale import CONVERGE_ROUNDS, Fleet, ViewWorld, build_view, check_liveness, check_view, reconcile_round
from storage.events import ServiceEngineRequested, VirtualServicePlaced

GROUPS = [
    SeGroupPolicy("nm", ha_mode=HA_MODE_SHARED, max_vs_per_se=3, buffer_se=1, max_se=6, memory_per_se=2048),
    SeGroupPolicy("nmd", ha_mode=HA_MODE_SHARED, algo=PLACEMENT_ALGO_DISTRIBUTED, max_vs_per_se=4, buffer_se=0, max_se=3),
    SeGroupPolicy("aa", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3, max_vs_per_se=4, buffer_se=0, max_se=5),
    SeGroupPolicy("as", ha_mode=HA_MODE_LEGACY_ACTIVE_STANDBY, max_vs_per_se=4, buffer_se=0, max_se=3, memory_per_se=4096),
]
# SEs registered at the start per group (a short group makes the reconciler request SEs)
SES = {"nm": 3, "nmd": 2, "aa": 3, "as": 1}
VSS = {"nm": 5, "nmd": 3, "aa": 4, "as": 3}


def small_fleet() -> Fleet:
    fleet = Fleet(list(GROUPS), {}, {}, {}, [])
    for policy in GROUPS:
        for n in range(SES[policy.name]):
            uuid = f"serviceengine-{policy.name}-{n}"
            fleet.ses[uuid] = SeState(uuid, f"{policy.name}-{n + 1}", policy.name)
        for n in range(VSS[policy.name]):
            uuid = f"virtualservice-{policy.name}-{n}"
            fleet.vss[uuid] = VsDemand(uuid, f"{policy.name}-vs-{n}", policy.name, ssl=n % 3 == 2)
        fleet.group_weights.append((policy.name, 1.0))
    return fleet


class ReconcileMachine(RuleBasedStateMachine):
    world: ViewWorld
    now: float

    @initialize()
    def build(self) -> None:
        self.now = 100.0
        self.world = build_view(small_fleet(), seed=1, leader_since=self.now)
        self.n_vss = 0
        self.last_scaled: dict[str, float] = {}
        self.round()

    # -- what happens between rounds -------------------------------------------------------------

    def _se(self, i: int) -> str:
        ses = sorted(self.world.se)
        return ses[i % len(ses)]

    @rule(i=st.integers(0, 63), exited=st.booleans(), before=st.floats(0.0, 4.0))
    def se_fails(self, i: int, exited: bool, before: float) -> None:
        """The SE stops reporting (or its process exits); its standbys take its VIPs over."""
        uuid = self._se(i)
        rt = self.world.se[uuid]
        if rt.silent_since is None:
            rt.silent_since = self.now - before
        rt.exited = rt.exited or exited
        self._take_over(uuid, self.world.view.placed_on(uuid), "peer lost")
        self.time_passes(0.5)

    @rule(i=st.integers(0, 63))
    def se_returns(self, i: int) -> None:
        rt = self.world.se[self._se(i)]
        rt.silent_since, rt.exited, rt.ha = None, False, {}
        self.time_passes(0.5)

    @rule(i=st.integers(0, 63))
    def ha_link_lost(self, i: int) -> None:
        """A standby takes over from a primary that still reports: one VS (active/active) or the pair (active/standby)."""
        view = self.world.view
        multi = sorted(vs.uuid for vs in view.list("virtualservice") if len(view.placement(vs.uuid)) >= 2)
        if not multi:
            return
        vs_uuid = multi[i % len(multi)]
        primary = view.placement(vs_uuid)[0]
        group = view.get(ref_uuid(view.get(vs_uuid).body["se_group_ref"]))  # type: ignore[union-attr]
        legacy = group is not None and group.body.get("ha_mode") == HA_MODE_LEGACY_ACTIVE_STANDBY
        self._take_over(primary, view.placed_on(primary) if legacy else [vs_uuid], "HA link lost")
        self.time_passes(0.5)

    def _take_over(self, failed: str, vs_uuids: Any, reason: str) -> None:
        view = self.world.view
        for vs_uuid in sorted(vs_uuids):
            placed = view.placement(vs_uuid)
            if len(placed) < 2 or placed[0] != failed:
                continue
            for standby in placed[1:]:
                rt = self.world.se.get(standby)
                if rt is not None and rt.silent_since is None:
                    rt.ha[vs_uuid] = {"role": "active", "epoch": view.placement_revision(vs_uuid), "reason": reason}
                    break

    @rule(i=st.integers(0, 63), state=st.sampled_from([SE_STATE_ENABLED, SE_STATE_DISABLED_FOR_PLACEMENT, SE_STATE_DISABLED]))
    def operator_sets_enable_state(self, i: int, state: str) -> None:
        view = self.world.view
        se = view.get(self._se(i))
        assert se is not None
        if se.body.get("enable_state") != state:
            self.world.apply(d.decide_patch(view, se, {"replace": {"enable_state": state}}))
        self.time_passes(0.5)

    @rule(group=st.sampled_from([g.name for g in GROUPS]), ssl=st.booleans())
    def vs_added(self, group: str, ssl: bool) -> None:
        self.n_vss += 1
        self.world.add_vs(VsDemand(f"virtualservice-new-{self.n_vss}", f"new-vs-{self.n_vss}", group, ssl=ssl))
        self.time_passes(0.5)

    @rule(i=st.integers(0, 63))
    def vs_deleted(self, i: int) -> None:
        vss = sorted(self.world.vip)
        if vss:
            self.world.delete_vs(vss[i % len(vss)])
        self.time_passes(0.5)

    @rule()
    def cloud_boots_requested_ses(self) -> None:
        """The SEs the reconciler requested start and register (they join the group that asked)."""
        view = self.world.view
        for name in sorted(view.se_requested()):
            if view.by_name("serviceengine", name) is None:
                self.world.register(name)
        self.time_passes(0.5)

    @rule(level=st.sampled_from([0.5, 1.0, 3.0, 6.0]), seed=st.integers(0, 2**16))
    def load_changes(self, level: float, seed: int) -> None:
        """The SEs report CPU for the load ``level``; autoscale (run after reconcile) commits what it decides."""
        samples = self.world.cpu_samples(level, random.Random(seed))
        for command in autoscale(self.world.view, samples, self.now, self.last_scaled, cloud=True):
            outcome = self.world.commit(command.events, command.preconditions)
            if outcome is not None and _duplicate_request(command, outcome):
                continue  # see test_autoscale_requests_at_most_one_se_per_group_per_round
            assert outcome is None, outcome
            for event in command.events:
                if hasattr(event, "vs_uuid"):
                    self.last_scaled[event.vs_uuid] = self.now
        self.time_passes(0.5)

    @rule(seconds=st.sampled_from([1.0, 2.5, 5.0, 10.0]))
    def time_passes(self, seconds: float) -> None:
        """The fake clock moves on; the leader runs a round (each rule above ends with one, 0.5 s later)."""
        self.now += seconds
        self.round()

    # -- the round and its checks ----------------------------------------------------------------

    def round(self) -> None:
        view = self.world.view
        before = {vs.uuid: view.placement(vs.uuid) for vs in view.list("virtualservice")}
        observed = self.world.observed(self.now)
        first = reconcile_round(self.world, observed)
        problems = check_liveness(self.world, self.now)
        assert not problems, problems
        took_over = any(isinstance(e, VirtualServicePlaced) and "took the VIP over" in e.reason for c in first.commands for e in c.events)
        for extra in range(CONVERGE_ROUNDS + 1):
            if not took_over or extra > 0:
                problems = check_view(view, self.world.vip, before)
                assert not problems, problems
            again = reconcile_round(self.world, observed)
            if not again.commands:
                break
            assert took_over, f"a round without takeovers left work for the next: {again.commands}"
        else:
            pytest.fail(f"not converged after {CONVERGE_ROUNDS + 1} rounds")
        assert not self.world.rejected, self.world.rejected


ReconcileMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
TestReconcileProperties = ReconcileMachine.TestCase


def _duplicate_request(command: Any, outcome: Any) -> bool:
    return (
        len(command.events) == 1
        and isinstance(command.events[0], ServiceEngineRequested)
        and getattr(outcome, "code", None) == 409
        and "already requested" in outcome.message
    )


def test_autoscale_requests_at_most_one_se_per_group_per_round() -> None:
    """Two hot SEs of an active/active group whose VSs have nowhere to scale out to: one new SE, not two requests for one name."""
    pair = SeGroupPolicy("aa", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3, max_vs_per_se=4,
                         buffer_se=0, max_se=5)
    fleet = Fleet([pair], {}, {}, {}, [("aa", 1.0)])
    for n in range(2):
        fleet.ses[f"serviceengine-{n}"] = SeState(f"serviceengine-{n}", f"aa-{n + 1}", "aa")
        fleet.vss[f"virtualservice-{n}"] = VsDemand(f"virtualservice-{n}", f"vs-{n}", "aa")
    world = build_view(fleet, seed=1, leader_since=0.0)
    reconcile_round(world, world.observed(1.0))
    view = world.view
    assert all(len(view.placement(vs)) == 2 for vs in world.vip)
    hot = {se: {"cpu_percent": 95.0} for se in world.se}
    commands = autoscale(view, hot, 2.0, {}, cloud=True)
    names = [e.name for c in commands for e in c.events if isinstance(e, ServiceEngineRequested)]
    assert len(names) == len(set(names)), names
