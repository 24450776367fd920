"""Run one chaos scenario end to end and judge it: ``avictl chaos run`` calls :func:`run_scenario`.

1. A fresh 3-node :class:`LocalCluster` in a temp dir (never the user's context), closed in ``finally``.
2. The workloads (config writes, cas registers) run for ``duration`` s while the nemesis fires the
   scenario's schedule (from ``random.Random(seed)``) and a watcher records the leader.
3. Heal (restart / resume everything), wait for a leader and for convergence.
4. Checkers: acknowledged writes (per node, stale reads after convergence), acked command ids
   once in the log, logs identical with gapless revisions, linearizability of the registers,
   write recovery after each fault, catch-up, leader changes — per the scenario's criteria.
   While the run goes on, a :class:`LogTailSampler` fetches each reachable node's new log tail
   every second; ``log_prefixes_during_run`` checks those samples agree at every shared revision.

Network scenarios (``network``: partitions, clock skew) are run by
:func:`simulations.chaos.partitions.run_network_scenario` on a cluster in network namespaces (root);
its report has the same shape, or ``verdict`` "skip" with a ``reason``.

Data-plane scenarios (``Scenario.data_plane``) run the cluster with the local cloud, a backend
(``simulations.backend``) and one virtual service in an active/standby SE group; before the clock
starts they wait until the pair is settled and the VIP serves. Besides the workloads above (at a
lower rate, to leave the CPU to the SEs) a :class:`DataPlaneWorkload` sends traffic through the
VIP and a sampler reads each SE's ``total_connections`` for the VS from its telemetry (which SE
answered; the SEs are not changed for this). Extra checks: the gap and the recovery of new
connections per fault, failures once recovered, failed requests at all, the takeover event, no
placement change around a controllers' pause, writes after it; the report's ``data_plane``
section has the availability (successful requests / requests) and the worst gap.

Storage scenarios (``Scenario.storage``) run on an :class:`ArmableCluster` whose nodes trace their
syncs, with a :class:`StorageNemesis`; they add :func:`check_restarts` and the report's
``storage_evidence`` (:mod:`simulations.chaos.storage_faults`).

The report (:mod:`simulations.chaos.report`) is plain data; ``verdict`` is ``pass`` only when
every check passed.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import aiohttp
import attrs

from simulations.chaos import checkers
from simulations.chaos.checkers import CheckResult, Violation
from simulations.chaos.collect import REGISTER_PREFIX, WRITE_PREFIX, LogTailSampler, check_log_shape, collect_logs, collect_present
from simulations.chaos.history import write_outcomes, write_samples
from simulations.chaos.model import SE_TARGETS, TAKEOVER, Criteria, Scenario
from simulations.chaos.nemesis import Nemesis, SePair
from simulations.chaos.partitions import run_network_scenario
from simulations.chaos.report import history_excerpt, report_of
from simulations.chaos.scenarios import get
from simulations.chaos.storage_faults import TRACE_CLUSTER_ENV, ArmableCluster, StorageNemesis, check_restarts
from simulations.chaos.workloads import DataPlaneWorkload, RegisterWorkload, WriteWorkload, no_retry_session
from simulations.local_cluster import LocalCluster, die_with_parent, free_port, wait_until

__all__ = ["run_scenario"]

DP_VS = "chaos-web"


def _check_leader_stable(nemesis: Nemesis) -> CheckResult:
    seen = [(t, leader, term) for t, leader, term in nemesis.leaders if leader is not None]
    distinct = sorted({(leader, term) for _, leader, term in seen}, key=repr)
    violations = []
    if len(distinct) > 1:
        violations.append(Violation("leader_change", f"the leader changed during a run without faults: {distinct}",
                                    {"leaders": [list(d) for d in distinct]}))
    no_leader = sum(1 for _, leader, _ in nemesis.leaders if leader is None)
    if no_leader:
        violations.append(Violation("no_leader", f"{no_leader} observations found no leader", {"count": no_leader}))
    return CheckResult.of("no_leader_change", violations, {"observations": len(nemesis.leaders), "leaders": [list(d) for d in distinct]})


class DataPlane:
    """The data-plane fixture of a run: a backend process, the active/standby VS and its traffic."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.backend_port = free_port()
        self.backend: Optional[subprocess.Popen[bytes]] = None
        self.vip = f"127.77.{1 + secrets.randbelow(250)}.{1 + secrets.randbelow(250)}"
        self.port = free_port()
        self.pair = SePair(cluster, DP_VS)
        self.vs_uuid = ""
        self.workload = DataPlaneWorkload(self.vip, self.port)
        self.samples: list[tuple[float, dict[str, int]]] = []  # (monotonic, SE -> total_connections for the VS)
        self.initial_pair: Optional[tuple[str, str]] = None

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        leader = self.cluster.wait_leader(30)
        code, doc = self.cluster.request(leader, method, path, body, timeout=10)
        if code not in (200, 201):
            raise RuntimeError(f"{method} {path} answered {code}: {doc}")
        return doc

    def serves(self) -> bool:
        try:
            conn = http.client.HTTPConnection(self.vip, self.port, timeout=2)
            conn.request("GET", "/ready")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def start(self) -> None:
        """Start the backend, create the VS in an active/standby group; wait for the pair and the VIP."""
        self.backend = subprocess.Popen(
            [sys.executable, "-m", "simulations.backend", "--port", str(self.backend_port), "--name", "web"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        self._api("POST", "/api/serviceenginegroup", {"name": f"{DP_VS}-group", "ha_mode": "HA_MODE_LEGACY_ACTIVE_STANDBY",
                                                      "se_name_prefix": "chaos"})
        pool = self._api("POST", "/api/pool", {"name": f"{DP_VS}-pool", "servers": [
            {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": self.backend_port}]})
        vsvip = self._api("POST", "/api/vsvip", {"name": f"{DP_VS}-vip", "vip": [{"ip_address": {"addr": self.vip, "type": "V4"}}]})
        vs = self._api("POST", "/api/virtualservice", {
            "name": DP_VS, "services": [{"port": self.port}], "pool_ref": pool["url"], "vsvip_ref": vsvip["url"],
            "se_group_ref": f"/api/serviceenginegroup?name={DP_VS}-group"})
        self.vs_uuid = vs["uuid"]
        self.initial_pair = self.pair.wait_settled(90)
        if self.initial_pair is None:
            raise RuntimeError(f"{DP_VS} was not on an active/standby pair within 90 s: {self.pair.roles()}")
        wait_until(self.serves, 20, interval=0.1, what=f"the VIP {self.vip}:{self.port} to serve")

    def close(self) -> None:
        if self.backend is not None and self.backend.poll() is None:
            self.backend.kill()
            self.backend.wait(5)

    async def sample(self, nemesis: Nemesis, stop_at: float, interval: float = 1.0) -> None:
        """Every ``interval`` s, each SE's connection count for the VS (skipped while the controllers are paused)."""
        while time.monotonic() < stop_at:
            if not nemesis.paused:
                try:
                    counts = await asyncio.to_thread(self.pair.connections)
                    self.samples.append((time.monotonic(), counts))
                except Exception:  # noqa: BLE001 - a sample is best effort
                    pass
            await asyncio.sleep(interval)

    def served_by(self, start: float, end: float) -> dict[str, int]:
        """Per SE, new connections counted between the last samples before ``start`` and ``end``."""
        before = [c for t, c in self.samples if t <= start]
        upto = [c for t, c in self.samples if t <= end]
        if not upto:
            return {}
        first, last = (before[-1] if before else {}), upto[-1]
        # A restarted SE counts from 0 again: then all it counts is new.
        return {se: (n - first.get(se, 0) if n >= first.get(se, 0) else n) for se, n in sorted(last.items())}

    def se_uuids(self) -> dict[str, str]:
        body = self._api("GET", "/api/serviceengine?page_size=200")
        return {r["name"]: r["uuid"] for r in body["results"]}

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        since = 1
        while True:
            body = self._api("GET", f"/api/events?since={since}&limit=10000")
            batch = body["results"]
            out.extend(e for e in batch if e["type"] in ("VirtualServicePlaced", "ServiceEngineStatusChanged"))
            if len(batch) < 10000:
                return out
            since = batch[-1]["revision"] + 1


async def _drive(cluster: LocalCluster, scenario: Scenario, seed: int, duration: float, nemesis: Nemesis,
                 writes: WriteWorkload, registers: RegisterWorkload, dp: Optional[DataPlane] = None,
                 tails: Optional[LogTailSampler] = None) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session, no_retry_session() as reg_session:
        await registers.setup(reg_session)
        t0 = time.monotonic()
        stop_at = t0 + duration
        extra = [dp.workload.run(stop_at), dp.sample(nemesis, stop_at)] if dp is not None else []
        if tails is not None:
            extra.append(tails.run(t0, stop_at))
        await asyncio.gather(
            writes.run(session, stop_at),
            registers.run(reg_session, stop_at),
            nemesis.run(t0, stop_at),
            nemesis.observe(stop_at),
            *extra,
        )
    return t0, stop_at


def _r(value: Optional[float], digits: int = 3) -> Any:
    if value is None:
        return None
    return round(value, digits) if math.isfinite(value) else str(value)


def _data_plane_checks(dp: DataPlane, nemesis: Nemesis, writes: WriteWorkload, crit: Criteria, t0: float,
                       stop_at: float) -> tuple[list[CheckResult], dict[str, Any]]:
    """The data-plane checks and the report's ``data_plane`` section."""
    checks: list[CheckResult] = []
    probes = dp.workload.probes
    new = [(p.start, p.end, p.ok) for p in probes if p.kind == "new"]
    fired = [f for f in nemesis.faults if f.nodes]
    events = dp.events()
    se_uuids = dp.se_uuids()
    placements = [e for e in events if e["type"] == "VirtualServicePlaced" and e["data"].get("vs_uuid") == dp.vs_uuid]
    active_faults = [f for f in fired if f.step.target == "se-active"]
    # A fault's takeover is recorded by the first placement after it that makes the old standby the
    # primary (the reconciler words it "... took the VIP over ..." when it saw the standby report active).
    takeover_delays: list[Optional[float]] = []
    takeover_reasons: list[Optional[str]] = []
    for i, f in enumerate(active_faults):
        standby = se_uuids.get(f.pair_before[1]) if f.pair_before else None
        nxt = active_faults[i + 1].started_wall if i + 1 < len(active_faults) else math.inf
        match = next((e for e in placements if f.started_wall <= e["time"] < nxt and standby is not None
                      and list(e["data"].get("se_uuids") or [])[:1] == [standby]), None)
        delay = None if match is None else match["time"] - f.started_wall
        ok = delay is not None and delay <= (crit.max_takeover_event or math.inf)
        takeover_delays.append(delay if ok else None)
        takeover_reasons.append(None if match is None else match["data"].get("reason"))
    delay_of = {id(f): (d, r) for f, d, r in zip(active_faults, takeover_delays, takeover_reasons, strict=False)}

    per_fault: list[dict[str, Any]] = []
    gaps: list[float] = []
    after_recovery: list[dict[str, Any]] = []
    for i, fault in enumerate(fired):
        until = fired[i + 1].started if i + 1 < len(fired) else stop_at
        stats = checkers.fault_window(new, fault.started, until)
        gaps.append(stats.gap)
        recovered_at = fault.started + stats.recovery
        after_recovery.extend({"fault": i, "start": round(p.start - t0, 3), "end": round(p.end - t0, 3), "error": p.error}
                              for p in probes if p.kind == "new" and not p.ok and recovered_at <= p.start < until and p.end < until)
        keep = [p for p in probes if p.kind == "keepalive" and fault.started <= p.start < until]
        entry: dict[str, Any] = {
            "at": round(fault.started - t0, 3), "action": fault.step.action, "target": fault.step.target, "nodes": fault.nodes,
            "gap_s": _r(stats.gap), "recovery_s": _r(stats.recovery), "failures_after_recovery": stats.failures_after_recovery,
            "new_requests": stats.requests, "new_failed": stats.failed,
            "keepalive_requests": len(keep), "keepalive_failed": sum(1 for p in keep if not p.ok),
            "keepalive_reconnects": sum(1 for p in keep if p.reconnected),
            "served_by": dp.served_by(fault.started, until),
        }
        if fault.step.target in SE_TARGETS:
            entry["pair_before"] = None if fault.pair_before is None else list(fault.pair_before)
            entry["pair_after"] = None if fault.pair_after is None else list(fault.pair_after)
            entry["settle_s"] = _r(fault.settled - fault.started if fault.settled is not None else math.inf)
        if id(fault) in delay_of:
            entry["takeover_event_s"] = _r(delay_of[id(fault)][0])
            entry["takeover_event_reason"] = delay_of[id(fault)][1]
        per_fault.append(entry)

    if crit.max_gap_median is not None or crit.max_gap_worst is not None:
        checks.append(checkers.check_gaps(gaps, median_limit=crit.max_gap_median, worst_limit=crit.max_gap_worst))
    if crit.no_failures_after_recovery:
        checks.append(checkers.check_no_failures("failures_after_recovery", after_recovery, what="new connection after recovery",
                                                 details={"faults": len(fired)}))
    if crit.no_failed_requests:
        failed = [{"probe": p.kind, "client": p.client, "start": round(p.start - t0, 3), "end": round(p.end - t0, 3),
                   "error": p.error} for p in probes if not p.ok]
        checks.append(checkers.check_no_failures("no_failed_requests", failed, details={"requests": len(probes)}))
    if crit.takeover_event:
        missing = [Violation("no_takeover_event", f"no placement making the standby primary within {crit.max_takeover_event} s "
                             f"of the fault at {f.started - t0:.3f} s", {"at": round(f.started - t0, 3)})
                   for f, d in zip(active_faults, takeover_delays, strict=False) if d is None]
        found = [d for d in takeover_delays if d is not None]
        checks.append(CheckResult.of("takeover_events", missing, {
            "faults": len(active_faults), "recorded": len(found), "worded": sum(1 for r in takeover_reasons if r and TAKEOVER in r),
            "worst_delay": max(found) if found else None,
            "limit": crit.max_takeover_event}, inconclusive=not active_faults))
    if crit.max_settle is not None:
        settle = [f.settled - f.started if f.settled is not None else math.inf for f in fired if f.step.target in SE_TARGETS]
        checks.append(checkers.check_bound("pair_settled", settle, crit.max_settle, what="pair settled again (s) after fault"))
    if crit.no_placement_change:
        violations = []
        for f in fired:
            lo, hi = f.started_wall, (f.healed_wall or f.started_wall) + crit.quiet_after
            for e in events:
                bad = e["type"] == "VirtualServicePlaced" or (e["type"] == "ServiceEngineStatusChanged" and e["data"].get("status") == "down")
                if bad and lo <= e["time"] <= hi:
                    violations.append(Violation("placement_changed", f"{e['type']} at {e['time'] - lo:.3f} s after the fault: "
                                                f"{e['data'].get('reason') or e['data']}",
                                                {"revision": e["revision"], "type": e["type"], "after_fault_s": round(e["time"] - lo, 3)}))
        checks.append(CheckResult.of("no_placement_change", violations, {"faults": len(fired), "quiet_after_s": crit.quiet_after},
                                     inconclusive=not fired))
    if crit.max_write_recovery_after_heal is not None:
        recov = []
        for f in fired:
            if f.healed is not None:
                recov.extend(checkers.recovery_times(write_samples(writes.results, started_after=f.healed), [f.healed]))
        checks.append(checkers.check_bound("write_recovery_after_heal", recov, crit.max_write_recovery_after_heal,
                                           what="write recovery (s) after heal"))

    finite = [g for g in gaps if math.isfinite(g)]
    counts = dp.workload.counts()
    ok_all = sum(1 for p in probes if p.ok)
    section = {
        "vip": f"{dp.vip}:{dp.port}",
        "initial_pair": None if dp.initial_pair is None else list(dp.initial_pair),
        "requests": len(probes),
        "ok": ok_all,
        "availability": _r(checkers.availability((p.end, p.ok) for p in probes), 6),
        "availability_new": _r(checkers.availability((p.end, p.ok) for p in probes if p.kind == "new"), 6),
        "availability_keepalive": _r(checkers.availability((p.end, p.ok) for p in probes if p.kind == "keepalive"), 6),
        "counts": counts,
        "worst_gap_s": _r(max(gaps)) if gaps else None,
        "median_gap_s": _r(statistics.median(finite)) if finite else None,
        "gaps_s": [_r(g) for g in gaps],
        "worst_recovery_s": _r(max(float(e["recovery_s"]) for e in per_fault)) if per_fault else None,
        "faults": per_fault,
        "placement_events": [{"revision": e["revision"], "at": round(e["time"] - (time.time() - (time.monotonic() - t0)), 3),
                              "reason": e["data"].get("reason")} for e in placements],
        "se_down_events": [{"revision": e["revision"], "at": round(e["time"] - (time.time() - (time.monotonic() - t0)), 3),
                            "se": e["data"].get("name"), "reason": e["data"].get("reason")}
                           for e in events if e["type"] == "ServiceEngineStatusChanged" and e["data"].get("status") == "down"],
        "which_se": "from the SEs' telemetry (total_connections per VS, sampled each second through the API); "
                    "per request it is not known",
    }
    return checks, section


def run_scenario(name: str, *, duration: float, seed: int, progress: Optional[Callable[[str], None]] = None,
                 base_dir: Optional[str] = None) -> dict[str, Any]:
    """Run scenario ``name`` for ``duration`` s with ``seed``; returns the report (see module doc)."""
    say = progress or (lambda _msg: None)
    scenario = get(name)
    if getattr(scenario, "network", False):
        return run_network_scenario(scenario, duration=duration, seed=seed, progress=progress, base_dir=base_dir)
    schedule = scenario.faults(seed, duration)
    tmp = tempfile.TemporaryDirectory(prefix="avictl-chaos-", dir=base_dir)
    # Storage scenarios: nodes that trace their syncs and can have a failpoint armed while they run.
    cluster_cls = ArmableCluster if scenario.storage else LocalCluster
    cluster = cluster_cls(tmp.name, nodes=3, local_cloud=scenario.data_plane,
                          env=dict(TRACE_CLUSTER_ENV) if scenario.storage else None)
    dp: Optional[DataPlane] = None
    started_wall = time.time()
    try:
        say("starting a fresh 3-node cluster" + (" with the local cloud" if scenario.data_plane else ""))
        cluster.start_all(30)
        urls = [cluster.api(n) for n in cluster.ids]
        if scenario.data_plane:
            dp = DataPlane(cluster)
            say(f"starting a backend and an active/standby virtual service on {dp.vip}:{dp.port}")
            dp.start()
            # Less control-plane load: the SEs share the CPU with the controllers and the clients.
            writes = WriteWorkload(urls, cluster.token, prefix=WRITE_PREFIX, concurrency=2, rate=20.0)
            registers = RegisterWorkload(urls, cluster.token, prefix=REGISTER_PREFIX, keys=2, clients_per_key=1, seed=seed)
        else:
            writes = WriteWorkload(urls, cluster.token, prefix=WRITE_PREFIX, concurrency=4, rate=100.0)
            registers = RegisterWorkload(urls, cluster.token, prefix=REGISTER_PREFIX, keys=3, clients_per_key=2, seed=seed)
        nemesis = (StorageNemesis if scenario.storage else Nemesis)(cluster, schedule, catch_up_limit=20.0, pair=dp.pair if dp else None, settle_limit=30.0)
        tails = LogTailSampler(cluster)
        say(f"running {scenario.name} for {duration:g} s with seed {seed} ({len(schedule)} faults scheduled)")
        t0, stop_at = asyncio.run(_drive(cluster, scenario, seed, duration, nemesis, writes, registers, dp, tails))
        say("healing and waiting for the nodes to converge")
        nemesis.heal_all()
        cluster.wait_leader(30)
        # Converged twice in a row: a write still retrying could otherwise land after the first.
        time.sleep(0.5)
        cluster.wait_converged(60)
        if dp is not None and scenario.criteria.no_placement_change:
            # The quiet period after each heal must be over before the events are read.
            last = max((f.healed_wall for f in nemesis.faults if f.healed_wall is not None), default=0.0)
            time.sleep(max(0.0, last + scenario.criteria.quiet_after - time.time()))

        say("checking")
        checks: list[CheckResult] = []
        outcomes = write_outcomes(writes.results)
        present = collect_present(cluster)
        checks.append(checkers.check_acknowledged(outcomes.acked, outcomes.failed, outcomes.unknown, present))
        logs = collect_logs(cluster)
        checks.append(checkers.check_logs_identical(logs))
        checks.append(tails.check())
        checks.append(check_log_shape(logs[cluster.ids[0]], {r.command_id for r in writes.writer.acked}))
        if isinstance(nemesis, StorageNemesis):
            checks.append(check_restarts(nemesis))  # reads the nodes' logs: before the cluster is closed
        history = registers.operations()
        lin = checkers.check_linearizable(history)
        checks.append(lin)
        excerpt = history_excerpt(history, lin, t0, registers.notes)

        crit = scenario.criteria
        if crit.min_faults:
            fired = sum(1 for f in nemesis.faults if f.nodes)
            checks.append(CheckResult.of("faults_injected", [] if fired >= crit.min_faults else [
                Violation("too_few_faults", f"{fired} faults fired, at least {crit.min_faults} needed; run longer",
                          {"fired": fired, "needed": crit.min_faults})], {"fired": fired}))
        if crit.max_write_recovery is not None:
            recov = []
            for fault in nemesis.faults:
                recov.extend(checkers.recovery_times(write_samples(writes.results, started_after=fault.started), [fault.started]))
            checks.append(checkers.check_bound("write_recovery", recov, crit.max_write_recovery, what="write recovery (s) after fault"))
        if crit.max_catch_up is not None:
            catch = [f.catch_up if f.catch_up is not None else float("inf") for f in nemesis.faults]
            checks.append(checkers.check_bound("catch_up", catch, crit.max_catch_up, what="catch-up (s) after heal"))
        if crit.no_leader_change:
            checks.append(_check_leader_stable(nemesis))
        data_plane: Optional[dict[str, Any]] = None
        if dp is not None:
            dp_checks, data_plane = _data_plane_checks(dp, nemesis, writes, crit, t0, stop_at)
            checks.extend(dp_checks)

        report = report_of(scenario, seed, duration, started_wall, schedule, nemesis, t0, outcomes, registers, {
            "max_write_recovery_s": crit.max_write_recovery,
            "max_catch_up_s": crit.max_catch_up,
            "no_leader_change": crit.no_leader_change,
            "min_faults": crit.min_faults,
        }, checks, excerpt)
        if data_plane is not None:
            report["criteria"].update({k: v for k, v in attrs.asdict(crit).items() if k not in report["criteria"]})
            report["data_plane"] = data_plane
        if isinstance(nemesis, StorageNemesis):
            report["storage_evidence"] = nemesis.evidence
        return report
    finally:
        cluster.close()
        if dp is not None:
            dp.close()
        tmp.cleanup()


def _check(report: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    return next((c for c in report["checks"] if c["name"] == name), None)
