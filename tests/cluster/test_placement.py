"""Placement: each HA mode, capacity, minimal movement, determinism, and random failure steps.

The state machine at the end runs ``max_examples`` x ``stateful_step_count`` random steps (20 x 50
= 1 000 by default). For 1 000 steps in one sequence, or more:

    AVICTL_PLACEMENT_EXAMPLES=5 AVICTL_PLACEMENT_STEPS=1000 .venv/bin/pytest -q tests/cluster/test_placement.py -k Machine
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cluster.placement import (
    APPLICATION_HTTP,
    APPLICATION_L4,
    HA_MODE_LEGACY_ACTIVE_STANDBY,
    HA_MODE_SHARED,
    HA_MODE_SHARED_PAIR,
    PLACEMENT_ALGO_DISTRIBUTED,
    SE_STATE_DISABLED,
    SE_STATE_DISABLED_FOR_PLACEMENT,
    SE_STATE_ENABLED,
    VS_OVERHEAD_KB,
    PlacementPlan,
    SeGroupPolicy,
    SeRequest,
    SeState,
    VsDemand,
    check_invariants,
    place,
    se_capacity_kb,
    vs_memory_kb,
)
from simulations import scale

# -- helpers ----------------------------------------------------------------------------------


def ses_of(group: str, n: int, **kwargs: Any) -> list[SeState]:
    return [SeState(f"se-{group}-{k}", f"{group}-{k}", group, **kwargs) for k in range(1, n + 1)]


def vss_of(group: str, n: int, **kwargs: Any) -> list[VsDemand]:
    return [VsDemand(f"vs-{group}-{k:03d}", f"{group}-vs-{k:03d}", group, **kwargs) for k in range(1, n + 1)]


def replace_se(ses: list[SeState], uuid: str, **changes: Any) -> list[SeState]:
    return [attrs.evolve(se, **changes) if se.uuid == uuid else se for se in ses]


def planned(
    groups: list[SeGroupPolicy], ses: list[SeState], vss: list[VsDemand], current: Mapping[str, Sequence[str]] | None = None
) -> PlacementPlan:
    """``place``, asserting that the plan passes ``check_invariants``."""
    current = current or {}
    plan = place(groups, ses, vss, current)
    assert [] == check_invariants(groups, ses, vss, plan, current)
    return plan


def load(plan: PlacementPlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for ses in plan.placements.values():
        for se in ses:
            out[se] = out.get(se, 0) + 1
    return out


# -- the cost model ---------------------------------------------------------------------------


def test_an_ssl_connection_costs_more_than_an_http_one_which_costs_more_than_an_l4_one() -> None:
    """For the same connections, L4 < HTTP < HTTP with SSL, and every VS pays the fixed overhead."""
    l4 = vs_memory_kb(VsDemand("a", "a", "g", APPLICATION_L4, expected_connections=1000))
    http = vs_memory_kb(VsDemand("b", "b", "g", APPLICATION_HTTP, expected_connections=1000))
    ssl = vs_memory_kb(VsDemand("c", "c", "g", APPLICATION_HTTP, ssl=True, expected_connections=1000))
    idle = vs_memory_kb(VsDemand("d", "d", "g", APPLICATION_L4, expected_connections=0))
    assert (VS_OVERHEAD_KB + 4_000, VS_OVERHEAD_KB + 32_000, VS_OVERHEAD_KB + 96_000, VS_OVERHEAD_KB) == (l4, http, ssl, idle)


def test_an_se_keeps_a_fixed_base_for_itself() -> None:
    """The default 2048 MB SE offers 1536 MB to VSs."""
    assert 1536 * 1024 == se_capacity_kb(2048)


def test_policy_from_an_api_body() -> None:
    """A stored serviceenginegroup body gives the policy; missing fields take the API defaults."""
    body = {"name": "g", "ha_mode": "HA_MODE_SHARED_PAIR", "max_scaleout_per_vs": 3, "vcpus_per_se": 2, "tenant_ref": "x"}
    assert SeGroupPolicy("g", ha_mode=HA_MODE_SHARED_PAIR, max_scaleout_per_vs=3) == SeGroupPolicy.from_body(body)


def test_policy_refuses_max_scaleout_below_min() -> None:
    """max_scaleout_per_vs < min_scaleout_per_vs is refused."""
    with pytest.raises(ValueError):
        SeGroupPolicy("g", min_scaleout_per_vs=3, max_scaleout_per_vs=2)


def test_placement_is_a_pure_core() -> None:
    """cluster.placement imports no clock, event loop, socket or Raft library."""
    import ast
    import inspect

    import cluster.placement

    tree = ast.parse(inspect.getsource(cluster.placement))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert set() == imported & {"asyncio", "socket", "time", "aiohttp", "pysyncobj", "random", "threading"}


# -- N+M ----------------------------------------------------------------------------------------


def test_n_plus_m_packed_fills_the_fullest_se_first() -> None:
    """PACKED puts six VSs on the first two SEs (three each) and leaves the others empty."""
    groups = [SeGroupPolicy("g", max_vs_per_se=3, buffer_se=0)]
    plan = planned(groups, ses_of("g", 4), vss_of("g", 6))
    assert {"se-g-1": 3, "se-g-2": 3} == load(plan)
    assert all(len(t) == 1 for t in plan.placements.values())


def test_n_plus_m_distributed_spreads_evenly() -> None:
    """DISTRIBUTED puts six VSs two by two on three SEs."""
    groups = [SeGroupPolicy("g", max_vs_per_se=10, algo=PLACEMENT_ALGO_DISTRIBUTED, buffer_se=0)]
    plan = planned(groups, ses_of("g", 3), vss_of("g", 6))
    assert {"se-g-1": 2, "se-g-2": 2, "se-g-3": 2} == load(plan)


def test_n_plus_m_replaces_only_the_vss_of_a_failed_se() -> None:
    """When an SE fails its VSs move to the others; every other VS stays where it was."""
    groups = [SeGroupPolicy("g", max_vs_per_se=4, algo=PLACEMENT_ALGO_DISTRIBUTED, buffer_se=1)]
    ses, vss = ses_of("g", 4), vss_of("g", 9)
    before = planned(groups, ses, vss)
    failed = replace_se(ses, "se-g-2", healthy=False)
    after = planned(groups, failed, vss, before.placements)
    moved = {u for u in before.placements if before.placements[u] != after.placements[u]}
    assert {u for u, t in before.placements.items() if t == ("se-g-2",)} == moved
    assert "se-g-2" not in load(after)
    assert sorted(moved) == list(after.changed)


def test_n_plus_m_asks_for_an_se_to_restore_its_buffer() -> None:
    """Two full SEs and buffer_se=1: the group asks for one more SE, up to max_se."""
    vss = vss_of("g", 4)
    plan = planned([SeGroupPolicy("g", max_vs_per_se=2, buffer_se=1, max_se=5)], ses_of("g", 2), vss)
    assert (SeRequest("g", 1, "1 to keep buffer_se=1 spare"),) == plan.se_requests
    capped = planned([SeGroupPolicy("g", max_vs_per_se=2, buffer_se=1, max_se=2)], ses_of("g", 2), vss)
    assert () == capped.se_requests


def test_n_plus_m_spare_se_satisfies_the_buffer() -> None:
    """A full SE and an empty one with buffer_se=1: nothing to ask for."""
    plan = planned([SeGroupPolicy("g", max_vs_per_se=2, buffer_se=1, max_se=5)], ses_of("g", 2), vss_of("g", 2))
    assert () == plan.se_requests


def test_no_room_leaves_the_vs_unplaced_and_asks_for_ses() -> None:
    """Five VSs on two SEs of two slots: one is unplaced with a reason, and SEs are requested."""
    groups = [SeGroupPolicy("g", max_vs_per_se=2, buffer_se=0, max_se=4)]
    plan = planned(groups, ses_of("g", 2), vss_of("g", 5))
    assert 1 == len(plan.unplaced)
    assert "no room" in plan.unplaced[0].reason and "requested" in plan.unplaced[0].reason
    assert (SeRequest("g", 1, "1 for 1 VSs without room"),) == plan.se_requests


def test_an_empty_group_asks_for_ses_for_its_vss() -> None:
    """A group with VSs and no SE asks for enough SEs (max_vs_per_se each) plus its buffer."""
    plan = planned([SeGroupPolicy("g", max_vs_per_se=10, buffer_se=1, max_se=10)], [], vss_of("g", 25))
    assert 25 == len(plan.unplaced)
    assert [("g", 3)] == [(r.group, r.count) for r in plan.se_requests]


# -- capacity -----------------------------------------------------------------------------------


def test_memory_capacity_is_respected() -> None:
    """Two SSL VSs of 10 000 connections (945 MB each) do not share a 2048 MB SE (1536 MB)."""
    groups = [SeGroupPolicy("g", max_vs_per_se=10, buffer_se=0)]
    vss = vss_of("g", 2, ssl=True, expected_connections=10_000)
    plan = planned(groups, ses_of("g", 2), vss)
    assert {"se-g-1": 1, "se-g-2": 1} == load(plan)


def test_a_vs_larger_than_any_se_is_unplaced_and_requests_nothing() -> None:
    """A VS needing more memory than any SE offers is unplaced with its size, and no SE is asked for it."""
    groups = [SeGroupPolicy("g", buffer_se=0, max_se=5)]
    plan = planned(groups, ses_of("g", 1), vss_of("g", 1, ssl=True, expected_connections=50_000))
    assert 1 == len(plan.unplaced) and "needs 4696 MB" in plan.unplaced[0].reason
    assert () == plan.se_requests


def test_heterogeneous_se_memory_is_used() -> None:
    """An SE registered with more memory than the group default can take a VS the others cannot."""
    groups = [SeGroupPolicy("g", buffer_se=0, max_se=2)]
    ses = ses_of("g", 1) + [SeState("se-big", "z-big", "g", memory_mb=8192)]
    plan = planned(groups, ses, vss_of("g", 1, ssl=True, expected_connections=20_000))
    assert {"vs-g-001": ("se-big",)} == plan.placements


def test_a_load_ramp_moves_only_what_no_longer_fits() -> None:
    """When VSs grow past an SE's memory, it keeps its VSs in name order while they fit; only the rest move."""
    groups = [SeGroupPolicy("g", max_vs_per_se=10, buffer_se=0)]
    ses, vss = ses_of("g", 3), vss_of("g", 4, expected_connections=5_000)  # 164 MB each: all on se-g-1
    before = planned(groups, ses, vss)
    assert {"se-g-1": 4} == load(before)
    grown = [attrs.evolve(v, expected_connections=15_000) for v in vss]  # 477 MB each: three fit in 1536 MB
    after = planned(groups, ses, grown, before.placements)
    assert ("vs-g-004",) == after.changed
    assert {"se-g-1": 3, "se-g-2": 1} == load(after)


