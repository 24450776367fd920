"""The leader's reconcile core: liveness verdicts, takeovers, placement and SE requests, as events."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cluster import decide as d
from cluster.apply import apply as apply_entry
from cluster.reconcile import Observed, SeObservation, Settings, reconcile
from cluster.views import Accepted, ConfigView
from storage.events import (
    ObjectDeleted,
    Proposal,
    ServiceEngineReleased,
    ServiceEngineRequested,
    ServiceEngineStatusChanged,
    VirtualServicePlaced,
)

_ids = itertools.count(1)


def commit(view: ConfigView, events: Any, preconditions: Any = ()) -> Any:
    proposal = Proposal(f"c{next(_ids)}", view.revision, 0.0, tuple(preconditions), tuple(events))
    ((_command_id, outcome),) = apply_entry(view, view.raft_index + 1, proposal).outcomes
    assert isinstance(outcome, Accepted), outcome
    return outcome


def apply(view: ConfigView, decision: d.Decision) -> str:
    commit(view, decision.events, decision.preconditions)
    return decision.uuid


def run(view: ConfigView, observed: Observed) -> list[Any]:
    """One reconcile round, committed; returns the events it made."""
    made = []
    for command in reconcile(view, observed, Settings(down_after_min=3.0)):
        commit(view, command.events, command.preconditions)
        made.extend(command.events)
    return made


@pytest.fixture()
def view() -> ConfigView:
    return ConfigView.with_builtins(d.builtin_events())


def make_group(view: ConfigView, name: str, **body: Any) -> str:
    return apply(view, d.decide_create(view, "serviceenginegroup", {"name": name, **body}, tenant="admin", uuid=d.new_uuid("serviceenginegroup")))


def make_se(view: ConfigView, name: str, group: str) -> str:
    se = apply(view, d.decide_register_se(view, {"name": name}, uuid=d.new_uuid("serviceengine")))
    obj = view.get(se)
    assert obj is not None and obj.body["se_group_ref"].endswith(group), "an SE the group requested joins that group"
    return se


def make_vs(view: ConfigView, name: str, group: str, addr: str = "127.10.0.1") -> str:
    pool = apply(view, d.decide_create(view, "pool", {"name": f"{name}-pool", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}}]},
                                       tenant="admin", uuid=d.new_uuid("pool")))
    vip = apply(view, d.decide_create(view, "vsvip", {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": addr, "type": "V4"}}]},
                                      tenant="admin", uuid=d.new_uuid("vsvip")))
    body = {"name": name, "services": [{"port": 80}], "pool_ref": f"/api/pool/{pool}", "vsvip_ref": f"/api/vsvip/{vip}",
            "se_group_ref": f"/api/serviceenginegroup/{group}"}
    return apply(view, d.decide_create(view, "virtualservice", body, tenant="admin", uuid=d.new_uuid("virtualservice")))


def reporting(view: ConfigView, now: float, **ha: Any) -> dict[str, SeObservation]:
    return {se.uuid: SeObservation(last_report=now, report_interval=1.0, ha=ha.get(se.name, {})) for se in view.list("serviceengine")}


def test_active_standby_vs_requests_two_ses_then_is_placed_on_both(view: ConfigView) -> None:
    """A VS in an active/standby group makes the leader request two SEs, then places it on the pair, active first."""
    group = make_group(view, "pair", ha_mode="HA_MODE_LEGACY_ACTIVE_STANDBY", se_name_prefix="web")
    vs = make_vs(view, "web", group)
    made = run(view, Observed(now=100.0, leader_since=100.0, cloud=True))
    requested = sorted(e.name for e in made if isinstance(e, ServiceEngineRequested))
    assert requested == ["web-1", "web-2"]
    assert run(view, Observed(now=100.5, leader_since=100.0, cloud=True)) == [], "requests are not repeated while pending"

    se1, se2 = make_se(view, "web-1", group), make_se(view, "web-2", group)
    made = run(view, Observed(now=101.0, leader_since=100.0, ses=reporting(view, 101.0), cloud=True))
    placed = [e for e in made if isinstance(e, VirtualServicePlaced)]
    assert len(placed) == 1 and set(placed[0].se_uuids) == {se1, se2} and placed[0].vs_uuid == vs
    assert not placed[0].pinned
    assert run(view, Observed(now=101.5, leader_since=100.0, ses=reporting(view, 101.5), cloud=True)) == []


def test_standby_takeover_is_recorded_and_the_silent_active_declared_down(view: ConfigView) -> None:
    group = make_group(view, "pair", ha_mode="HA_MODE_LEGACY_ACTIVE_STANDBY", se_name_prefix="web")
    vs = make_vs(view, "web", group)
    run(view, Observed(now=100.0, leader_since=100.0, cloud=True))
    make_se(view, "web-1", group)
    make_se(view, "web-2", group)
    run(view, Observed(now=101.0, leader_since=100.0, ses=reporting(view, 101.0), cloud=True))
    active, standby = view.placement(vs)
    epoch = view.placement_revision(vs)
    standby_name = view.get(standby).name  # type: ignore[union-attr]
    ses = reporting(view, 102.0, **{standby_name: {vs: {"role": "active", "epoch": epoch, "reason": "peer connection lost"}}})
    ses[active] = SeObservation(last_report=101.0, report_interval=1.0)
    made = run(view, Observed(now=102.0, leader_since=100.0, ses=ses, cloud=True))
    placed = [e for e in made if isinstance(e, VirtualServicePlaced)]
    assert placed and placed[0].se_uuids == (standby, active)
    assert "took the VIP over" in placed[0].reason
    assert view.placement_revision(vs) > epoch

    # The old active stays silent: declared down after 3 report intervals (3 s), and the survivor
    # serves alone; the cloud restarts the down SE, so no replacement is requested meanwhile.
    ses[standby] = SeObservation(last_report=105.0, report_interval=1.0, ha={vs: {"role": "active", "epoch": view.placement_revision(vs)}})
    made = run(view, Observed(now=105.0, leader_since=100.0, ses=ses, cloud=True))
    downs = [e for e in made if isinstance(e, ServiceEngineStatusChanged)]
    assert [(e.se_uuid, e.status) for e in downs] == [(active, "down")]
    assert view.placement(vs) == (standby,)
    assert not any(isinstance(e, ServiceEngineRequested) for e in made), "a down SE the cloud restarts counts as coming"
    # Reporting again: up, and back in the pair as the standby.
    ses[active] = SeObservation(last_report=106.0, report_interval=1.0)
    ses[standby] = SeObservation(last_report=106.0, report_interval=1.0)
    made = run(view, Observed(now=106.0, leader_since=100.0, ses=ses, cloud=True))
    assert any(isinstance(e, ServiceEngineStatusChanged) and e.status == "up" for e in made)
    assert view.placement(vs) == (standby, active)


def test_n_plus_m_vs_is_re_placed_when_its_se_exits(view: ConfigView) -> None:
    group = make_group(view, "shared", se_name_prefix="nm", buffer_se=0)
    vs = make_vs(view, "app", group)
    run(view, Observed(now=10.0, leader_since=10.0, cloud=True))
    se1 = make_se(view, "nm-1", group)
    run(view, Observed(now=11.0, leader_since=10.0, ses=reporting(view, 11.0), cloud=True))
    assert view.placement(vs) == (se1,)
    commit(view, [ServiceEngineRequested("nm-2", group, "spare")])
    se2 = make_se(view, "nm-2", group)
    made = run(view, Observed(now=12.0, leader_since=10.0, ses=reporting(view, 12.0), cloud=True, exited=frozenset({"nm-1"})))
    assert any(isinstance(e, ServiceEngineStatusChanged) and e.status == "down" and "exited" in e.reason for e in made)
    assert view.placement(vs) == (se2,)
    placed = [e for e in made if isinstance(e, VirtualServicePlaced)]
    assert "nm-1 down" in placed[0].reason


def test_pinned_vs_is_left_alone_and_no_cloud_means_no_requests(view: ConfigView) -> None:
    group = make_group(view, "g")
    vs = make_vs(view, "pinned", group)
    se = apply(view, d.decide_register_se(view, {"name": "by-hand"}, uuid=d.new_uuid("serviceengine")))
    apply(view, d.decide_place(view, view.get(vs), ["by-hand"]))  # type: ignore[arg-type]
    made = run(view, Observed(now=1.0, leader_since=1.0, ses=reporting(view, 1.0), cloud=False))
    assert [(type(e), e.status) for e in made] == [(ServiceEngineStatusChanged, "up")], "only the SE's readiness"
    assert view.se_ready(se)
    assert view.placement(vs) == (se,)
    assert run(view, Observed(now=2.0, leader_since=1.0, ses=reporting(view, 2.0), cloud=False)) == []


def test_new_leader_gives_silent_ses_a_full_period_and_up_needs_a_report(view: ConfigView) -> None:
    group = make_group(view, "g", se_name_prefix="x")
    commit(view, [ServiceEngineRequested("x-1", group, "test")])
    se = make_se(view, "x-1", group)
    # Never heard from: the default report interval (5 s) times 3.
    assert run(view, Observed(now=60.0, leader_since=49.0)) == []
    made = run(view, Observed(now=64.5, leader_since=49.0))
    assert [(type(e), e.status) for e in made] == [(ServiceEngineStatusChanged, "down")]
    # A new leader that has not heard from it does not call it up.
    assert run(view, Observed(now=70.0, leader_since=70.0)) == []
    made = run(view, Observed(now=70.5, leader_since=70.0, ses={se: SeObservation(last_report=70.4, report_interval=1.0)}))
    assert [(type(e), e.status) for e in made] == [(ServiceEngineStatusChanged, "up")]


def test_idle_se_is_released_after_the_deprovision_delay(view: ConfigView) -> None:
    group = make_group(view, "g", se_name_prefix="idle", se_deprovision_delay=1, buffer_se=0)
    commit(view, [ServiceEngineRequested("idle-1", group, "test")])
    se = make_se(view, "idle-1", group)
    ses = {se: SeObservation(last_report=100.0, report_interval=1.0)}
    made = run(view, Observed(now=100.0, leader_since=0.0, ses=ses, idle_since={"idle-1": 50.0}))
    assert [type(e) for e in made] == [ServiceEngineStatusChanged], "ready, not yet idle for a minute"
    made = run(view, Observed(now=111.0, leader_since=0.0, ses={se: SeObservation(last_report=111.0)}, idle_since={"idle-1": 50.0}))
    assert [type(e) for e in made] == [ServiceEngineReleased, ObjectDeleted]
    assert view.get(se) is None and "idle-1" not in view.se_requested()


def test_vs_actions_switchover_migrate_and_scale(view: ConfigView) -> None:
    pair = make_group(view, "pair", ha_mode="HA_MODE_SHARED_PAIR", min_scaleout_per_vs=1, se_name_prefix="aa")
    for n in (1, 2, 3):
        commit(view, [ServiceEngineRequested(f"aa-{n}", pair, "test")])
    a, b, c = (make_se(view, f"aa-{n}", pair) for n in (1, 2, 3))
    vs = make_vs(view, "web", pair)
    run(view, Observed(now=1.0, leader_since=1.0, ses=reporting(view, 1.0)))
    (first,) = view.placement(vs)
    obj = view.get(vs)
    assert obj is not None
    with pytest.raises(d.CommandError) as refused:
        d.decide_vs_action(view, obj, "switchover", {})
    assert refused.value.code == 409
    apply(view, d.decide_vs_action(view, obj, "scaleout", {}))
    assert len(view.placement(vs)) == 2 and view.placement(vs)[0] == first
    assert run(view, Observed(now=2.0, leader_since=1.0, ses=reporting(view, 2.0))) == [], "the reconciler keeps a scale-out"
    apply(view, d.decide_vs_action(view, obj, "switchover", {}))
    assert view.placement(vs)[1] == first
    free = ({a, b, c} - set(view.placement(vs))).pop()
    apply(view, d.decide_vs_action(view, obj, "migrate", {"to_se_ref": view.get(free).name}))  # type: ignore[union-attr]
    assert free in view.placement(vs)
    apply(view, d.decide_vs_action(view, obj, "scalein", {}))
    assert len(view.placement(vs)) == 1
    with pytest.raises(d.CommandError) as refused:
        d.decide_vs_action(view, obj, "scalein", {})
    assert refused.value.code == 409 and "min_scaleout_per_vs" in refused.value.message
    with pytest.raises(d.CommandError) as refused:
        d.decide_vs_action(view, obj, "migrate", {"to_se_ref": "no-such-se"})
    assert refused.value.field == "to_se_ref"


def test_stale_placement_decision_is_refused(view: ConfigView) -> None:
    """A placement decided before another one landed is refused at apply (412 on the placement epoch)."""
    group = make_group(view, "g", se_name_prefix="s", buffer_se=0)
    commit(view, [ServiceEngineRequested("s-1", group, "t"), ServiceEngineRequested("s-2", group, "t")])
    make_se(view, "s-1", group)
    make_se(view, "s-2", group)
    vs = make_vs(view, "v", group)
    stale = [c for c in reconcile(view, Observed(now=1.0, leader_since=1.0, ses=reporting(view, 1.0)), Settings())
             if isinstance(c.events[0], VirtualServicePlaced)]
    assert len(stale) == 1
    obj = view.get(vs)
    apply(view, d.decide_place(view, obj, ["s-2"]))  # type: ignore[arg-type]
    proposal = Proposal("late", view.revision, 0.0, stale[0].preconditions, stale[0].events)
    outcome = view.check(proposal)
    assert outcome is not None and outcome.code == 412  # type: ignore[union-attr]


def test_autoscale_scales_out_a_hot_se_with_hysteresis_and_cooldown(view: ConfigView) -> None:
    from cluster.autoscale import autoscale

    pair = make_group(view, "aa", ha_mode="HA_MODE_SHARED_PAIR", se_name_prefix="as", auto_rebalance=True,
                      max_cpu_usage=60, min_cpu_usage=20, auto_rebalance_interval=10)
    for n in (1, 2):
        commit(view, [ServiceEngineRequested(f"as-{n}", pair, "t")])
    a, b = make_se(view, "as-1", pair), make_se(view, "as-2", pair)
    vs = make_vs(view, "web", pair)
    apply(view, d.decide_place(view, view.get(vs), ["as-1"]))  # type: ignore[arg-type]
    commit(view, [VirtualServicePlaced(vs, (a,), "unpin for the test")])
    # 50 % is between the thresholds: nothing.
    assert autoscale(view, {a: {"cpu_percent": 50.0}, b: {"cpu_percent": 1.0}}, 100.0, {}) == []
    (command,) = autoscale(view, {a: {"cpu_percent": 95.0}, b: {"cpu_percent": 1.0}}, 100.0, {})
    (event,) = command.events
    assert isinstance(event, VirtualServicePlaced) and event.se_uuids == (a, b)
    assert "as-1 cpu 95% > max_cpu_usage 60%" in event.reason
    assert autoscale(view, {a: {"cpu_percent": 95.0}, b: {"cpu_percent": 1.0}}, 105.0, {vs: 100.0}) == [], "cooldown"
    commit(view, command.events, command.preconditions)
    # Both cold: scale in, past the cooldown.
    (command,) = autoscale(view, {a: {"cpu_percent": 5.0}, b: {"cpu_percent": 3.0}}, 120.0, {vs: 100.0})
    assert command.events[0].se_uuids == (a,) and "below min_cpu_usage 20%" in command.events[0].reason


def test_autoscale_only_alerts_when_auto_rebalance_is_off(view: ConfigView) -> None:
    from cluster.autoscale import autoscale
    from storage.events import AutoscaleAlerted

    group = make_group(view, "nm", se_name_prefix="al", auto_rebalance_criteria=["SE_AUTO_REBALANCE_OPEN_CONNS"],
                       auto_rebalance_capacity_per_se=[100], buffer_se=0)
    for n in (1, 2):
        commit(view, [ServiceEngineRequested(f"al-{n}", group, "t")])
    a, b = make_se(view, "al-1", group), make_se(view, "al-2", group)
    vs = make_vs(view, "app", group)
    commit(view, [VirtualServicePlaced(vs, (a,), "t")])
    (command,) = autoscale(view, {a: {"open_connections": 95}, b: {"open_connections": 2}}, 1.0, {})
    (event,) = command.events
    assert isinstance(event, AutoscaleAlerted) and event.action == "migrate" and event.se_uuid == a
    assert "open_connections 95 (95% of 100)" in event.reason and "alert only" in event.reason
    commit(view, command.events)
    assert view.placement(vs) == (a,)
    # Another VS on the same hot SE raises no second alert within the cooldown: alerts are per SE.
    from cluster.autoscale import alert_key

    other = make_vs(view, "app2", group, addr="127.10.0.2")
    commit(view, [VirtualServicePlaced(other, (a,), "t")])
    hot = {a: {"open_connections": 95}, b: {"open_connections": 2}}
    assert autoscale(view, hot, 2.0, {vs: 1.0, alert_key(a): 1.0}) == []
    assert len(autoscale(view, hot, 400.0, {vs: 1.0, alert_key(a): 1.0})) == 1


def test_autoscale_asks_the_cloud_for_an_se_when_none_is_free(view: ConfigView) -> None:
    from cluster.autoscale import autoscale

    pair = make_group(view, "aa", ha_mode="HA_MODE_SHARED_PAIR", se_name_prefix="grow", auto_rebalance=True)
    commit(view, [ServiceEngineRequested("grow-1", pair, "t")])
    a = make_se(view, "grow-1", pair)
    vs = make_vs(view, "web", pair)
    commit(view, [VirtualServicePlaced(vs, (a,), "t")])
    assert autoscale(view, {a: {"cpu_percent": 99.0}}, 1.0, {}, cloud=False) == []
    (command,) = autoscale(view, {a: {"cpu_percent": 99.0}}, 1.0, {}, cloud=True)
    (event,) = command.events
    assert isinstance(event, ServiceEngineRequested) and event.name == "grow-2" and "needs a new SE" in event.reason
    commit(view, command.events)
    assert autoscale(view, {a: {"cpu_percent": 99.0}}, 2.0, {}, cloud=True) == [], "not again while one is pending"


def test_memory_is_always_watched(view: ConfigView) -> None:
    from cluster.autoscale import utilisation

    group = view.get(make_group(view, "mem", memory_per_se=2048))
    assert group is not None
    assert utilisation(group, {"cpu_percent": 10.0, "memory_mb": 1843.2}) == (90.0, "memory 1843 MB (90% of memory_per_se 2048 MB)")
    assert utilisation(group, {"cpu_percent": 50.0, "memory_mb": 100.0}) == (50.0, "cpu 50%")
