"""DataPlane.apply: make-before-break listeners and pools, drains, bind errors, health wiring.

Also holds the helpers the L4 and L7 tests share: slice builders, a stub health checker, small
asyncio backends, and ``both_loops`` (run a scenario on the default loop and on uvloop).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Awaitable, Callable, Optional

import aiohttp
import httptools
import pytest
import uvloop

from engine.config import PoolConfig, SliceConfig
from engine.dataplane import DataPlane
from tests.helpers import free_port, wait_for

RR = "LB_ALGORITHM_ROUND_ROBIN"
LC = "LB_ALGORITHM_LEAST_CONNECTIONS"
HASH = "LB_ALGORITHM_CONSISTENT_HASH"
TEST_TIMEOUT = 9.0

# -- helpers shared with test_l4 / test_l7 ---------------------------------------------------------


def pool_doc(servers: list[Any], *, uuid: str = "pool-1", name: str = "p1", algorithm: str = RR, grace: float = 60.0, monitors: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """``servers`` are ``(ip, port)`` or ``(ip, port, ratio)``."""
    docs = [{"ip": s[0], "port": s[1], "ratio": s[2] if len(s) > 2 else 1} for s in servers]
    return {"uuid": uuid, "name": name, "lb_algorithm": algorithm, "servers": docs, "graceful_disable_timeout": grace, "monitors": monitors or []}


def vs_doc(name: str, vip: str, ports: int | list[int], application: str, pool: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uuid": f"vs-{name}",
        "name": name,
        "vip": vip,
        "ports": ports if isinstance(ports, list) else [ports],
        "application": application,
        "pool": pool,
    }


def slice_of(*vss: dict[str, Any], revision: int = 1) -> SliceConfig:
    return SliceConfig.from_dict({"revision": revision, "se_name": "se-1", "virtual_services": list(vss)})


class StubChecker:
    """Stands in for engine.health.HealthChecker: every server up until a test says otherwise."""

    by_pool: dict[str, "StubChecker"] = {}

    def __init__(self, pool: PoolConfig, on_change: Callable[[str, bool], None]) -> None:
        self.pool = pool
        self.on_change = on_change
        self._states = {s.key: True for s in pool.servers}
        self.started = False
        self.stopped = False
        StubChecker.by_pool[pool.uuid] = self

    def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def update(self, pool: PoolConfig) -> None:
        self.pool = pool
        self._states = {s.key: self._states.get(s.key, True) for s in pool.servers}

    def states(self) -> dict[str, bool]:
        return dict(self._states)

    def set(self, key: str, up: bool) -> None:
        self._states[key] = up
        self.on_change(key, up)


def stub_dataplane(**kwargs: Any) -> DataPlane:
    return DataPlane(health_factory=StubChecker, **kwargs)


def both_loops(fn: Callable[[], Awaitable[None]]) -> Any:
    """Run an async scenario once on asyncio's default loop and once on uvloop, bounded in time."""

    @pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
    def test(loop_name: str) -> None:
        factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(fn(), TEST_TIMEOUT))

    test.__name__ = fn.__name__
    test.__qualname__ = fn.__qualname__
    test.__doc__ = fn.__doc__
    return test


