"""Autoscale and rebalance decisions from SE load. Pure: views, load samples and ``now`` in, commands out.

Each SE of a group is given a utilisation: for ``SE_AUTO_REBALANCE_CPU`` its CPU percent, for the
other criteria the measured rate as a percentage of ``auto_rebalance_capacity_per_se`` (the entry
at the same position; defaults in :data:`DEFAULT_CAPACITY`), and always its resident memory as a
percentage of the group's ``memory_per_se``. The highest of these counts.
Hysteresis: above ``max_cpu_usage`` an SE is *hot*, below ``min_cpu_usage`` *cold*, in between
nothing happens. Cooldown: a VS is acted on at most once per ``auto_rebalance_interval`` seconds
(the shell remembers when; a new leader starts the cooldown afresh).

* A hot SE's first VS (by name) that is out of cooldown is scaled out to the least utilised other
  SE of the group that is not hot (active/active, below ``max_scaleout_per_vs``), or else migrated
  there (N+M, or active/active at its maximum) when that SE is cold.
* An active/active VS above ``min_scaleout_per_vs`` whose SEs are all cold is scaled in (its last SE).
* Active/standby VSs never move for load (the pair is fixed); they only raise alerts.

With ``auto_rebalance`` off the decision becomes an ``AutoscaleAlerted`` event naming the action it
would take; on, a ``VirtualServicePlaced``. Either way the reason records the metric, its value
and the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from cluster.decide import Decision
from cluster.reconcile import new_se_names, pending_ses, placement_key
from cluster.views import ConfigView, StoredObject, ref_uuid
from storage.events import AutoscaleAlerted, Precondition, ServiceEngineRequested, VirtualServicePlaced

__all__ = ["DEFAULT_CAPACITY", "METRIC_OF", "alert_key", "autoscale", "utilisation"]

#: which SE report figure each criterion reads
METRIC_OF = {
    "SE_AUTO_REBALANCE_CPU": "cpu_percent",
    "SE_AUTO_REBALANCE_PPS": "requests_per_s",
    "SE_AUTO_REBALANCE_MBPS": "mbps",
    "SE_AUTO_REBALANCE_OPEN_CONNS": "open_connections",
    "SE_AUTO_REBALANCE_CPS": "connections_per_s",
}
#: capacity of one SE per criterion when the group gives none (our single-core SE process)
DEFAULT_CAPACITY = {
    "SE_AUTO_REBALANCE_PPS": 10_000,
    "SE_AUTO_REBALANCE_MBPS": 1_000,
    "SE_AUTO_REBALANCE_OPEN_CONNS": 10_000,
    "SE_AUTO_REBALANCE_CPS": 5_000,
}


def alert_key(se_uuid: str) -> str:
    """The ``last_action`` key of an SE's alerts (alerts are rate-limited per SE, actions per VS)."""
    return f"se:{se_uuid}"


def utilisation(group: StoredObject, sample: Mapping[str, Any]) -> Optional[tuple[float, str]]:
    """The SE's highest utilisation (percent) over the group's criteria, and what it is; None: no figures."""
    criteria = group.body.get("auto_rebalance_criteria") or ["SE_AUTO_REBALANCE_CPU"]
    capacities = group.body.get("auto_rebalance_capacity_per_se") or []
    best: Optional[tuple[float, str]] = None
    for i, criterion in enumerate(criteria):
        metric = METRIC_OF.get(criterion)
        value = sample.get(metric) if metric else None
        if not isinstance(value, (int, float)):
            continue
        if criterion == "SE_AUTO_REBALANCE_CPU":
            percent, text = float(value), f"cpu {value:.0f}%"
        else:
            capacity = capacities[i] if i < len(capacities) else DEFAULT_CAPACITY[criterion]
            percent = 100.0 * float(value) / capacity
            text = f"{metric} {value:g} ({percent:.0f}% of {capacity})"
        if best is None or percent > best[0]:
            best = (percent, text)
    # Memory is always watched, whatever the criteria: the SE's resident memory against the
    # group's memory_per_se (an SE near its memory is as hot as one near its CPU).
    memory, per_se = sample.get("memory_mb"), group.body.get("memory_per_se", 2048)
    if isinstance(memory, (int, float)) and isinstance(per_se, int) and per_se > 0:
        percent = 100.0 * float(memory) / per_se
        if best is None or percent > best[0]:
            best = (percent, f"memory {memory:.0f} MB ({percent:.0f}% of memory_per_se {per_se} MB)")
    return best


