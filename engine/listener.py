"""The listening socket of one (vip, port) and what serves the connections it accepts.

A ``Listener`` holds the VS it serves (``vs``, an ``engine.runtime.VsRuntime`` swapped in place
when the slice changes) and a protocol factory, injected by whoever builds it (``engine.dataplane``
passes the L4/L7 proxies), that makes the protocol for each connection it serves. It knows nothing
of the proxies; they know it only as their ``listener`` (``vs``, ``loop``, ``connections``,
``draining``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Optional

from engine.runtime import VsRuntime

__all__ = ["Listener", "ProtocolFactory"]

log = logging.getLogger(__name__)

#: makes the protocol serving one connection of a listener; called at accept time, so it sees the
#: listener's current ``vs``
ProtocolFactory = Callable[["Listener"], asyncio.Protocol]


class Listener:
    """One (vip, port); ``vs`` is swapped in place when the slice changes.

    ``held`` is this process's own reference to the listening socket; ``server`` accepts on a dup of
    it. Stopping the server leaves ``held`` open, so the kernel socket and its backlog outlive a
    role change (an HA standby holds the socket without accepting). ``gate``, when set, is asked at
    every accept: True serves the connection here; any other verdict hands it whole (its socket,
    nothing read) to ``refused`` with that verdict.
    """

    __slots__ = ("address", "vs", "loop", "protocol_factory", "server", "held", "gate", "refused", "connections", "draining", "_expiry")

    def __init__(self, address: tuple[str, int], vs: VsRuntime, loop: asyncio.AbstractEventLoop, protocol_factory: ProtocolFactory) -> None:
        self.address = address
        self.vs = vs
        self.loop = loop
        self.protocol_factory = protocol_factory
        self.server: Optional[asyncio.AbstractServer] = None
        self.held: Optional[socket.socket] = None
        self.gate: Optional[Callable[["Listener"], Any]] = None
        self.refused: Optional[Callable[["Listener", socket.socket, Any], None]] = None
        self.connections: set[Any] = set()  # the protocols made by protocol_factory, added on accept
        self.draining = False
        self._expiry: Optional[asyncio.TimerHandle] = None

    def make_protocol(self) -> asyncio.Protocol:
        if self.gate is not None:
            verdict = self.gate(self)
            if verdict is not True:
                return _Refused(self, verdict)
        return self.serve_protocol()

    def serve_protocol(self) -> asyncio.Protocol:
        return self.protocol_factory(self)

    @property
    def accepting(self) -> bool:
        return self.server is not None

    async def start_accepting(self, backlog: int, *, reuse_port: bool = False) -> None:
        """Accept on the held socket, or bind a new one (OSError when the address is taken).

        ``reuse_port``: for VSs without HA handoff, so the SE a VS migrates or scales to can bind
        while the one it leaves still drains its listener (make before break).
        """
        if self.server is not None:
            return
        if self.held is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(self.address)
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self.held = sock
        dup = self.held.dup()
        try:
            server = await self.loop.create_server(self.make_protocol, sock=dup, backlog=backlog)
        except BaseException:
            dup.close()
            raise
        if self.server is not None or self.draining:  # raced with another start, or retired meanwhile
            server.close()
            return
        self.server = server

    def stop_accepting(self) -> None:
        """Stop accepting; the held socket (and its backlog) stays, established connections too."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def adopt(self, sock: socket.socket) -> bool:
        """Hold a listening socket a peer sent; False (and ``sock`` closed) when it is not needed."""
        if self.held is not None and _same_socket(self.held, sock):
            sock.close()
            return False
        if self.server is not None or self.draining:
            sock.close()
            return False
        if self.held is not None:
            self.held.close()
        sock.setblocking(False)
        self.held = sock
        return True

    def serve_accepted(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (held unread, or passed by a peer SE) as one of this listener's."""
        sock.setblocking(False)

        async def serve() -> None:
            try:
                await self.loop.connect_accepted_socket(self.serve_protocol, sock=sock)
            except OSError:
                sock.close()

        self.loop.create_task(serve())

    def release(self) -> None:
        """Forget the listening socket entirely (the VS left this SE)."""
        self.stop_accepting()
        if self.held is not None:
            self.held.close()
            self.held = None

    def retire(self, grace: float, *, drain: bool = True) -> None:
        """Stop accepting; established connections may finish for ``grace`` seconds, then are closed.

        ``drain``: HTTP connections close after their request in flight. Without it (the VS moved to
        another SE: scale-in, migrate) they keep serving requests until they close or ``grace`` ends.
        """
        self.release()
        self.draining = True
        if drain:
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


class _Refused(asyncio.Protocol):
    """A connection this SE must not serve: its socket goes to ``listener.refused`` unread."""

    def __init__(self, listener: Listener, verdict: Any) -> None:
        self._listener = listener
        self._verdict = verdict

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        taken: Optional[socket.socket] = None
        try:
            taken = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            log.warning("refused connection on %s:%s could not be taken", *self._listener.address)
        # Closing our fd only: the dup keeps the connection (close(2) sends nothing while one is left).
        transport.abort()
        if taken is not None:
            if self._listener.refused is not None:
                self._listener.refused(self._listener, taken, self._verdict)
            else:
                taken.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        pass


def _same_socket(a: socket.socket, b: socket.socket) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