class TcpBackend:
    """Echoes what it reads; on the client's EOF writes ``<tag>-eof`` and closes. ``greet`` sends the tag on connect."""

    def __init__(self, tag: bytes, *, greet: bool = False) -> None:
        self.tag = tag
        self.greet = greet
        self.accepted = 0
        self.server: Optional[asyncio.AbstractServer] = None
        self.port = 0
        self.transports: list[Any] = []

    async def start(self, host: str = "127.0.0.1") -> "TcpBackend":
        backend = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                backend.accepted += 1
                backend.transports.append(transport)
                if backend.greet:
                    transport.write(backend.tag)

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

            def eof_received(self) -> bool:
                self.transport.write(backend.tag + b"-eof")
                self.transport.close()
                return True

        self.server = await asyncio.get_running_loop().create_server(Proto, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.transports:
            if not t.is_closing():
                t.abort()


class HttpBackend:
    """A small keep-alive HTTP/1.1 server (httptools), counting the connections it accepts.

    ``/echo`` answers the request body; ``/chunked`` sends one chunk, waits for ``release``, then
    another; ``/until-close`` answers without a length and closes; ``/status/N`` answers N; other
    paths answer the tag. Every request is recorded as (method, path, headers, body).
    """

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.accepted = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release = asyncio.Event()
        self.server: Optional[asyncio.AbstractServer] = None
        self.port = 0
        self.transports: list[Any] = []

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1") -> "HttpBackend":
        backend = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)
                backend.accepted += 1
                backend.transports.append(transport)

            def data_received(self, data: bytes) -> None:
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserError:
                    self.transport.close()

            def on_message_begin(self) -> None:
                self.url = b""
                self.headers: dict[str, str] = {}
                self.body: list[bytes] = []

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers[name.decode().lower()] = value.decode()

            def on_body(self, body: bytes) -> None:
                self.body.append(body)

            def on_message_complete(self) -> None:
                keep_alive = self.parser.should_keep_alive()
                method = self.parser.get_method().decode()
                path = self.url.decode()
                body = b"".join(self.body)
                backend.requests.append((method, path, self.headers, body))
                backend.respond(self.transport, method, path, body, keep_alive)

        self.server = await asyncio.get_running_loop().create_server(Proto, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def respond(self, transport: Any, method: str, path: str, body: bytes, keep_alive: bool) -> None:
        conn = b"" if keep_alive else b"Connection: close\r\n"
        if path == "/chunked":
            transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + conn + b"\r\n5\r\nfirst\r\n")

            async def rest() -> None:
                await self.release.wait()
                transport.write(b"6\r\nsecond\r\n0\r\n\r\n")
                if not keep_alive:
                    transport.close()

            asyncio.get_running_loop().create_task(rest())
            return
        if path == "/until-close":
            transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length here")
            transport.close()
            return
        status = int(path.split("/")[2]) if path.startswith("/status/") else 200
        payload = body if path == "/echo" else self.tag
        head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Backend: %s\r\n" % (status, len(payload), self.tag) + conn + b"\r\n"
        transport.write(head if method == "HEAD" else head + payload)
        if not keep_alive:
            transport.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.transports:
            if not t.is_closing():
                t.abort()


# -- DataPlane tests ---------------------------------------------------------------------------------


async def test_pool_changes_under_load_fail_no_request() -> None:
    """Adding and removing servers and changing the algorithm while 1 000 requests run loses none."""
    backends = [await HttpBackend(tag).start() for tag in (b"a", b"b", b"c")]
    a, b, c = (("127.0.0.1", be.port) for be in backends)
    port = free_port()
    dp = stub_dataplane()
    revisions = [
        pool_doc([a, b]),
        pool_doc([a, b, c]),
        pool_doc([b, c], algorithm=LC),
        pool_doc([c, a], algorithm=HASH),
        pool_doc([a], algorithm=RR),
        pool_doc([a, b, (c[0], c[1], 5)]),
    ]
    try:
        assert {} == await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", revisions[0])))
        statuses: list[int] = []

        async def client(n: int) -> None:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
                for _ in range(n):
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        await resp.read()
                        statuses.append(resp.status)

        async def churn() -> None:
            i = 0
            while len(statuses) < 1000:
                i += 1
                pool = revisions[i % len(revisions)]
                assert {} == await dp.apply(slice_of(vs_doc("web", "127.0.0.1", port, "http", pool), revision=i + 1))
                await asyncio.sleep(0.002)

        churner = asyncio.create_task(churn())
        await asyncio.wait_for(asyncio.gather(*(client(250) for _ in range(4))), TEST_TIMEOUT)
        await churner
        assert [200] * 1000 == statuses
        assert {be.tag for be in backends} == {be.tag for be in backends if be.requests}
    finally:
        await dp.close()
        for be in backends:
            be.close()


async def test_l4_connections_survive_pool_changes() -> None:
    """Short L4 connections opened while the pool changes all get through."""
    backends = [await TcpBackend(tag, greet=True).start() for tag in (b"a", b"b")]
    a, b = (("127.0.0.1", be.port) for be in backends)
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([a]))))
        got = []
        for i in range(200):
            if i % 20 == 0:
                await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([a, b] if i % 40 else [b], algorithm=RR if i % 60 else LC))))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            got.append(await reader.readexactly(1))
            writer.close()
        assert 200 == len(got)
        assert {b"a", b"b"} == set(got)
    finally:
        await dp.close()
        for be in backends:
            be.close()


