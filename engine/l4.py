"""The L4 (TCP) proxy: one client connection relayed to one backend connection.

Written for speed: two ``asyncio.Protocol`` objects per connection and nothing else on the hot
path (no streams, no per-chunk allocation beyond the ``bytes`` the loop hands us). Back-pressure
runs both ways: when one side's write buffer passes its high-water mark the loop calls its
``pause_writing`` and we stop reading the other side until ``resume_writing``. Half-close is relayed
(EOF from one side becomes ``write_eof`` on the other); the pair is closed once both directions
have ended or either side is lost.

The listener object handed to ``L4Connection`` is the data plane's (see ``engine.dataplane``); the
protocol only relies on ``listener.vs`` (``.pool`` with ``.balancer`` and ``.connect_timeout``,
``.stats``), ``listener.connections`` and ``listener.loop``. A backend connection is counted with
``Balancer.opened`` while it is open and released with ``closed`` on the same Balancer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from engine.dataplane import Listener
    from engine.routing import Balancer

__all__ = ["CONNECT_ATTEMPTS", "L4Connection"]

CONNECT_ATTEMPTS = 3  # backends tried (one pick each) before the client is closed


class L4Connection(asyncio.Protocol):
    """The client side of one relayed TCP connection."""

    __slots__ = ("_listener", "_stats", "transport", "upstream", "eof", "_task", "_early", "_client_ip")

    def __init__(self, listener: "Listener") -> None:
        self._listener = listener
        self._stats = listener.vs.stats
        self.transport: Any = None
        self.upstream: Optional[_L4Upstream] = None
        self.eof = False
        self._task: Optional[asyncio.Task[None]] = None
        self._early: Optional[list[bytes]] = None
        self._client_ip = ""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        stats = self._stats
        stats.open_connections += 1
        stats.total_connections += 1
        self._listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if peer else ""
        # Nothing is read until a backend is connected: the kernel buffers the client's bytes.
        # (uvloop ignores a pause before reading has started; data_received pauses again.)
        transport.pause_reading()
        self._task = self._listener.loop.create_task(self._connect())

    async def _connect(self) -> None:
        pool = self._listener.vs.pool
        loop = self._listener.loop
        for _ in range(CONNECT_ATTEMPTS if pool is not None else 0):
            assert pool is not None
            balancer = pool.balancer
            server = balancer.pick(self._client_ip)
            if server is None:
                break
            key = server.key
            balancer.opened(key)
            try:
                async with asyncio.timeout(pool.connect_timeout):
                    transport, upstream = await loop.create_connection(
                        lambda: _L4Upstream(self, balancer, key), server.ip, server.port  # noqa: B023
                    )
            except (OSError, TimeoutError):
                balancer.closed(key)
                self._stats.connect_failures += 1
                continue
            except BaseException:
                balancer.closed(key)
                raise
            self._task = None
            if self.transport.is_closing():
                transport.close()
                return
            self.upstream = upstream
            if self._early:
                transport.writelines(self._early)
                self._early = None
            if self.eof:
                transport.write_eof()
            else:
                self.transport.resume_reading()
            return
        self._task = None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_in += len(data)
        upstream = self.upstream
        if upstream is not None:
            upstream.transport.write(data)
        else:
            if self._early is None:
                self._early = [data]
            else:
                self._early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        upstream = self.upstream
        if upstream is None:
            return True  # relayed once the backend is connected
        if upstream.eof:
            upstream.transport.close()
            return False
        upstream.transport.write_eof()
        return True

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._stats.open_connections -= 1
        self._listener.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        upstream = self.upstream
        if upstream is not None:
            if exc is None:
                upstream.transport.close()
            else:
                upstream.transport.abort()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def close_if_idle(self, now: float, timeout: float) -> None:
        """L4 connections have no idle timeout (yet)."""

    def drain(self) -> None:
        """The listener is being removed: established connections run on until the grace period ends."""

    def abort(self) -> None:
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class _L4Upstream(asyncio.Protocol):
    """The backend side of one relayed TCP connection."""

    __slots__ = ("client", "transport", "eof", "_stats", "_balancer", "_key")

    def __init__(self, client: L4Connection, balancer: "Balancer", key: str) -> None:
        self.client = client
        self.transport: Any = None
        self.eof = False
        self._stats = client._stats
        self._balancer = balancer  # the one ``key`` was opened on; it is closed on the same one
        self._key = key

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_out += len(data)
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        client = self.client
        if client.eof:
            client.transport.close()
            return False
        client.transport.write_eof()
        return True

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._balancer.closed(self._key)
        if exc is None:
            self.client.transport.close()
        else:
            self.client.transport.abort()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()
