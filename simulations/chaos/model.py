"""The chaos harness's model: what a scenario is made of, as frozen values.

A scenario is a name, a description, a schedule (``random.Random(seed)`` and the run's duration
to a list of fault steps, so the same seed gives the same steps) and its pass criteria. Three
families share this shape:

- :class:`Scenario` with :class:`Criteria` and :class:`FaultStep` s (kill -9 / SIGSTOP of
  controllers or SEs), or :class:`StorageStep` s when ``storage`` is true (crash points, power
  loss; run by :mod:`simulations.chaos.storage_faults`'s nemesis);
- :class:`NetScenario` with :class:`NetCriteria` and :class:`NetFaultStep` s (partitions, one-way
  cuts, clock skew; run by :mod:`simulations.chaos.partitions` on a namespaced cluster).

This module is the leaf of the harness: the fault modules, the scenario registry and the runner
import it, it imports none of them.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

import attrs

__all__ = [
    "ACTIONS",
    "ARMINGS",
    "Criteria",
    "FaultStep",
    "MODES",
    "NET_ACTIONS",
    "NET_TARGETS",
    "NetCriteria",
    "NetFaultStep",
    "NetScenario",
    "SE_TARGETS",
    "Scenario",
    "StorageStep",
    "TAKEOVER",
    "TARGETS",
]

# -- controller and SE faults ----------------------------------------------------------------------

ACTIONS = ("kill", "pause")
TARGETS = ("leader", "follower", "all", "se-active", "se-standby", "controllers")
SE_TARGETS = ("se-active", "se-standby")
TAKEOVER = "took the VIP over"
"""The words of the placement event's reason when the standby takes the VIP over (``Criteria.takeover_event``)."""


@attrs.frozen
class FaultStep:
    """``action`` ("kill" | "pause") of ``target`` (see ``TARGETS``) at ``at`` s, healed ``hold`` s later."""

    at: float
    action: str = attrs.field(validator=attrs.validators.in_(ACTIONS))
    target: str = attrs.field(validator=attrs.validators.in_(TARGETS))
    hold: float
    pick: float = 0.0  # in [0, 1): which follower, drawn from the seed

    def to_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "action": self.action, "target": self.target, "hold": self.hold}


@attrs.frozen
class Criteria:
    """Pass bounds besides the safety checks every scenario has (acked writes, logs, linearizability)."""

    max_write_recovery: Optional[float] = None  # s from each fault to the first ack of a write sent after it
    max_catch_up: Optional[float] = None  # s from each heal until the healed nodes caught up
    no_leader_change: bool = False
    min_faults: int = 0  # a run too short to inject anything proves nothing
    # Data plane (scenarios with ``data_plane``): new-connection gaps per fault, in s.
    max_gap_median: Optional[float] = None
    max_gap_worst: Optional[float] = None
    no_failures_after_recovery: bool = False  # no new connection fails once one started after the fault succeeded
    no_failed_requests: bool = False  # not one request (new or keep-alive) fails in the whole run
    takeover_event: bool = False  # each active fault shows as a "took the VIP over" placement event
    max_takeover_event: Optional[float] = None  # s from the fault to that event
    no_placement_change: bool = False  # no placement / SE-down event from the fault until ``quiet_after`` s after heal
    quiet_after: float = 15.0
    max_write_recovery_after_heal: Optional[float] = None  # s from the heal to the first ack of a write sent after it
    max_settle: Optional[float] = None  # s from each SE fault until the pair is active + standby again


@attrs.frozen
class Scenario:
    name: str
    description: str
    schedule: Callable[[random.Random, float], list[FaultStep]]
    criteria: Criteria
    data_plane: bool = False  # local cloud, a backend, an active/standby VS and traffic through its VIP
    storage: bool = False  # storage faults (simulations.chaos.storage_faults): nodes trace their syncs

    def faults(self, seed: int, duration: float) -> list[FaultStep]:
        return self.schedule(random.Random(seed), duration)


# -- storage faults ---------------------------------------------------------------------------------

MODES = ("crash-point", "power-loss")
ARMINGS = ("live", "restart")  # crash-point: armed on the running node, or at a restart after kill -9


@attrs.frozen
class StorageStep(FaultStep):
    """A kill -9 of ``target`` with a storage twist: ``mode`` "crash-point" (restart armed with
    ``failpoint`` = ``count``) or "power-loss" (cut back to what was fsync'ed)."""

    mode: str = attrs.field(default="power-loss", validator=attrs.validators.in_(MODES))
    failpoint: str = ""
    count: int = 0
    torn: float = 0.0  # power-loss: fraction of the event store's unsynced tail kept (0: exactly the synced state)
    arm: str = attrs.field(default="restart", validator=attrs.validators.in_(ARMINGS))  # crash-point only

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["mode"] = self.mode
        if self.mode == "crash-point":
            out["failpoint"] = f"{self.failpoint}={self.count}"
            out["armed"] = self.arm
        elif self.torn:
            out["torn"] = self.torn
        return out


# -- network faults ---------------------------------------------------------------------------------

NET_ACTIONS = ("partition", "cut", "skew")
NET_TARGETS = ("leader", "bridge", "leader-follower", "follower")


@attrs.frozen
class NetFaultStep:
    """``action`` ("partition" | "cut" | "skew") of ``target`` at ``at`` s, healed ``hold`` s later.

    ``partition leader``: the leader alone vs the followers. ``partition bridge``: the leader and
    the follower not picked cannot talk; the picked follower is the bridge. ``cut leader-follower``:
    the leader cannot send to the picked follower. ``skew follower`` / ``skew leader``: that node
    restarted under faketime with ``offset`` for ``hold`` s, then restarted on the real clock.
    """

    at: float
    action: str = attrs.field(validator=attrs.validators.in_(NET_ACTIONS))
    target: str = attrs.field(validator=attrs.validators.in_(NET_TARGETS))
    hold: float
    pick: float = 0.0
    offset: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": round(self.at, 3), "action": self.action, "target": self.target, "hold": self.hold}
        if self.offset:
            out["offset"] = self.offset
        return out


@attrs.frozen
class NetCriteria:
    """Pass bounds of a network scenario besides the safety checks every run has."""

    max_write_recovery: Optional[float] = None  # s from each fault to the first ack of a write sent after it
    max_catch_up: Optional[float] = None  # s from each heal until the cut-off / restarted nodes caught up
    min_faults: int = 0
    isolated_side: bool = False  # the cut-off node acknowledges no write, serves no stale read
    max_extra_leader_changes: Optional[int] = None  # leader changes beyond those the faults force (skew)
    # (leader, term) changes seen from each cut until 2 s after its heal: a node cut off from the
    # leader must not depose it over and over (Raft term churn; see cluster/_pysyncobj_compat.py)
    max_elections_per_fault: Optional[int] = None
    needs_faketime: bool = False


@attrs.frozen
class NetScenario:
    name: str
    description: str
    schedule: Callable[[random.Random, float], list[NetFaultStep]]
    criteria: NetCriteria
    data_plane: bool = False
    network: bool = True

    def faults(self, seed: int, duration: float) -> list[NetFaultStep]:
        return self.schedule(random.Random(seed), duration)
