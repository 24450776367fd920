"""The chaos scenarios by name: what each does, its fault schedule from the seed and its pass criteria.

The controller and data-plane scenarios are defined here; the storage ones
(:data:`simulations.chaos.storage_faults.STORAGE_SCENARIOS`) and the network ones
(:data:`simulations.chaos.partitions.NETWORK_SCENARIOS`) next to their nemeses, and registered
here. What a scenario is made of (:class:`~simulations.chaos.model.Scenario`, its criteria and
fault steps) is in :mod:`simulations.chaos.model`.

Numbers come from ``/work/shared/design/brief.md`` §3 where it gives one: after kill -9 of the
leader, writes succeed again within 3 s worst; a paused leader catches up within 2 s of SIGCONT
(the regression bound of ``simulations.leader_pause``); no acknowledged write is ever lost. The
brief gives no number for a restarted follower's catch-up or for restarting all nodes at once;
the bounds used here (10 s each) are ours and are named in the report.

Data-plane scenarios (``data_plane``): the brief's SE failover bound (after kill -9 of the active
SE, new connections succeed again in ≤ 1 s median, ≤ 2 s worst) is applied to kill and to
SIGSTOP of the active. "No gap" for a standby kill or unreachable controllers is read as: not one
request fails and no 0.5 s without a successful new connection (25 probe intervals, to allow for
scheduling on a loaded 2-core machine). The 10 s to record a takeover, 30 s to settle the pair
again, 15 s of quiet after the controllers resume and 5 s for writes to resume are ours.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from simulations.chaos.model import Criteria, FaultStep, Scenario
from simulations.chaos.partitions import NETWORK_SCENARIOS
from simulations.chaos.storage_faults import STORAGE_SCENARIOS

__all__ = ["SCENARIOS", "get", "requirements"]


def _periodic(action: str, target: str, every: float, hold: float, first: tuple[float, float] = (2.0, 4.0),
              tail: float = 1.0) -> Callable[[random.Random, float], list[FaultStep]]:
    def schedule(rng: random.Random, duration: float) -> list[FaultStep]:
        steps: list[FaultStep] = []
        at = rng.uniform(*first)
        # Leave time after the last heal for the cluster to show it recovered.
        while at + hold + tail <= duration:
            steps.append(FaultStep(round(at, 3), action, target, hold, pick=rng.random()))
            at += every + rng.uniform(-0.5, 0.5)
        return steps

    return schedule


def _none(rng: random.Random, duration: float) -> list[FaultStep]:
    return []


CONTROLLER_HOLD = 60.0
"""How long ``controllers-unreachable`` pauses the controllers when the run is long enough."""


def _controllers_unreachable(rng: random.Random, duration: float) -> list[FaultStep]:
    """One pause of all three controllers at 4-6 s, for 60 s or what the run leaves after 20 s of tail."""
    at = rng.uniform(4.0, 6.0)
    hold = min(CONTROLLER_HOLD, duration - at - 20.0)
    if hold < 3.0:
        return []
    return [FaultStep(round(at, 3), "pause", "controllers", round(hold, 3))]


SCENARIOS: dict[str, Any] = {
    s.name: s
    for s in [
        Scenario("no-faults", "No faults for the whole run: the leader never changes, nothing is lost.",
                 _none, Criteria(no_leader_change=True)),
        Scenario("leader-kill", "kill -9 the leader every 10 s, restart it 2 s later; writes resume within 3 s worst.",
                 _periodic("kill", "leader", 10.0, 2.0), Criteria(max_write_recovery=3.0, min_faults=1)),
        Scenario("follower-kill", "kill -9 a follower every 10 s, restart it 3 s later; writes go on, it catches up within 10 s.",
                 _periodic("kill", "follower", 10.0, 3.0), Criteria(max_write_recovery=3.0, max_catch_up=10.0, min_faults=1)),
        Scenario("leader-pause", "SIGSTOP the leader for 5 s then SIGCONT, every 12 s; writes resume within 3 s, "
                 "it catches up within 2 s of SIGCONT.",
                 _periodic("pause", "leader", 12.0, 5.0), Criteria(max_write_recovery=3.0, max_catch_up=2.0, min_faults=1)),
        Scenario("all-kill", "kill -9 all three nodes at once every 15 s, restart them 2 s later; nothing acked is lost, "
                 "writes resume within 10 s of the kill.",
                 _periodic("kill", "all", 15.0, 2.0), Criteria(max_write_recovery=10.0, min_faults=1)),
        # Data plane: a 3-node cluster with the local cloud, an active/standby VS, traffic through its VIP.
        Scenario("se-active-kill", "kill -9 the active SE of an active/standby pair every 12 s (the cloud restarts it); "
                 "new connections succeed again within 1 s median, 2 s worst, none fails once served again, "
                 "each takeover is a placement event within 10 s.",
                 _periodic("kill", "se-active", 12.0, 0.0, tail=6.0),
                 Criteria(max_gap_median=1.0, max_gap_worst=2.0, no_failures_after_recovery=True, takeover_event=True,
                          max_takeover_event=10.0, max_settle=30.0, min_faults=1),
                 data_plane=True),
        Scenario("se-active-pause", "SIGSTOP the active SE for 3 s then SIGCONT, every 12 s; the standby serves within "
                 "1 s median, 2 s worst, none fails once served again, the resumed SE rejoins as standby.",
                 _periodic("pause", "se-active", 12.0, 3.0, tail=6.0),
                 Criteria(max_gap_median=1.0, max_gap_worst=2.0, no_failures_after_recovery=True, takeover_event=True,
                          max_takeover_event=10.0, max_settle=30.0, min_faults=1),
                 data_plane=True),
        Scenario("se-standby-kill", "kill -9 the standby SE every 12 s (the cloud restarts it); no request fails, "
                 "no gap over 0.5 s, no keep-alive connection dropped.",
                 _periodic("kill", "se-standby", 12.0, 0.0, tail=6.0),
                 Criteria(max_gap_worst=0.5, no_failed_requests=True, max_settle=30.0, min_faults=1),
                 data_plane=True),
        Scenario("controllers-unreachable", "SIGSTOP all three controllers for 60 s (less in short runs) then SIGCONT; "
                 "the SEs keep serving (no request fails, no gap over 0.5 s), no failover or placement event "
                 "fires during or 15 s after the hold, writes resume within 5 s of SIGCONT.",
                 _controllers_unreachable,
                 Criteria(max_gap_worst=0.5, no_failed_requests=True, no_placement_change=True, quiet_after=15.0,
                          max_write_recovery_after_heal=5.0, min_faults=1),
                 data_plane=True),
        *STORAGE_SCENARIOS.values(),
    ]
}


SCENARIOS.update(NETWORK_SCENARIOS)
"""Every scenario by name: the :class:`~simulations.chaos.model.Scenario` s above (the storage ones
last) and the network ones (:class:`~simulations.chaos.model.NetScenario`, ``network`` true; run on
a :class:`~simulations.netns_cluster.NetnsCluster`)."""


def requirements(scenario: Any) -> list[str]:
    """What a scenario needs from the machine besides the venv: "root" (network namespaces), "faketime"."""
    needs = []
    if getattr(scenario, "network", False):
        needs.append("root")
    if getattr(getattr(scenario, "criteria", None), "needs_faketime", False):
        needs.append("faketime")
    return needs


def get(name: str) -> Any:
    """The scenario called ``name`` (a :class:`Scenario` or a network ``NetScenario``)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
