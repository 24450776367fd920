"""The avictl half of the control-plane benchmark: writes through the REST API of a real cluster.

:func:`run_api_bench` starts a :class:`~simulations.local_cluster.LocalCluster` (controllers are
child processes; this process is only the HTTP client), then

1. concurrent phase: ``concurrency`` aiohttp writers, spread round-robin over every node's API,
   each POSTing ``/api/pool`` with a fresh name until ``duration_s`` has passed; a 201 that
   completes inside the window is one event;
2. lone phase: sequential POSTs to the leader's API (at most ``lone_writes`` or ``lone_budget_s``).

Every non-201 answer and every client-side failure is counted by kind; nothing is retried. The
cluster is closed (every controller killed) in a ``finally`` block.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from simulations.bench._stats import latency_summary

__all__ = ["ApiResult", "avictl_proposal_bytes", "pool_body", "run_api_bench"]

_MAX_ERROR_SAMPLES = 5


def pool_body(n: int) -> dict[str, Any]:
    return {"name": f"bench-{n}", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}


def macro_body(names: "itertools.count[int]", size: int) -> dict[str, Any]:
    """One ``POST /api/macro`` creating ``size`` pools (``size`` events in one command)."""
    return {"model_name": "Pool", "data": [pool_body(next(names)) for _ in range(size)]}


def avictl_proposal_bytes() -> int | None:
    """Size of the Raft payload avictl proposes for one ``POST /api/pool``; None if the cluster code cannot build one.

    Best effort, computed in-process with the controller's own decide/codec code.
    """
    try:
        from cluster.decide import builtin_events, decide_create, new_uuid
        from cluster.views import ConfigView
        from storage import codec
        from storage.events import Proposal

        view = ConfigView.with_builtins(builtin_events())
        decision = decide_create(view, "pool", pool_body(123456), tenant="admin", uuid=new_uuid("pool"))
        proposal = Proposal(
            command_id=os.urandom(16).hex(),
            based_on=view.revision,
            time=time.time(),
            preconditions=decision.preconditions,
            events=decision.events,
        )
        return len(codec.encode(proposal))
    except Exception:  # noqa: BLE001 - informational only; the cluster code may be mid-change
        return None


@attrs.define
class _Tally:
    ok_in_window: int = 0
    ok_total: int = 0
    latencies_ms: list[float] = attrs.Factory(list)
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    samples: list[str] = attrs.Factory(list)
    per_second: list[int] = attrs.Factory(list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < _MAX_ERROR_SAMPLES:
            self.samples.append(f"{kind}: {detail[:300]}")


@attrs.frozen
class ApiResult:
    events_per_s: float
    duration_s: float
    concurrency: int
    leader: str | None
    per_second: list[int]
    concurrent: dict[str, float | None]
    concurrent_errors: dict[str, int]
    lone: dict[str, float | None]
    lone_errors: dict[str, int]
    error_samples: list[str]
    client_cpu_fraction: float
    controller_cpu_fraction: dict[str, float]
    macro_size: int = 0
    macro_events_per_s: float | None = None
    macro_concurrent: dict[str, float | None] = attrs.Factory(dict)
    macro_errors: dict[str, int] = attrs.Factory(dict)
    macro_client_cpu_fraction: float | None = None
    macro_controller_cpu_fraction: dict[str, float] = attrs.Factory(dict)

    @property
    def errors(self) -> int:
        return sum(self.concurrent_errors.values()) + sum(self.lone_errors.values()) + sum(self.macro_errors.values())

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (Linux /proc); 0.0 when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float) -> tuple[int | None, str]:
    """POST once; (status, text) or (None, failure description)."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.text()
    except TimeoutError:
        return None, "TimeoutError"
    except aiohttp.ClientError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _record_failure(tally: _Tally, status: int | None, text: str) -> None:
    if status is None:
        tally.error(text.split(":", 1)[0], text)
    else:
        tally.error(f"http_{status}", text)


async def _concurrent_phase(
    session: aiohttp.ClientSession,
    urls: list[str],
    names: itertools.count[int],
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    macro_size: int = 0,
) -> _Tally:
    """Writers POST one pool each (``macro_size`` 0) or ``macro_size`` pools per ``/api/macro``;
    ``ok_in_window`` counts events (objects created), latencies are per request."""
    loop = asyncio.get_running_loop()
    tally = _Tally(per_second=[0] * max(1, int(duration_s)))
    start = loop.time()
    end = start + duration_s
    path = "/api/macro" if macro_size else "/api/pool"
    per_ok = macro_size or 1

    async def writer(index: int) -> None:
        url = urls[index % len(urls)] + path
        while loop.time() < end:
            t0 = loop.time()
            body = macro_body(names, macro_size) if macro_size else pool_body(next(names))
            status, text = await _post(session, url, body, timeout_s)
            t1 = loop.time()
            if status == 201:
                tally.ok_total += per_ok
                tally.latencies_ms.append((t1 - t0) * 1000.0)
                if t1 <= end:
                    tally.ok_in_window += per_ok
                    tally.per_second[min(int(t1 - start), len(tally.per_second) - 1)] += per_ok
            else:
                _record_failure(tally, status, text)

    # Each writer stops starting requests at ``end``; in-flight ones are bounded by ``timeout_s``.
    await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(concurrency))), duration_s + timeout_s + 5.0)
    return tally


async def _lone_phase(
    session: aiohttp.ClientSession, url: str, names: itertools.count[int], count: int, budget_s: float, timeout_s: float
) -> _Tally:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    deadline = loop.time() + budget_s
    for _ in range(count):
        if loop.time() >= deadline:
            break
        t0 = loop.time()
        status, text = await _post(session, url + "/api/pool", pool_body(next(names)), timeout_s)
        if status == 201:
            tally.ok_total += 1
            tally.latencies_ms.append((loop.time() - t0) * 1000.0)
        else:
            _record_failure(tally, status, text)
    return tally