async def test_removed_vs_stops_accepting_but_established_connection_runs_on() -> None:
    """Removing a VS closes its listener; an open L4 connection keeps relaying until it is closed."""
    backend = await TcpBackend(b"a").start()
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", backend.port)]))))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert b"before" == await reader.readexactly(6)

        assert {} == await dp.apply(slice_of(revision=2))

        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"after")
        assert b"after" == await reader.readexactly(5)
        writer.write_eof()
        assert b"a-eof" == await reader.read()
        writer.close()
        await wait_for(lambda: not dp._retired or not dp._retired[0].connections, 5.0, what="drained")
        assert {} == dp.telemetry()
    finally:
        await dp.close()
        backend.close()


async def test_drain_closes_leftover_connections_after_grace() -> None:
    """Connections still open when the pool's graceful-disable timeout ends are closed."""
    backend = await TcpBackend(b"a").start()
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", backend.port)], grace=0.3))))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert b"x" == await reader.readexactly(1)
        started = time.monotonic()
        await dp.apply(slice_of(revision=2))
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        assert 0.2 < time.monotonic() - started < 3
        writer.close()
    finally:
        await dp.close()
        backend.close()


async def test_kept_listener_swaps_config_without_dropping_connections() -> None:
    """Re-applying a VS with another pool keeps its open connections; new ones use the new pool."""
    old = await TcpBackend(b"old", greet=True).start()
    new = await TcpBackend(b"new", greet=True).start()
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", old.port)]))))
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        assert b"old" == await r1.readexactly(3)

        assert {} == await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", new.port)], uuid="pool-2", name="p2")), revision=2))

        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert b"new" == await r2.readexactly(3)
        w1.write(b"still here")
        assert b"still here" == await r1.readexactly(10)
        assert {"p2": {f"127.0.0.1:{new.port}": True}} == dp.server_states()
        assert 2 == dp.telemetry()["tcp"]["total_connections"]
        for w in (w1, w2):
            w.close()
    finally:
        await dp.close()
        old.close()
        new.close()


async def test_bind_failure_is_reported_and_other_vs_serves() -> None:
    """A VS whose port is taken is named in apply()'s errors while the other VS serves."""
    backend = await HttpBackend(b"a").start()
    taken = socket.socket()
    taken.bind(("127.10.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    good_port = free_port("127.10.0.2")
    pool = pool_doc([("127.0.0.1", backend.port)])
    dp = stub_dataplane()
    try:
        errors = await dp.apply(
            slice_of(vs_doc("blocked", "127.10.0.1", taken_port, "http", pool), vs_doc("good", "127.10.0.2", good_port, "http", pool))
        )
        assert ["blocked"] == list(errors)
        assert errors["blocked"].startswith(f"cannot bind 127.10.0.1:{taken_port}: [Errno 98]")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.10.0.2:{good_port}/") as resp:
                assert (200, b"a") == (resp.status, await resp.read())
        assert {("127.10.0.2", good_port): "good"} == dp.listening()

        taken.close()
        assert {} == await dp.apply(
            slice_of(vs_doc("blocked", "127.10.0.1", taken_port, "http", pool), vs_doc("good", "127.10.0.2", good_port, "http", pool), revision=2)
        )
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.10.0.1:{taken_port}/") as resp:
                assert 200 == resp.status
    finally:
        taken.close()
        await dp.close()
        backend.close()


async def test_health_changes_reach_the_balancer_and_are_reported() -> None:
    """A checker's on_change marks the server down for new picks and is queued for the caller."""
    backends = [await TcpBackend(tag, greet=True).start() for tag in (b"a", b"b")]
    a, b = (("127.0.0.1", be.port) for be in backends)
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([a, b]))))
        StubChecker.by_pool["pool-1"].set(f"127.0.0.1:{b[1]}", False)

        assert [("pool-1", f"127.0.0.1:{b[1]}", False)] == dp.drain_health_changes()
        assert [] == dp.drain_health_changes()
        assert {"p1": {f"127.0.0.1:{a[1]}": True, f"127.0.0.1:{b[1]}": False}} == dp.server_states()
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b"a" == await reader.readexactly(1)
            writer.close()
        assert 0 == backends[1].accepted
    finally:
        await dp.close()
        for be in backends:
            be.close()


