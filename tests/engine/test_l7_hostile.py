"""The L7 proxy against hostile clients: request-head limits (414, 431), the head deadline (408),
request smuggling (400), a client streaming an endless head while others are served, and a fuzz.

What every refusal must do: answer with its status and ``Connection: close``, close the connection,
and forward nothing of the refused request (the backend sees no byte of it, and no connection when
nothing else was sent).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from typing import Any, Optional

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.config import HttpLimits, read_slice
from tests.engine.test_dataplane import both_loops, pool_doc, slice_of, stub_dataplane, vs_doc
from tests.helpers import free_port, wait_for

# Small limits, so that a table row is a few KB: each field and the target 1 KB, the head 4 KB,
# 10 fields, 0.3 s to send a head.
SMALL = {"max_header_size": 1024, "max_request_size": 4096, "max_header_count": 10, "header_timeout": 0.3}


class Recorder:
    """A backend that keeps every byte it reads and answers each complete request ``200 ok``.

    ``requests``: the targets of the complete requests it parsed; ``lost``: its connections that
    ended with a request half read (the proxy aborted them); ``garbage``: reads it could not parse
    as HTTP (what a smuggled request looks like from here).
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.accepted = 0
        self.requests: list[bytes] = []
        self.lost = 0
        self.garbage = 0
        self.server: Any = None
        self.port = 0
        self._open: set[Any] = set()

    def midway_count(self) -> int:
        """Connections holding part of a request (bytes read since the last complete one)."""
        return sum(1 for proto in self._open if proto.midway)

    async def start(self) -> "Recorder":
        backend = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:  # type: ignore[override]
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)
                self.url = b""
                self.midway = False
                backend.accepted += 1
                backend._open.add(self)

            def data_received(self, data: bytes) -> None:
                backend.received += data
                self.midway = True
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserError:
                    backend.garbage += 1
                    self.transport.close()

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_message_complete(self) -> None:
                backend.requests.append(self.url)
                self.url = b""
                self.midway = False
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

            def connection_lost(self, exc: Optional[BaseException]) -> None:
                backend._open.discard(self)
                if self.midway:
                    backend.lost += 1

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        self.server.close()


