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

With a VIP handoff (``ha``: an ``engine.handoff.VipHandoff``, in practice the
``engine.ha_coordinator.HaCoordinator`` the agent builds), a VS placed active/standby (or as a
shared pair) on several SEs of this host is not bound here: its listener accepts only when the
handoff says this SE owns the VIP, and the listening socket itself moves between the SEs.

The proxies (``engine.l4``, ``engine.l7``) read ``Listener.vs`` at accept time (L4) or per request
(L7); ``engine.listener.Listener`` and ``engine.runtime``'s ``VsRuntime`` and ``PoolRuntime`` are
the only state they share with this module. Each listener gets ``proxy_protocol`` as its protocol
factory: this module is the one that knows the proxies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from engine.config import PoolConfig, SliceConfig
from engine.handoff import HandoffFactory, VipHandoff
from engine.health import HealthChecker
from engine.l4 import L4Connection
from engine.l7 import L7Connection
from engine.listener import Listener
from engine.runtime import HealthFactory, PoolRuntime, VsRuntime
from engine.telemetry import Telemetry

__all__ = ["DataPlane", "proxy_protocol"]

log = logging.getLogger(__name__)


def proxy_protocol(listener: Listener) -> asyncio.Protocol:
    """The proxy serving one connection of ``listener``: L7 for an HTTP VS, else L4 (the VS as it is at accept)."""
    return L7Connection(listener) if listener.vs.http else L4Connection(listener)


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
        ha: Optional[HandoffFactory] = None,
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
        self._binder: Optional[asyncio.Task[None]] = None
        self.bind_retry_interval = 0.2
        #: called after a retried bind succeeded (the agent re-reports its errors)
        self.on_bound: Optional[Callable[[], None]] = None
        # Active/standby VIP handoff with the other SEs on this host, off without one. Built last:
        # the factory is handed this plane.
        self.ha: Optional[VipHandoff] = ha(self) if ha is not None else None

    async def apply(self, config: SliceConfig) -> dict[str, str]:
        """Serve exactly ``config``; returns ``{vs_name: error}`` for VSs that could not be (fully) served."""
        async with self._lock:
            return await self._apply(config)

    async def _apply(self, config: SliceConfig) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
            self._binder = loop.create_task(self._retry_binds())
        ha = self.ha
        if ha is not None:
            ha.start()
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
            # An active/standby VS accepts only when the HA coordinator says so (after this loop).
            ha_managed = ha is not None and ha.manages(vs)
            for address in vs.listeners:
                listener = self._listeners.get(address)
                if listener is None:
                    listener = Listener(address, vs_runtime, loop, proxy_protocol)
                    if ha is not None:
                        ha.attach(listener)
                else:
                    listener.vs = vs_runtime
                if not ha_managed and not listener.accepting:
                    try:
                        await listener.start_accepting(self.backlog, reuse_port=True)
                    except OSError as exc:
                        # Kept, not accepting: retried every ``bind_retry_interval`` while in the slice.
                        errors.setdefault(vs.name, []).append(f"cannot bind {address[0]}:{address[1]}: {exc}")
                listeners[address] = listener
        for address, listener in self._listeners.items():
            if address not in listeners and listener.vs.config.uuid in stuck_vs:
                listeners[address] = listener
                kept_vs.add(listener.vs.config.uuid)

        # 3. Removals last: stop accepting, drain; then pools nothing serves any more.
        for address, listener in self._listeners.items():
            if address not in listeners:
                pool = listener.vs.pool
                placement = listener.vs.config.placement
                scalein = placement.scalein_timeout if placement is not None else None
                moved = scalein is not None
                if scalein is not None:
                    grace = min(scalein, self.drain_cap)
                else:
                    grace = min(pool.config.graceful_disable_timeout if pool is not None else 0.0, self.drain_cap)
                listener.retire(grace, drain=not moved)
                self._retired.append(listener)
        self._listeners = listeners
        self._retired = [r for r in self._retired if not r.finished]
        in_use = set(pool_configs) | {lst.vs.pool.config.uuid for lst in listeners.values() if lst.vs.pool is not None}
        for uuid in [u for u in self._pools if u not in in_use]:
            await self._pools.pop(uuid).stop()
        self._telemetry.retain(kept_vs)
        if ha is not None:
            ha.applied(config)
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
        return {address: listener.vs.config.name for address, listener in self._listeners.items() if listener.accepting}

    def listeners_of(self, vs_uuid: str) -> list[Listener]:
        """The current (not retired) listeners of one VS."""
        return [listener for listener in self._listeners.values() if listener.vs.config.uuid == vs_uuid]

    def listener_at(self, address: tuple[str, int]) -> Optional[Listener]:
        return self._listeners.get(address)

    def open_connections(self) -> int:
        return sum(len(listener.connections) for listener in [*self._listeners.values(), *self._retired])

    def unbound(self) -> dict[str, list[str]]:
        """``{vs_name: ["vip:port", ...]}`` of listeners that should accept but could not bind yet."""
        out: dict[str, list[str]] = {}
        for listener in self._listeners.values():
            if not listener.accepting and not (self.ha is not None and self.ha.manages(listener.vs.config)):
                out.setdefault(listener.vs.config.name, []).append(f"{listener.address[0]}:{listener.address[1]}")
        return out

    async def _retry_binds(self) -> None:
        """A VIP another process still holds (the SE a VS left drains it) is bound as soon as it is free."""
        while True:
            await asyncio.sleep(self.bind_retry_interval)
            bound = False
            async with self._lock:
                for listener in list(self._listeners.values()):
                    if listener.accepting or listener.draining or (self.ha is not None and self.ha.manages(listener.vs.config)):
                        continue
                    try:
                        await listener.start_accepting(self.backlog, reuse_port=True)
                    except OSError:
                        continue
                    bound = True
                    log.info("VS %s bound %s:%s on retry", listener.vs.config.name, *listener.address)
            if bound and self.on_bound is not None:
                self.on_bound()

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
            if self._binder is not None:
                self._binder.cancel()
                self._binder = None
            # Stop accepting before the HA channel closes: a standby takes over as soon as it does.
            for listener in [*self._listeners.values(), *self._retired]:
                listener.stop_accepting()
            if self.ha is not None:
                await self.ha.close()
            for listener in [*self._listeners.values(), *self._retired]:
                listener.release()
                listener.abort_all()
            self._listeners = {}
            self._retired = []
            for pool in self._pools.values():
                await pool.stop()
            self._pools = {}