def test_lowering_max_vs_per_se_moves_the_excess() -> None:
    """max_vs_per_se lowered from 4 to 2: the last two VSs (by name) of the SE move."""
    ses, vss = ses_of("g", 3), vss_of("g", 4)
    before = planned([SeGroupPolicy("g", max_vs_per_se=4, buffer_se=0)], ses, vss)
    after = planned([SeGroupPolicy("g", max_vs_per_se=2, buffer_se=0)], ses, vss, before.placements)
    assert ("vs-g-003", "vs-g-004") == after.changed


# -- enable states ------------------------------------------------------------------------------


def test_disabled_for_placement_keeps_its_vss_but_takes_no_new_ones() -> None:
    """An SE disabled for placement keeps the VSs it has; a new VS goes elsewhere."""
    groups = [SeGroupPolicy("g", max_vs_per_se=5, buffer_se=0)]
    ses, vss = ses_of("g", 2), vss_of("g", 2)
    before = planned(groups, ses, vss)
    assert {"se-g-1": 2} == load(before)
    drained = replace_se(ses, "se-g-1", enable_state=SE_STATE_DISABLED_FOR_PLACEMENT)
    more = vss + [VsDemand("vs-new", "new", "g")]
    after = planned(groups, drained, more, before.placements)
    assert {"se-g-1": 2, "se-g-2": 1} == load(after)
    assert ("vs-new",) == after.changed