def web(port: int, backend_port: int, limits: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    doc = vs_doc("web", "127.0.0.1", port, "http", pool_doc([("127.0.0.1", backend_port)]))
    if limits is not None:
        doc["http_limits"] = limits
    return doc


async def exchange(port: int, *pieces: bytes, pause: float = 0.0, timeout: float = 5.0, until: bytes = b"") -> tuple[bytes, bool]:
    """Send ``pieces`` (``pause`` s apart) on a new connection while reading, as a client does; what
    came back, and whether the proxy closed the connection (EOF or reset) within ``timeout``
    (``until``: stop reading, not closed, once what came back ends with it)."""
    got, closed, _first = await exchange_timed(port, *pieces, pause=pause, timeout=timeout, until=until)
    return got, closed


async def exchange_timed(port: int, *pieces: bytes, pause: float = 0.0, timeout: float = 5.0, until: bytes = b"") -> tuple[bytes, bool, Optional[float]]:
    """:func:`exchange`, plus the loop time the first byte of the answer arrived (None: nothing did)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    first: Optional[float] = None

    async def read() -> bool:
        nonlocal first
        try:
            while chunk := await reader.read(65536):
                if first is None:
                    first = loop.time()
                got.extend(chunk)
                if until and got.endswith(until):
                    return False
        except ConnectionError:
            pass
        return True

    async def write() -> None:
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass

    reading = asyncio.ensure_future(read())
    writing = asyncio.ensure_future(write())
    try:
        closed = await asyncio.wait_for(asyncio.shield(reading), timeout)
    except TimeoutError:
        closed = False
    finally:
        reading.cancel()
        writing.cancel()
        writer.close()
    return bytes(got), closed, first


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _fields(n: int, size: int = 8) -> bytes:
    """``n`` fields ``X-Fnn: vvv`` of ``size`` bytes each (name and value)."""
    return b"".join(b"X-F%03d: %s\r\n" % (i, b"v" * (size - 6)) for i in range(n))


# -- limits ----------------------------------------------------------------------------------------


def test_limits_are_read_from_the_slice_with_defaults_when_absent() -> None:
    """A VS without http_limits (an older controller) gets the product's defaults; given ones are
    read; the whole head's limit is never below one field's."""
    config, refused = read_slice({"revision": 1, "se_name": "se-1", "virtual_services": [
        web(80, 9000), {**web(81, 9000, {**SMALL, "max_request_size": 512}), "uuid": "vs-2", "name": "web2"},
    ]})
    assert {} == refused
    old, new = (vs.http_limits for vs in config.virtual_services)
    assert (HttpLimits(12288, 49152, 256, 10.0), 49152) == (old, old.head_size)
    assert (HttpLimits(1024, 512, 10, 0.3), 1024) == (new, new.head_size)


@pytest.mark.parametrize(("limits", "field"), [
    ({"max_header_size": 0}, "max_header_size"),
    ({"max_request_size": "48"}, "max_request_size"),
    ({"max_header_count": -1}, "max_header_count"),
    ({"header_timeout": 0}, "header_timeout"),
    ({"max_header_count": True}, "max_header_count"),
])
def test_bad_limits_refuse_the_vs_alone(limits: dict[str, Any], field: str) -> None:
    """A limit out of range or of the wrong type refuses that VS, naming the field."""
    _config, refused = read_slice({"revision": 1, "se_name": "se-1", "virtual_services": [web(80, 9000, limits)]})
    assert f"virtual_services[0].http_limits.{field}" in refused["web"]

GET = b"GET / HTTP/1.1\r\nHost: x\r\n"  # Host is one field of 5 bytes

LIMIT_CASES = [
    # (id, limits, pieces, status)
    ("target-at-limit", SMALL, [b"GET /" + b"a" * 1023 + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 200),
    ("target-too-long", SMALL, [b"GET /" + b"a" * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 414),
    ("target-too-long-streamed", SMALL, [b"GET /"] + [b"a" * 200] * 10, 414),
    ("field-at-limit", SMALL, [GET + b"X-Big: " + b"v" * 1019 + b"\r\n\r\n"], 200),
    ("field-too-long", SMALL, [GET + b"X-Big: " + b"v" * 1020 + b"\r\n\r\n"], 431),
    ("field-name-too-long", SMALL, [GET + b"X-" + b"n" * 1030 + b": v\r\n\r\n"], 431),
    ("field-too-long-streamed", SMALL, [GET + b"X-Big: "] + [b"v" * 512] * 16, 431),
    # 1 + (5 + 4) + 4 * (1000 + 4) = 4026 bytes counted: under 4096
    ("head-at-limit", SMALL, [GET + _fields(4, 1000) + b"\r\n"], 200),
    ("head-too-large", SMALL, [GET + _fields(5, 1000) + b"\r\n"], 431),
    ("head-too-large-in-pieces", SMALL, [GET] + [_fields(1, 1000)] * 5 + [b"\r\n"], 431),
    ("fields-at-limit", SMALL, [GET + _fields(9) + b"\r\n"], 200),
    ("too-many-fields", SMALL, [GET + _fields(10) + b"\r\n"], 431),
    # fields the proxy does not forward as they are count too
    ("too-many-fields-hop-by-hop", SMALL, [GET + _fields(7) + b"Connection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 5\r\n\r\n"], 431),
    ("trailers-at-the-limit", SMALL,
     [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + _fields(5) + b"\r\n2\r\nhi\r\n0\r\n" + _fields(3) + b"\r\n"], 200),
    ("trailers-count-with-the-head", SMALL,
     [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + _fields(5) + b"\r\n2\r\nhi\r\n0\r\n" + _fields(4) + b"\r\n"], 431),
    ("trailer-field-too-long", SMALL,
     [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: " + b"t" * 1100 + b"\r\n\r\n"], 431),
    # the defaults (client_max_header_size 12 KB, client_max_request_size 48 KB, max_header_count 256)
    ("default-field-at-limit", None, [GET + b"X-Big: " + b"v" * (12 * 1024 - 5) + b"\r\n\r\n"], 200),
    ("default-field-too-long", None, [GET + b"X-Big: " + b"v" * (12 * 1024 - 4) + b"\r\n\r\n"], 431),
    ("default-target-too-long", None, [b"GET /" + b"a" * (12 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 414),
    ("default-head-too-large", None, [GET + _fields(5, 10_000) + b"\r\n"], 431),
    ("default-fields-at-limit", None, [GET + _fields(255) + b"\r\n"], 200),
    ("default-too-many-fields", None, [GET + _fields(256) + b"\r\n"], 431),
]


@pytest.mark.parametrize(("limits", "pieces", "status"), [pytest.param(*case[1:], id=case[0]) for case in LIMIT_CASES])
def test_request_head_limits(limits: Optional[dict[str, Any]], pieces: list[bytes], status: int) -> None:
    """A head within the limits is proxied; past one (target 414; a field, the head, the field
    count 431) it is refused and the connection closed, nothing forwarded, however it arrives."""

    async def scenario() -> None:
        backend = await Recorder().start()
        port = free_port()
        dp = stub_dataplane()
        try:
            assert {} == await dp.apply(slice_of(web(port, backend.port, limits)))
            response, closed = await exchange(port, *pieces, pause=0.02 if len(pieces) > 1 else 0.0, timeout=2.0, until=b"\r\n\r\nok")
            assert status == _status(response), response[:200]
            if status == 200:
                assert [b"/" + b"a" * 1023 if b"aaa" in pieces[0] else b"/"] == backend.requests
                assert b"X-F" not in backend.received.split(b"\r\n\r\n", 1)[1]  # trailers are not forwarded
            else:
                assert response.endswith(b"\r\nConnection: close\r\n\r\n"), response
                assert closed
                assert (b"", 0) == (bytes(backend.received), backend.accepted)
        finally:
            await dp.close()
            backend.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 10))


@both_loops
async def test_slow_head_gets_408_at_the_deadline() -> None:
    """A head trickled in (a slowloris) is answered 408 once header_timeout has passed since its
    first read, and closed; a head in two reads within the deadline is proxied, and nothing is left
    armed for the next request on that connection."""
    backend = await Recorder().start()
    port = free_port()
    dp = stub_dataplane()
    try:
        assert {} == await dp.apply(slice_of(web(port, backend.port, SMALL)))
        started = asyncio.get_running_loop().time()
        response, closed, answered = await exchange_timed(port, GET, *[b"X-A: 1\r\n"] * 40, pause=0.05, timeout=4.0)
        assert (408, True) == (_status(response), closed), response
        assert answered is not None and 0.25 < answered - started < 1.0, answered
        assert (b"", 0) == (bytes(backend.received), backend.accepted)

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await asyncio.sleep(0.15)
        writer.write(b"\r\n")
        assert b"ok" == (await asyncio.wait_for(reader.readuntil(b"ok"), 2)).split(b"\r\n\r\n")[1]
        await asyncio.sleep(0.4)  # longer than the deadline, idle
        writer.write(GET + b"\r\n")
        assert b"ok" == (await asyncio.wait_for(reader.readuntil(b"ok"), 2)).split(b"\r\n\r\n")[1]
        writer.close()
        assert [b"/", b"/"] == backend.requests
    finally:
        await dp.close()
        backend.close()


# -- request smuggling -----------------------------------------------------------------------------

POST = b"POST / HTTP/1.1\r\nHost: x\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

DESYNC_CASES = [
    # CL.TE and TE.CL: both framings in one request
    ("cl-te", POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
    ("te-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-xchunked-cl", POST + b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
    # TE.TE: obfuscated or doubled Transfer-Encoding
    ("te-xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("te-chunked-identity", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("te-identity", POST + b"Transfer-Encoding: identity\r\n\r\n" + SMUGGLED),
    ("te-gzip-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("te-empty-element", POST + b"Transfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n"),
    ("te-parameter", POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n"),
    ("te-twice", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-identity-then-chunked", POST + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-chunked-then-identity", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
    ("te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("te-leading-space", POST + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te-obs-fold", POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("te-vertical-tab", POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
    ("te-nul", POST + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n"),
    ("te-lf-only", POST + b"Transfer-Encoding: chunked\n\r\n0\r\n\r\n"),
    ("te-in-http-1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
    ("te-in-http-1.0-keep-alive", b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + hex(len(SMUGGLED))[2:].encode() + b"\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
    # Content-Length
    ("cl-twice-same", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("cl-twice-different", POST + b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + SMUGGLED),
    ("cl-list", POST + b"Content-Length: 3, 3\r\n\r\nabc"),
    ("cl-negative", POST + b"Content-Length: -3\r\n\r\nabc"),
    ("cl-plus", POST + b"Content-Length: +3\r\n\r\nabc"),
    ("cl-hex", POST + b"Content-Length: 0x3\r\n\r\nabc"),
    ("cl-overflow", POST + b"Content-Length: 99999999999999999999999\r\n\r\nabc"),
    # chunk sizes
    ("chunk-size-not-hex", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-overflow", POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-wraps-to-small", POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-negative", POST + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-0x", POST + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-space", POST + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-lf-only", POST + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n"),
    ("chunk-longer-than-its-size", POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("request_bytes", [pytest.param(raw, id=name) for name, raw in DESYNC_CASES])
def test_desync_attempts_are_refused_before_anything_is_forwarded(request_bytes: bytes) -> None:
    """Every classic desync request (CL.TE, TE.CL, TE.TE, doubled or malformed Content-Length,
    Transfer-Encoding in HTTP/1.0, bad chunk sizes) is answered 400 by the SE and closed; the
    backend sees no byte and no connection."""

    async def scenario() -> None:
        backend = await Recorder().start()
        port = free_port()
        dp = stub_dataplane()
        try:
            assert {} == await dp.apply(slice_of(web(port, backend.port)))
            response, closed = await exchange(port, request_bytes, timeout=2.0)
            assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response
            assert response.endswith(b"\r\nConnection: close\r\n\r\n") and closed, response
            assert (b"", 0) == (bytes(backend.received), backend.accepted)
        finally:
            await dp.close()
            backend.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 10))


@both_loops
async def test_a_refused_request_after_good_ones_is_answered_after_them() -> None:
    """Pipelined behind two good requests, a bad one gets its 400 after their responses, then the
    connection closes; the backend got the good requests and nothing of the bad one."""
    backend = await Recorder().start()
    port = free_port()
    dp = stub_dataplane()
    try:
        assert {} == await dp.apply(slice_of(web(port, backend.port)))
        response, closed = await exchange(
            port,
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            + POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
            timeout=3.0,
        )
        assert 3 == response.count(b"HTTP/1.1 "), response
        assert response.endswith(b"ok" + b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), response
        assert closed
        assert [b"/1", b"/2"] == backend.requests
        assert b"smuggled" not in backend.received and b"xchunked" not in backend.received
    finally:
        await dp.close()
        backend.close()


@both_loops
async def test_a_bad_chunk_after_the_head_went_out_aborts_the_backend_connection() -> None:
    """When a chunked body turns bad in a later read (the head was forwarded already), the client
    gets 400 and is closed, and the backend connection is aborted with its request unfinished."""
    backend = await Recorder().start()
    port = free_port()
    dp = stub_dataplane()
    try:
        assert {} == await dp.apply(slice_of(web(port, backend.port)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await wait_for(lambda: b"hello" in backend.received, 3.0, what="the head and first chunk at the backend")
        writer.write(b"zz\r\n" + SMUGGLED)
        response = await asyncio.wait_for(reader.read(), 3)
        assert response == b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        writer.close()
        await wait_for(lambda: backend.lost == 1, 3.0, what="the backend connection to be aborted")
        assert [] == backend.requests
        assert b"smuggled" not in backend.received
    finally:
        await dp.close()
        backend.close()


# -- one client must not stall the loop ------------------------------------------------------------


class ServedInThread:
    """One HTTP VS (to a :class:`Recorder`) served by a DataPlane on a uvloop in its own thread, so
    that clients can be blocking sockets in other threads. ``max_stall``: the longest a 5 ms ticker
    on that loop ran late, in seconds."""

    TICK = 0.005

    def __init__(self, limits: Optional[dict[str, Any]] = None) -> None:
        self.limits = limits
        self.port = 0
        self.max_stall = 0.0
        self.errors: list[Any] = []  # what reached the loop's exception handler
        self._ready = threading.Event()
        self._loop: Any = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ServedInThread":
        self._thread.start()
        assert self._ready.wait(10), "the data plane did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(10)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self._stop = asyncio.Event()
        self.backend = await Recorder().start()
        self.port = free_port()
        self.dp = stub_dataplane()
        assert {} == await self.dp.apply(slice_of(web(self.port, self.backend.port, self.limits)))
        ticker = asyncio.ensure_future(self._tick())
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            await self.dp.close()
            self.backend.close()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.TICK)
            self.max_stall = max(self.max_stall, loop.time() - before - self.TICK)

    def call(self, fn: Any) -> Any:
        """``fn()`` run on the loop's thread; its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def bytes_in(self) -> int:
        return int(self.call(lambda: self.dp.telemetry()["web"]["bytes_in"]))


class KeepAliveClient(threading.Thread):
    """GETs on one keep-alive connection, one every ``interval``, recording each one's latency."""

    def __init__(self, port: int, interval: float = 0.005, max_requests: int = 5000) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.max_requests = max_requests
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.sent = 0
        self._done = threading.Event()

    def run(self) -> None:
        request = b"GET /normal HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            while not self._done.is_set() and len(self.latencies) < self.max_requests:
                started = time.monotonic()
                try:
                    sock.sendall(request)
                    self.sent += len(request)
                    got = b""
                    while not got.endswith(b"\r\n\r\nok"):
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed")
                        got += chunk
                except OSError as exc:
                    self.failures.append(repr(exc))
                    return
                self.latencies.append(time.monotonic() - started)
                self._done.wait(self.interval)

    def finish(self) -> list[float]:
        self._done.set()
        self.join(10)
        return self.latencies


def stream_huge_head(port: int, until: float, max_bytes: int, pace: float = 0.001, host: str = "127.0.0.1") -> dict[str, Any]:
    """One connection sending a head whose one field never ends, 64 KB every ``pace`` s (64 MB/s;
    0: as fast as it goes), until the proxy stops it, ``until`` (monotonic) passes or ``max_bytes``
    went out; what happened."""
    sent = 0
    started = time.monotonic()
    chunk = b"v" * 65536
    response = b""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)  # what is sent is what the SE gets to read
        sock.settimeout(5)
        sock.connect((host, port))
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: ")
            # Past the 48 KB limit even when ``until`` comes first: a head cut short would wait for its deadline.
            while sent < max_bytes and (sent < 2 * len(chunk) or time.monotonic() < until):
                sock.sendall(chunk)
                sent += len(chunk)
                if pace:
                    time.sleep(pace)
        except OSError:
            pass
        stopped = time.monotonic()
        try:
            sock.settimeout(2)
            while part := sock.recv(65536):
                response += part
        except OSError:
            pass
    return {"sent": sent, "stopped_after": stopped - started, "status": _status(response), "response": response[:200]}


