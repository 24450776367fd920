"""Faults on a schedule: kill -9 and restart (leader, a follower, all nodes), SIGSTOP / SIGCONT pauses.

Data-plane targets (with a :class:`SePair` to find them): ``se-active`` / ``se-standby`` are the
SEs of the scenario's active/standby virtual service as the controllers report them when the step
fires. kill -9 of an SE is not undone by the nemesis: the local cloud (the leader) restarts it;
SIGSTOP is undone by SIGCONT after ``hold``. Either way the nemesis then waits (bounded) until
the pair is settled again, active and standby both reporting, before the next step, and records
when (``settled``). ``controllers`` pauses all three controllers at once (SIGSTOP for ``hold``
s, then SIGCONT): the "controllers unreachable" fault.

A schedule is a list of :class:`~simulations.chaos.model.FaultStep` (offset from the start of
the run, what, whom, how long) made by a scenario from ``random.Random(seed)``, so the same seed
gives the same schedule. Which node is "the leader" is only known when the step fires; the
follower picked among the followers then is the seeded choice. Every fault that fired is a
:class:`Fault` with its times (``time.monotonic()``) and, where asked, how long the healed node
took to catch up.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any, Optional

import attrs

from simulations.chaos.model import SE_TARGETS, FaultStep
from simulations.local_cluster import LocalCluster

__all__ = ["Fault", "Nemesis", "SePair"]


@attrs.define
class Fault:
    step: FaultStep
    nodes: list[str]
    started: float  # monotonic
    healed: Optional[float] = None
    catch_up: Optional[float] = None  # seconds from heal until the nodes applied the leader's revision then
    leader_before: Optional[str] = None
    started_wall: float = 0.0  # time.time() at ``started``, to compare with event times
    healed_wall: Optional[float] = None
    pair_before: Optional[tuple[str, str]] = None  # SE faults: (active, standby) when it fired
    pair_after: Optional[tuple[str, str]] = None  # ... and once settled again (None: never settled)
    settled: Optional[float] = None  # monotonic, when the pair was settled again

    def to_dict(self, t0: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.step.action,
            "target": self.step.target,
            "nodes": self.nodes,
            "leader_before": self.leader_before,
            "at": round(self.started - t0, 3),
            "healed_at": None if self.healed is None else round(self.healed - t0, 3),
            "catch_up_s": None if self.catch_up is None else round(self.catch_up, 3),
        }
        if self.step.target in SE_TARGETS:
            out["pair_before"] = None if self.pair_before is None else list(self.pair_before)
            out["pair_after"] = None if self.pair_after is None else list(self.pair_after)
            out["settled_at"] = None if self.settled is None else round(self.settled - t0, 3)
        return out


class SePair:
    """The active/standby pair of one virtual service, seen through the API and the local cloud.

    ``roles()`` asks the leader (each controller keeps its own SEs' reports) for the VS's
    ``runtime.se_roles``; ``pid()`` reads the cloud's pid files.
    """

    def __init__(self, cluster: LocalCluster, vs_name: str) -> None:
        self.cluster = cluster
        self.vs_name = vs_name

    def _get(self, path: str) -> Optional[Any]:
        nodes = [n for n in ([self.cluster.leader()] + self.cluster.ids) if n is not None]
        for node in dict.fromkeys(nodes):
            if not self.cluster.alive(node):
                continue
            try:
                code, body = self.cluster.request(node, "GET", path, timeout=2.0)
            except (OSError, ValueError):
                continue
            if code == 200:
                return body
        return None

    def roles(self) -> list[tuple[str, Optional[str]]]:
        """(SE name, the role it reports) in placement order, primary first; [] if no controller answers."""
        body = self._get(f"/api/virtualservice?name={self.vs_name}&stale=true")
        if not body or not body.get("results"):
            return []
        return [(r["se"], r["reported_role"]) for r in (body["results"][0].get("runtime") or {}).get("se_roles") or []]

    def settled(self) -> Optional[tuple[str, str]]:
        """(active, standby) when the VS is on two SEs reporting active (first) and standby (second)."""
        roles = self.roles()
        if len(roles) == 2 and roles[0][1] == "active" and roles[1][1] == "standby":
            return roles[0][0], roles[1][0]
        return None

    def wait_settled(self, timeout: float, *, not_active: Optional[str] = None) -> Optional[tuple[str, str]]:
        """Poll :meth:`settled` (with ``not_active`` not the active) for up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            pair = self.settled()
            if pair is not None and pair[0] != not_active and self.pid(pair[0]) and self.pid(pair[1]):
                return pair
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def pid(self, se_name: str) -> Optional[int]:
        pid = self.cluster.cloud().running().get(se_name)
        return int(pid) if pid else None

    def last_heartbeat(self, se_name: str) -> Optional[float]:
        """The wall time of the SE's last report the controllers hold (None: none)."""
        body = self._get(f"/api/serviceengine?name={se_name}&stale=true")
        results = (body or {}).get("results") or []
        value = (results[0].get("runtime") or {}).get("last_heartbeat") if results else None
        return float(value) if isinstance(value, (int, float)) else None

    def connections(self) -> dict[str, int]:
        """Per SE of the VS, the ``total_connections`` its telemetry last reported for the VS."""
        out: dict[str, int] = {}
        for se, _role in self.roles():
            body = self._get(f"/api/serviceengine?name={se}&stale=true")
            results = (body or {}).get("results") or []
            telemetry = ((results[0].get("runtime") or {}).get("telemetry") or {}) if results else {}
            value = (telemetry.get(self.vs_name) or {}).get("total_connections")
            if value is not None:
                out[se] = int(value)
        return out


class Nemesis:
    """Runs a schedule against a :class:`LocalCluster` from an asyncio task (blocking calls in threads)."""

    def __init__(self, cluster: LocalCluster, schedule: list[FaultStep], *, catch_up_limit: float = 20.0,
                 pair: Optional[SePair] = None, settle_limit: float = 30.0) -> None:
        self.cluster = cluster
        self.schedule = sorted(schedule, key=lambda s: s.at)
        self.catch_up_limit = catch_up_limit
        self.pair = pair
        self.settle_limit = settle_limit
        self.faults: list[Fault] = []
        self.killed: set[str] = set()
        self.paused: set[str] = set()
        self.paused_ses: dict[str, int] = {}  # SE name -> pid, while SIGSTOPped
        self.leaders: list[tuple[float, Optional[str], Optional[int]]] = []  # (time, leader, term) observations

    # -- observation ---------------------------------------------------------------------------

    def leader_and_term(self) -> tuple[Optional[str], Optional[int]]:
        best: tuple[int, Optional[str]] = (-1, None)
        for node in self.cluster.ids:
            if node in self.killed or node in self.paused or not self.cluster.alive(node):
                continue
            st = self.cluster.status(node)
            if st and st.get("role") == "leader" and st.get("term", 0) > best[0]:
                best = (st["term"], node)
        return best[1], (best[0] if best[1] is not None else None)

    async def observe(self, stop_at: float, interval: float = 0.5) -> None:
        """Record the leader and its term every ``interval`` s until ``stop_at``."""
        while time.monotonic() < stop_at:
            leader, term = await asyncio.to_thread(self.leader_and_term)
            self.leaders.append((time.monotonic(), leader, term))
            await asyncio.sleep(interval)

    # -- faults --------------------------------------------------------------------------------

    def _leader(self, timeout: float = 10.0) -> Optional[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader, _ = self.leader_and_term()
            if leader is not None:
                return leader
            time.sleep(0.05)
        return None

    def _targets(self, step: FaultStep) -> tuple[list[str], Optional[str]]:
        leader = self._leader()
        if step.target in ("all", "controllers"):
            return list(self.cluster.ids), leader
        if step.target == "leader":
            return ([leader] if leader else []), leader
        followers = sorted(n for n in self.cluster.ids if n != leader and n not in self.killed and n not in self.paused)
        if not followers:
            return [], leader
        return [followers[int(step.pick * len(followers)) % len(followers)]], leader

    def _inject_se(self, step: FaultStep) -> Fault:
        """kill -9 or SIGSTOP the active or the standby SE of the pair (as the controllers see it now)."""
        if self.pair is None:
            raise RuntimeError(f"target {step.target} needs an SE pair")
        pair = self.pair.wait_settled(self.settle_limit)
        if pair is None:
            # Nothing to hit: record a fault with no SE so the checks show it.
            return Fault(step, [], time.monotonic(), started_wall=time.time())
        se = pair[0] if step.target == "se-active" else pair[1]
        pid = self.pair.pid(se)
        if pid is None:
            return Fault(step, [], time.monotonic(), started_wall=time.time(), pair_before=pair)
        started, started_wall = time.monotonic(), time.time()
        if step.action == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)
            self.paused_ses[se] = pid
        return Fault(step, [se], started, started_wall=started_wall, pair_before=pair)

    def _heal_se(self, fault: Fault) -> None:
        for se in fault.nodes:
            pid = self.paused_ses.pop(se, None)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def _settle(self, fault: Fault) -> None:
        """Wait until the pair is settled again (the SE hit is back, as standby if it was the active)."""
        assert self.pair is not None
        hit = fault.nodes[0] if fault.nodes else None
        not_active = hit if fault.step.target == "se-active" else None
        deadline = time.monotonic() + self.settle_limit
        while time.monotonic() < deadline:
            pair = self.pair.wait_settled(max(0.0, deadline - time.monotonic()), not_active=not_active)
            if pair is None:
                break
            # The hit SE is in the pair and reported since it was hit (its last role is no stale report).
            beat = self.pair.last_heartbeat(hit) if hit is not None else None
            if hit is None or (hit in pair and beat is not None and beat > (fault.healed_wall or fault.started_wall)):
                fault.pair_after, fault.settled = pair, time.monotonic()
                return
            time.sleep(0.1)

    def _inject(self, step: FaultStep) -> Fault:
        if step.target in SE_TARGETS:
            return self._inject_se(step)
        nodes, leader = self._targets(step)
        started = time.monotonic()
        for node in nodes:
            if step.action == "kill":
                self.cluster.kill(node, signal.SIGKILL)
                self.killed.add(node)
            else:
                self.cluster.pause(node)
                self.paused.add(node)
        return Fault(step, nodes, started, leader_before=leader, started_wall=time.time() - (time.monotonic() - started))

    def _heal_nodes(self, nodes: list[str]) -> None:
        for node in nodes:
            if node in self.paused:
                self.cluster.resume(node)
                self.paused.discard(node)
            if node in self.killed or not self.cluster.alive(node):
                self.cluster.start(node)
                self.killed.discard(node)

    def _applied(self, node: str) -> Optional[int]:
        st = self.cluster.status(node)
        return None if st is None else int(st["applied_revision"])

    def _catch_up(self, fault: Fault) -> Optional[float]:
        """Seconds from the heal until every healed node applied what the leader had applied at the heal."""
        assert fault.healed is not None
        others = [n for n in self.cluster.ids if n not in fault.nodes]
        target: Optional[int] = None
        if others:
            leader = self._leader(5.0)
            if leader is not None:
                target = self._applied(leader)
        deadline = fault.healed + self.catch_up_limit
        while time.monotonic() < deadline:
            revs = [self._applied(n) for n in fault.nodes]
            if all(r is not None for r in revs) and (target is None or all(r >= target for r in revs)):  # type: ignore[operator]
                return time.monotonic() - fault.healed
            time.sleep(0.02)
        return None

    async def run(self, t0: float, stop_at: float) -> None:
        """Fire each step at ``t0 + step.at`` (skipping those past ``stop_at``), heal it after ``hold``."""
        for step in self.schedule:
            start = t0 + step.at
            if start + step.hold >= stop_at:
                break
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            fault = await asyncio.to_thread(self._inject, step)
            self.faults.append(fault)
            await asyncio.sleep(max(0.0, fault.started + step.hold - time.monotonic()))
            if step.target in SE_TARGETS:
                await asyncio.to_thread(self._heal_se, fault)
                fault.healed, fault.healed_wall = time.monotonic(), time.time()
                await asyncio.to_thread(self._settle, fault)
                continue
            await asyncio.to_thread(self._heal_nodes, fault.nodes)
            fault.healed, fault.healed_wall = time.monotonic(), time.time()
            fault.catch_up = await asyncio.to_thread(self._catch_up, fault)

    def heal_all(self) -> None:
        """Resume every paused node (and SE) and restart every node that is not running."""
        for pid in self.paused_ses.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused_ses.clear()
        for node in list(self.paused):
            self.cluster.resume(node)
        self.paused.clear()
        for node in self.cluster.ids:
            if not self.cluster.alive(node):
                self.cluster.start(node)
        self.killed.clear()


def jitter(rng: random.Random, spread: float) -> float:
    return rng.uniform(-spread, spread)