def test_disabled_se_loses_its_vss() -> None:
    """SE_STATE_DISABLED: the VSs migrate away."""
    groups = [SeGroupPolicy("g", max_vs_per_se=5, buffer_se=0)]
    ses, vss = ses_of("g", 2), vss_of("g", 2)
    before = planned(groups, ses, vss)
    after = planned(groups, replace_se(ses, "se-g-1", enable_state=SE_STATE_DISABLED), vss, before.placements)
    assert {"se-g-2": 2} == load(after)


def test_nothing_is_placed_on_unhealthy_or_disabled_ses() -> None:
    """With every SE unhealthy, disabled or disabled for placement, a new VS is unplaced."""
    groups = [SeGroupPolicy("g", buffer_se=0, max_se=3)]
    ses = [
        SeState("a", "a", "g", healthy=False),
        SeState("b", "b", "g", enable_state=SE_STATE_DISABLED),
        SeState("c", "c", "g", enable_state=SE_STATE_DISABLED_FOR_PLACEMENT),
    ]
    plan = planned(groups, ses, vss_of("g", 1))
    assert {} == plan.placements
    assert "no usable SE" in plan.unplaced[0].reason


def test_a_vs_of_an_unknown_group_is_unplaced() -> None:
    """A VS whose SE group does not exist is unplaced, naming the group."""
    plan = planned([], [], [VsDemand("v", "v", "nope")])
    assert "no SE group 'nope'" == plan.unplaced[0].reason


