"""The L4 (TCP) proxy: one client connection relayed to one backend connection.

Written for speed: two ``asyncio.Protocol`` objects per connection and nothing else on the hot
path (no streams, no per-chunk allocation beyond the ``bytes`` the loop hands us). Back-pressure
runs both ways: when one side's write buffer passes its high-water mark the loop calls its
``pause_writing`` and we stop reading the other side until ``resume_writing``. Half-close is relayed
(EOF from one side becomes ``write_eof`` on the other); the pair is closed once both directions
have ended or either side is lost.

The listener object handed to ``L4Connection`` is an ``engine.listener.Listener``; the protocol
only relies on ``listener.vs`` (``.pool`` with ``.balancer`` and ``.connect_timeout``, ``.stats``),
``listener.connections`` and ``listener.loop``. A backend connection is counted with
``Balancer.opened`` while it is open and released with ``closed`` on the same Balancer.

Bulk flows are spliced (Linux): once one read on either side returns at least ``SPLICE_TRIGGER``
bytes, the connection is moved off the transports at the start of the next loop iteration (when
uvloop has flushed the writes it defers), provided both write buffers are empty then; otherwise
it stays on the transports and a later large read tries again (never waiting with reading paused:
a backend that only reads once its own writes drain would deadlock). Both transports stop
reading, each socket is ``dup``-ed and a ``_Splice`` relays both directions kernel-side,
``socket -> pipe -> socket`` (``os.splice`` with ``SPLICE_F_MOVE | SPLICE_F_NONBLOCK``; one pipe
per direction, grown to ``PIPE_SIZE`` where allowed), on ``loop.add_reader``/``add_writer`` of
the duplicated fds (uvloop refuses those on a fd its transport owns; the duplicates are ours). The
transports stay open but idle; they are only closed (or aborted) when the relay ends, which
fires the usual ``connection_lost`` callbacks (connection and balancer counters). Back-pressure:
a direction whose pipe cannot be emptied into its destination stops reading its source and waits
for the destination to be writable. EOF from a source becomes ``shutdown(SHUT_WR)`` on the
destination once the pipe is empty; both directions ended closes the pair; any error aborts both.
Request/response traffic with small reads never switches (it is as cheap on the transports, and a
switch costs two pipes). Without ``os.splice`` (or when the kernel refuses it) everything stays
on the transports, said once in the log.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from engine.listener import Listener
    from engine.routing import Balancer

__all__ = ["CONNECT_ATTEMPTS", "L4Connection", "PIPE_SIZE", "SPLICE_TRIGGER"]

log = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3  # backends tried (one pick each) before the client is closed
SPLICE_TRIGGER = 32 * 1024  # one read this large (a bulk flow) moves the connection to splice
FLUSH_AT = 256 * 1024  # a splice relay passes its pipe on once it holds this much (or the source paused)
PIPE_SIZE = 1 << 20  # asked for with F_SETPIPE_SZ; the kernel's default (64 KiB) when refused
_SPLICE_ROUNDS = 16  # splice rounds per readiness callback, so one flow cannot starve the loop

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_splice_usable = sys.platform.startswith("linux") and hasattr(os, "splice")
_splice_said = False


def _no_splice(reason: str) -> None:
    global _splice_usable, _splice_said
    _splice_usable = False
    if not _splice_said:
        _splice_said = True
        log.warning("L4 bulk relaying without splice (%s): data goes through user space", reason)


def splice_enabled() -> bool:
    """Whether bulk L4 flows are moved to splice (False once the kernel has refused it)."""
    return _splice_usable


class _Pending:
    """``L4Connection._splice`` between a large read and the switch (one loop iteration)."""


_PENDING = _Pending()
_DECLINED = _Pending()  # this connection could not get its pipes: it stays on the transports


class L4Connection(asyncio.Protocol):
    """The client side of one relayed TCP connection."""

    __slots__ = ("_listener", "_stats", "transport", "upstream", "eof", "_task", "_early", "_client_ip", "_splice")

    def __init__(self, listener: "Listener") -> None:
        self._listener = listener
        self._stats = listener.vs.stats
        self.transport: Any = None
        self.upstream: Optional[_L4Upstream] = None
        self.eof = False
        self._task: Optional[asyncio.Task[None]] = None
        self._early: Optional[list[bytes]] = None
        self._client_ip = ""
        self._splice: Any = None  # _PENDING, then the _Splice relaying this connection (or _DECLINED)

    def connection_made(self, transport: Any) -> None:
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
        n = len(data)
        self._stats.bytes_in += n
        upstream = self.upstream
        if upstream is not None:
            upstream.transport.write(data)
            if n >= SPLICE_TRIGGER and self._splice is None:
                self.want_splice()
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
        if self._splice is not None:
            self._end_splice(exc is not None)
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
        if self._splice is not None:
            self._end_splice(True)
        self.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()

    # -- splice ----------------------------------------------------------------------------------

    def want_splice(self) -> None:
        """A large read: try to move this connection to splice at the start of the next iteration."""
        if not _splice_usable:
            if not _splice_said:
                _no_splice("os.splice is not available on this platform")
            return
        self._splice = _PENDING
        self._listener.loop.call_soon(self._start_splice)

    def _start_splice(self) -> None:
        if self._splice is not _PENDING:
            return
        self._splice = None
        upstream = self.upstream
        if upstream is None or self.eof or upstream.eof or not _splice_usable:
            return
        client_t, upstream_t = self.transport, upstream.transport
        if client_t.is_closing() or upstream_t.is_closing():
            return
        if client_t.get_write_buffer_size() or upstream_t.get_write_buffer_size():
            return  # a peer is slow: stay on the transports (their back-pressure) for now
        try:
            relay = _Splice(self, client_t.get_extra_info("socket").fileno(), upstream_t.get_extra_info("socket").fileno())
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                _no_splice(f"cannot set up pipes: {exc}")
            else:  # out of fds or pipe memory: this connection goes on as it is
                self._splice = _DECLINED
            return
        client_t.pause_reading()
        upstream_t.pause_reading()
        self._splice = relay
        relay.start()

    def _splice_revert(self) -> None:
        """Back to the transports (splice refused before any byte moved)."""
        self._splice = None
        upstream = self.upstream
        for transport in (self.transport, upstream.transport if upstream is not None else None):
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _end_splice(self, abort: bool) -> None:
        relay = self._splice
        if isinstance(relay, _Splice):
            relay.close(abort)


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

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self._stats.bytes_out += n
        client = self.client
        client.transport.write(data)
        if n >= SPLICE_TRIGGER and client._splice is None:
            client.want_splice()

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
        client = self.client
        if client._splice is not None:
            client._end_splice(exc is not None)
        if exc is None:
            client.transport.close()
        else:
            client.transport.abort()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


def _pipe() -> tuple[int, int, int]:
    """A non-blocking pipe (read fd, write fd, capacity in bytes), grown to PIPE_SIZE if allowed."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # over pipe-max-size or the per-user pipe quota: keep the default
        try:
            size = fcntl.fcntl(w, _F_GETPIPE_SZ)
        except OSError:
            size = 65536
    return r, w, size


