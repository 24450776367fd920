"""The L4 proxy: relaying, half-close, back-pressure, balancing, failover, counters.

Scenarios marked ``both_loops`` run on asyncio's default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
from collections import Counter
from typing import Any, Optional

import pytest
import uvloop

from engine import l4
from engine.l4 import _Splice, splice_enabled
from tests.engine.test_dataplane import LC, StubChecker, TcpBackend, both_loops, pool_doc, slice_of, stub_dataplane, vs_doc
from tests.helpers import free_port, wait_for


async def _l4(servers: list[tuple], **pool_kwargs):  # type: ignore[no-untyped-def]
    port = free_port()
    dp = stub_dataplane()
    assert {} == await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc(servers, **pool_kwargs))))
    return dp, port


@both_loops
async def test_relays_both_ways_and_half_close() -> None:
    """Bytes go both ways; the client's EOF reaches the backend, whose last bytes and EOF come back."""
    backend = await TcpBackend(b"a").start()
    dp, port = await _l4([("127.0.0.1", backend.port)])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert b"hello" == await reader.readexactly(5)
        writer.write(b" world")
        await writer.drain()
        writer.write_eof()
        assert b" worlda-eof" == await reader.read()
        writer.close()
        await wait_for(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, 5.0, what="connection closed")
        stats = dp.telemetry()["tcp"]
        assert (1, 11, 16) == (stats["total_connections"], stats["bytes_in"], stats["bytes_out"])

        # Data and EOF sent before the proxy has even connected to the backend.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"quick")
        writer.write_eof()
        assert b"quicka-eof" == await reader.read()
        writer.close()
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_large_transfer_with_back_pressure_is_intact() -> None:
    """Without splice (the transports' path): 32 MB each way through a client that reads slowly at
    first arrives intact, and while it does not read the proxy stops reading the backend."""
    backend = await TcpBackend(b"a").start()
    dp, port = await _l4([("127.0.0.1", backend.port)])
    payload = os.urandom(1 << 20) * 32
    trigger = l4.SPLICE_TRIGGER
    l4.SPLICE_TRIGGER = 1 << 62  # no read is ever large enough to switch
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)

        async def send() -> None:
            for i in range(0, len(payload), 1 << 18):
                writer.write(payload[i : i + (1 << 18)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        await wait_for(lambda: len(dp._listeners[("127.0.0.1", port)].connections) == 1, 5.0, what="connection accepted")
        (conn,) = dp._listeners[("127.0.0.1", port)].connections
        # Nobody reads: the client's buffers fill, and the proxy must stop reading the backend.
        await wait_for(lambda: conn.upstream is not None and not conn.upstream.transport.is_reading(), 5.0, what="backend reads paused")
        buffered = conn.transport.get_write_buffer_size() + conn.upstream.transport.get_write_buffer_size()
        assert buffered < 1 << 20, "the proxy kept reading although nobody drained its buffers"
        digest = hashlib.sha256()
        received = 0
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        await sender
        expected = hashlib.sha256(payload + b"a-eof").hexdigest()
        assert (len(payload) + 5, expected) == (received, digest.hexdigest())
        assert conn._splice is None
        writer.close()
    finally:
        l4.SPLICE_TRIGGER = trigger
        await dp.close()
        backend.close()


@both_loops
async def test_round_robin_follows_ratios() -> None:
    """With ratios 3:1, 40 connections split 30:10."""
    a = await TcpBackend(b"a", greet=True).start()
    b = await TcpBackend(b"b", greet=True).start()
    dp, port = await _l4([("127.0.0.1", a.port, 3), ("127.0.0.1", b.port, 1)])
    try:
        seen = Counter()
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            seen[await reader.readexactly(1)] += 1
            writer.close()
        assert {b"a": 30, b"b": 10} == dict(seen)
    finally:
        await dp.close()
        a.close()
        b.close()


async def test_server_marked_down_gets_no_new_connections() -> None:
    """Once the checker marks a server down, every new connection goes to the others."""
    a = await TcpBackend(b"a", greet=True).start()
    b = await TcpBackend(b"b", greet=True).start()
    dp, port = await _l4([("127.0.0.1", a.port), ("127.0.0.1", b.port)], algorithm=LC)
    try:
        StubChecker.by_pool["pool-1"].set(f"127.0.0.1:{b.port}", False)
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b"a" == await reader.readexactly(1)
            writer.close()
        assert (10, 0) == (a.accepted, b.accepted)
    finally:
        await dp.close()
        a.close()
        b.close()


@both_loops
async def test_failed_connect_tries_the_next_server() -> None:
    """A backend that refuses connections is skipped; the client never notices."""
    a = await TcpBackend(b"a", greet=True).start()
    dead = free_port()
    dp, port = await _l4([("127.0.0.1", dead), ("127.0.0.1", a.port)])
    try:
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b"a" == await reader.readexactly(1)
            writer.close()
        assert dp.telemetry()["tcp"]["connect_failures"] >= 3
    finally:
        await dp.close()
        a.close()


@both_loops
async def test_client_is_closed_when_no_server_can_be_reached() -> None:
    """With every server refusing (or none up) the client connection is closed without data."""
    dp, port = await _l4([("127.0.0.1", free_port()), ("127.0.0.1", free_port())])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert b"" == await reader.read()
        writer.close()
        StubChecker.by_pool["pool-1"].set(dp._pools["pool-1"].config.servers[0].key, False)
        StubChecker.by_pool["pool-1"].set(dp._pools["pool-1"].config.servers[1].key, False)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert b"" == await reader.read()
        writer.close()
        await wait_for(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, 5.0, what="connections closed")
    finally:
        await dp.close()


async def test_backend_close_closes_client_and_counts_drop() -> None:
    """When the backend closes first, the client sees its bytes then EOF, and the open count returns to 0."""
    a = await TcpBackend(b"a", greet=True).start()
    dp, port = await _l4([("127.0.0.1", a.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert b"a" == await reader.readexactly(1)
        await wait_for(lambda: dp._pools["pool-1"].balancer.open_connections(f"127.0.0.1:{a.port}") == 1, 5.0, what="opened")
        a.transports[0].close()
        assert b"" == await reader.read()
        writer.close()
        await wait_for(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, 5.0, what="client closed")
        assert 0 == dp._pools["pool-1"].balancer.open_connections(f"127.0.0.1:{a.port}")
    finally:
        await dp.close()
        a.close()


# -- splice (bulk flows) ---------------------------------------------------------------------------


class _Peer:
    """A backend that hashes what it reads; it may send ``blob`` (then half-close unless not ``eof``) on connect, start
    with reading paused, or reset its connection. ``done`` is set at EOF, ``lost`` when closed."""

    def __init__(self, *, blob: bytes = b"", paused: bool = False, eof: bool = True) -> None:
        self.blob = blob
        self.eof = eof
        self.paused = paused
        self.digest = hashlib.sha256()
        self.received = 0
        self.done = asyncio.Event()
        self.lost = asyncio.Event()
        self.transport: Any = None
        self.server: Any = None
        self.port = 0

    async def start(self) -> "_Peer":
        peer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                peer.transport = transport
                if peer.paused:
                    transport.pause_reading()
                if peer.blob:
                    transport.write(peer.blob)
                    if peer.eof:
                        transport.write_eof()

            def data_received(self, data: bytes) -> None:
                peer.digest.update(data)
                peer.received += len(data)

            def eof_received(self) -> bool:
                peer.done.set()
                return False  # close

            def connection_lost(self, exc: Optional[BaseException]) -> None:
                peer.lost.set()

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def resume(self) -> None:
        self.transport.resume_reading()

    def reset(self) -> None:
        _reset(self.transport)

    def close(self) -> None:
        self.server.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def _reset(transport: Any) -> None:
    """Close with an RST (SO_LINGER 0)."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _spliced(dp: Any, port: int) -> _Splice:
    """The splice relay of the one connection on ``port``, once the connection has switched."""
    await wait_for(lambda: len(dp._listeners[("127.0.0.1", port)].connections) == 1, 5.0, what="connection accepted")
    (conn,) = dp._listeners[("127.0.0.1", port)].connections
    await wait_for(lambda: isinstance(conn._splice, _Splice), 5.0, what="switch to splice")
    return conn._splice  # type: ignore[no-any-return]


async def _closed_everywhere(dp: Any, relay: _Splice, backend_port: int) -> None:
    """Counters back to zero and every fd of the relay closed."""
    await wait_for(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, 5.0, what="connection closed")
    await wait_for(lambda: dp._pools["pool-1"].balancer.open_connections(f"127.0.0.1:{backend_port}") == 0, 5.0, what="balancer released")
    assert relay.closed
    assert (-1, -1) == (relay.client.fileno(), relay.backend.fileno())
    assert relay.up is not None and relay.down is not None
    assert (-1, -1, -1, -1) == (relay.up.pr, relay.up.pw, relay.down.pr, relay.down.pw)


def test_splice_is_available_here() -> None:
    """The splice tests below must exercise splice, not the fallback."""
    assert splice_enabled()


@both_loops
async def test_splice_relays_large_transfers_both_ways() -> None:
    """16 MiB up and echoed back down through the spliced relay, intact; the client's EOF passes
    through after the data; byte counters are exact."""
    backend = await TcpBackend(b"a").start()
    dp, port = await _l4([("127.0.0.1", backend.port)], algorithm=LC)
    payload = os.urandom(1 << 20) * 16
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            for i in range(0, len(payload), 1 << 18):
                writer.write(payload[i : i + (1 << 18)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        relay = await _spliced(dp, port)
        digest = hashlib.sha256()
        received = 0
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            received += len(chunk)
        await sender
        assert (len(payload) + 5, hashlib.sha256(payload + b"a-eof").hexdigest()) == (received, digest.hexdigest())
        writer.close()
        await _closed_everywhere(dp, relay, backend.port)
        stats = dp.telemetry()["tcp"]
        assert (len(payload), len(payload) + 5) == (stats["bytes_in"], stats["bytes_out"])
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_splice_small_exchanges_after_a_bulk_one_are_not_held() -> None:
    """Once spliced, a relay holds its pipe only while more is already readable: a few bytes
    followed by silence go through at once, both ways (request/response after a bulk transfer)."""
    backend = await TcpBackend(b"a").start()
    dp, port = await _l4([("127.0.0.1", backend.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        bulk = os.urandom(1 << 20)
        writer.write(bulk)
        relay = await _spliced(dp, port)
        assert bulk == await asyncio.wait_for(reader.readexactly(len(bulk)), 10)
        for i in range(20):
            ping = b"ping %d\n" % i
            writer.write(ping)
            assert ping == await asyncio.wait_for(reader.readexactly(len(ping)), 2), i
        writer.close()
        await _closed_everywhere(dp, relay, backend.port)
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_splice_passes_backend_half_close_while_client_still_sends() -> None:
    """The backend sends 8 MiB and half-closes; the client gets it all and EOF while its own 8 MiB
    still flow to the backend, which receives them intact."""
    down = os.urandom(1 << 20) * 8
    up = os.urandom(1 << 20) * 8
    peer = await _Peer(blob=down).start()
    dp, port = await _l4([("127.0.0.1", peer.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        relay = await _spliced(dp, port)
        got = hashlib.sha256()
        n = 0
        while chunk := await reader.read(1 << 20):
            got.update(chunk)
            n += len(chunk)
        assert (len(down), hashlib.sha256(down).hexdigest()) == (n, got.hexdigest())
        assert not relay.closed and relay.down is not None and relay.down.eof
        for i in range(0, len(up), 1 << 18):
            writer.write(up[i : i + (1 << 18)])
            await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(peer.done.wait(), 5)
        assert (len(up), hashlib.sha256(up).hexdigest()) == (peer.received, peer.digest.hexdigest())
        await _closed_everywhere(dp, relay, peer.port)
        writer.close()
    finally:
        await dp.close()
        peer.close()


@both_loops
async def test_splice_client_reset_closes_the_backend() -> None:
    """A client that resets mid-upload: the backend connection is closed and every counter and fd released."""
    peer = await _Peer().start()
    dp, port = await _l4([("127.0.0.1", peer.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(os.urandom(1 << 20))
        relay = await _spliced(dp, port)
        await wait_for(lambda: peer.received >= 1 << 20, 5.0, what="upload relayed")
        _reset(writer.transport)
        await asyncio.wait_for(peer.lost.wait(), 5)
        await _closed_everywhere(dp, relay, peer.port)
    finally:
        await dp.close()
        peer.close()


@both_loops
async def test_splice_backend_reset_closes_the_client() -> None:
    """A backend that resets mid-download: the client's connection ends (EOF or reset), nothing leaks."""
    peer = await _Peer(blob=os.urandom(1 << 20) * 4, paused=True, eof=False).start()
    dp, port = await _l4([("127.0.0.1", peer.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        relay = await _spliced(dp, port)
        assert await reader.read(1 << 16)
        peer.reset()
        try:
            while await reader.read(1 << 20):
                pass
        except ConnectionResetError:
            pass
        await _closed_everywhere(dp, relay, peer.port)
        writer.close()
    finally:
        await dp.close()
        peer.close()


@both_loops
async def test_splice_back_pressure_from_a_slow_backend() -> None:
    """While the backend does not read, the relay stops reading the client (most of the upload stays
    with the client); once it reads, all 48 MiB arrive intact."""
    payload = os.urandom(1 << 20) * 48
    peer = await _Peer(paused=True).start()
    dp, port = await _l4([("127.0.0.1", peer.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)  # buffered by the client's transport as the proxy stops taking it
        relay = await _spliced(dp, port)
        assert relay.up is not None
        await wait_for(lambda: relay.up.writing and not relay.up.reading, 5.0, what="relay blocked on the backend")  # type: ignore[union-attr]
        taken = dp.telemetry()["tcp"]["bytes_in"]
        assert taken < len(payload) // 2, f"the relay took {taken} bytes although the backend reads nothing"
        assert writer.transport.get_write_buffer_size() > 0
        assert relay.up.queued <= relay.up.size
        peer.resume()
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(peer.done.wait(), 8)
        assert (len(payload), hashlib.sha256(payload).hexdigest()) == (peer.received, peer.digest.hexdigest())
        await _closed_everywhere(dp, relay, peer.port)
        writer.close()
    finally:
        await dp.close()
        peer.close()


@both_loops
async def test_splice_back_pressure_from_a_slow_client() -> None:
    """While the client does not read, the relay stops reading the backend; then all 32 MiB arrive intact."""
    blob = os.urandom(1 << 20) * 32
    peer = await _Peer(blob=blob).start()
    dp, port = await _l4([("127.0.0.1", peer.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        head = await reader.read(1 << 16)  # the first bytes; then nobody reads for a while
        relay = await _spliced(dp, port)
        assert relay.down is not None
        await wait_for(lambda: relay.down.writing and not relay.down.reading, 5.0, what="relay blocked on the client")  # type: ignore[union-attr]
        taken = dp.telemetry()["tcp"]["bytes_out"]
        assert taken < len(blob) // 2, f"the relay took {taken} bytes although the client reads nothing"
        assert peer.transport.get_write_buffer_size() > 0
        digest = hashlib.sha256(head)
        n = len(head)
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            n += len(chunk)
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (n, digest.hexdigest())
        writer.close()
        await _closed_everywhere(dp, relay, peer.port)
    finally:
        await dp.close()
        peer.close()


def test_without_splice_bulk_stays_on_the_transports_and_says_so_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where splice is unavailable, large transfers stay on the transports (intact), with one log line."""
    monkeypatch.setattr(l4, "_splice_usable", False)
    monkeypatch.setattr(l4, "_splice_said", False)
    payload = os.urandom(1 << 20) * 4

    async def scenario() -> None:
        backend = await TcpBackend(b"a").start()
        dp, port = await _l4([("127.0.0.1", backend.port)])
        try:
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                writer.write_eof()
                data = await reader.read(-1)
                assert hashlib.sha256(payload + b"a-eof").hexdigest() == hashlib.sha256(data).hexdigest()
                (conn,) = dp._listeners[("127.0.0.1", port)].connections or (None,)
                assert conn is None or conn._splice is None
                writer.close()
        finally:
            await dp.close()
            backend.close()

    with caplog.at_level(logging.WARNING, logger="engine.l4"), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 9.0))
    said = [r for r in caplog.records if "without splice" in r.getMessage()]
    assert 1 == len(said)