# -- active/active ------------------------------------------------------------------------------


def test_active_active_places_each_vs_on_min_scaleout_ses() -> None:
    """min_scaleout_per_vs=2: every VS on two distinct SEs."""
    groups = [SeGroupPolicy("g", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3, max_vs_per_se=10)]
    plan = planned(groups, ses_of("g", 3), vss_of("g", 5))
    assert all(len(t) == 2 and len(set(t)) == 2 for t in plan.placements.values())


def test_active_active_keeps_a_scale_out_up_to_max() -> None:
    """A VS already on three SEs stays on them; one on five (max lowered to 3) keeps its first three."""
    groups = [SeGroupPolicy("g", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3, max_vs_per_se=10)]
    ses = ses_of("g", 5)
    vss = vss_of("g", 2)
    current = {"vs-g-001": ("se-g-3", "se-g-1", "se-g-2"), "vs-g-002": ("se-g-5", "se-g-4", "se-g-3", "se-g-2", "se-g-1")}
    plan = planned(groups, ses, vss, current)
    assert {"vs-g-001": ("se-g-3", "se-g-1", "se-g-2"), "vs-g-002": ("se-g-5", "se-g-4", "se-g-3")} == plan.placements


def test_active_active_primary_failure_promotes_the_next_and_replaces_it() -> None:
    """The primary fails: the next SE becomes primary and a new SE joins at the end."""
    groups = [SeGroupPolicy("g", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=4)]
    ses = replace_se(ses_of("g", 3), "se-g-1", healthy=False)
    plan = planned(groups, ses, vss_of("g", 1), {"vs-g-001": ("se-g-1", "se-g-2")})
    assert ("se-g-2", "se-g-3") == plan.placements["vs-g-001"]


def test_active_active_with_too_few_ses_runs_degraded_and_asks_for_more() -> None:
    """min 2 but one SE: the VS runs on it, is reported degraded, and an SE is requested."""
    groups = [SeGroupPolicy("g", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=4, max_se=3)]
    plan = planned(groups, ses_of("g", 1), vss_of("g", 1))
    assert ("se-g-1",) == plan.placements["vs-g-001"]
    assert "on 1 of 2 SEs" in plan.degraded[0].reason
    assert [("g", 1)] == [(r.group, r.count) for r in plan.se_requests]


# -- legacy active/standby ----------------------------------------------------------------------

LEGACY = SeGroupPolicy("as", ha_mode=HA_MODE_LEGACY_ACTIVE_STANDBY, max_vs_per_se=10, max_se=3)


def test_legacy_uses_exactly_two_ses_for_every_vs() -> None:
    """Every VS is on the same two SEs, active first; the third SE stays empty."""
    plan = planned([LEGACY], ses_of("as", 3), vss_of("as", 4))
    assert {("se-as-1", "se-as-2")} == set(plan.placements.values())


def test_legacy_standby_becomes_active_when_the_active_fails() -> None:
    """The active fails: the standby is first for every VS, and the spare SE becomes the standby."""
    ses, vss = ses_of("as", 3), vss_of("as", 4)
    before = planned([LEGACY], ses, vss)
    after = planned([LEGACY], replace_se(ses, "se-as-1", healthy=False), vss, before.placements)
    assert {("se-as-2", "se-as-3")} == set(after.placements.values())


def test_legacy_without_a_spare_runs_on_the_survivor_and_fails_back_only_by_hand() -> None:
    """Two SEs, the active fails: the VSs run on the standby alone (degraded); when the old active
    returns it becomes the standby, not the active."""
    ses, vss = ses_of("as", 2), vss_of("as", 3)
    group = attrs.evolve(LEGACY, max_se=2)
    before = planned([group], ses, vss)
    failed = planned([group], replace_se(ses, "se-as-1", healthy=False), vss, before.placements)
    assert {("se-as-2",)} == set(failed.placements.values())
    assert 3 == len(failed.degraded) and () == failed.se_requests
    back = planned([group], ses, vss, failed.placements)
    assert {("se-as-2", "se-as-1")} == set(back.placements.values())