async def test_removed_pool_stops_its_checker() -> None:
    """A pool no VS uses any more has its health checker stopped; a new pool's checker is started."""
    port = free_port()
    dp = stub_dataplane()
    try:
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", 1)]))))
        first = StubChecker.by_pool["pool-1"]
        await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool_doc([("127.0.0.1", 1)], uuid="pool-2")), revision=2))
        assert (True, True) == (first.started, first.stopped)
        assert (True, False) == (StubChecker.by_pool["pool-2"].started, StubChecker.by_pool["pool-2"].stopped)
    finally:
        await dp.close()


def _tcp_monitor(**overrides: Any) -> dict[str, Any]:
    monitor = {"name": "tcp", "type": "HEALTH_MONITOR_TCP", "send_interval": 0.05, "receive_timeout": 0.04, "successful_checks": 1, "failed_checks": 1}
    monitor.update(overrides)
    return monitor


async def test_real_health_checker_takes_a_dead_server_out_and_back() -> None:
    """With engine.health's TCP monitor, a dead server goes down (reported once), then up when it listens."""
    live = await TcpBackend(b"a", greet=True).start()
    dead_port = free_port()
    dead_key = f"127.0.0.1:{dead_port}"
    port = free_port()
    dp = DataPlane()
    revived: Optional[TcpBackend] = None
    try:
        pool = pool_doc([("127.0.0.1", live.port), ("127.0.0.1", dead_port)], monitors=[_tcp_monitor()])
        assert {} == await dp.apply(slice_of(vs_doc("tcp", "127.0.0.1", port, "l4", pool)))
        await wait_for(lambda: dp.server_states()["p1"][dead_key] is False, 5.0, what="dead server down")
        assert [("pool-1", dead_key, False)] == dp.drain_health_changes()
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b"a" == await reader.readexactly(1)
            writer.close()
        assert 0 == dp.telemetry()["tcp"]["connect_failures"]

        revived = TcpBackend(b"b", greet=True)
        revived.server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", dead_port)
        await wait_for(lambda: dp.server_states()["p1"][dead_key] is True, 5.0, what="server back up")
        assert [("pool-1", dead_key, True)] == dp.drain_health_changes()
    finally:
        await dp.close()
        live.close()
        if revived is not None and revived.server is not None:
            revived.server.close()


async def test_refused_pool_keeps_the_vs_on_its_last_good_pool() -> None:
    """A pool whose monitor the SE cannot run is reported; its VS keeps serving from the old pool, others are unaffected."""
    a = await TcpBackend(b"a", greet=True).start()
    b = await TcpBackend(b"b", greet=True).start()
    port_x, port_y, port_z = free_port(), free_port(), free_port()
    dp = DataPlane()
    good_x = pool_doc([("127.0.0.1", a.port)], uuid="pool-x", name="px")
    good_y = pool_doc([("127.0.0.1", b.port)], uuid="pool-y", name="py")
    bad = pool_doc([("127.0.0.1", b.port)], uuid="pool-bad", name="bad", monitors=[_tcp_monitor(name="weird", type="HEALTH_MONITOR_HTTP", http_response_codes=["HTTP_9XX"])])
    try:
        assert {} == await dp.apply(slice_of(vs_doc("x", "127.0.0.1", port_x, "l4", good_x), vs_doc("y", "127.0.0.1", port_y, "l4", good_y)))
        errors = await dp.apply(
            slice_of(vs_doc("x", "127.0.0.1", port_x, "l4", bad), vs_doc("y", "127.0.0.1", port_y, "l4", good_y), vs_doc("z", "127.0.0.1", port_z, "l4", bad), revision=2)
        )
        assert ["x", "z"] == sorted(errors)
        assert errors["x"].startswith("pool bad: health monitor weird: http_response_codes")
        for port, tag in ((port_x, b"a"), (port_y, b"b")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert tag == await reader.readexactly(1)
            writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port_z)
        assert {"px", "py"} == set(dp.server_states())
    finally:
        await dp.close()
        a.close()
        b.close()