def autoscale(
    view: ConfigView,
    samples: Mapping[str, Mapping[str, Any]],
    now: float,
    last_action: Mapping[str, float],
    *,
    cloud: bool = False,
) -> list[Decision]:
    """``samples``: se uuid -> its latest report figures; ``last_action``: vs uuid -> when it was last acted on.

    ``cloud``: SEs can be started on demand; a VS that must scale out with no free SE asks for one.
    """
    commands: list[Decision] = []
    ses_by_group: dict[str, list[StoredObject]] = {}
    for se in view.list("serviceengine"):
        if view.se_down(se.uuid) is None and (se.body.get("enable_state") or "SE_STATE_ENABLED") == "SE_STATE_ENABLED":
            ses_by_group.setdefault(ref_uuid(se.body.get("se_group_ref") or ""), []).append(se)
    acted: set[str] = set()
    asked: set[str] = set()  # groups that asked the cloud for an SE this round
    for group in sorted(view.list("serviceenginegroup"), key=lambda g: g.name):
        members = sorted(ses_by_group.get(group.uuid, []), key=lambda s: s.name)
        if not members:
            continue
        high, low = float(group.body.get("max_cpu_usage", 80)), float(group.body.get("min_cpu_usage", 30))
        cooldown = float(group.body.get("auto_rebalance_interval", 300))
        mode = group.body.get("ha_mode") or "HA_MODE_SHARED"
        act = bool(group.body.get("auto_rebalance", False))
        load = {se.uuid: u for se in members if (u := utilisation(group, samples.get(se.uuid) or {})) is not None}

        # The helpers bind this group's settings now: they are called within this iteration only.
        def cooled(key: str, cooldown: float = cooldown) -> bool:
            last = last_action.get(key)
            return key not in acted and (last is None or now - last >= cooldown)

        def ready(vs_uuid: str) -> bool:
            return cooled(vs_uuid) and not view.pinned(vs_uuid)

        def decided(vs: StoredObject, se: StoredObject, target: tuple[str, ...], action: str, reason: str, act: bool = act) -> None:
            acted.add(vs.uuid)
            acted.add(alert_key(se.uuid))
            if act:
                guard = Precondition(placement_key(vs.uuid), view.placement_revision(vs.uuid))
                commands.append(Decision((VirtualServicePlaced(vs.uuid, target, f"autoscale: {reason}"),), (guard,)))
            else:
                commands.append(Decision((AutoscaleAlerted(vs.uuid, se.uuid, action, f"{reason} (auto_rebalance off: alert only)"),)))

        # Scale out or migrate away from hot SEs.
        for se in members:
            figure = load.get(se.uuid)
            if figure is None or figure[0] <= high:
                continue
            if not act and not cooled(alert_key(se.uuid)):
                continue  # alerts: one per hot SE per cooldown, not one per VS on it
            vss = sorted((v for v in (view.get(u) for u in view.placed_on(se.uuid)) if v is not None and ready(v.uuid)), key=lambda v: v.name)
            for vs in vss:
                placed = view.placement(vs.uuid)
                others = sorted(
                    (s for s in members if s.uuid not in placed and s.uuid in load and load[s.uuid][0] <= high),
                    key=lambda s: (load[s.uuid][0], s.name),
                )
                why = f"{se.name} {figure[1]} > max_cpu_usage {high:g}%"
                scalable = mode == "HA_MODE_SHARED_PAIR" and len(placed) < int(group.body.get("max_scaleout_per_vs", 4))
                if not others and scalable and cloud and act:
                    # Nowhere to scale out to: ask the cloud for one more SE (one per group, while none is pending).
                    if group.uuid not in asked and not pending_ses(view, group.uuid, {}) and len(members) < int(group.body.get("max_se", 10)):
                        asked.add(group.uuid)
                        (name,) = new_se_names(view, group, 1)
                        acted.add(vs.uuid)
                        commands.append(Decision((ServiceEngineRequested(name, group.uuid, f"autoscale: {why}: scale-out {vs.name} needs a new SE"),)))
                        break
                if mode == "HA_MODE_LEGACY_ACTIVE_STANDBY" or not others:
                    if not act and mode == "HA_MODE_LEGACY_ACTIVE_STANDBY":
                        decided(vs, se, placed, "none", f"{why}; an active/standby pair does not scale")
                    continue
                target_se = others[0]
                if scalable:
                    decided(vs, se, placed + (target_se.uuid,), "scaleout", f"{why}: scale-out {vs.name} to {target_se.name}")
                elif load[target_se.uuid][0] < low:
                    target = tuple(target_se.uuid if u == se.uuid else u for u in placed)
                    decided(vs, se, target, "migrate", f"{why}: migrate {vs.name} to {target_se.name} ({load[target_se.uuid][1]})")
                else:
                    continue
                break  # one VS per hot SE per round: the next round sees the new load

        # Scale in active/active VSs whose SEs are all cold.
        if mode != "HA_MODE_SHARED_PAIR":
            continue
        floor = int(group.body.get("min_scaleout_per_vs", 1))
        for vs in sorted((v for v in view.list("virtualservice") if ref_uuid(v.body.get("se_group_ref") or "") == group.uuid), key=lambda v: v.name):
            placed = view.placement(vs.uuid)
            if len(placed) <= floor or not ready(vs.uuid) or not all(u in load and load[u][0] < low for u in placed):
                continue
            last = view.get(placed[-1])
            assert last is not None
            figures = ", ".join(f"{view.get(u).name} {load[u][1]}" for u in placed)  # type: ignore[union-attr]
            decided(vs, last, placed[:-1], "scalein", f"every SE of {vs.name} below min_cpu_usage {low:g}% ({figures}): scale-in from {last.name}")
    return commands