class _Pump:
    """One direction of a splice relay: ``src`` socket -> pipe -> ``dst`` socket."""

    __slots__ = ("relay", "src", "dst", "pr", "pw", "size", "flush_at", "queued", "eof", "reading", "writing", "inbound")

    def __init__(self, relay: "_Splice", src: int, dst: int, inbound: bool) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.inbound = inbound  # client -> backend: counted as bytes_in; else bytes_out
        self.reading = self.writing = False
        self.pr, self.pw, self.size = _pipe()
        self.flush_at = min(FLUSH_AT, self.size // 2)
        self.queued = 0  # bytes in the pipe
        self.eof = False  # the source sent EOF and it has been passed on

    def on_event(self) -> None:
        # Drains the source until EAGAIN (or _SPLICE_ROUNDS), as HAProxy does: segments that
        # arrive while a splice holds the socket are processed from its backlog on the proxy's
        # CPU, not in the sender's transmit path. And unlike HAProxy it passes the pipe on only
        # once it holds FLUSH_AT bytes, or the source has nothing more for now, or ended: fewer,
        # larger sends wake the receiver less often. Nothing waits for more than what is already
        # readable, so a small exchange goes through at once. Measured in docs/performance.md.
        relay = self.relay
        if relay.closed:
            return
        splice = os.splice
        stats = relay.stats
        try:
            for _ in range(_SPLICE_ROUNDS):
                if self.queued >= self.flush_at:
                    self.queued -= splice(self.pr, self.dst, self.queued, flags=_SPLICE_FLAGS)
                    if self.queued:
                        self._wait(writable=True)
                        return
                # Room is left in the pipe: queued < flush_at <= size / 2 here.
                try:
                    n = splice(self.src, self.pw, self.size - self.queued, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    n = -1  # nothing more to read now (or the pipe is full)
                if n <= 0:
                    if self.queued:
                        self.queued -= splice(self.pr, self.dst, self.queued, flags=_SPLICE_FLAGS)
                        if self.queued:
                            self._wait(writable=True)
                            return
                    if n < 0:
                        self._wait(writable=False)
                        return
                    self._wait(None)
                    self.eof = True
                    relay.half_close(self)
                    return
                relay.moved = True
                if self.inbound:
                    stats.bytes_in += n
                else:
                    stats.bytes_out += n
                self.queued += n
            self._wait(writable=bool(self.queued))  # more to do: level-triggered, so called again
        except BlockingIOError:
            self._wait(writable=True)
        except OSError as exc:
            if not relay.moved and exc.errno in _UNSUPPORTED:
                relay.unsupported(exc)
            else:
                relay.fail(exc)

    def _wait(self, writable: Optional[bool]) -> None:
        """Watch the source (``False``), the destination (``True``) or neither (``None``)."""
        loop = self.relay.loop
        want_read = writable is False
        want_write = writable is True
        if want_read != self.reading:
            self.reading = want_read
            if want_read:
                loop.add_reader(self.src, self.on_event)
            else:
                loop.remove_reader(self.src)
        if want_write != self.writing:
            self.writing = want_write
            if want_write:
                loop.add_writer(self.dst, self.on_event)
            else:
                loop.remove_writer(self.dst)

    def close(self) -> None:
        if self.reading or self.writing:
            self._wait(None)
        for fd in (self.pr, self.pw):
            if fd >= 0:
                os.close(fd)
        self.pr = self.pw = -1


_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class _Splice:
    """Both directions of one connection, relayed with splice on duplicated socket fds."""

    __slots__ = ("conn", "loop", "stats", "client", "backend", "up", "down", "closed", "moved")

    def __init__(self, conn: L4Connection, client_fd: int, backend_fd: int) -> None:
        self.conn = conn
        self.loop = conn._listener.loop
        self.stats = conn._stats
        self.closed = False
        self.moved = False  # a byte went through splice: errors from now on are the peers'
        self.up: Optional[_Pump] = None
        self.down: Optional[_Pump] = None
        # Our own references to the sockets, so the transports' fds are never touched.
        self.client = socket.socket(fileno=os.dup(client_fd))
        try:
            self.backend = socket.socket(fileno=os.dup(backend_fd))
        except OSError:
            self.client.close()
            raise
        try:
            self.up = _Pump(self, self.client.fileno(), self.backend.fileno(), True)
            self.down = _Pump(self, self.backend.fileno(), self.client.fileno(), False)
        except OSError:
            self._release()
            raise

    def start(self) -> None:
        assert self.up is not None and self.down is not None
        self.up._wait(writable=False)
        self.down._wait(writable=False)

    def half_close(self, pump: _Pump) -> None:
        """``pump``'s source ended and its pipe is empty: pass the EOF on."""
        sock = self.backend if pump is self.up else self.client
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.fail(exc)
            return
        assert self.up is not None and self.down is not None
        if self.up.eof and self.down.eof:
            self.close(False)

    def fail(self, exc: BaseException) -> None:
        self.close(True)

    def unsupported(self, exc: OSError) -> None:
        """The kernel refused splice before a byte moved: back to the transports, for good."""
        _no_splice(f"splice failed: {exc}")
        self._release()
        conn = self.conn
        if conn._splice is self:
            conn._splice_revert()

    def close(self, abort: bool) -> None:
        """End the relay and the connection: both transports are closed (``abort``: aborted)."""
        if self.closed:
            return
        self._release()
        conn = self.conn
        upstream = conn.upstream
        for transport in (conn.transport, upstream.transport if upstream is not None else None):
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()

    def _release(self) -> None:
        self.closed = True
        for pump in (self.up, self.down):
            if pump is not None:
                pump.close()
        self.client.close()
        self.backend.close()
