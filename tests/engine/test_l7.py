"""The L7 proxy: keep-alive both sides, X-Forwarded-For, streamed bodies, pipelining, 502s, counters.

Scenarios marked ``both_loops`` run on asyncio's default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import aiohttp

from engine.upstreams import UpstreamPool
from tests.engine.test_dataplane import HttpBackend, StubChecker, both_loops, pool_doc, slice_of, stub_dataplane, vs_doc
from tests.helpers import free_port, wait_for


async def _l7(backends: list[HttpBackend], **pool_kwargs: Any):  # type: ignore[no-untyped-def]
    port = free_port()
    dp = stub_dataplane()
    servers = [("127.0.0.1", b.port) for b in backends] or [("127.0.0.1", free_port())]
    assert {} == await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc(servers, **pool_kwargs))))
    return dp, port


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response with a Content-Length or chunked body: (status line, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = b""
    return lines[0], headers, body


@both_loops
async def test_keep_alive_reuses_one_client_and_one_backend_connection() -> None:
    """100 sequential requests use one client connection and one backend connection."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(100):
                async with session.get(f"http://127.0.0.1:{port}/x") as resp:
                    assert (200, b"a") == (resp.status, await resp.read())
        stats = dp.telemetry()["web"]
        assert (1, 100, 100) == (stats["total_connections"], stats["requests"], stats["responses"]["2xx"])
        assert 100 == stats["latency"]["count"]
        assert 1 == backend.accepted
    finally:
        await dp.close()
        backend.close()


async def test_backend_connections_are_pooled_across_clients() -> None:
    """20 clients, one after the other, share the idle backend connection."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        for _ in range(20):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert 200 == resp.status
        assert 20 == dp.telemetry()["web"]["total_connections"]
        assert 1 == backend.accepted
    finally:
        await dp.close()
        backend.close()


async def test_idle_backend_connections_are_capped_per_server() -> None:
    """Beyond max_idle_per_server, finished backend connections are closed instead of kept."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    dp._pools["pool-1"].upstreams.max_idle_per_server = 2
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10)) as session:

            async def one() -> None:
                async with session.get(f"http://127.0.0.1:{port}/chunked") as resp:
                    assert b"firstsecond" == await resp.read()

            tasks = [asyncio.create_task(one()) for _ in range(5)]
            await wait_for(lambda: backend.accepted == 5, 5.0, what="5 backend connections")
            backend.release.set()
            await asyncio.gather(*tasks)
        assert 2 == dp._pools["pool-1"].upstreams.idle_count()
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_x_forwarded_for_is_added_or_appended() -> None:
    """The client IP is added as X-Forwarded-For, after any the client sent."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                await resp.read()
            async with session.get(f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "10.1.1.1"}) as resp:
                await resp.read()
        assert ["127.0.0.1", "10.1.1.1, 127.0.0.1"] == [r[2]["x-forwarded-for"] for r in backend.requests]
        assert f"127.0.0.1:{port}" == backend.requests[0][2]["host"]
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_chunked_response_is_streamed() -> None:
    """The first chunk reaches the client before the backend has sent the rest."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/chunked") as resp:
                assert b"first" == await resp.content.readexactly(5)
                backend.release.set()
                assert b"second" == await resp.content.read()
            async with session.get(f"http://127.0.0.1:{port}/after") as resp:
                assert b"a" == await resp.read()
        assert 1 == backend.accepted
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_request_bodies_are_streamed_both_framings() -> None:
    """A Content-Length body and a chunked body (several MB) reach the backend intact."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    payload = os.urandom(3 << 20)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/echo", data=io.BytesIO(payload)) as resp:
                assert payload == await resp.read()

            async def chunks() -> Any:
                for i in range(0, len(payload), 100_000):
                    yield payload[i : i + 100_000]

            async with session.post(f"http://127.0.0.1:{port}/echo", data=chunks()) as resp:
                assert payload == await resp.read()
        assert (str(len(payload)), "chunked") == (backend.requests[0][2]["content-length"], backend.requests[1][2]["transfer-encoding"])
        assert 1 == backend.accepted
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_pipelined_requests_are_answered_in_order() -> None:
    """Three requests sent at once come back as three responses, in order, on one connection."""
    a = await HttpBackend(b"a").start()
    b = await HttpBackend(b"b").start()
    dp, port = await _l7([a, b])
    try:
        reader, writer = await _raw(
            port,
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        responses = [await _read_response(reader) for _ in range(3)]
        assert [b"a", b"hello", b"a"] == [body for _, _, body in responses]
        assert b"close" == responses[2][1][b"connection"]
        assert b"" == await reader.read()
        writer.close()
    finally:
        await dp.close()
        a.close()
        b.close()


@both_loops
async def test_502_when_no_server_is_up() -> None:
    """With every server down the client gets a small 502 and keeps its connection."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        StubChecker.by_pool["pool-1"].set(backend.key, False)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert 502 == resp.status
                    assert b"502 Bad Gateway" in await resp.read()
            StubChecker.by_pool["pool-1"].set(backend.key, True)
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert 200 == resp.status
        stats = dp.telemetry()["web"]
        assert (1, 3, 1) == (stats["total_connections"], stats["responses"]["5xx"], stats["responses"]["2xx"])
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_502_when_backend_refuses_or_dies_before_answering() -> None:
    """A refused connect, and a backend that closes without answering, both give 502."""
    dp, port = await _l7([])
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert 502 == resp.status
    finally:
        await dp.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", rude.sockets[0].getsockname()[1])]))))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert 502 == resp.status
    finally:
        await dp.close()
        rude.close()


