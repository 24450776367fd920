"""Where every virtual service runs: placement of VSs onto Service Engines. Pure.

``place(groups, ses, vss, current)`` takes the SE group policies, the SEs with their health and
enable state, the VSs with their expected load, and the current placement, and returns a
:class:`PlacementPlan`: the target SE list of every VS (primary / active first), the SEs each
group still needs (:class:`SeRequest`), and the VSs that cannot be placed, each with a reason.
It does no I/O and reads no clock; the same input (in any order) gives the same plan.
``check_invariants`` states what every plan must satisfy; tests and ``simulations.scale`` run it
after every step.

HA modes (the wire enums of ``serviceenginegroup.ha_mode``):

* ``HA_MODE_SHARED`` (N+M): each VS on exactly one SE. The group keeps ``buffer_se`` SEs' worth
  of spare capacity: the free room on the other placement-enabled SEs must hold everything the
  ``buffer_se`` most loaded SEs carry (memory and VS slots, in aggregate); when it does not, the
  plan asks for more SEs. The buffer is not fenced off: a VS is placed on spare room rather than
  left unplaced, and the plan asks for SEs to restore the buffer. On SE failure the VSs it carried
  are re-placed.
* ``HA_MODE_SHARED_PAIR`` (active/active): each VS on ``min_scaleout_per_vs`` SEs, or on as many
  as it is on now when that is more (a scale-out), capped at ``max_scaleout_per_vs``; all serve,
  the first is the primary. A VS that loses an SE keeps the order of the survivors (the first
  survivor becomes primary) and gets a replacement. With too few SEs it runs on fewer (listed in
  ``degraded``) rather than not at all.
* ``HA_MODE_LEGACY_ACTIVE_STANDBY``: the group uses exactly two SEs, an active and a standby, and
  every VS of the group is on both, active first. The pair is read from the current placement
  (the SE that is first for most VSs is the active); when the active is gone the survivor is
  first, and stays first when the old one returns (failback is manual, by ``switchover``). A lost
  member is replaced by a spare SE of the group, or requested; meanwhile the VSs run on the
  survivor alone (``degraded``). The pair never scales out, so a VS that does not fit on it is
  unplaced.

Common rules: never more than ``max_vs_per_se`` VSs or more memory than its capacity on an SE;
nothing on an unhealthy or ``SE_STATE_DISABLED`` SE; nothing new on an
``SE_STATE_DISABLED_FOR_PLACEMENT`` SE (the VSs already there stay). Minimal movement: a VS keeps
every SE of its current placement that is still valid; only when an SE is over its limits (a load
ramp, a smaller ``max_vs_per_se``) are some of its VSs moved: it keeps its VSs in (name, uuid)
order while they fit, first fit. New and displaced VSs are placed largest first; ``PACKED`` puts
each on the fullest SE it fits on (least free memory that is enough, best fit), ``DISTRIBUTED`` on
the emptiest (most free memory). Ties go to the SE first by (name, uuid).

Cost: one pass over the VSs to keep what is valid, then, per group, the open SEs sorted by free
memory (a list kept sorted with bisect): each new or displaced VS costs a binary search and a list
shift, never a scan of the SEs. 10 000 VSs on 1 000 SEs place from scratch in well under a second;
re-placing after a failure costs the pass plus the displaced VSs (``simulations.scale`` measures
both).

Memory cost model (all integers, in KB, so plans never depend on float rounding):

* An SE's capacity is ``memory_mb`` (default: the group's ``memory_per_se``) minus
  :data:`SE_BASE_MEMORY_MB` = 512 MB. The SE process itself (interpreter, event loop, proxy and
  monitor code, telemetry and the request-log ring) plus the kernel's socket buffers and headroom,
  so that an SE at 100 % placement is not the one the OOM killer picks. With the default
  ``memory_per_se`` of 2048 MB that leaves 1536 MB for VSs.
* A VS costs :data:`VS_OVERHEAD_KB` = 8 MB (its config, pool and server state, health-monitor
  tasks, counters, its share of logs) plus ``expected_connections`` times the cost of one
  connection:

  - L4 (``System-L4-Application``): 4 KB: two transports and their protocol objects (~2 KB in
    our proxy) plus the bytes in flight under back-pressure, which the relay bounds.
  - HTTP (``System-HTTP``, L7): 32 KB: parser state, header maps, request and response objects,
    and the read buffers of both sides while a request is queued or relayed.
  - SSL on any service: +64 KB: the TLS session and its read and write record buffers (16 KB
    records, each way, plus OpenSSL's own state).

  So the default 1 000 connections cost 12 MB (L4), 39 MB (HTTP) or 103 MB (HTTP + SSL); an SE
  with 2048 MB holds 128, 39 or 14 of those. The relative order (L4 < HTTP < SSL) is what
  matters for placement; the absolute figures are conservative estimates to be replaced by
  measured ones (SE telemetry reports memory).
* A VS on several SEs (active/active, active/standby) reserves its whole cost on each of them:
  after a failure or a scale-in one SE must carry all of its connections.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "APPLICATION_HTTP",
    "APPLICATION_L4",
    "CONNECTION_KB",
    "DEFAULT_EXPECTED_CONNECTIONS",
    "HA_MODES",
    "HA_MODE_LEGACY_ACTIVE_STANDBY",
    "HA_MODE_SHARED",
    "HA_MODE_SHARED_PAIR",
    "PLACEMENT_ALGO_DISTRIBUTED",
    "PLACEMENT_ALGO_PACKED",
    "SE_BASE_MEMORY_MB",
    "SE_STATE_DISABLED",
    "SE_STATE_DISABLED_FOR_PLACEMENT",
    "SE_STATE_ENABLED",
    "SSL_CONNECTION_KB",
    "VS_OVERHEAD_KB",
    "Degraded",
    "PlacementPlan",
    "SeGroupPolicy",
    "SeRequest",
    "SeState",
    "Unplaced",
    "VsDemand",
    "check_invariants",
    "place",
    "se_capacity_kb",
    "vs_memory_kb",
]

HA_MODE_SHARED = "HA_MODE_SHARED"
HA_MODE_SHARED_PAIR = "HA_MODE_SHARED_PAIR"
HA_MODE_LEGACY_ACTIVE_STANDBY = "HA_MODE_LEGACY_ACTIVE_STANDBY"
HA_MODES = (HA_MODE_SHARED, HA_MODE_SHARED_PAIR, HA_MODE_LEGACY_ACTIVE_STANDBY)

PLACEMENT_ALGO_PACKED = "PLACEMENT_ALGO_PACKED"
PLACEMENT_ALGO_DISTRIBUTED = "PLACEMENT_ALGO_DISTRIBUTED"
PLACEMENT_ALGOS = (PLACEMENT_ALGO_PACKED, PLACEMENT_ALGO_DISTRIBUTED)

SE_STATE_ENABLED = "SE_STATE_ENABLED"
SE_STATE_DISABLED_FOR_PLACEMENT = "SE_STATE_DISABLED_FOR_PLACEMENT"
SE_STATE_DISABLED = "SE_STATE_DISABLED"
SE_STATES = (SE_STATE_ENABLED, SE_STATE_DISABLED_FOR_PLACEMENT, SE_STATE_DISABLED)

APPLICATION_L4 = "l4"
APPLICATION_HTTP = "http"

#: memory an SE keeps for itself; the rest of ``memory_mb`` is for VSs
SE_BASE_MEMORY_MB = 512
#: fixed cost of one VS on one SE
VS_OVERHEAD_KB = 8 * 1024
#: cost of one connection by application type
CONNECTION_KB = {APPLICATION_L4: 4, APPLICATION_HTTP: 32}
#: extra cost of one connection when the VS terminates SSL
SSL_CONNECTION_KB = 64
DEFAULT_EXPECTED_CONNECTIONS = 1000


def _at_least(lo: int) -> Any:
    def check(instance: Any, attribute: Any, value: int) -> None:
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"{attribute.name} must be an integer >= {lo}, not {value!r}")

    return check


@attrs.frozen
class SeGroupPolicy:
    """The placement settings of one ``serviceenginegroup``."""

    name: str
    ha_mode: str = attrs.field(default=HA_MODE_SHARED, validator=attrs.validators.in_(HA_MODES))
    min_scaleout_per_vs: int = attrs.field(default=1, validator=_at_least(1))
    max_scaleout_per_vs: int = attrs.field(default=4, validator=_at_least(1))
    max_se: int = attrs.field(default=10, validator=_at_least(0))
    max_vs_per_se: int = attrs.field(default=10, validator=_at_least(1))
    buffer_se: int = attrs.field(default=1, validator=_at_least(0))
    memory_per_se: int = attrs.field(default=2048, validator=_at_least(1))  # MB
    algo: str = attrs.field(default=PLACEMENT_ALGO_PACKED, validator=attrs.validators.in_(PLACEMENT_ALGOS))

    @max_scaleout_per_vs.validator
    def _max_not_below_min(self, attribute: Any, value: int) -> None:
        if value < self.min_scaleout_per_vs:
            raise ValueError("max_scaleout_per_vs must be >= min_scaleout_per_vs")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SeGroupPolicy:
        """The policy of a stored ``serviceenginegroup`` body (API field names, API defaults)."""
        kwargs = {f.name: body[f.name] for f in attrs.fields(cls) if f.name in body}
        return cls(**kwargs)


@attrs.frozen
class SeState:
    """One Service Engine as placement sees it."""

    uuid: str
    name: str
    group: str
    enable_state: str = attrs.field(default=SE_STATE_ENABLED, validator=attrs.validators.in_(SE_STATES))
    healthy: bool = True
    #: the SE's memory in MB; None: its group's ``memory_per_se``
    memory_mb: int | None = attrs.field(default=None, validator=attrs.validators.optional(_at_least(0)))


@attrs.frozen
class VsDemand:
    """One virtual service and the load it is expected to carry."""

    uuid: str
    name: str
    group: str
    application: str = attrs.field(default=APPLICATION_HTTP, validator=attrs.validators.in_((APPLICATION_L4, APPLICATION_HTTP)))
    ssl: bool = False
    expected_connections: int = attrs.field(default=DEFAULT_EXPECTED_CONNECTIONS, validator=_at_least(0))


@attrs.frozen
class SeRequest:
    """The group needs ``count`` more usable SEs than it has (already bounded by ``max_se``).

    Level-triggered: a cloud driver compares ``count`` with the SEs it is still starting for the
    group; SEs appear in ``place``'s input once they register.
    """

    group: str
    count: int
    reason: str


@attrs.frozen
class Unplaced:
    """A VS that is on no SE in the plan, and why."""

    vs_uuid: str
    reason: str


@attrs.frozen
class Degraded:
    """A VS that is placed, but on fewer SEs than its HA mode wants, and why."""

    vs_uuid: str
    reason: str


@attrs.frozen
class PlacementPlan:
    """What ``place`` decided; every field is ordered (by uuid, or by group name)."""

    #: vs uuid -> SE uuids, the primary (active) first; placed VSs only
    placements: dict[str, tuple[str, ...]] = attrs.field(hash=False)
    se_requests: tuple[SeRequest, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    degraded: tuple[Degraded, ...] = ()
    #: uuids of the VSs whose target differs from the current placement (an unplaced VS has ())
    changed: tuple[str, ...] = ()

    def target(self, vs_uuid: str) -> tuple[str, ...]:
        return self.placements.get(vs_uuid, ())


def se_capacity_kb(memory_mb: int) -> int:
    """Memory (KB) an SE with ``memory_mb`` offers to VSs."""
    return max(0, memory_mb - SE_BASE_MEMORY_MB) * 1024


def vs_memory_kb(vs: VsDemand) -> int:
    """Memory (KB) ``vs`` takes on each SE it is placed on."""
    per_connection = CONNECTION_KB[vs.application] + (SSL_CONNECTION_KB if vs.ssl else 0)
    return VS_OVERHEAD_KB + vs.expected_connections * per_connection


def _mb(kb: int) -> int:
    return -(-kb // 1024)


# -- the fleet, indexed -------------------------------------------------------------------------


class _Fleet:
    """SEs indexed by rank (their position in (name, uuid) order) with running loads."""

    __slots__ = ("by_group", "cap", "count", "group", "index", "keepable", "open", "ses", "slots", "used")

    def __init__(self, groups: Mapping[str, SeGroupPolicy], ses: Iterable[SeState]) -> None:
        self.ses = sorted(ses, key=lambda s: (s.name, s.uuid))
        self.index: dict[str, int] = {}
        self.group: list[str] = []
        self.keepable: list[bool] = []  # may keep the VSs it has
        self.open: list[bool] = []  # may take new VSs
        self.cap: list[int] = []
        self.slots: list[int] = []
        self.by_group: dict[str, list[int]] = {}
        for i, se in enumerate(self.ses):
            if se.uuid in self.index:
                raise ValueError(f"two SEs with uuid {se.uuid}")
            self.index[se.uuid] = i
            policy = groups.get(se.group)
            live = policy is not None and se.healthy and se.enable_state != SE_STATE_DISABLED
            self.group.append(se.group)
            self.keepable.append(live)
            self.open.append(live and se.enable_state == SE_STATE_ENABLED)
            memory = se.memory_mb if se.memory_mb is not None else (policy.memory_per_se if policy else 0)
            self.cap.append(se_capacity_kb(memory))
            self.slots.append(policy.max_vs_per_se if policy else 0)
            self.by_group.setdefault(se.group, []).append(i)
        n = len(self.ses)
        self.used = [0] * n
        self.count = [0] * n

    def fits(self, i: int, demand: int) -> bool:
        return self.count[i] < self.slots[i] and self.used[i] + demand <= self.cap[i]

    def add(self, i: int, demand: int) -> None:
        self.used[i] += demand
        self.count[i] += 1


class _Bins:
    """The open SEs of one group that have a free VS slot, sorted by free memory.

    Entries are ``(free_kb, tiebreak)``: PACKED uses ``rank`` and takes the first entry with
    enough free memory (bisect: the fullest SE that fits); DISTRIBUTED uses ``-rank`` and takes
    the last entry (the emptiest SE), so ties go to the lower rank either way.
    """

    __slots__ = ("fleet", "keys", "packed", "present")

    def __init__(self, fleet: _Fleet, members: Sequence[int], packed: bool) -> None:
        self.fleet = fleet
        self.packed = packed
        self.present: set[int] = set()
        keys = []
        for i in members:
            if fleet.open[i] and fleet.count[i] < fleet.slots[i]:
                keys.append(self._key(i))
                self.present.add(i)
        keys.sort()
        self.keys = keys

    def _key(self, i: int) -> tuple[int, int]:
        return (self.fleet.cap[i] - self.fleet.used[i], i if self.packed else -i)

    def take(self, demand: int) -> int | None:
        """Remove and return the SE this algorithm picks for ``demand``, or None if none fits."""
        keys = self.keys
        if self.packed:
            j = bisect.bisect_left(keys, (demand,))
            if j == len(keys):
                return None
            i = keys.pop(j)[1]
        else:
            if not keys or keys[-1][0] < demand:
                return None
            i = -keys.pop()[1]
        self.present.discard(i)
        return i

    def hide(self, i: int) -> bool:
        """Remove ``i`` for a while (it must not be picked twice for one VS); False if absent."""
        if i not in self.present:
            return False
        key = self._key(i)
        j = bisect.bisect_left(self.keys, key)
        del self.keys[j]
        self.present.discard(i)
        return True

    def put(self, i: int) -> None:
        """(Re)insert ``i`` with its current load, if it still has a free slot."""
        fleet = self.fleet
        if fleet.count[i] < fleet.slots[i] and i not in self.present:
            bisect.insort(self.keys, self._key(i))
            self.present.add(i)


class _Vs:
    """One N+M or active/active VS while it is being placed: the SEs it keeps (ranks, primary first)."""

    __slots__ = ("current", "demand", "intact", "keep", "target", "vs")

    def __init__(self, vs: VsDemand, demand: int, keep: list[int], target: int, current: tuple[str, ...], intact: bool) -> None:
        self.vs = vs
        self.demand = demand
        self.keep = keep
        self.target = target
        self.current = current
        #: no SE of current was dropped: keep is current when their lengths are equal
        self.intact = intact


def _order(rec: _Vs) -> tuple[str, str]:
    return (rec.vs.name, rec.vs.uuid)


def _largest_first(rec: _Vs) -> tuple[int, str, str]:
    return (-rec.demand, rec.vs.name, rec.vs.uuid)


# -- place ----------------------------------------------------------------------------------------


def place(
    groups: Iterable[SeGroupPolicy],
    ses: Iterable[SeState],
    vss: Iterable[VsDemand],
    current: Mapping[str, Sequence[str]],
) -> PlacementPlan:
    """The placement of every VS of ``vss``, given ``current`` (vs uuid -> SE uuids, primary first)."""
    policies: dict[str, SeGroupPolicy] = {}
    for g in groups:
        if g.name in policies:
            raise ValueError(f"two SE groups named {g.name!r}")
        policies[g.name] = g
    fleet = _Fleet(policies, ses)
    index, keepable, group_of = fleet.index, fleet.keepable, fleet.group

    unplaced: dict[str, str] = {}
    degraded: dict[str, str] = {}
    result: dict[str, tuple[str, ...]] = {}
    requests: list[SeRequest] = []
    records: dict[str, list[_Vs]] = {}  # group -> its VSs (shared and shared-pair groups)
    legacy: dict[str, list[VsDemand]] = {}
    # group -> (its records, SEs per VS at most, SEs per VS at least, whether the target follows
    # the current placement: an active/active VS scaled out stays scaled out)
    settings: dict[str, tuple[list[_Vs], int, int, bool]] = {}
    for name, policy in policies.items():
        if policy.ha_mode == HA_MODE_SHARED:
            settings[name] = (records.setdefault(name, []), 1, 1, False)
        elif policy.ha_mode == HA_MODE_SHARED_PAIR:
            settings[name] = (records.setdefault(name, []), policy.max_scaleout_per_vs, policy.min_scaleout_per_vs, True)
    seen: set[str] = set()
    rebuilt: list[str] = []  # VSs whose target is not the very tuple given in current
    used, count = fleet.used, fleet.count
    per_connection = {(app, ssl): kb + (SSL_CONNECTION_KB if ssl else 0) for app, kb in CONNECTION_KB.items() for ssl in (False, True)}

    # 1. Keep what is still valid.
    for vs in vss:
        uuid, group = vs.uuid, vs.group
        if uuid in seen:
            raise ValueError(f"two VSs with uuid {uuid}")
        seen.add(uuid)
        setting = settings.get(group)
        if setting is None:
            if group in policies:
                legacy.setdefault(group, []).append(vs)
            else:
                unplaced[uuid] = f"no SE group {group!r}"
            continue
        recs, limit, lo, scales = setting
        cur = current.get(uuid, ())
        if type(cur) is not tuple:
            cur = tuple(cur)
        demand = VS_OVERHEAD_KB + vs.expected_connections * per_connection[vs.application, vs.ssl]
        target = min(max(lo, len(set(cur))), limit) if scales else 1
        keep: list[int] = []
        intact = True
        for se_uuid in cur:
            i = index.get(se_uuid)
            if i is None or not keepable[i] or group_of[i] != group or i in keep:
                intact = False
                continue
            keep.append(i)
            used[i] += demand
            count[i] += 1
            if len(keep) == limit:
                break
        recs.append(_Vs(vs, demand, keep, target, cur, intact))

    # 2. An SE over its limits keeps its VSs in (name, uuid) order while they fit.
    over = [i for i in range(len(fleet.ses)) if count[i] > fleet.slots[i] or used[i] > fleet.cap[i]]
    if over:
        hosted: dict[int, list[_Vs]] = {i: [] for i in over}
        for recs in records.values():
            for rec in recs:
                for i in rec.keep:
                    if i in hosted:
                        hosted[i].append(rec)
        for i in over:
            used[i] = count[i] = 0
            for rec in sorted(hosted[i], key=_order):
                if fleet.fits(i, rec.demand):
                    fleet.add(i, rec.demand)
                else:
                    rec.keep.remove(i)
                    rec.intact = False

    # 3. Place what is missing, group by group, largest first.
    for name in sorted(records):
        policy = policies[name]
        recs = records[name]
        if not recs:
            continue
        missing = [rec for rec in recs if len(rec.keep) < rec.target]
        if missing:
            bins = _Bins(fleet, fleet.by_group.get(name, ()), policy.algo == PLACEMENT_ALGO_PACKED)
            missing.sort(key=_largest_first)
            for rec in missing:
                hidden = [i for i in rec.keep if bins.hide(i)]
                chosen: list[int] = []
                while len(rec.keep) + len(chosen) < rec.target:
                    i = bins.take(rec.demand)
                    if i is None:
                        break
                    chosen.append(i)
                for i in chosen:
                    fleet.add(i, rec.demand)
                for i in hidden + chosen:
                    bins.put(i)
                rec.keep.extend(chosen)
        shortfall = [rec for rec in missing if len(rec.keep) < rec.target]
        request = _shared_request(policy, fleet, recs, shortfall)
        if request is not None:
            requests.append(request)
        for rec in recs:
            if rec.keep:
                if rec.intact and len(rec.keep) == len(rec.current):
                    result[rec.vs.uuid] = rec.current
                else:
                    result[rec.vs.uuid] = tuple(fleet.ses[i].uuid for i in rec.keep)
                    rebuilt.append(rec.vs.uuid)
        if shortfall:
            _explain_shortfall(policy, fleet, shortfall, request, unplaced, degraded)

    # 4. Legacy active/standby groups.
    for name in sorted(legacy):
        request = _place_legacy(policies[name], fleet, legacy[name], current, result, unplaced, degraded)
        rebuilt.extend(vs.uuid for vs in legacy[name] if vs.uuid in result)
        if request is not None:
            requests.append(request)

    changed = [u for u in rebuilt if result[u] != tuple(current.get(u, ()))]
    changed += [u for u in unplaced if current.get(u)]
    return _plan(result=result, requests=requests, unplaced=unplaced, degraded=degraded, changed=changed)


def _plan(
    *,
    result: dict[str, tuple[str, ...]],
    requests: list[SeRequest],
    unplaced: dict[str, str],
    degraded: dict[str, str],
    changed: list[str],
) -> PlacementPlan:
    placements = {u: result[u] for u in sorted(result)}
    changed.sort()
    return PlacementPlan(
        placements=placements,
        se_requests=tuple(sorted(requests, key=lambda r: r.group)),
        unplaced=tuple(Unplaced(u, unplaced[u]) for u in sorted(unplaced)),
        degraded=tuple(Degraded(u, degraded[u]) for u in sorted(degraded)),
        changed=tuple(changed),
    )


# -- SEs a group needs ----------------------------------------------------------------------------


def _room(policy: SeGroupPolicy, fleet: _Fleet) -> int:
    """How many SEs the group may still add under ``max_se``."""
    return max(0, policy.max_se - len(fleet.by_group.get(policy.name, ())))


def _ses_for(items: list[tuple[int, int]], cap: int, slots: int) -> int:
    """Fresh SEs (``cap`` KB, ``slots`` VSs each) needed for ``items`` = (demand, copies).

    Largest first, first fit over the last few SEs opened (copies of one VS on distinct SEs):
    an estimate, at most about twice the optimum. Placement is level-triggered, so a shortfall
    left by the estimate is asked for on the next round.
    """
    window = 8
    bins: list[list[int]] = []  # [free_kb, free_slots]
    for demand, copies in sorted(items, reverse=True):
        used: set[int] = set()
        for _ in range(copies):
            for b in range(max(0, len(bins) - window), len(bins)):
                if b not in used and bins[b][0] >= demand and bins[b][1] > 0:
                    break
            else:
                bins.append([cap, slots])
                b = len(bins) - 1
            bins[b][0] -= demand
            bins[b][1] -= 1
            used.add(b)
    return len(bins)


def _buffer_deficit(policy: SeGroupPolicy, fleet: _Fleet) -> int:
    """Fresh SEs needed so that the other open SEs can take in the ``buffer_se`` most loaded."""
    if policy.buffer_se <= 0:
        return 0
    members = fleet.by_group.get(policy.name, ())
    loaded = sorted((i for i in members if fleet.count[i] > 0), key=lambda i: (-fleet.used[i], -fleet.count[i], i))
    top = loaded[: policy.buffer_se]
    if not top:
        return 0
    need_kb = sum(fleet.used[i] for i in top)
    need_slots = sum(fleet.count[i] for i in top)
    top_set = set(top)
    spare_kb = spare_slots = 0
    for i in members:
        if fleet.open[i] and i not in top_set and fleet.count[i] < fleet.slots[i]:
            spare_kb += fleet.cap[i] - fleet.used[i]
            spare_slots += fleet.slots[i] - fleet.count[i]
    cap = se_capacity_kb(policy.memory_per_se)
    by_memory = -(-(need_kb - spare_kb) // cap) if cap > 0 and need_kb > spare_kb else 0
    by_slots = -(-(need_slots - spare_slots) // policy.max_vs_per_se) if need_slots > spare_slots else 0
    return max(by_memory, by_slots)


def _shared_request(policy: SeGroupPolicy, fleet: _Fleet, recs: list[_Vs], shortfall: list[_Vs]) -> SeRequest | None:
    room = _room(policy, fleet)
    if room == 0:
        return None
    cap = se_capacity_kb(policy.memory_per_se)
    items = [(rec.demand, rec.target - len(rec.keep)) for rec in shortfall if rec.demand <= cap]
    for_vss = _ses_for(items, cap, policy.max_vs_per_se) if items else 0
    for_buffer = _buffer_deficit(policy, fleet) if policy.ha_mode == HA_MODE_SHARED and recs else 0
    wanted = for_vss + for_buffer
    if wanted == 0:
        return None
    parts = []
    if for_vss:
        parts.append(f"{for_vss} for {len(items)} VSs without room")
    if for_buffer:
        parts.append(f"{for_buffer} to keep buffer_se={policy.buffer_se} spare")
    reason = ", ".join(parts)
    if wanted > room:
        reason += f" (capped by max_se={policy.max_se})"
    return SeRequest(policy.name, min(wanted, room), reason)


def _explain_shortfall(
    policy: SeGroupPolicy,
    fleet: _Fleet,
    shortfall: list[_Vs],
    request: SeRequest | None,
    unplaced: dict[str, str],
    degraded: dict[str, str],
) -> None:
    """Say why each VS of ``shortfall`` has fewer SEs than it should."""
    members = fleet.by_group.get(policy.name, ())
    open_caps = [fleet.cap[i] for i in members if fleet.open[i]]
    biggest = max([se_capacity_kb(policy.memory_per_se), *open_caps])
    if request is not None:
        outlook = f"; {request.count} SE(s) requested"
    elif _room(policy, fleet) == 0:
        outlook = f"; group at max_se={policy.max_se}"
    else:
        outlook = ""
    for rec in shortfall:
        if rec.demand > biggest:
            why = f"needs {_mb(rec.demand)} MB, more than an SE of group {policy.name!r} offers ({_mb(biggest)} MB)"
        elif not open_caps:
            why = f"no usable SE in group {policy.name!r}{outlook}"
        else:
            why = f"no room on the SEs of group {policy.name!r}{outlook}"
        if not rec.keep:
            unplaced[rec.vs.uuid] = why
        else:
            degraded[rec.vs.uuid] = f"on {len(rec.keep)} of {rec.target} SEs: {why}"


# -- legacy active/standby ----------------------------------------------------------------------


def _best(tally: dict[int, int]) -> int | None:
    if not tally:
        return None
    return min(tally, key=lambda i: (-tally[i], i))


def _place_legacy(
    policy: SeGroupPolicy,
    fleet: _Fleet,
    vss: list[VsDemand],
    current: Mapping[str, Sequence[str]],
    result: dict[str, tuple[str, ...]],
    unplaced: dict[str, str],
    degraded: dict[str, str],
) -> SeRequest | None:
    name = policy.name
    members = fleet.by_group.get(name, [])
    valid: dict[str, list[int]] = {}
    firsts: dict[int, int] = {}
    anywhere: dict[int, int] = {}
    for vs in vss:
        keep: list[int] = []
        for se_uuid in current.get(vs.uuid, ()):
            i = fleet.index.get(se_uuid)
            if i is not None and fleet.keepable[i] and fleet.group[i] == name and i not in keep:
                keep.append(i)
        valid[vs.uuid] = keep
        if keep:
            firsts[keep[0]] = firsts.get(keep[0], 0) + 1
        for i in keep:
            anywhere[i] = anywhere.get(i, 0) + 1
    spares = [i for i in members if fleet.open[i]]
    active = _best(firsts)
    if active is None:
        active = spares[0] if spares else None
    standby = _best({i: n for i, n in anywhere.items() if i != active})
    if standby is None:
        standby = next((i for i in spares if i != active), None)
    pair = [i for i in (active, standby) if i is not None]

    request = None
    if len(pair) < 2:
        count = min(2 - len(pair), _room(policy, fleet))
        if count:
            request = SeRequest(name, count, "legacy active/standby needs two SEs")

    def on_pair(vs: VsDemand) -> bool:
        return any(i in pair for i in valid[vs.uuid])

    ordered = sorted((vs for vs in vss if on_pair(vs)), key=lambda v: (v.name, v.uuid))
    ordered += sorted((vs for vs in vss if not on_pair(vs)), key=lambda v: (v.name, v.uuid))
    for vs in ordered:
        if not pair:
            unplaced[vs.uuid] = f"no usable SE in group {name!r}" + ("; SEs requested" if request else f"; group at max_se={policy.max_se}")
            continue
        targets = [i for i in pair if fleet.open[i] or i in valid[vs.uuid]]
        if not targets or targets[0] != pair[0]:
            unplaced[vs.uuid] = f"the active SE {fleet.ses[pair[0]].name} of group {name!r} is disabled for placement"
            continue
        demand = vs_memory_kb(vs)
        if not all(fleet.fits(i, demand) for i in targets):
            unplaced[vs.uuid] = (
                f"the active/standby pair of group {name!r} is full (needs {_mb(demand)} MB and a VS slot on both)"
            )
            continue
        for i in targets:
            fleet.add(i, demand)
        result[vs.uuid] = tuple(fleet.ses[i].uuid for i in targets)
        if len(targets) < 2:
            why = "no standby SE" if len(pair) < 2 else f"the standby SE {fleet.ses[pair[1]].name} is disabled for placement"
            degraded[vs.uuid] = why + ("; SE requested" if request else "")
    return request


# -- invariants -----------------------------------------------------------------------------------


def check_invariants(
    groups: Iterable[SeGroupPolicy],
    ses: Iterable[SeState],
    vss: Iterable[VsDemand],
    plan: PlacementPlan,
    current: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What is wrong with ``plan`` (empty when nothing is). With ``current``, also checks that
    VSs are new on no SE_STATE_DISABLED_FOR_PLACEMENT SE."""
    problems: list[str] = []
    policies = {g.name: g for g in groups}
    se_by_uuid = {se.uuid: se for se in ses}
    vs_list = sorted(vss, key=lambda v: v.uuid)
    vs_by_uuid = {vs.uuid: vs for vs in vs_list}
    unplaced = {u.vs_uuid: u.reason for u in plan.unplaced}
    degraded = {d.vs_uuid for d in plan.degraded}
    used: dict[str, int] = {}
    count: dict[str, int] = {}
    legacy: dict[str, list[tuple[str, ...]]] = {}

    for uuid in plan.placements:
        if uuid not in vs_by_uuid:
            problems.append(f"{uuid}: placed but not a known VS")
    for uuid in unplaced:
        if uuid in plan.placements:
            problems.append(f"{uuid}: both placed and unplaced")
    for vs in vs_list:
        target = plan.placements.get(vs.uuid)
        if target is None:
            if vs.uuid not in unplaced:
                problems.append(f"{vs.name}: neither placed nor reported unplaced")
            continue
        policy = policies.get(vs.group)
        if policy is None:
            problems.append(f"{vs.name}: placed although its group {vs.group!r} does not exist")
            continue
        if not target or len(set(target)) != len(target):
            problems.append(f"{vs.name}: bad SE list {target}")
        demand = vs_memory_kb(vs)
        for se_uuid in target:
            se = se_by_uuid.get(se_uuid)
            if se is None:
                problems.append(f"{vs.name}: on unknown SE {se_uuid}")
                continue
            if se.group != vs.group:
                problems.append(f"{vs.name}: on SE {se.name} of group {se.group!r}, not {vs.group!r}")
            if not se.healthy:
                problems.append(f"{vs.name}: on unhealthy SE {se.name}")
            if se.enable_state == SE_STATE_DISABLED:
                problems.append(f"{vs.name}: on disabled SE {se.name}")
            if (
                se.enable_state == SE_STATE_DISABLED_FOR_PLACEMENT
                and current is not None
                and se_uuid not in tuple(current.get(vs.uuid, ()))
            ):
                problems.append(f"{vs.name}: newly placed on SE {se.name}, which is disabled for placement")
            used[se_uuid] = used.get(se_uuid, 0) + demand
            count[se_uuid] = count.get(se_uuid, 0) + 1
        n = len(target)
        if policy.ha_mode == HA_MODE_SHARED and n != 1:
            problems.append(f"{vs.name}: N+M VS on {n} SEs, not 1 (its VIP would be on two SEs)")
        elif policy.ha_mode == HA_MODE_SHARED_PAIR:
            if n > policy.max_scaleout_per_vs:
                problems.append(f"{vs.name}: on {n} SEs, above max_scaleout_per_vs={policy.max_scaleout_per_vs}")
            if n < policy.min_scaleout_per_vs and vs.uuid not in degraded:
                problems.append(f"{vs.name}: on {n} SEs, below min_scaleout_per_vs, not reported degraded")
        elif policy.ha_mode == HA_MODE_LEGACY_ACTIVE_STANDBY:
            if n not in (1, 2):
                problems.append(f"{vs.name}: active/standby VS on {n} SEs")
            elif n == 1 and vs.uuid not in degraded:
                problems.append(f"{vs.name}: active/standby VS without a standby, not reported degraded")
            legacy.setdefault(vs.group, []).append(target)

    for se_uuid in sorted(count):
        se = se_by_uuid.get(se_uuid)
        policy = policies.get(se.group) if se else None
        if se is None or policy is None:
            continue
        cap = se_capacity_kb(se.memory_mb if se.memory_mb is not None else policy.memory_per_se)
        if count[se_uuid] > policy.max_vs_per_se:
            problems.append(f"SE {se.name}: {count[se_uuid]} VSs, above max_vs_per_se={policy.max_vs_per_se}")
        if used[se_uuid] > cap:
            problems.append(f"SE {se.name}: {_mb(used[se_uuid])} MB placed, above its {_mb(cap)} MB")

    for name in sorted(legacy):
        lists = legacy[name]
        if len({se for t in lists for se in t}) > 2:
            problems.append(f"group {name}: active/standby VSs on more than two SEs")
        if len({t[0] for t in lists if t}) > 1:
            problems.append(f"group {name}: VIPs active on more than one SE")
        if len({t for t in lists if len(t) == 2}) > 1:
            problems.append(f"group {name}: active/standby VSs disagree on the active")

    problems.extend(_check_unplaced(policies, se_by_uuid, vs_by_uuid, unplaced, used, count))
    problems.extend(_check_requests(policies, se_by_uuid, plan, used, count))
    return problems