def test_legacy_with_a_lost_se_asks_for_a_new_one() -> None:
    """The pair lost an SE and may grow: one SE is requested."""
    plan = planned([LEGACY], ses_of("as", 1), vss_of("as", 2))
    assert [("as", 1)] == [(r.group, r.count) for r in plan.se_requests]


def test_legacy_keeps_a_switched_over_pair_and_adds_new_vss_in_its_order() -> None:
    """After a switchover (standby first for all VSs) the order is kept, and a new VS follows it."""
    ses, vss = ses_of("as", 2), vss_of("as", 2)
    current = {v.uuid: ("se-as-2", "se-as-1") for v in vss}
    plan = planned([LEGACY], ses, vss + [VsDemand("vs-new", "new", "as")], current)
    assert {("se-as-2", "se-as-1")} == set(plan.placements.values())
    assert ("vs-new",) == plan.changed


def test_legacy_vss_that_disagree_follow_the_active_of_the_majority() -> None:
    """Three VSs active on se-as-2, one on se-as-1: all end up active on se-as-2, standby se-as-1."""
    ses, vss = ses_of("as", 3), vss_of("as", 4)
    current = {v.uuid: ("se-as-2", "se-as-1") for v in vss[:3]}
    current[vss[3].uuid] = ("se-as-1", "se-as-3")
    plan = planned([LEGACY], ses, vss, current)
    assert {("se-as-2", "se-as-1")} == set(plan.placements.values())
    assert (vss[3].uuid,) == plan.changed


def test_legacy_pair_full_leaves_vss_unplaced() -> None:
    """The pair never scales out: with max_vs_per_se=2 the third VS is unplaced."""
    plan = planned([attrs.evolve(LEGACY, max_vs_per_se=2)], ses_of("as", 3), vss_of("as", 3))
    assert ["vs-as-003"] == [u.vs_uuid for u in plan.unplaced]
    assert "full" in plan.unplaced[0].reason


def test_legacy_active_disabled_for_placement_keeps_vss_but_refuses_new_ones() -> None:
    """The active disabled for placement keeps its VSs; a new VS is unplaced (its VIP would be active elsewhere)."""
    ses, vss = ses_of("as", 2), vss_of("as", 2)
    before = planned([LEGACY], ses, vss)
    drained = replace_se(ses, "se-as-1", enable_state=SE_STATE_DISABLED_FOR_PLACEMENT)
    after = planned([LEGACY], drained, vss + [VsDemand("vs-new", "new", "as")], before.placements)
    assert before.placements == {u: t for u, t in after.placements.items()}
    assert ["vs-new"] == [u.vs_uuid for u in after.unplaced]


def test_legacy_standby_disabled_for_placement_gets_no_new_vs() -> None:
    """The standby disabled for placement keeps its VSs; a new VS runs on the active alone, degraded."""
    ses, vss = ses_of("as", 3), vss_of("as", 2)
    before = planned([LEGACY], ses, vss)
    drained = replace_se(ses, "se-as-2", enable_state=SE_STATE_DISABLED_FOR_PLACEMENT)
    after = planned([LEGACY], drained, vss + [VsDemand("vs-new", "new", "as")], before.placements)
    assert ("se-as-1",) == after.placements["vs-new"]
    assert ["vs-new"] == [d.vs_uuid for d in after.degraded]
    assert all(after.placements[v.uuid] == ("se-as-1", "se-as-2") for v in vss)


# -- movement and determinism -------------------------------------------------------------------


def test_a_valid_placement_is_kept_even_if_a_fresh_one_would_differ() -> None:
    """All VSs on one SE of a DISTRIBUTED group, within limits: nothing moves."""
    groups = [SeGroupPolicy("g", max_vs_per_se=10, algo=PLACEMENT_ALGO_DISTRIBUTED, buffer_se=0)]
    ses, vss = ses_of("g", 3), vss_of("g", 4)
    current = {v.uuid: ("se-g-3",) for v in vss}
    plan = planned(groups, ses, vss, current)
    assert current == plan.placements and () == plan.changed


