"""Faults on a schedule: kill -9 and restart (leader, a follower, all nodes), SIGSTOP / SIGCONT pauses.

A schedule is a list of :class:`FaultStep` (offset from the start of the run, what, whom, how long)
made by a scenario from ``random.Random(seed)``, so the same seed gives the same schedule. Which
node is "the leader" is only known when the step fires; the follower picked among the followers
then is the seeded choice. Every fault that fired is a :class:`Fault` with its times
(``time.monotonic()``) and, where asked, how long the healed node took to catch up.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any, Optional

import attrs

from simulations.local_cluster import LocalCluster

__all__ = ["Fault", "FaultStep", "Nemesis"]

ACTIONS = ("kill", "pause")
TARGETS = ("leader", "follower", "all")


@attrs.frozen
class FaultStep:
    """``action`` ("kill" | "pause") of ``target`` ("leader" | "follower" | "all") at ``at`` s, healed ``hold`` s later."""

    at: float
    action: str = attrs.field(validator=attrs.validators.in_(ACTIONS))
    target: str = attrs.field(validator=attrs.validators.in_(TARGETS))
    hold: float
    pick: float = 0.0  # in [0, 1): which follower, drawn from the seed

    def to_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "action": self.action, "target": self.target, "hold": self.hold}


@attrs.define
class Fault:
    step: FaultStep
    nodes: list[str]
    started: float  # monotonic
    healed: Optional[float] = None
    catch_up: Optional[float] = None  # seconds from heal until the nodes applied the leader's revision then
    leader_before: Optional[str] = None

    def to_dict(self, t0: float) -> dict[str, Any]:
        return {
            "action": self.step.action,
            "target": self.step.target,
            "nodes": self.nodes,
            "leader_before": self.leader_before,
            "at": round(self.started - t0, 3),
            "healed_at": None if self.healed is None else round(self.healed - t0, 3),
            "catch_up_s": None if self.catch_up is None else round(self.catch_up, 3),
        }


class Nemesis:
    """Runs a schedule against a :class:`LocalCluster` from an asyncio task (blocking calls in threads)."""

    def __init__(self, cluster: LocalCluster, schedule: list[FaultStep], *, catch_up_limit: float = 20.0) -> None:
        self.cluster = cluster
        self.schedule = sorted(schedule, key=lambda s: s.at)
        self.catch_up_limit = catch_up_limit
        self.faults: list[Fault] = []
        self.killed: set[str] = set()
        self.paused: set[str] = set()
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
        if step.target == "all":
            return list(self.cluster.ids), leader
        if step.target == "leader":
            return ([leader] if leader else []), leader
        followers = sorted(n for n in self.cluster.ids if n != leader and n not in self.killed and n not in self.paused)
        if not followers:
            return [], leader
        return [followers[int(step.pick * len(followers)) % len(followers)]], leader

    def _inject(self, step: FaultStep) -> Fault:
        nodes, leader = self._targets(step)
        started = time.monotonic()
        for node in nodes:
            if step.action == "kill":
                self.cluster.kill(node, signal.SIGKILL)
                self.killed.add(node)
            else:
                self.cluster.pause(node)
                self.paused.add(node)
        return Fault(step, nodes, started, leader_before=leader)

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
            await asyncio.to_thread(self._heal_nodes, fault.nodes)
            fault.healed = time.monotonic()
            fault.catch_up = await asyncio.to_thread(self._catch_up, fault)

    def heal_all(self) -> None:
        """Resume every paused node and restart every node that is not running."""
        for node in list(self.paused):
            self.cluster.resume(node)
        self.paused.clear()
        for node in self.cluster.ids:
            if not self.cluster.alive(node):
                self.cluster.start(node)
        self.killed.clear()


def jitter(rng: random.Random, spread: float) -> float:
    return rng.uniform(-spread, spread)