@pytest.mark.slow
def test_a_client_streaming_a_huge_head_is_stopped_early_and_others_keep_their_latency() -> None:
    """Clients streaming endless request heads at 64 MB/s (one connection after another for 3 s,
    each up to 50 MB, 200 MB in all) each get 431 and are closed after about the head limit, while a
    keep-alive client's requests keep their latency (p99 under 50 ms) and the SE's loop never
    stalls for 100 ms."""
    with ServedInThread() as se:
        quiet = KeepAliveClient(se.port)
        quiet.start()
        time.sleep(1.0)
        baseline = quiet.finish()
        assert not quiet.failures and len(baseline) > 50

        normal = KeepAliveClient(se.port)
        normal.start()
        before = se.bytes_in()
        attacks = []
        until = time.monotonic() + 3.0
        budget = 200 << 20
        while time.monotonic() < until and budget > 0:
            attack = stream_huge_head(se.port, until, min(budget, 50 << 20))
            attacks.append(attack)
            budget -= attack["sent"]
        time.sleep(0.2)
        latencies = normal.finish()
        attack_bytes_in = se.bytes_in() - before - normal.sent
        stall = se.max_stall

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98]

    print(f"baseline: {len(baseline)} requests, p50 {statistics.median(baseline) * 1000:.2f} ms, p99 {p99(baseline) * 1000:.2f} ms")
    print(f"under attack: {len(latencies)} requests, p50 {statistics.median(latencies) * 1000:.2f} ms, p99 {p99(latencies) * 1000:.2f} ms, "
          f"max {max(latencies) * 1000:.1f} ms; loop max stall {stall * 1000:.1f} ms")
    print(f"{len(attacks)} attacking connections, {sum(a['sent'] for a in attacks) >> 20} MB sent, {attack_bytes_in >> 10} KB read by the SE "
          f"({attack_bytes_in / len(attacks) / 1024:.0f} KB each), stopped after {max(a['stopped_after'] for a in attacks) * 1000:.0f} ms at most")
    assert not normal.failures and len(latencies) > 200, normal.failures
    assert [] == [a for a in attacks if a["status"] != 431 or a["stopped_after"] > 1.5]
    # read before the refusal: the 48 KB limit plus at most one read; then at most LINGER_BYTES dropped
    assert attack_bytes_in / len(attacks) < 1 << 20
    assert p99(latencies) < 0.050
    assert stall < 0.100
    assert [] == se.errors