async def _warm_up(session: aiohttp.ClientSession, urls: list[str], names: itertools.count[int], budget_s: float) -> None:
    """One successful POST through every node's API, or RuntimeError with the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    for url in urls:
        while True:
            status, text = await _post(session, url + "/api/pool", pool_body(next(names)), 5.0)
            if status == 201:
                break
            if loop.time() >= deadline:
                raise RuntimeError(f"warm-up POST {url}/api/pool never answered 201; last: {status} {text[:500]}")
            await asyncio.sleep(0.2)


async def _drive(
    cluster: Any,
    *,
    concurrency: int,
    duration_s: float,
    lone_writes: int,
    lone_budget_s: float,
    timeout_s: float,
    macro_size: int,
) -> ApiResult:
    urls = [cluster.api(node_id) for node_id in cluster.ids]
    names = itertools.count()
    headers = {"Authorization": f"Bearer {cluster.token}"}
    connector = aiohttp.TCPConnector(limit=concurrency + 4, limit_per_host=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _warm_up(session, urls, names, budget_s=20.0)
        pids = {node_id: proc.pid for node_id, proc in cluster.procs.items()}
        ctl0 = {node_id: _proc_cpu_seconds(pid) for node_id, pid in pids.items()}
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        concurrent = await _concurrent_phase(session, urls, names, concurrency, duration_s, timeout_s)
        wall = max(time.monotonic() - wall0, 1e-9)
        client_cpu = (_cpu_seconds() - cpu0) / wall
        ctl_cpu = {node_id: round((_proc_cpu_seconds(pid) - ctl0[node_id]) / wall, 3) for node_id, pid in pids.items()}
        await asyncio.sleep(0.5)
        leader = await asyncio.get_running_loop().run_in_executor(None, cluster.leader)
        lone_url = cluster.api(leader) if leader is not None else urls[0]
        lone = await _lone_phase(session, lone_url, names, lone_writes, lone_budget_s, timeout_s)
        macro: _Tally | None = None
        if macro_size:
            ctl0 = {node_id: _proc_cpu_seconds(pid) for node_id, pid in pids.items()}
            cpu0, wall0 = _cpu_seconds(), time.monotonic()
            macro = await _concurrent_phase(session, urls, names, concurrency, duration_s, timeout_s, macro_size)
            wall = max(time.monotonic() - wall0, 1e-9)
            macro_client_cpu = round((_cpu_seconds() - cpu0) / wall, 3)
            macro_ctl_cpu = {node_id: round((_proc_cpu_seconds(pid) - ctl0[node_id]) / wall, 3) for node_id, pid in pids.items()}
    extra: dict[str, Any] = {}
    if macro is not None:
        extra = dict(
            macro_size=macro_size,
            macro_events_per_s=round(macro.ok_in_window / duration_s, 1),
            macro_concurrent=latency_summary(macro.latencies_ms),
            macro_errors=dict(macro.errors),
            macro_client_cpu_fraction=macro_client_cpu,
            macro_controller_cpu_fraction=macro_ctl_cpu,
        )
    return ApiResult(
        **extra,
        events_per_s=round(concurrent.ok_in_window / duration_s, 1),
        duration_s=duration_s,
        concurrency=concurrency,
        leader=leader,
        per_second=concurrent.per_second,
        concurrent=latency_summary(concurrent.latencies_ms),
        concurrent_errors=dict(concurrent.errors),
        lone=latency_summary(lone.latencies_ms),
        lone_errors=dict(lone.errors),
        error_samples=concurrent.samples + lone.samples + (macro.samples if macro is not None else []),
        client_cpu_fraction=round(client_cpu, 3),
        controller_cpu_fraction=ctl_cpu,
    )


def _log_tails(base: Path, ids: list[str], limit: int = 1200) -> str:
    out = []
    for node_id in ids:
        try:
            text = (base / node_id / "controller.log").read_text(errors="replace")[-limit:]
        except OSError:
            text = "(no log)"
        out.append(f"--- {node_id} controller.log (tail) ---\n{text}")
    return "\n".join(out)


def run_api_bench(
    *,
    duration_s: float,
    concurrency: int = 64,
    lone_writes: int = 200,
    lone_budget_s: float = 30.0,
    request_timeout_s: float = 10.0,
    nodes: int = 3,
    start_timeout_s: float = 30.0,
    tmp_root: str | None = None,
    macro_size: int = 0,
) -> ApiResult:
    """Start a cluster, load it, close it; RuntimeError (with controller log tails) when it cannot run."""
    from simulations.local_cluster import (  # late: needs the controller code
        LocalCluster,
        wait_until,
    )

    with tempfile.TemporaryDirectory(prefix="bench-api-", dir=tmp_root) as tmp:
        base = Path(tmp)
        cluster = LocalCluster(base, nodes)
        try:
            try:
                cluster.start_all(timeout=start_timeout_s)
                wait_until(
                    lambda: all(cluster.status(node_id) is not None for node_id in cluster.ids),
                    start_timeout_s,
                    what="every node's API",
                )
                return asyncio.run(
                    _drive(
                        cluster,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        lone_writes=lone_writes,
                        lone_budget_s=lone_budget_s,
                        timeout_s=request_timeout_s,
                        macro_size=macro_size,
                    )
                )
            except (TimeoutError, RuntimeError, OSError) as exc:
                raise RuntimeError(
                    f"avictl API bench failed: {type(exc).__name__}: {exc}\n{_log_tails(base, cluster.ids)}"
                ) from exc
        finally:
            cluster.close()
