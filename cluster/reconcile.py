"""What the leader's placement reconciler decides. Pure: views, observations and ``now`` in, events out.

Level-triggered: ``reconcile`` looks at the whole state every round and returns decisions
(each the events of one proposal, with the preconditions that guard them) that move the log towards it. Running it again on
the state those commands produce returns nothing new, so a lost round, a leader change or a
rejected command only delays convergence. Its steps, in order:

1. **SE liveness.** A registered SE is declared ``up`` (ready) at its first report. It is declared ``down`` when its process is known to have exited (a cloud
   driver on this host says so) or when it has not reported for ``down_after_reports`` report
   intervals (its own interval, as it says in its reports; at least ``down_after_min`` seconds),
   counted from the last report or, for an SE not heard from since this node became leader, from
   then. It is declared ``up`` again on a fresh report.
2. **Takeovers.** A standby SE that reports it took a VIP over (SE-to-SE failover, which works
   without the controllers) at the epoch of the current placement is recorded as the new primary:
   the log follows what the data plane already did.
3. **Placement.** :func:`cluster.placement.place` over the SE groups, the SEs (down ones as
   unhealthy) and the VSs that are not pinned by hand; every changed target becomes a
   ``VirtualServicePlaced`` with a reason, guarded by the placement revision it was computed from.
4. **SE requests** (only when a cloud driver can start SEs): the groups' shortfall, minus the SEs
   already requested and not yet registered, becomes ``ServiceEngineRequested`` events named
   ``<se_name_prefix>-<n>``.
5. **Deprovision.** An SE the cloud started that has carried no VS for ``se_deprovision_delay``
   minutes (as the shell measured: ``idle_since``) is released and its object deleted, keeping the
   group's ``buffer_se`` spares in N+M mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import attrs

from cluster import placement as pl
from cluster.decide import Decision
from cluster.views import ConfigView, StoredObject, ref_uuid
from storage.events import (
    ObjectDeleted,
    Precondition,
    ServiceEngineReleased,
    ServiceEngineRequested,
    ServiceEngineStatusChanged,
    VirtualServicePlaced,
)

__all__ = ["Observed", "SeObservation", "Settings", "new_se_names", "pending_ses", "placement_inputs", "placement_key", "reconcile"]


def placement_key(vs_uuid: str) -> str:
    """The precondition key of a VS's placement (its revision is the VS's placement epoch)."""
    return f"placement:{vs_uuid}"


@attrs.frozen
class SeObservation:
    """What this node knows of one SE at runtime (not in the log)."""

    #: when its last report reached this node (same clock as ``Observed.now``); None: never
    last_report: Optional[float] = None
    #: the report interval the SE says it uses
    report_interval: Optional[float] = None
    #: vs uuid -> the SE's HA state for it: {"role": "active"|"standby", "epoch": int, "took_over_from"?: name, "reason"?: str}
    ha: Mapping[str, Mapping[str, Any]] = attrs.Factory(dict)


@attrs.frozen
class Observed:
    now: float
    #: when this node became leader (same clock as ``now``)
    leader_since: float
    #: se uuid -> observation
    ses: Mapping[str, SeObservation] = attrs.Factory(dict)
    #: a cloud driver can start SEs; None: SEs are started by hand, nothing is requested
    cloud: bool = False
    #: names of the SEs whose process the cloud driver knows to be gone (exited, killed)
    exited: frozenset[str] = frozenset()
    #: SE name -> when this node first saw it carry no VS (for deprovisioning)
    idle_since: Mapping[str, float] = attrs.Factory(dict)


@attrs.frozen
class Settings:
    down_after_reports: int = 3
    down_after_min: float = 3.0
    default_report_interval: float = 5.0


def reconcile(view: ConfigView, observed: Observed, settings: Settings = Settings()) -> list[Decision]:
    commands: list[Decision] = []
    ses = view.list("serviceengine")
    down = {se.uuid: reason for se in ses if (reason := view.se_down(se.uuid)) is not None}

    # 1. Liveness.
    for se in sorted(ses, key=lambda o: o.name):
        obs = observed.ses.get(se.uuid, SeObservation())
        verdict = _liveness(se, obs, observed, settings)
        if verdict is not None and se.uuid not in down:
            commands.append(Decision((ServiceEngineStatusChanged(se.uuid, se.name, "down", verdict),)))
            down[se.uuid] = verdict
        elif verdict is None and se.uuid in down and obs.last_report is not None:
            commands.append(Decision((ServiceEngineStatusChanged(se.uuid, se.name, "up", "reporting again"),)))
            del down[se.uuid]
        elif verdict is None and not view.se_ready(se.uuid) and obs.last_report is not None:
            commands.append(Decision((ServiceEngineStatusChanged(se.uuid, se.name, "up", "ready: registered and reporting"),)))

    # 2. Takeovers the data plane made on its own.
    current: dict[str, tuple[str, ...]] = {}
    taken_over: set[str] = set()
    vss = [vs for vs in view.list("virtualservice") if not view.pinned(vs.uuid)]
    for vs in vss:
        placed = view.placement(vs.uuid)
        current[vs.uuid] = placed
        taken = _takeover(view, vs, placed, observed)
        if taken is not None:
            taken_over.add(vs.uuid)
            new_order, reason = taken
            current[vs.uuid] = new_order
            commands.append(_placed(view, vs.uuid, new_order, reason))

    # 3. Placement.
    groups = view.list("serviceenginegroup")
    policies, states, demands = _inputs(view, groups, ses, vss, down)
    plan = pl.place(policies, states, demands, current)
    names = {se.uuid: se.name for se in ses}
    for vs_uuid in plan.changed:
        if vs_uuid in taken_over:
            continue  # the takeover is recorded first; the next round places from there
        target = plan.target(vs_uuid)
        vs_obj = view.get(vs_uuid)
        reason = f"{vs_obj.name if vs_obj else vs_uuid}: " + _explain(current.get(vs_uuid, ()), target, down, names)
        commands.append(_placed(view, vs_uuid, target, reason))

    # 4. SE requests.
    if observed.cloud:
        commands.extend(_requests(view, plan, groups, down))

    # 5. Deprovision idle SEs the cloud started.
    commands.extend(_releases(view, observed, groups, ses, plan))
    return commands


def placement_inputs(
    view: ConfigView, down: Optional[Mapping[str, str]] = None
) -> tuple[list[pl.SeGroupPolicy], list[pl.SeState], list[pl.VsDemand], dict[str, tuple[str, ...]]]:
    """What step 3 hands to :func:`cluster.placement.place` for ``view`` as it stands: the group
    policies, the SEs (unhealthy: those in ``down``, by default the ones the view holds down), the
    VSs not pinned by hand and their current placement. For checks and simulations."""
    ses = view.list("serviceengine")
    if down is None:
        down = {se.uuid: reason for se in ses if (reason := view.se_down(se.uuid)) is not None}
    vss = [vs for vs in view.list("virtualservice") if not view.pinned(vs.uuid)]
    policies, states, demands = _inputs(view, view.list("serviceenginegroup"), ses, vss, down)
    return policies, states, demands, {vs.uuid: view.placement(vs.uuid) for vs in vss}


def _inputs(
    view: ConfigView, groups: list[StoredObject], ses: list[StoredObject], vss: list[StoredObject], down: Mapping[str, str]
) -> tuple[list[pl.SeGroupPolicy], list[pl.SeState], list[pl.VsDemand]]:
    return [_policy(g) for g in groups], [_se_state(se, se.uuid not in down) for se in ses], [_demand(view, vs) for vs in vss]


def _liveness(se: StoredObject, obs: SeObservation, observed: Observed, settings: Settings) -> Optional[str]:
    if se.name in observed.exited:
        return "its process exited"
    interval = obs.report_interval or settings.default_report_interval
    limit = max(settings.down_after_min, settings.down_after_reports * interval)
    since = obs.last_report if obs.last_report is not None else observed.leader_since
    silent = observed.now - since
    if silent > limit:
        return f"no report for {silent:.1f} s (limit {limit:.1f} s)"
    return None


def _takeover(view: ConfigView, vs: StoredObject, placed: tuple[str, ...], observed: Observed) -> Optional[tuple[tuple[str, ...], str]]:
    if len(placed) < 2:
        return None
    epoch = view.placement_revision(vs.uuid)
    for se_uuid in placed[1:]:
        state = observed.ses.get(se_uuid, SeObservation()).ha.get(vs.uuid) or {}
        if state.get("role") == "active" and state.get("epoch") == epoch:
            new_order = (se_uuid,) + tuple(u for u in placed if u != se_uuid)
            se, old = view.get(se_uuid), view.get(placed[0])
            why = state.get("reason") or "its peer was lost"
            return new_order, f"{vs.name}: failover: {se.name if se else se_uuid} took the VIP over from {old.name if old else placed[0]} ({why})"
    return None


def _placed(view: ConfigView, vs_uuid: str, se_uuids: tuple[str, ...], reason: str) -> Decision:
    guard = Precondition(placement_key(vs_uuid), view.placement_revision(vs_uuid))
    return Decision((VirtualServicePlaced(vs_uuid, se_uuids, reason),), (guard,))


def _policy(group: StoredObject) -> pl.SeGroupPolicy:
    body = dict(group.body)
    body["name"] = group.uuid
    return pl.SeGroupPolicy.from_body(body)


def _se_state(se: StoredObject, healthy: bool) -> pl.SeState:
    resources = se.body.get("resources") or {}
    return pl.SeState(
        uuid=se.uuid,
        name=se.name,
        group=ref_uuid(se.body.get("se_group_ref") or ""),
        enable_state=se.body.get("enable_state") or pl.SE_STATE_ENABLED,
        healthy=healthy,
        memory_mb=resources.get("memory"),
    )


def _demand(view: ConfigView, vs: StoredObject) -> pl.VsDemand:
    profile_ref = vs.body.get("application_profile_ref")
    profile = view.get(ref_uuid(profile_ref)) if profile_ref else None
    l7 = profile is None or profile.body.get("type", "APPLICATION_PROFILE_TYPE_HTTP") == "APPLICATION_PROFILE_TYPE_HTTP"
    return pl.VsDemand(
        uuid=vs.uuid,
        name=vs.name,
        group=ref_uuid(vs.body.get("se_group_ref") or ""),
        application=pl.APPLICATION_HTTP if l7 else pl.APPLICATION_L4,
        ssl=any(bool(s.get("enable_ssl")) for s in vs.body.get("services") or []),
    )


def _explain(old: tuple[str, ...], new: tuple[str, ...], down: Mapping[str, str], names: Mapping[str, str]) -> str:
    def named(uuids: tuple[str, ...]) -> str:
        return ", ".join(names.get(u, u) for u in uuids) or "nothing"

    lost = [u for u in old if u not in new]
    if not old:
        return f"placed on {named(new)}"
    if lost and all(u in down for u in lost):
        why = "; ".join(f"{names.get(u, u)} down: {down[u]}" for u in lost)
        return f"re-placed on {named(new)} ({why})"
    if set(old) == set(new):
        return f"primary is now {names.get(new[0], new[0])}" if new else "unplaced"
    if not new:
        return f"unplaced from {named(old)}"
    if set(old) < set(new):
        return f"added {named(tuple(u for u in new if u not in old))} (now on {named(new)})"
    if set(new) < set(old):
        return f"removed {named(tuple(lost))} (now on {named(new)})"
    return f"moved from {named(old)} to {named(new)}"


def pending_ses(view: ConfigView, group_uuid: str, down: Mapping[str, str]) -> list[str]:
    """Requested SEs of the group not up yet: not registered, or down while the cloud restarts them."""
    return [
        n for n, (g, _rev) in view.se_requested().items()
        if g == group_uuid and ((se := view.by_name("serviceengine", n)) is None or se.uuid in down)
    ]


def new_se_names(view: ConfigView, group: StoredObject, count: int) -> list[str]:
    """``count`` unused names ``<se_name_prefix>-<n>``, lowest numbers first."""
    taken = set(view.se_requested()) | {se.name for se in view.list("serviceengine")}
    prefix = group.body.get("se_name_prefix") or "Avi"
    names: list[str] = []
    n = 0
    while len(names) < count:
        n += 1
        if f"{prefix}-{n}" not in taken:
            names.append(f"{prefix}-{n}")
    return names


def _requests(view: ConfigView, plan: pl.PlacementPlan, groups: list[StoredObject], down: Mapping[str, str]) -> list[Decision]:
    by_uuid = {g.uuid: g for g in groups}
    commands = []
    for request in plan.se_requests:
        group = by_uuid.get(request.group)
        if group is None:
            continue
        missing = request.count - len(pending_ses(view, group.uuid, down))
        for name in new_se_names(view, group, max(0, missing)):
            commands.append(Decision((ServiceEngineRequested(name, group.uuid, f"{group.name}: {request.reason}"),)))
    return commands


def _releases(
    view: ConfigView, observed: Observed, groups: list[StoredObject], ses: list[StoredObject], plan: pl.PlacementPlan
) -> list[Decision]:
    requested = view.se_requested()
    by_uuid = {g.uuid: g for g in groups}
    wanted_groups = {r.group for r in plan.se_requests}
    in_use = {se for ses_of in plan.placements.values() for se in ses_of}
    commands = []
    idle_by_group: dict[str, list[StoredObject]] = {}
    for se in sorted(ses, key=lambda o: o.name):
        if se.name in requested and se.uuid not in in_use and not view.placed_on(se.uuid):
            idle_by_group.setdefault(requested[se.name][0], []).append(se)
    for group_uuid, idle in idle_by_group.items():
        group = by_uuid.get(group_uuid)
        if group is None or group_uuid in wanted_groups:
            continue
        delay = 60.0 * float(group.body.get("se_deprovision_delay", 120))
        keep = int(group.body.get("buffer_se", 1)) if (group.body.get("ha_mode") or pl.HA_MODE_SHARED) == pl.HA_MODE_SHARED else 0
        for se in idle[keep:]:
            since = observed.idle_since.get(se.name)
            if since is None or observed.now - since < delay:
                continue
            reason = f"idle for {observed.now - since:.0f} s (se_deprovision_delay {delay / 60:g} min)"
            commands.append(
                Decision(
                    (ServiceEngineReleased(se.name, reason), ObjectDeleted("serviceengine", se.uuid, se.name, se.tenant)),
                    (Precondition(se.uuid, se.modified),),
                )
            )
    return commands
