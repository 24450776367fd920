"""The Service Engine's data plane: listeners, pools and their health, applied from a slice.

``DataPlane.apply(slice)`` makes the running proxies match the slice, make-before-break (xDS
order): pools first (a changed pool keeps its Balancer state through ``Balancer.updated`` and its
checker through ``HealthChecker.update``), then listeners (new ones bound; kept ones get the new VS
config swapped in place, so established connections are untouched and the next connection or
request uses the new config), removals last (stop accepting, let established connections drain,
close what is left after the pool's graceful-disable timeout, capped).

A listener that cannot bind is reported in the returned ``{vs_name: error}`` and does not stop
the other VSs from being served; the caller NACKs with those messages. ``apply`` calls are
serialised.

The proxies (``engine.l4``, ``engine.l7``) read ``Listener.vs`` at accept time (L4) or per request
(L7); ``Listener``, ``VsRuntime`` and ``PoolRuntime`` are the only state they share with this module.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from engine.config import PoolConfig, SliceConfig, VirtualServiceConfig
from engine.health import HealthChecker
from engine.l4 import L4Connection
from engine.l7 import L7Connection, UpstreamPool
from engine.routing import Balancer
from engine.telemetry import Telemetry, VsStats

__all__ = ["DataPlane", "Listener", "PoolRuntime", "VsRuntime"]

log = logging.getLogger(__name__)

HealthFactory = Callable[[PoolConfig, Callable[[str, bool], None]], Any]


class PoolRuntime:
    """A pool being served: its Balancer, health checker and idle backend connections (L7)."""

    __slots__ = ("config", "balancer", "checker", "upstreams", "connect_timeout", "_on_change")

    def __init__(self, config: PoolConfig, health_factory: HealthFactory, on_change: Callable[["PoolRuntime", str, bool], None], connect_timeout: float) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self.balancer = Balancer(config.lb_algorithm, config.servers)
        self.upstreams = UpstreamPool()
        self.upstreams.retain(frozenset(s.key for s in config.servers))
        self._on_change = on_change
        self.checker = health_factory(config, self._health_changed)

    def _health_changed(self, key: str, up: bool) -> None:
        self._on_change(self, key, up)

    def start(self) -> None:
        self.checker.start()
        self._sync_health()

    def update(self, config: PoolConfig) -> None:
        """Take a changed pool config; servers that stay keep their health and connection counts.

        The checker goes first: it validates the monitors and, if it refuses, nothing has changed.
        """
        self.checker.update(config)
        self.balancer = self.balancer.updated(config.servers, config.lb_algorithm)
        self.config = config
        self.upstreams.retain(frozenset(s.key for s in config.servers))
        self._sync_health()

    def _sync_health(self) -> None:
        for key, up in self.checker.states().items():
            self.balancer.set_up(key, up)

    async def stop(self) -> None:
        await self.checker.stop()
        self.upstreams.close()

    def states(self) -> dict[str, bool]:
        return {s.key: self.balancer.is_up(s.key) for s in self.config.servers}


class VsRuntime:
    """One VS as the proxies see it; replaced (never mutated) when its config changes."""

    __slots__ = ("config", "pool", "stats", "http")

    def __init__(self, config: VirtualServiceConfig, pool: Optional[PoolRuntime], stats: VsStats) -> None:
        self.config = config
        self.pool = pool
        self.stats = stats
        self.http = config.application == "http"


class Listener:
    """One bound (vip, port); ``vs`` is swapped in place when the slice changes."""

    __slots__ = ("address", "vs", "loop", "server", "connections", "draining", "_expiry")

    def __init__(self, address: tuple[str, int], vs: VsRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.address = address
        self.vs = vs
        self.loop = loop
        self.server: Optional[asyncio.AbstractServer] = None
        self.connections: set[Any] = set()  # L4Connection / L7Connection, added on accept
        self.draining = False
        self._expiry: Optional[asyncio.TimerHandle] = None

    def make_protocol(self) -> asyncio.Protocol:
        return L7Connection(self) if self.vs.http else L4Connection(self)

    def retire(self, grace: float) -> None:
        """Stop accepting; established connections may finish for ``grace`` seconds, then are closed."""
        if self.server is not None:
            self.server.close()
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        # Armed even with no connections: one may still be completing its accept.
        self._expiry = self.loop.call_later(grace, self.abort_all)

    @property
    def finished(self) -> bool:
        """Retired, and nothing left to wait for."""
        return self.draining and self._expiry is None and not self.connections

    def abort_all(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for conn in list(self.connections):
            conn.abort()


class DataPlane:
    """Everything one Service Engine serves. Must be used from one event loop."""

    def __init__(
        self,
        *,
        connect_timeout: float = 3.0,
        drain_cap: float = 60.0,
        health_factory: Optional[HealthFactory] = None,
        backlog: int = 1024,
        keepalive_timeout: float = 60.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self._health_factory: HealthFactory = health_factory or HealthChecker
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout  # idle HTTP client connections (and slow request heads)
        self.sweep_interval = sweep_interval
        self.drain_cap = drain_cap
        self.backlog = backlog
        self._listeners: dict[tuple[str, int], Listener] = {}
        self._retired: list[Listener] = []
        self._pools: dict[str, PoolRuntime] = {}
        self._telemetry = Telemetry()
        self._health_changes: list[tuple[str, str, bool]] = []
        self._lock = asyncio.Lock()
        self._sweeper: Optional[asyncio.Task[None]] = None

    async def apply(self, config: SliceConfig) -> dict[str, str]:
        """Serve exactly ``config``; returns ``{vs_name: error}`` for VSs that could not be (fully) served."""
        async with self._lock:
            return await self._apply(config)

    async def _apply(self, config: SliceConfig) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        errors: dict[str, list[str]] = {}
        wanted = [vs for vs in config.virtual_services if vs.enabled]

        # 1. Pools, before any listener can send traffic to them.
        pool_configs: dict[str, PoolConfig] = {}
        for vs in wanted:
            if vs.pool is not None:
                pool_configs[vs.pool.uuid] = vs.pool
        broken_pools: dict[str, str] = {}
        for uuid, pool_config in pool_configs.items():
            runtime = self._pools.get(uuid)
            try:
                if runtime is None:
                    runtime = PoolRuntime(pool_config, self._health_factory, self._health_changed, self.connect_timeout)
                    self._pools[uuid] = runtime
                    try:
                        runtime.start()
                    except Exception:
                        del self._pools[uuid]
                        raise
                elif runtime.config != pool_config:
                    runtime.update(pool_config)
            except Exception as exc:  # a bad pool must not take the other VSs down
                log.exception("pool %s could not be applied", pool_config.name)
                broken_pools[uuid] = f"pool {pool_config.name}: {exc}"

        # 2. Listeners: keep and swap, or bind new. A VS whose new pool was refused keeps serving
        #    as it did (its listeners and old pool stay) and is reported.
        listeners: dict[tuple[str, int], Listener] = {}
        kept_vs: set[str] = set()
        stuck_vs: set[str] = set()
        for vs in wanted:
            if vs.pool is not None and vs.pool.uuid in broken_pools:
                errors.setdefault(vs.name, []).append(broken_pools[vs.pool.uuid])
                if vs.pool.uuid not in self._pools:
                    stuck_vs.add(vs.uuid)
                    continue
            vs_runtime = VsRuntime(vs, self._pools.get(vs.pool.uuid) if vs.pool is not None else None, self._telemetry.for_vs(vs.uuid, vs.name))
            kept_vs.add(vs.uuid)
            for address in vs.listeners:
                listener = self._listeners.get(address)
                if listener is not None:
                    listener.vs = vs_runtime
                    listeners[address] = listener
                    continue
                listener = Listener(address, vs_runtime, loop)
                try:
                    listener.server = await loop.create_server(
                        listener.make_protocol, address[0], address[1], reuse_address=True, backlog=self.backlog
                    )
                except OSError as exc:
                    errors.setdefault(vs.name, []).append(f"cannot bind {address[0]}:{address[1]}: {exc}")
                    continue
                listeners[address] = listener
        for address, listener in self._listeners.items():
            if address not in listeners and listener.vs.config.uuid in stuck_vs:
                listeners[address] = listener
                kept_vs.add(listener.vs.config.uuid)

        # 3. Removals last: stop accepting, drain; then pools nothing serves any more.
        for address, listener in self._listeners.items():
            if address not in listeners:
                pool = listener.vs.pool
                grace = min(pool.config.graceful_disable_timeout if pool is not None else 0.0, self.drain_cap)
                listener.retire(grace)
                self._retired.append(listener)
        self._listeners = listeners
        self._retired = [r for r in self._retired if not r.finished]
        in_use = set(pool_configs) | {lst.vs.pool.config.uuid for lst in listeners.values() if lst.vs.pool is not None}
        for uuid in [u for u in self._pools if u not in in_use]:
            await self._pools.pop(uuid).stop()
        self._telemetry.retain(kept_vs)
        return {name: "; ".join(messages) for name, messages in errors.items()}

    def _health_changed(self, pool: PoolRuntime, key: str, up: bool) -> None:
        if self._pools.get(pool.config.uuid) is not pool:
            return  # a checker that is being stopped
        pool.balancer.set_up(key, up)
        self._health_changes.append((pool.config.uuid, key, up))

    def drain_health_changes(self) -> list[tuple[str, str, bool]]:
        """Server health changes since the last call, oldest first: ``(pool_uuid, "ip:port", up)``."""
        changes, self._health_changes = self._health_changes, []
        return changes

    def telemetry(self) -> dict[str, Any]:
        """Per-VS counters keyed by VS name (JSON-able)."""
        return self._telemetry.snapshot()

    def take_request_logs(self, limit_per_vs: int = 200) -> dict[str, list[dict[str, Any]]]:
        """Client request logs gathered since the last call, keyed by VS uuid (bounded per VS)."""
        return self._telemetry.take_logs(limit_per_vs)

    def server_states(self) -> dict[str, dict[str, bool]]:
        """``{pool_name: {"ip:port": up}}`` as the Balancers see it (health; ``enabled`` is separate)."""
        return {pool.config.name: pool.states() for pool in self._pools.values()}

    def listening(self) -> dict[tuple[str, int], str]:
        """``{(vip, port): vs_name}`` of the listeners accepting connections."""
        return {address: listener.vs.config.name for address, listener in self._listeners.items()}

    async def _sweep(self) -> None:
        """Periodic housekeeping, so the data path keeps no timers: idle backend and client connections."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = loop.time()
            for pool in self._pools.values():
                pool.upstreams.sweep(now)
            for listener in [*self._listeners.values(), *self._retired]:
                for conn in list(listener.connections):
                    conn.close_if_idle(now, self.keepalive_timeout)

    async def close(self) -> None:
        """Stop serving: close every listener and connection, stop health checks."""
        async with self._lock:
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            for listener in [*self._listeners.values(), *self._retired]:
                if listener.server is not None:
                    listener.server.close()
                listener.abort_all()
            self._listeners = {}
            self._retired = []
            for pool in self._pools.values():
                await pool.stop()
            self._pools = {}