def _open_ses(policies: Mapping[str, SeGroupPolicy], ses: Iterable[SeState], group: str) -> list[tuple[SeState, int]]:
    policy = policies[group]
    return [
        (se, se_capacity_kb(se.memory_mb if se.memory_mb is not None else policy.memory_per_se))
        for se in ses
        if se.group == group and se.healthy and se.enable_state == SE_STATE_ENABLED
    ]


def _check_unplaced(
    policies: Mapping[str, SeGroupPolicy],
    se_by_uuid: Mapping[str, SeState],
    vs_by_uuid: Mapping[str, VsDemand],
    unplaced: Mapping[str, str],
    used: Mapping[str, int],
    count: Mapping[str, int],
) -> list[str]:
    """An N+M or active/active VS is unplaced only if no open SE of its group has room for it."""
    problems = []
    open_by_group: dict[str, list[tuple[SeState, int]]] = {}
    for uuid in sorted(unplaced):
        vs = vs_by_uuid.get(uuid)
        if not unplaced[uuid]:
            problems.append(f"{uuid}: unplaced without a reason")
        policy = policies.get(vs.group) if vs else None
        if vs is None or policy is None or policy.ha_mode == HA_MODE_LEGACY_ACTIVE_STANDBY:
            continue
        if vs.group not in open_by_group:
            open_by_group[vs.group] = _open_ses(policies, se_by_uuid.values(), vs.group)
        demand = vs_memory_kb(vs)
        for se, cap in open_by_group[vs.group]:
            if count.get(se.uuid, 0) < policy.max_vs_per_se and used.get(se.uuid, 0) + demand <= cap:
                problems.append(f"{vs.name}: unplaced although SE {se.name} has room")
                break
    return problems


