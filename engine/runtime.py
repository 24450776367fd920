"""What the proxies see of a VS and its pool while this SE serves them.

``VsRuntime`` is one VS: its config, its pool and its counters; the data plane replaces it (never
mutates it) when the VS's config changes, and a ``engine.listener.Listener`` hands the current one
to each new connection. ``PoolRuntime`` is one pool: its ``Balancer``, its health checker and its
idle backend connections (L7), kept across config changes by ``update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from engine.config import PoolConfig, VirtualServiceConfig
from engine.routing import Balancer
from engine.telemetry import VsStats
from engine.upstreams import UpstreamPool

__all__ = ["HealthFactory", "PoolRuntime", "VsRuntime"]

#: builds a pool's health checker (``engine.health.HealthChecker`` or a stand-in), given the pool
#: and the callback it reports ``(server key, up)`` changes to
HealthFactory = Callable[[PoolConfig, Callable[[str, bool], None]], Any]


class PoolRuntime:
    """A pool being served: its Balancer, health checker and idle backend connections (L7)."""

    __slots__ = ("config", "balancer", "checker", "upstreams", "connect_timeout", "_on_change")

    def __init__(self, config: PoolConfig, health_factory: HealthFactory, on_change: Callable[["PoolRuntime", str, bool], None], connect_timeout: float) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self.balancer = Balancer(config.lb_algorithm, config.servers)
        self.upstreams: UpstreamPool[Any] = UpstreamPool()
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