def test_replanning_a_plan_changes_nothing() -> None:
    """Placement is a fixpoint: placing again from its own output gives the same placements."""
    groups, ses, vss = mixed_fleet()
    plan = planned(groups, ses, vss)
    again = planned(groups, ses, vss, plan.placements)
    assert plan.placements == again.placements and () == again.changed


def mixed_fleet() -> tuple[list[SeGroupPolicy], list[SeState], list[VsDemand]]:
    groups = [
        SeGroupPolicy("nm", max_vs_per_se=4, buffer_se=1, max_se=8),
        SeGroupPolicy("aa", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3,
                      max_vs_per_se=5, algo=PLACEMENT_ALGO_DISTRIBUTED, max_se=8),
        LEGACY,
    ]
    rng = random.Random(5)
    ses = ses_of("nm", 5) + ses_of("aa", 4) + ses_of("as", 3)
    vss = []
    for group, n in (("nm", 14), ("aa", 8), ("as", 5)):
        for v in vss_of(group, n):
            vss.append(attrs.evolve(v, application=rng.choice([APPLICATION_L4, APPLICATION_HTTP]),
                                    ssl=rng.random() < 0.3, expected_connections=rng.randrange(0, 8000)))
    return groups, ses, vss


def test_the_same_input_gives_the_same_plan_in_any_order() -> None:
    """Twice the same input gives equal plans, and so does the input shuffled."""
    groups, ses, vss = mixed_fleet()
    first = place(groups, ses, vss, {})
    assert first == place(groups, ses, vss, {})
    rng = random.Random(1)
    for _ in range(5):
        g, s, v = list(groups), list(ses), list(vss)
        for items in (g, s, v):
            rng.shuffle(items)
        again = place(g, s, v, {})
        assert first == again
        assert list(first.placements) == list(again.placements)


def test_duplicate_uuids_are_refused() -> None:
    """Two VSs (or SEs) with one uuid are a caller's bug: ValueError."""
    with pytest.raises(ValueError):
        place([SeGroupPolicy("g")], [], vss_of("g", 1) * 2, {})
    with pytest.raises(ValueError):
        place([SeGroupPolicy("g")], ses_of("g", 1) * 2, [], {})


# -- the checker checks -------------------------------------------------------------------------


def test_check_invariants_reports_broken_plans() -> None:
    """Over-full SEs, a VIP on two N+M SEs, unhealthy SEs, legacy VSs split across SEs and unplaced
    VSs that had room are each reported."""
    groups = [SeGroupPolicy("g", max_vs_per_se=1, buffer_se=0), attrs.evolve(LEGACY, max_se=4)]
    ses = ses_of("g", 3) + ses_of("as", 3)
    ses = replace_se(ses, "se-g-3", healthy=False)
    vss = vss_of("g", 3) + vss_of("as", 2)
    bad = PlacementPlan(
        placements={
            "vs-g-001": ("se-g-1",),
            "vs-g-002": ("se-g-1", "se-g-2"),
            "vs-g-003": ("se-g-3",),
            "vs-as-001": ("se-as-1", "se-as-2"),
            "vs-as-002": ("se-as-3", "se-as-1"),
        }
    )
    problems = check_invariants(groups, ses, vss, bad)
    text = "\n".join(problems)
    for expected in ("above max_vs_per_se", "not 1", "unhealthy SE g-3", "more than two SEs", "more than one SE"):
        assert expected in text
    missing = PlacementPlan(placements={}, unplaced=())
    assert any("neither placed nor reported" in p for p in check_invariants(groups, ses, vss, missing))
    from cluster.placement import Unplaced

    lazy = PlacementPlan(placements={}, unplaced=tuple(Unplaced(v.uuid, "no room") for v in vss))
    assert any("has room" in p for p in check_invariants(groups, ses, vss, lazy))


def test_check_invariants_reports_a_new_vs_on_a_se_disabled_for_placement() -> None:
    """Given the current placement, a VS newly put on a disabled-for-placement SE is reported."""
    groups = [SeGroupPolicy("g", buffer_se=0)]
    ses = ses_of("g", 1, enable_state=SE_STATE_DISABLED_FOR_PLACEMENT)
    plan = PlacementPlan(placements={"vs-g-001": ("se-g-1",)})
    assert [] == check_invariants(groups, ses, vss_of("g", 1), plan, {"vs-g-001": ("se-g-1",)})
    assert 1 == len(check_invariants(groups, ses, vss_of("g", 1), plan, {}))


