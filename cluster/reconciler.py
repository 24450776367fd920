"""The leader's placement loop: observe, ``cluster.reconcile.reconcile``, propose, drive the cloud.

Thin shell around the pure core. Every ``interval`` seconds, on the leader only, it gathers what
this node observed of the SEs (their reports reach every controller), runs the core, and proposes
each command it returns through ``Controller.write`` (a rejected one, e.g. a placement someone
changed meanwhile, is dropped: the next round decides again from the new state). Then it asks the
cloud driver, if there is one, to run exactly the SEs the log requested. Followers only reset
their leadership clock, so a new leader gives every SE a full detection period before declaring
it down.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import structlog

from cluster.autoscale import alert_key, autoscale
from cluster.commands import CommitDecision
from cluster.decide import CommandError, Decision
from cluster.proposer import NoQuorum, OutcomeUnknown
from cluster.reconcile import Observed, SeObservation, Settings, reconcile
from storage.events import AutoscaleAlerted, ServiceEngineReleased

if TYPE_CHECKING:
    from cluster.cloud import CloudDriver
    from cluster.node import Controller

__all__ = ["Reconciler"]

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(
        self,
        node: "Controller",
        cloud: Optional["CloudDriver"] = None,
        *,
        interval: float = 0.25,
        settings: Optional[Settings] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.cloud = cloud
        self.interval = interval
        self.settings = settings or Settings()
        self.log = log.bind(node_id=node.node_id)
        self._leader_since: Optional[float] = None
        self._idle_since: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._last_scaled: dict[str, float] = {}  # vs uuid -> when autoscale last acted or alerted
        self.clock = clock
        #: SE group name -> why the cloud could not start one of its SEs (this leader's last round)
        self.cloud_errors: dict[str, str] = {}
        self.rounds = 0
        #: rounds that raised (each is a bug: the round's later commands were not proposed);
        #: exported as ``avictl_reconcile_rounds_failed_total`` so tests and operators see them
        self.failed_rounds = 0
        self.last_failure: Optional[str] = None
        self._logged_failures: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the loop; the next one retries
                # The same failure every 250 ms would drown the log: once per kind per minute.
                key = f"{type(exc).__name__}: {exc}"
                self.failed_rounds += 1
                self.last_failure = key
                now = time.monotonic()
                if now - self._logged_failures.get(key, -60.0) >= 60.0:
                    self._logged_failures[key] = now
                    self.log.exception("reconcile_round_failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def round(self) -> None:
        node = self.node
        if not node.raft.is_leader:
            self._leader_since = None
            self._idle_since.clear()
            self._last_scaled.clear()
            return
        now = self.clock()
        if self._leader_since is None:
            self._leader_since = now
            self.log.info("reconciler_leading")
        loop = asyncio.get_running_loop()
        if self.cloud is not None:
            self._running = await loop.run_in_executor(None, self.cloud.running)
        observed = self._observe(now)
        for command in reconcile(node.view, observed, self.settings):
            await self._fence_released(command, loop)
            await self._propose(command)
        samples = {uuid: status.get("se") or {} for uuid, status in node.se_status.items() if now - (status.get("time") or 0) < 30}
        for command in autoscale(node.view, samples, now, self._last_scaled, cloud=self.cloud is not None):
            if await self._propose(command):
                for event in command.events:
                    if hasattr(event, "vs_uuid"):
                        self._last_scaled[event.vs_uuid] = now
                    if isinstance(event, AutoscaleAlerted):
                        self._last_scaled[alert_key(event.se_uuid)] = now
        self._note_idle(now)
        if self.cloud is not None:
            await self._drive_cloud(loop)
        self.rounds += 1

    def _observe(self, now: float) -> Observed:
        view = self.node.view
        ses: dict[str, SeObservation] = {}
        for se in view.list("serviceengine"):
            status = self.node.se_status.get(se.uuid)
            if status is None:
                continue
            interval = status.get("report_interval")
            ha = status.get("ha")
            ses[se.uuid] = SeObservation(
                last_report=status.get("time"),
                report_interval=float(interval) if isinstance(interval, (int, float)) and interval > 0 else None,
                ha=ha if isinstance(ha, dict) else {},
            )
        requested = view.se_requested()
        exited = frozenset(
            name for name in requested
            if self.cloud is not None and name not in self._running and view.by_name("serviceengine", name) is not None
        )
        assert self._leader_since is not None
        return Observed(
            now=now,
            leader_since=self._leader_since,
            ses=ses,
            cloud=self.cloud is not None,
            exited=exited,
            idle_since=dict(self._idle_since),
        )

    async def _propose(self, command: Decision) -> bool:
        try:
            await self.node.write(CommitDecision(command), timeout=5.0)
        except (NoQuorum, OutcomeUnknown) as exc:
            self.log.warning("reconcile_command_unfinished", events=[type(e).__name__ for e in command.events], error=type(exc).__name__)
            return False
        except CommandError as exc:
            self.log.info("reconcile_command_refused", events=[type(e).__name__ for e in command.events], error=exc.message)
            return False
        for event in command.events:
            self.log.info("reconciled", event_type=type(event).__name__, **_describe(event))
        return True

    async def _fence_released(self, command: Decision, loop: asyncio.AbstractEventLoop) -> None:
        """An SE the cloud started is stopped before its release (and the deletion of its record)
        is proposed: a process that outlived its record would register again as a new SE."""
        if self.cloud is None:
            return
        for event in command.events:
            if isinstance(event, ServiceEngineReleased):
                stopped = await loop.run_in_executor(None, self.cloud.stop, event.name)
                self.log.info("se_fenced_before_release", se=event.name, stopped=stopped)

    def _note_idle(self, now: float) -> None:
        view = self.node.view
        idle = set()
        for name in view.se_requested():
            se = view.by_name("serviceengine", name)
            if se is not None and not view.placed_on(se.uuid):
                idle.add(name)
                self._idle_since.setdefault(name, now)
        for name in set(self._idle_since) - idle:
            del self._idle_since[name]

    async def _drive_cloud(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.cloud is not None
        from cluster.cloud import CloudError, SeSpec

        view = self.node.view
        errors: dict[str, str] = {}  # SE group name -> why one of its SEs could not be driven
        wanted: set[str] = set()
        # One SE at a time: an SE the cloud cannot start (a bad name, a full disk) is reported on
        # its group's runtime and skipped; it never stops the other SEs from being started.
        for name, (group_uuid, _revision) in sorted(view.se_requested().items()):
            group = view.get(group_uuid)
            group_name = group.name if group is not None else group_uuid
            wanted.add(name)
            try:
                memory = int(group.body.get("memory_per_se", 2048)) if group is not None else 2048
                spec = SeSpec(name=name, group=group_name, memory_mb=memory)
                started = await loop.run_in_executor(None, self.cloud.ensure_running, [spec])
            except (CloudError, OSError, ValueError) as exc:
                errors[group_name] = f"cannot start {name}: {exc}"
                self._log_once("cloud_start_failed", f"{name}: {exc}", se=name, group=group_name, error=str(exc))
                continue
            for started_name in started:
                self.log.info("se_started_by_cloud", se=started_name, cloud=self.cloud.kind)
        for name in sorted(set(self._running) - wanted):
            try:
                stopped = await loop.run_in_executor(None, self.cloud.stop, name)
            except (CloudError, OSError) as exc:
                self._log_once("cloud_stop_failed", f"{name}: {exc}", se=name, error=str(exc))
                continue
            if stopped:
                self.log.info("se_stopped_by_cloud", se=name, cloud=self.cloud.kind)
        self.cloud_errors = errors

    def _log_once(self, event_name: str, key: str, **fields: Any) -> None:
        """A warning at most once a minute per ``key``: the same failure every round would drown the log."""
        now = time.monotonic()
        if now - self._logged_failures.get(key, -60.0) >= 60.0:
            self._logged_failures[key] = now
            self.log.warning(event_name, **fields)


def _describe(event: Any) -> dict[str, Any]:
    fields = {}
    for key in ("vs_uuid", "se_uuids", "name", "status", "reason"):
        value = getattr(event, key, None)
        if value is not None:
            fields[key] = list(value) if isinstance(value, tuple) else value
    return fields