def _check_requests(
    policies: Mapping[str, SeGroupPolicy],
    se_by_uuid: Mapping[str, SeState],
    plan: PlacementPlan,
    used: Mapping[str, int],
    count: Mapping[str, int],
) -> list[str]:
    """Requests stay under ``max_se``; an N+M group short of its buffer asks for SEs if it may."""
    problems = []
    members: dict[str, list[SeState]] = {}
    for se in se_by_uuid.values():
        members.setdefault(se.group, []).append(se)
    requested = {r.group: r.count for r in plan.se_requests}
    for r in plan.se_requests:
        policy = policies.get(r.group)
        if policy is None or r.count <= 0:
            problems.append(f"bad SE request {r}")
        elif len(members.get(r.group, ())) + r.count > policy.max_se:
            problems.append(f"group {r.group}: request for {r.count} SEs exceeds max_se={policy.max_se}")
    for name in sorted(policies):
        policy = policies[name]
        if policy.ha_mode != HA_MODE_SHARED or policy.buffer_se == 0 or requested.get(name):
            continue
        group_ses = sorted(members.get(name, ()), key=lambda s: (-used.get(s.uuid, 0), -count.get(s.uuid, 0), s.name, s.uuid))
        if len(group_ses) >= policy.max_se:
            continue
        top = [se for se in group_ses if count.get(se.uuid, 0) > 0][: policy.buffer_se]
        top_uuids = {se.uuid for se in top}
        spare_kb = spare_slots = 0
        for se, cap in _open_ses(policies, group_ses, name):
            if se.uuid not in top_uuids and count.get(se.uuid, 0) < policy.max_vs_per_se:
                spare_kb += cap - used.get(se.uuid, 0)
                spare_slots += policy.max_vs_per_se - count.get(se.uuid, 0)
        if sum(used.get(se.uuid, 0) for se in top) > spare_kb or sum(count.get(se.uuid, 0) for se in top) > spare_slots:
            problems.append(f"group {name}: less than buffer_se={policy.buffer_se} spare and no SE requested")
    return problems