def test_check_invariants_reports_a_missing_buffer_request() -> None:
    """An N+M group short of its buffer that may grow but asks for nothing is reported."""
    groups = [SeGroupPolicy("g", max_vs_per_se=2, buffer_se=1, max_se=5)]
    plan = PlacementPlan(placements={"vs-g-001": ("se-g-1",), "vs-g-002": ("se-g-1",)})
    assert any("buffer_se" in p for p in check_invariants(groups, ses_of("g", 1), vss_of("g", 2), plan))


# -- random steps -------------------------------------------------------------------------------


class PlacementMachine(RuleBasedStateMachine):
    """Random SE failures, recoveries, losses and additions, enable-state changes, VSs added,
    removed and resized; after every step the plan passes check_invariants, is a fixpoint,
    does not depend on input order, and moves no VS whose placement was still valid."""

    GROUPS: ClassVar[list[SeGroupPolicy]] = [
        SeGroupPolicy("nm", max_vs_per_se=4, buffer_se=1, max_se=7, memory_per_se=1024),
        SeGroupPolicy("nmd", max_vs_per_se=3, buffer_se=2, max_se=6, algo=PLACEMENT_ALGO_DISTRIBUTED),
        SeGroupPolicy("aa", ha_mode=HA_MODE_SHARED_PAIR, min_scaleout_per_vs=2, max_scaleout_per_vs=3,
                      max_vs_per_se=4, max_se=6, memory_per_se=1024),
        SeGroupPolicy("as", ha_mode=HA_MODE_LEGACY_ACTIVE_STANDBY, max_vs_per_se=5, max_se=3, memory_per_se=1024),
    ]
    NAMES: ClassVar[list[str]] = [g.name for g in GROUPS]

    def __init__(self) -> None:
        super().__init__()
        self.ses: dict[str, SeState] = {}
        self.vss: dict[str, VsDemand] = {}
        self.current: dict[str, tuple[str, ...]] = {}
        self.n = 0
        for name, count in (("nm", 3), ("nmd", 3), ("aa", 3), ("as", 2)):
            for _ in range(count):
                self._add_se(name)
        shapes = [(APPLICATION_L4, False, 1000), (APPLICATION_HTTP, False, 3000), (APPLICATION_HTTP, True, 2000), (APPLICATION_HTTP, False, 0)]
        for name, count in (("nm", 8), ("nmd", 6), ("aa", 5), ("as", 4)):
            for k in range(count):
                self._add_vs(name, *shapes[k % len(shapes)])
        self.plan = PlacementPlan(placements={})
        self._step()

    def _id(self) -> int:
        self.n += 1
        return self.n

    def _add_se(self, group: str) -> None:
        n = self._id()
        self.ses[f"se-{n}"] = SeState(f"se-{n}", f"{group}-{n:03d}", group)

    def _add_vs(self, group: str, app: str, ssl: bool, connections: int) -> None:
        n = self._id()
        self.vss[f"vs-{n}"] = VsDemand(f"vs-{n}", f"vs-{n:03d}", group, app, ssl, connections)

    def _pick(self, keys: Iterable[str], data: st.DataObject) -> str | None:
        keys = sorted(keys)
        return data.draw(st.sampled_from(keys)) if keys else None

    def _replan(self) -> PlacementPlan:
        groups, ses, vss = self.GROUPS, list(self.ses.values()), list(self.vss.values())
        plan = place(groups, ses, vss, self.current)
        assert [] == check_invariants(groups, ses, vss, plan, self.current)
        # the same input in another order gives the same plan
        assert plan == place(list(reversed(groups)), list(reversed(ses)), list(reversed(vss)), self.current)
        # placing again from the plan changes nothing
        assert plan.placements == place(groups, ses, vss, plan.placements).placements
        self._check_minimal_movement(plan)
        self.current = dict(plan.placements)
        return plan

    def _check_minimal_movement(self, plan: PlacementPlan) -> None:
        """An N+M or active/active VS whose SEs are all still valid and not over their limits keeps them."""
        policies = {g.name: g for g in self.GROUPS}
        load: dict[str, list[VsDemand]] = {}
        valid: dict[str, bool] = {}
        for uuid, targets in self.current.items():
            vs = self.vss.get(uuid)
            if vs is None:
                continue
            policy = policies[vs.group]
            limit = 1 if policy.ha_mode == HA_MODE_SHARED else policy.max_scaleout_per_vs
            ok = len(targets) <= limit
            for se_uuid in targets:
                se = self.ses.get(se_uuid)
                ok = ok and se is not None and se.healthy and se.enable_state != SE_STATE_DISABLED and se.group == vs.group
                load.setdefault(se_uuid, []).append(vs)
            valid[uuid] = ok
        for uuid, ok in valid.items():
            vs = self.vss[uuid]
            policy = policies[vs.group]
            if not ok or policy.ha_mode == HA_MODE_LEGACY_ACTIVE_STANDBY:
                continue
            fits = all(
                len(load[s]) <= policy.max_vs_per_se
                and sum(vs_memory_kb(v) for v in load[s]) <= se_capacity_kb(policy.memory_per_se)
                for s in self.current[uuid]
            )
            if fits and len(self.current[uuid]) >= policy.min_scaleout_per_vs:
                assert self.current[uuid] == plan.placements.get(uuid), f"{vs.name} moved needlessly"

    def _step(self) -> None:
        self.plan = self._replan()

    @rule(data=st.data())
    def fail_se(self, data: st.DataObject) -> None:
        uuid = self._pick((u for u, s in self.ses.items() if s.healthy), data)
        if uuid:
            self.ses[uuid] = attrs.evolve(self.ses[uuid], healthy=False)
        self._step()

    @rule(data=st.data())
    def recover_se(self, data: st.DataObject) -> None:
        uuid = self._pick((u for u, s in self.ses.items() if not s.healthy), data)
        if uuid:
            self.ses[uuid] = attrs.evolve(self.ses[uuid], healthy=True)
        self._step()

    @rule(data=st.data())
    def lose_se(self, data: st.DataObject) -> None:
        uuid = self._pick(self.ses, data)
        if uuid:
            del self.ses[uuid]
        self._step()

    @rule(data=st.data(), state=st.sampled_from([SE_STATE_ENABLED, SE_STATE_DISABLED_FOR_PLACEMENT, SE_STATE_DISABLED]))
    def set_enable_state(self, data: st.DataObject, state: str) -> None:
        uuid = self._pick(self.ses, data)
        if uuid:
            self.ses[uuid] = attrs.evolve(self.ses[uuid], enable_state=state)
        self._step()

    @rule()
    def fulfil_se_requests(self) -> None:
        """The cloud starts what the plan asked for."""
        for request in self.plan.se_requests:
            for _ in range(request.count):
                self._add_se(request.group)
        self._step()

    @rule(group=st.sampled_from(NAMES), app=st.sampled_from([APPLICATION_L4, APPLICATION_HTTP]), ssl=st.booleans(),
          connections=st.sampled_from([0, 100, 1000, 3000, 6000]))
    def add_vs(self, group: str, app: str, ssl: bool, connections: int) -> None:
        self._add_vs(group, app, ssl, connections)
        self._step()

    @rule(data=st.data())
    def remove_vs(self, data: st.DataObject) -> None:
        uuid = self._pick(self.vss, data)
        if uuid:
            del self.vss[uuid]
            self.current.pop(uuid, None)
        self._step()

    @rule(data=st.data(), connections=st.sampled_from([0, 500, 2000, 5000, 9000]))
    def resize_vs(self, data: st.DataObject, connections: int) -> None:
        uuid = self._pick(self.vss, data)
        if uuid:
            self.vss[uuid] = attrs.evolve(self.vss[uuid], expected_connections=connections)
        self._step()

    @invariant()
    def every_vs_is_placed_or_explained(self) -> None:
        assert set(self.vss) == set(self.plan.placements) | {u.vs_uuid for u in self.plan.unplaced}


PlacementMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("AVICTL_PLACEMENT_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("AVICTL_PLACEMENT_STEPS", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_placement_machine = PlacementMachine.TestCase


# -- the simulation -----------------------------------------------------------------------------


def test_scale_simulation_smoke() -> None:
    """The scale simulation on a small fleet keeps every invariant and reports its timings."""
    lines: list[str] = []
    summary = scale.run(n_vss=400, n_ses=60, steps=60, seed=3, out=lines.append)
    assert 0 == summary["violations"], lines
    assert summary["initial_place_ms"] > 0 and summary["step_place_ms"]["p99"] > 0
    assert summary["se_failures"] > 0
    assert any(line.startswith("initial placement") for line in lines)
