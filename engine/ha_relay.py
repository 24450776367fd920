"""The relay: a shared pair's primary copying a client connection to a secondary, and the intake
that takes such connections.

Where passing the socket is impossible (``scaleout_mode="relay"``, or the send of the fd failed),
the primary relays instead: it connects to the secondary's *relay intake* (a TCP listener on
127.0.0.1 that every SE runs and advertises in its hello/claims), writes one line
``AVI-RELAY <vs_uuid> <client_ip> <client_port> <token>\n`` (the secondary's intake token, learnt
over the HA link) and then copies bytes both ways between the client and that connection
(``Relay``). The secondary's intake reads the line and hands the rest of the stream to a normal
connection of the VS (``_Intake``, ``hand_over``), whose peer address is the client's (so
``X-Forwarded-For`` names the client, not the primary). A relay that cannot be opened leaves the
connection to the primary, which serves it itself. Relaying keeps the primary in the data path of
every relayed connection, both ways: it costs the primary a copy of every byte and ends the relayed
connections when the primary stops.

``Relays`` is one SE's side of both. Whether this SE is a secondary that may serve a relayed
connection is ``engine.ha_coordinator``'s call (``take``).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import socket
from collections.abc import Callable
from typing import Any, Optional

from engine import ha
from engine.listener import Listener

__all__ = ["RELAY_CONNECT_TIMEOUT", "RELAY_HEADER_TIMEOUT", "RELAY_HOST", "Relay", "Relays", "hand_over"]

RELAY_HOST = "127.0.0.1"
RELAY_CONNECT_TIMEOUT = 1.0
RELAY_HEADER_TIMEOUT = 5.0  # an intake connection must send its header within this


class Relays:
    """This SE's relays: its intake for connections relayed to it, and those it relays as a primary."""

    def __init__(
        self,
        *,
        log: Any,
        take: Callable[[Any, str, tuple[str, int], bytes], None],
    ) -> None:
        self.log = log
        self._take = take
        self.address: Optional[tuple[str, int]] = None  # our intake, once listening
        # Told to peers only over the HA link (a 0700 directory): the intake serves nobody else.
        self.token = secrets.token_hex(16)
        self.active: set[Relay] = set()  # relays with an intake connected, until they close
        self.relayed: dict[str, dict[str, int]] = {}  # shared pair, primary: vs -> SE -> connections relayed
        self._intakes: dict[str, tuple[str, int]] = {}  # peer -> its relay intake
        self._tokens: dict[str, str] = {}  # peer -> the token its intake wants
        self._failing: set[str] = set()  # peers whose intake refused us last time (logged once)
        self._tasks: set[asyncio.Task[None]] = set()
        self._intake: Optional[asyncio.AbstractServer] = None
        self._intake_task: Optional[asyncio.Task[None]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen for relayed connections on an ephemeral loopback port (its address is known at once)."""
        self._loop = loop
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((RELAY_HOST, 0))
            sock.listen(128)
            sock.setblocking(False)
            address = sock.getsockname()
        except OSError as exc:
            sock.close()
            self.log.error("ha_relay_intake_unavailable", error=str(exc))
            return
        self.address = (address[0], address[1])

        async def serve() -> None:
            try:
                self._intake = await self.loop.create_server(lambda: _Intake(self), sock=sock, backlog=128)
            except OSError as exc:
                sock.close()
                self.address = None
                self.log.error("ha_relay_intake_unavailable", error=str(exc))

        self._intake_task = self.loop.create_task(serve())

    async def close(self) -> None:
        """Stop the intake, and end every relay (and relay being opened) this SE runs."""
        if self._intake_task is not None:
            await asyncio.gather(self._intake_task, return_exceptions=True)
            self._intake_task = None
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        self.address = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for relay in list(self.active):
            relay.close(abort=True)

    # -- the intakes, as told over the pair links ----------------------------------------------

    def advertise(self, doc: dict[str, Any]) -> None:
        """Name this SE's intake (address and token) in a hello or claims message, once it listens."""
        if self.address is not None:
            doc["relay"] = list(self.address)
            doc["relay_token"] = self.token

    def learn(self, peer: str, doc: dict[str, Any]) -> None:
        """Take ``peer``'s intake from its hello or claims message, when it names one."""
        if "relay" not in doc:
            return
        address = ha.relay_from_wire(doc["relay"])
        token = ha.relay_token_from_wire(doc.get("relay_token"))
        if address is not None and token is not None:
            self._intakes[peer] = address
            self._tokens[peer] = token
        else:
            self.log.warning("ha_bad_relay_address", peer=peer, relay=str(doc["relay"])[:100])

    def forget(self, peer: str) -> None:
        self._intakes.pop(peer, None)
        self._tokens.pop(peer, None)

    def knows(self, peer: str) -> bool:
        """Whether ``peer``'s intake (address and token) is known, so connections can be relayed to it."""
        return peer in self._intakes and peer in self._tokens

    # -- the primary's side --------------------------------------------------------------------

    def relay(self, listener: Listener, sock: socket.socket, peer: str) -> None:
        """Relay a new connection of ``listener`` to ``peer``, whose intake this SE ``knows``, in the background."""
        task = self.loop.create_task(self._relay(listener, sock, peer, self._intakes[peer]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, listener: Listener, sock: socket.socket, peer: str, address: tuple[str, int]) -> None:
        """Relay one client connection to ``peer``'s intake; serve it here when the relay cannot be opened."""
        uuid = listener.vs.config.uuid
        try:
            client = sock.getpeername()
        except OSError:
            sock.close()  # the client is gone already
            return
        relay = Relay(self)
        try:
            async with asyncio.timeout(RELAY_CONNECT_TIMEOUT):
                await self.loop.create_connection(lambda: relay.server, address[0], address[1])
        except (OSError, TimeoutError) as exc:
            if peer not in self._failing:
                self._failing.add(peer)
                self.log.warning("ha_relay_failed", peer=peer, vs_uuid=uuid, relay=f"{address[0]}:{address[1]}",
                                 error=str(exc) or type(exc).__name__, serving_here=True)
            listener.serve_accepted(sock)
            return
        except BaseException:
            sock.close()
            raise
        relay.server.transport.write(ha.relay_header(uuid, (client[0], client[1]), self._tokens.get(peer, "")))
        if relay.closed:  # the intake hung up at once: nothing of the client's was read yet
            listener.serve_accepted(sock)
            return
        self.active.add(relay)
        sock.setblocking(False)
        try:
            await self.loop.connect_accepted_socket(lambda: relay.client, sock=sock)
        except OSError:
            sock.close()
            relay.close(abort=True)
            return
        except BaseException:
            relay.close(abort=True)
            raise
        self._failing.discard(peer)
        relayed = self.relayed.setdefault(uuid, {})
        relayed[peer] = relayed.get(peer, 0) + 1
        relay.joined()

    # -- the secondary's side ------------------------------------------------------------------

    def _header_read(self, transport: Any, header: Optional[tuple[str, tuple[str, int], str]], rest: bytes) -> None:
        """An intake connection sent its header: with this SE's token, ``take`` decides what serves the rest."""
        if header is None:
            self.log.warning("ha_relay_refused", reason="bad header")
            transport.close()
            return
        uuid, client, token = header
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            self.log.warning("ha_relay_refused", reason="wrong token")
            transport.close()
            return
        self._take(transport, uuid, client, rest)


def hand_over(transport: Any, protocol: asyncio.Protocol, client: tuple[str, int], rest: bytes) -> None:
    """Serve the rest of an intake connection (``rest``: read past its header) with ``protocol``, as ``client``'s."""
    transport.set_protocol(protocol)
    protocol.connection_made(_RelayedTransport(transport, client))  # type: ignore[arg-type]  # duck-types the transport
    if rest:
        protocol.data_received(rest)


class _RelayEnd(asyncio.Protocol):
    """One side of a relayed connection on the primary: the client's, or the one to the secondary."""

    __slots__ = ("relay", "transport", "other", "eof", "early")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: Any = None
        self.other: Optional[_RelayEnd] = None
        self.eof = False
        self.early: Optional[list[bytes]] = None  # read before the other side was connected

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            if self.early is None:
                self.early = [data]
            else:
                self.early.append(data)
            self.transport.pause_reading()
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None:
            self.relay.passed_eof(self)
        return True  # keep writing the other way until it ends too

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.relay.close(abort=exc is not None)

    # Back-pressure: a side that cannot write as fast as the other reads stops the other's reads.
    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.resume_reading()


class Relay:
    """A client connection the primary relays to a secondary's intake, byte for byte, both ways."""

    __slots__ = ("relays", "client", "server", "closed")

    def __init__(self, relays: Relays) -> None:
        self.relays = relays
        self.client = _RelayEnd(self)
        self.server = _RelayEnd(self)
        self.client.other = self.server
        self.server.other = self.client
        self.closed = False

    def joined(self) -> None:
        """Both sides are connected: pass on what one side read or ended before the other was."""
        if self.closed:
            for end in (self.client, self.server):
                if end.transport is not None:
                    end.transport.abort()
            return
        for end in (self.server, self.client):
            early, end.early = end.early, None
            if early is not None:
                end.transport.resume_reading()  # first: the write may pause it again
                end.other.transport.writelines(early)  # type: ignore[union-attr]
        for end in (self.server, self.client):
            if end.eof and not self.closed:
                self.passed_eof(end)

    def passed_eof(self, end: _RelayEnd) -> None:
        other = end.other
        assert other is not None
        if end.eof and other.eof:
            self.close(abort=False)
            return
        try:
            other.transport.write_eof()
        except (OSError, RuntimeError):
            self.close(abort=True)

    def close(self, abort: bool) -> None:
        """End both sides (``abort``: at once, else after what is buffered was written)."""
        if self.closed:
            return
        self.closed = True
        self.relays.active.discard(self)
        for end in (self.client, self.server):
            transport = end.transport
            if transport is not None and not transport.is_closing():
                if abort:
                    transport.abort()
                else:
                    transport.close()


class _Intake(asyncio.Protocol):
    """A connection to this SE's relay intake, until its header line is read."""

    __slots__ = ("relays", "transport", "buffer", "timer")

    def __init__(self, relays: Relays) -> None:
        self.relays = relays
        self.transport: Any = None
        self.buffer = b""
        self.timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.timer = self.relays.loop.call_later(RELAY_HEADER_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        end = buffer.find(b"\n", 0, ha.RELAY_HEADER_MAX)
        if end < 0:
            if len(buffer) >= ha.RELAY_HEADER_MAX:
                self._stop()
                self.relays.log.warning("ha_relay_refused", reason="header too long")
                self.transport.close()
            else:
                self.buffer = buffer
            return
        self._stop()
        self.buffer = b""
        self.relays._header_read(self.transport, ha.parse_relay_header(buffer[:end]), buffer[end + 1:])

    def eof_received(self) -> bool:
        return False  # no header: close

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_DELEGATED = (
    "write", "writelines", "write_eof", "can_write_eof", "pause_reading", "resume_reading", "is_reading", "is_closing",
    "close", "abort", "get_write_buffer_size", "get_write_buffer_limits", "set_write_buffer_limits", "get_protocol",
    "set_protocol",
)


class _RelayedTransport:
    """A relayed connection's transport as the proxy sees it: its peer is the client the primary accepted.

    Only relayed connections get one; the proxies read ``peername`` once, in ``connection_made``.
    """

    __slots__ = ("_transport", "_peername", *_DELEGATED)

    def __init__(self, transport: Any, peername: tuple[str, int]) -> None:
        self._transport = transport
        self._peername = peername
        for name in _DELEGATED:
            method = getattr(transport, name, None)
            if method is not None:
                setattr(self, name, method)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
