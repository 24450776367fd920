"""The idle keep-alive backend connections of one pool (``UpstreamPool``), shared by its L7 requests.

``engine.l7`` creates the connections (``_Upstream``) and takes them from and gives them back to
the pool; ``engine.runtime.PoolRuntime`` owns one pool per served pool and narrows, sweeps and
closes it. The pool only needs a connection's ``key``, ``transport`` and ``idle_since``.

Contract with ``engine.l7``: its hot path inlines ``take`` and ``put`` (once per request), reading
``_idle``, ``_keys``, ``idle_timeout`` and ``max_idle_per_server`` directly; a change to how they
are kept here is a change there.
"""

from __future__ import annotations

from typing import Any, Generic, Optional, Protocol, TypeVar

__all__ = ["IdleUpstream", "UpstreamPool"]


class IdleUpstream(Protocol):
    """What the pool reads and writes of a backend connection."""

    key: str
    transport: Any
    idle_since: float


U = TypeVar("U", bound=IdleUpstream)


class UpstreamPool(Generic[U]):
    """Idle keep-alive backend connections of one pool, per server key, most recently used first."""

    def __init__(self, max_idle_per_server: int = 64, idle_timeout: float = 30.0) -> None:
        self.max_idle_per_server = max_idle_per_server
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[U]] = {}
        self._keys: Optional[frozenset[str]] = None  # None: accept any key

    def take(self, key: str, now: float) -> Optional[U]:
        idle = self._idle.get(key)
        while idle:
            upstream = idle.pop()
            if upstream.transport.is_closing():
                continue
            if now - upstream.idle_since > self.idle_timeout:
                upstream.transport.close()
                continue
            return upstream
        return None

    def put(self, upstream: U, now: float) -> None:
        key = upstream.key
        if self._keys is not None and key not in self._keys:
            upstream.transport.close()
            return
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if len(idle) >= self.max_idle_per_server:
            upstream.transport.close()
            return
        upstream.idle_since = now
        idle.append(upstream)

    def discard(self, upstream: U) -> None:
        idle = self._idle.get(upstream.key)
        if idle and upstream in idle:
            idle.remove(upstream)

    def retain(self, keys: frozenset[str]) -> None:
        """Only servers in ``keys`` may be pooled from now on; idle connections to others are closed."""
        self._keys = keys
        for key in [k for k in self._idle if k not in keys]:
            for upstream in self._idle.pop(key):
                upstream.transport.close()

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout``."""
        for idle in self._idle.values():
            fresh = [u for u in idle if now - u.idle_since <= self.idle_timeout and not u.transport.is_closing()]
            for upstream in idle:
                if upstream not in fresh:
                    upstream.transport.close()
            idle[:] = fresh

    def idle_count(self, key: Optional[str] = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close the idle connections; connections still in use are closed when they finish."""
        self._keys = frozenset()
        for idle in self._idle.values():
            for upstream in idle:
                upstream.transport.close()
        self._idle.clear()