@both_loops
async def test_a_body_cut_by_the_clients_eof_is_refused_and_the_backend_connection_aborted() -> None:
    """A client that half-closes in the middle of a request body gets 400 after the answers to its
    complete requests; the backend connection holding the unfinished request is aborted, not left
    waiting for a body that will not come."""
    backend = await Recorder().start()
    port = free_port()
    dp = stub_dataplane()
    try:
        assert {} == await dp.apply(slice_of(web(port, backend.port)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" + POST + b"Content-Length: 100\r\n\r\nonly part")
        await wait_for(lambda: b"only part" in backend.received, 3.0, what="the head and part of the body at the backend")
        writer.write_eof()
        response = await asyncio.wait_for(reader.read(), 3)
        assert response.endswith(b"ok" + b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), response
        assert 2 == response.count(b"HTTP/1.1 ")
        writer.close()
        await wait_for(lambda: backend.lost == 1, 3.0, what="the backend connection to be aborted")
        assert [b"/1"] == backend.requests
    finally:
        await dp.close()
        backend.close()


# -- fuzz ------------------------------------------------------------------------------------------

_REFUSALS = (400, 408, 414, 431)
_NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-Forwarded-For", b"TE", b"Upgrade",
          b"Keep-Alive", b"Proxy-Connection", b"Expect", b"Trailer", b"X-A", b"content-length", b"transfer-encoding"]
_VALUES = [b"chunked", b"0", b"2", b"5", b"-1", b"1, 1", b"close", b"keep-alive", b"identity", b"chunked, identity",
           b"gzip, chunked", b" chunked", b"chunked ", b"xchunked", b"CHUNKED", b"100-continue", b"h2c", b"x"]


def _head_field() -> Any:
    """A field, well formed nine times in ten, with the names and values that decide framing."""
    token = st.text("abcdefghijklmnopqrstuvwxyz-_.!#$%&'*+^`|~0123456789", min_size=1, max_size=12).map(str.encode)
    text = st.text("abcdefghijklmnopqrstuvwxyz ,;=/0123456789", max_size=24).map(str.encode)
    name = st.one_of(st.sampled_from(_NAMES), st.sampled_from(_NAMES), token)
    value = st.one_of(st.sampled_from(_VALUES), st.sampled_from(_VALUES), text, st.integers(0, 1100).map(lambda n: b"v" * n))
    good = st.tuples(name, value).map(lambda t: t[0] + b": " + t[1] + b"\r\n")
    separator = st.sampled_from([b":", b" : ", b":\t", b"", b":\x0b"])
    line_end = st.sampled_from([b"\n", b"\r", b"\r\n ", b"\x00\r\n"])
    bad = st.tuples(st.one_of(name, st.binary(max_size=12)), separator, st.one_of(value, st.binary(max_size=24)), line_end).map(b"".join)
    return st.one_of(*[good] * 9, bad)


def _chunked_body() -> Any:
    chunk = st.binary(min_size=1, max_size=40).map(lambda data: b"%x\r\n%s\r\n" % (len(data), data))
    bad_chunk = st.sampled_from([b"zz\r\nabc\r\n", b"-3\r\nabc\r\n", b"ffffffffffffffffff1\r\nabc\r\n", b"3\r\nabcd\r\n", b"3 \r\nabc\r\n",
                                 b"3;x=y\r\nabc\r\n", b"0x3\r\nabc\r\n"])
    trailer = st.sampled_from([b"", b"", b"X-T: 1\r\n", b"X-Forwarded-For: 6.6.6.6\r\n", b"Transfer-Encoding: chunked\r\n"])
    chunks = st.lists(st.one_of(*[chunk] * 5, bad_chunk), max_size=4)
    return st.tuples(chunks, trailer).map(lambda t: b"".join(t[0]) + b"0\r\n" + t[1] + b"\r\n")


def _mutated(data: bytes, mutations: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` with bytes inserted (0), deleted (1) or replaced (2) at thousandths of its length."""
    for where, how, what in mutations:
        i = where * len(data) // 1000
        data = data[:i] + what + data[i:] if how == 0 else data[:i] + data[i + len(what):] if how == 1 else data[:i] + what + data[i + len(what):]
    return data


def _request() -> Any:
    """A request: head, then an empty, raw or chunked body; sometimes with a few bytes mutated."""
    method = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS"])
    path = st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&%.-_", max_size=20).map(lambda t: b"/" + t.encode())
    target = st.one_of(path, st.integers(0, 1100).map(lambda n: b"/" + b"t" * n))
    version = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"])
    fields = st.lists(_head_field(), max_size=14)
    body = st.one_of(st.just(b""), st.just(b""), st.binary(max_size=60), _chunked_body())
    mutations = st.lists(st.tuples(st.integers(1, 999), st.integers(0, 2), st.binary(min_size=1, max_size=3)), min_size=1, max_size=2)
    plain = st.tuples(method, target, version, fields, body).map(
        lambda t: t[0] + b" " + t[1] + b" " + t[2] + b"\r\n" + b"".join(t[3]) + b"\r\n" + t[4]
    )
    return st.tuples(plain, st.one_of(*[st.just([])] * 3, mutations)).map(lambda t: _mutated(*t))


def _read_all(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """What comes back until the proxy closes (True) or ``deadline`` (monotonic) passes (False)."""
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got, False
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk


_FUZZ_LIMITS = {**SMALL, "header_timeout": 0.2}


@pytest.fixture(scope="module")
def fuzz_se() -> Any:
    with ServedInThread(_FUZZ_LIMITS) as se:
        yield se


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True)
@given(requests=st.lists(_request(), min_size=1, max_size=3), cut=st.one_of(st.none(), st.integers(1, 400)), half_close=st.booleans())
@example(requests=[POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"], cut=None, half_close=True)
@example(requests=[b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"], cut=None, half_close=False)
@example(requests=[GET + b"X-Big: " + b"v" * 5000 + b"\r\n\r\n"], cut=None, half_close=False)
@example(requests=[GET + b"X-A: 1\r\n"], cut=None, half_close=False)
def test_fuzzed_requests_never_crash_stall_or_leak_a_refused_request(fuzz_se: ServedInThread, requests: list[bytes], cut: Optional[int],
                                                                       half_close: bool) -> None:
    """Hypothesis over request heads and bodies (fields, framings, chunk sizes, line ends, several
    per connection, cut short or not, with or without the client's EOF): the SE never raises on its
    loop and serves a plain request afterwards; its loop never stalls for the head deadline and
    after the client's EOF it answers and closes; a refused first request sends the backend no
    byte; the backend never gets a byte it cannot parse as HTTP nor keeps half a request."""
    se = fuzz_se
    data = b"".join(requests)
    if cut is not None:
        data = data[:cut]
    backend = se.backend
    received_before = se.call(lambda: len(backend.received))
    with socket.create_connection(("127.0.0.1", se.port), timeout=2) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        response, closed = _read_all(sock, time.monotonic() + (2.0 if half_close else _FUZZ_LIMITS["header_timeout"] + 0.3))
    if half_close:
        assert closed, f"the SE kept the connection after the client's EOF: {response[:300]!r}"
    if response:
        assert response.startswith(b"HTTP/1.1 "), response[:300]
    status = _status(response)
    if status in _REFUSALS:
        assert se.call(lambda: len(backend.received)) == received_before, f"refused {status} but the backend got bytes"
        assert response.endswith(b"\r\nConnection: close\r\n\r\n") or b"\r\nConnection: close\r\n\r\nHTTP/1.1 " in response
    # Whatever the backend was sent ends at a request boundary, or its connection was aborted.
    wait_until_ok = time.monotonic() + 1.0
    while se.call(lambda: backend.midway_count()) and time.monotonic() < wait_until_ok:
        time.sleep(0.01)
    assert 0 == se.call(lambda: backend.midway_count()), "the backend holds half a request"
    assert 0 == backend.garbage, "the backend got bytes that are not HTTP (a smuggled request)"
    assert [] == se.errors
    assert se.max_stall < _FUZZ_LIMITS["header_timeout"], se.max_stall
    with socket.create_connection(("127.0.0.1", se.port), timeout=2) as sock:
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        after, _ = _read_all(sock, time.monotonic() + 2.0)
    assert 200 == _status(after), after


@both_loops
async def test_a_response_with_too_many_fields_is_a_502() -> None:
    """max_header_count holds for responses too: one with more fields is answered 502 and its
    backend connection is not reused; one at the limit is relayed."""
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + _fields(9) + b"\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + _fields(10) + b"\r\nok",
    ]

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if answers and b"\r\n\r\n" in data:
                self.transport.write(answers.pop(0))

    server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", 0)
    port = free_port()
    dp = stub_dataplane()
    try:
        assert {} == await dp.apply(slice_of(web(port, server.sockets[0].getsockname()[1], SMALL)))
        ok, _ = await exchange(port, GET + b"\r\n", timeout=2.0, until=b"\r\n\r\nok")
        assert 200 == _status(ok) and ok.count(b"X-F") == 9
        bad, _ = await exchange(port, GET + b"\r\n", timeout=2.0, until=b"</html>\n")
        assert 502 == _status(bad), bad
    finally:
        await dp.close()
        server.close()