@both_loops
async def test_head_1xx_204_and_until_close_responses() -> None:
    """HEAD, 204, a response delimited by the backend closing, and HTTP/1.0 clients are framed right."""
    backend = await HttpBackend(b"abc").start()
    dp, port = await _l7([backend])
    try:
        reader, writer = await _raw(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await _read_response_head_only(reader)
        assert (b"HTTP/1.1 200 OK", b"3") == (status, headers[b"content-length"])
        writer.write(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await _read_response_head_only(reader)
        assert status.startswith(b"HTTP/1.1 204")
        writer.write(b"GET /until-close HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert (b"chunked", b"no length here") == (headers[b"transfer-encoding"], body)
        writer.write(b"GET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await _read_response(reader)
        assert (b"HTTP/1.1 404 Not Found", b"abc") == (status, body)
        writer.close()

        reader, writer = await _raw(port, b"GET /until-close HTTP/1.0\r\n\r\n")
        assert (await reader.read()).endswith(b"\r\n\r\nno length here")
        writer.close()

        reader, writer = await _raw(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert (b"keep-alive", b"abc") == (headers[b"connection"], body)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert (b"close", b"abc") == (headers[b"connection"], body)
        assert b"" == await reader.read()
        writer.close()

        stats = dp.telemetry()["web"]["responses"]
        assert (6, 1) == (stats["2xx"], stats["4xx"])
    finally:
        await dp.close()
        backend.close()


async def _read_response_head_only(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers, b""


@both_loops
async def test_expect_100_continue_is_relayed() -> None:
    """A client that waits for 100 Continue gets it from the backend, then the final response."""

    async def backend_fn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"expect: 100-continue" in head.lower()
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body.upper())
        await reader.read()
        writer.close()

    server = await asyncio.start_server(backend_fn, "127.0.0.1", 0)
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", server.sockets[0].getsockname()[1])]))))
        reader, writer = await _raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert b"HTTP/1.1 100 Continue\r\n\r\n" == await reader.readuntil(b"\r\n\r\n")
        writer.write(b"ping")
        status, _, body = await _read_response(reader)
        assert (b"HTTP/1.1 200 OK", b"PING") == (status, body)
        writer.close()
    finally:
        await dp.close()
        server.close()


@both_loops
async def test_bad_request_gets_400_and_close() -> None:
    """Bytes that are not HTTP are answered 400 and the connection is closed."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        reader, writer = await _raw(port, b"NOT HTTP AT ALL\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        writer.close()
        assert 0 == backend.accepted
    finally:
        await dp.close()
        backend.close()


async def test_stale_idle_backend_connection_is_retried() -> None:
    """A pooled connection the backend closed while idle is replaced without the client seeing an error."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert 200 == resp.status
            # Simulate the race: the backend closes the idle connection while the proxy writes to it.
            pool: UpstreamPool = dp._pools["pool-1"].upstreams
            (idle,) = pool._idle[backend.key]
            idle.transport.pause_reading()  # the proxy has not noticed yet
            backend.transports[0].close()
            await asyncio.sleep(0.05)

            async def second() -> int:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    await resp.read()
                    return resp.status

            task = asyncio.create_task(second())
            await wait_for(lambda: idle.owner is not None, 5.0, what="the stale connection to be reused")
            idle.transport.resume_reading()
            assert 200 == await task
        assert 2 == backend.accepted
    finally:
        await dp.close()
        backend.close()


async def test_removed_vs_closes_idle_keep_alive_clients() -> None:
    """Removing an HTTP VS closes its idle keep-alive client connections."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        reader, writer = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await _read_response(reader)
        await dp.apply(slice_of(revision=2))
        assert b"" == await reader.read()
        writer.close()
    finally:
        await dp.close()
        backend.close()


async def test_idle_keep_alive_client_is_closed_after_timeout() -> None:
    """A keep-alive client that sends nothing for keepalive_timeout is closed; a busy one is not."""
    backend = await HttpBackend(b"a").start()
    port = free_port()
    dp = stub_dataplane(keepalive_timeout=0.3, sweep_interval=0.05)
    try:
        await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", backend.port)]))))
        reader, writer = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await _read_response(reader)
        busy_reader, busy_writer = await _raw(port, b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        started = asyncio.get_running_loop().time()
        assert b"" == await reader.read()
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        backend.release.set()
        _, _, body = await _read_response(busy_reader)
        assert b"firstsecond" == body
        writer.close()
        busy_writer.close()
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_large_responses_are_relayed_intact_and_the_connection_reused() -> None:
    """Big Content-Length bodies (relayed past the parser) arrive intact, one after another, on one backend connection."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    payloads = [os.urandom(n) for n in (70_000, 1 << 20, 5 << 20, 10, 200_000)]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for payload in payloads:
                async with session.post(f"http://127.0.0.1:{port}/echo", data=io.BytesIO(payload)) as resp:
                    assert payload == await resp.read()
            async with session.get(f"http://127.0.0.1:{port}/status/204") as resp:
                assert 204 == resp.status
        assert 1 == backend.accepted
        stats = dp.telemetry()["web"]
        assert stats["bytes_out"] > sum(len(p) for p in payloads)
    finally:
        await dp.close()
        backend.close()


async def test_http10_request_goes_upstream_as_10_with_keep_alive() -> None:
    """An HTTP/1.0 request (maybe without Host) is forwarded as 1.0, asking the backend to keep the connection."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        for _ in range(2):
            reader, writer = await _raw(port, b"GET /ten HTTP/1.0\r\n\r\n")
            status, _, body = await _read_response(reader)
            assert (b"HTTP/1.1 200 OK", b"a") == (status, body)
            writer.close()
        assert "keep-alive" == backend.requests[0][2]["connection"]
        assert 1 == backend.accepted
    finally:
        await dp.close()
        backend.close()


class _RawBackend:
    """Records every request head it reads as bytes and answers ``ok`` with a length, keeping the connection."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: Any = None
        self.port = 0

    async def start(self) -> "_RawBackend":
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        self.server.close()


@both_loops
async def test_http_version_and_connection_headers_decide_keep_alive_and_the_upstream_head() -> None:
    """The version forwarded, the keep-alive kept with the client and the Connection header sent upstream,
    with and without Connection / Proxy-Connection headers from the client (the version is read from the
    parser's keep-alive verdict when the client sent neither)."""
    backend = await _RawBackend().start()
    dp = stub_dataplane()
    port = free_port()
    assert {} == await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", backend.port)]))))
    cases = [
        # request, version line sent upstream, Connection header sent upstream, client kept alive
        (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /a HTTP/1.1", None, True),
        (b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", b"GET /b HTTP/1.1", None, True),
        (b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET /c HTTP/1.1", None, False),
        (b"GET /d HTTP/1.0\r\n\r\n", b"GET /d HTTP/1.0", b"keep-alive", False),
        (b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"GET /e HTTP/1.0", b"keep-alive", True),
        (b"GET /f HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n", b"GET /f HTTP/1.0", b"keep-alive", True),
        (b"GET /g HTTP/1.1\r\nHost: x\r\nProxy-Connection: close\r\n\r\n", b"GET /g HTTP/1.1", None, False),
    ]
    try:
        for request, line, upstream_connection, kept in cases:
            reader, writer = await _raw(port, request)
            status, headers, body = await _read_response(reader)
            assert (b"HTTP/1.1 200 OK", b"ok") == (status, body), request
            head = backend.heads[-1]
            fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:] if h)}
            assert line == head.split(b"\r\n")[0], request
            assert upstream_connection == fields.get(b"connection"), request
            assert b"127.0.0.1" == fields[b"x-forwarded-for"], request
            assert b"proxy-connection" not in fields
            if kept:
                # The connection stays usable: a second request on it is answered.
                writer.write(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"ok" == (await _read_response(reader))[2], request
            else:
                assert b"" == await asyncio.wait_for(reader.read(), 5), request
            writer.close()
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_concurrent_pipelined_clients_get_every_response_in_order_and_counted() -> None:
    """Many clients pipelining at once (responses are held and sent once per loop iteration): every
    response arrives whole and in order, and bytes_out is exactly what the clients read."""
    a = await HttpBackend(b"a").start()
    b = await HttpBackend(b"b").start()
    dp, port = await _l7([a, b])
    try:

        async def client(i: int) -> int:
            reader, writer = await _raw(port, b"".join(b"GET /%d/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, n) for n in range(5)))
            got = 0
            for _ in range(5):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                assert body in (b"a", b"b")
                got += len(head) + len(body)
            writer.close()
            return got

        received = await asyncio.gather(*(client(i) for i in range(20)))
        await wait_for(lambda: dp.telemetry()["web"]["responses"]["2xx"] == 100, 5.0, what="100 responses counted")
        stats = dp.telemetry()["web"]
        assert (100, sum(received)) == (stats["requests"], stats["bytes_out"])
        assert [f"/{i}/{n}" for i in range(20) for n in range(5)] == sorted((r[1] for r in a.requests + b.requests), key=lambda p: tuple(map(int, p.split("/")[1:])))
    finally:
        await dp.close()
        a.close()
        b.close()


def test_responses_held_for_one_loop_iteration_keep_their_order() -> None:
    """Two pipelined responses completed before the held writes go out are sent in order, in one write;
    a write that cannot wait (a 502) sends what is held first. Stub transports, no loop running."""
    from types import SimpleNamespace

    from engine.config import HttpLimits, ServerConfig
    from engine.l7 import L7Connection, _Upstream
    from engine.routing import Balancer
    from engine.telemetry import VsStats

    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))

        def writelines(self, parts: Any) -> None:
            self.writes.append(b"".join(parts))

        def is_closing(self) -> bool:
            return self.closed

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("10.0.0.9", 5555) if name == "peername" else default

        def close(self) -> None:
            self.closed = True

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        scheduled: list[Any] = []
        server = ServerConfig("127.0.0.1", 9)
        upstreams = UpstreamPool()
        pool = SimpleNamespace(balancer=Balancer("LB_ALGORITHM_ROUND_ROBIN", [server]), upstreams=upstreams, connect_timeout=1.0)
        vs = SimpleNamespace(stats=VsStats("u", "web"), pool=pool, config=SimpleNamespace(http_limits=HttpLimits()))
        listener = SimpleNamespace(loop=loop, vs=vs, connections=set(), draining=False)
        conn = L7Connection(listener)  # type: ignore[arg-type]
        client = Transport()
        conn.connection_made(client)
        loop_stub = SimpleNamespace(call_soon=scheduled.append)
        conn._flusher.loop_ref = lambda: loop_stub
        backend = Transport()
        upstream = _Upstream(upstreams, server.key)
        upstream.connection_made(backend)
        upstreams.put(upstream, loop.time())

        conn.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [] == backend.writes  # the head waits for the end of the loop iteration
        conn._flusher.run()
        assert [b"GET /1 HTTP/1.1\r\n"] == [w.split(b"Host")[0] for w in backend.writes]
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        # /2 went to the same (reused) backend connection; its response arrives before anything is flushed
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        assert [] == client.writes
        conn._flusher.run()
        assert [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"] == client.writes
        # /3: the response is held, then the pool disappears and the next write (a 502) cannot wait
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")
        listener.vs.pool = None
        conn.data_received(b"GET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.writes[1].endswith(b"\r\n\r\n3") and client.writes[2].startswith(b"HTTP/1.1 502")
        assert 4 == len(conn._stats.logs) and sum(map(len, client.writes)) == conn._stats.bytes_out
    finally:
        loop.close()


class _Scripted(asyncio.Protocol):
    """A backend answering each request head with the next of ``scripts`` (shared by its
    connections), each answer a list of pieces written 10 ms apart, so the proxy most likely
    reads them separately."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = scripts
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf and self.scripts:
            _head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            asyncio.ensure_future(self.send(self.scripts.pop(0)))

    async def send(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.transport.write(piece)
            await asyncio.sleep(0.01)


@both_loops
async def test_trailer_fields_never_become_headers_of_the_next_message() -> None:
    """Trailers of a chunked request are not carried into the next request's head (no injected
    X-Forwarded-For), and trailers of a chunked response not into the next response's head."""
    backend = await HttpBackend(b"a").start()
    dp, port = await _l7([backend])
    try:
        reader, writer = await _raw(
            port,
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Evil: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n",
        )
        for _ in range(2):
            status, _headers, _body = await _read_response(reader)
            assert status.startswith(b"HTTP/1.1 200")
        writer.close()
        (_m1, _p1, _h1, body1), (method, path, headers, _b) = backend.requests[:2]
        assert body1 == b"abc"
        assert (method, path) == ("GET", "/b")
        assert "x-evil" not in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"
    finally:
        await dp.close()
        backend.close()

    # A backend answering the first request chunked with a trailer, the second plainly.
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
    ]

    answer_scripts = [[a] for a in answers]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Scripted(answer_scripts), "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    dp = None
    try:
        from tests.engine.test_dataplane import pool_doc as _pool_doc
        from tests.engine.test_dataplane import slice_of as _slice_of
        from tests.engine.test_dataplane import stub_dataplane as _stub
        from tests.engine.test_dataplane import vs_doc as _vs

        dp = _stub()
        port = free_port()
        assert {} == await dp.apply(_slice_of(_vs("web", "127.0.0.1", port, "http", _pool_doc([("127.0.0.1", backend_port)]))))
        reader, writer = await _raw(port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        _s1, _h1, body1 = await _read_response(reader)
        _s2, headers2, body2 = await _read_response(reader)
        writer.close()
        assert (body1, body2) == (b"ok", b"no")
        assert b"x-trailer" not in headers2
    finally:
        if dp is not None:
            await dp.close()
        server.close()


@both_loops
async def test_response_heads_lose_hop_by_hop_fields_however_they_arrive() -> None:
    """The head sent to the client is the backend's fields minus hop-by-hop ones, in order, whether
    the head came in one read, in pieces, or behind a 100 Continue in the same read."""
    head = (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A:1\r\nKeep-Alive: timeout=5\r\n"
        b"Upgrade: h2c\r\nContent-Length: 2\r\nProxy-Connection: x\r\nCONNECTION: keep-alive\r\nX-B: two words \r\n\r\n"
    )
    scripts = [
        [head + b"ok"],
        [head[:9], head[9:40], head[40:-1], head[-1:] + b"o", b"k"],
        [b"HTTP/1.1 100 Continue\r\nX-C: c\r\n\r\n" + head + b"ok"],
    ]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Scripted(scripts), "127.0.0.1", 0)
    dp = stub_dataplane()
    port = free_port()
    try:
        assert {} == await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", server.sockets[0].getsockname()[1])]))))
        reader, writer = await _raw(port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        for n in range(3):
            if n:
                writer.write(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % (n + 1))
            if n == 2:
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\nX-C: c\r\n\r\n"
            got = await reader.readuntil(b"\r\n\r\n")
            assert got == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nX-B: two words \r\n\r\n", n
            assert await reader.readexactly(2) == b"ok"
        writer.close()
    finally:
        await dp.close()
        server.close()

