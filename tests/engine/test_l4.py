"""The L4 proxy: relaying, half-close, back-pressure, balancing, failover, counters.

Scenarios marked ``both_loops`` run on asyncio's default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter

from tests.engine.test_dataplane import LC, StubChecker, TcpBackend, both_loops, eventually, free_port, pool_doc, slice_of, stub_dataplane, vs_doc


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
        await eventually(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, what="connection closed")
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
    """32 MB each way through a client that reads slowly at first arrives intact."""
    backend = await TcpBackend(b"a").start()
    dp, port = await _l4([("127.0.0.1", backend.port)])
    payload = os.urandom(1 << 20) * 32
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)

        async def send() -> None:
            for i in range(0, len(payload), 1 << 18):
                writer.write(payload[i : i + (1 << 18)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        await asyncio.sleep(0.3)  # nobody reads: buffers fill and both directions must pause
        (conn,) = dp._listeners[("127.0.0.1", port)].connections
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
        writer.close()
    finally:
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
        await eventually(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, what="connections closed")
    finally:
        await dp.close()


async def test_backend_close_closes_client_and_counts_drop() -> None:
    """When the backend closes first, the client sees its bytes then EOF, and the open count returns to 0."""
    a = await TcpBackend(b"a", greet=True).start()
    dp, port = await _l4([("127.0.0.1", a.port)], algorithm=LC)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert b"a" == await reader.readexactly(1)
        await eventually(lambda: dp._pools["pool-1"].balancer.open_connections(f"127.0.0.1:{a.port}") == 1, what="opened")
        a.transports[0].close()
        assert b"" == await reader.read()
        writer.close()
        await eventually(lambda: dp.telemetry()["tcp"]["open_connections"] == 0, what="client closed")
        assert 0 == dp._pools["pool-1"].balancer.open_connections(f"127.0.0.1:{a.port}")
    finally:
        await dp.close()
        a.close()
