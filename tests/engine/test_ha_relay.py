"""Active/active (shared pair) relaying: the primary relays a connection to a secondary's intake when
it cannot pass the socket (``scaleout_mode="relay"``, or the send of the fd failed).

The in-process tests run two DataPlanes with HA coordinators on one loop; each SE proxies to its own
backend, which names the SE in its answer, so a response tells which SE served the connection. The
primary is made to look loaded (its open-connection count), so every new connection goes to the
secondary and no test depends on how the share falls.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import socket
import tempfile
from functools import partial
from typing import Any, Awaitable, Callable, Optional

import pytest
import uvloop

from engine import ha
from engine.config import SliceConfig
from tests.engine.test_ha import SE, _vip, get
from tests.engine.test_ha import pair as pair  # noqa: F401  (a fixture, found by name)
from tests.helpers import free_port, wait_for, wait_until

SHARED = "HA_MODE_SHARED_PAIR"
CLIENT_IP = "127.0.0.77"  # the test's clients connect from here; the relay comes from 127.0.0.1


# -- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["127.0.0.1", 4000], ("127.0.0.1", 4000)),
        (["::1", 4000], ("::1", 4000)),
        (["10.0.0.1", 4000], None),
        (["localhost", 4000], None),
        (["127.0.0.1", 0], None),
        (["127.0.0.1", 65536], None),
        (["127.0.0.1", True], None),
        (["127.0.0.1", "4000"], None),
        (["127.0.0.1"], None),
        ({"host": "127.0.0.1"}, None),
    ],
)
def test_relay_address_from_wire(raw: Any, expected: Optional[tuple[str, int]]) -> None:
    """A peer's relay intake address is used only when it is a loopback IP and a real port."""
    assert expected == ha.relay_from_wire(raw)


def test_relay_header_round_trip() -> None:
    """The header the primary writes is what the intake reads (without its newline)."""
    line = ha.relay_header("vs-1", ("127.0.0.77", 5123), "ab" * 16)
    expected = (b"AVI-RELAY vs-1 127.0.0.77 5123 " + b"ab" * 16 + b"\n", ("vs-1", ("127.0.0.77", 5123), "ab" * 16))
    assert expected == (line, ha.parse_relay_header(line[:-1]))
    assert ha.relay_token_from_wire("ab" * 16) == "ab" * 16
    assert ha.relay_token_from_wire("short") is None and ha.relay_token_from_wire(None) is None


@pytest.mark.parametrize(
    "line",
    [b"AVI-RELAY vs-1 127.0.0.77 t", b"AVI-RELAY vs-1 127.0.0.77 70000 t", b"AVI-RELAY vs-1 nothost 5 t", b"RELAY vs-1 127.0.0.1 5 t",
     b"AVI-RELAY  127.0.0.1 5 t", b"AVI-RELAY vs-1 127.0.0.1 -5 t", b"AVI-RELAY vs-1 127.0.0.1 5 t x", b"AVI-RELAY \xff 127.0.0.1 5 t",
     b"AVI-RELAY vs-1 127.0.0.1 5"],
)
def test_bad_relay_headers_are_refused(line: bytes) -> None:
    assert None is ha.parse_relay_header(line)


def test_distribution_names_what_happened() -> None:
    """Status says which ways connections moved; before any did, the configured one."""
    assert ["fd_passing", "relay", "relay", "fd_passing+relay", "fd_passing"] == [
        ha.distribution(0, 0, "auto"), ha.distribution(0, 0, "relay"), ha.distribution(0, 3, "auto"),
        ha.distribution(2, 3, "relay"), ha.distribution(2, 0, "relay"),
    ]


def test_unknown_scaleout_mode_is_refused() -> None:
    from engine.dataplane import DataPlane
    from engine.ha_coordinator import HaCoordinator

    with pytest.raises(ValueError, match="scaleout_mode"):
        DataPlane(ha=partial(HaCoordinator, se_name="se-a", ha_dir="/tmp/avha-unused", scaleout_mode="splice"))


# -- two SEs in one process ----------------------------------------------------------------------


class _HttpBackend(asyncio.Protocol):
    """Answers every request with ``se=NAME xff=<X-Forwarded-For>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            xff = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-forwarded-for":
                    xff = value.strip()
            body = b"se=%s xff=%s" % (self.name.encode(), xff)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class _EchoBackend(asyncio.Protocol):
    """Speaks first (``hi se=NAME\\n``), echoes, and after the client's EOF writes ``bye\\n`` and closes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(b"hi se=%s\n" % self.name.encode())

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write(b"bye\n")
        self.transport.close()
        return True

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _Pair:
    """se-a (primary) and se-b (secondary) of one shared-pair VS, each with its own backend."""

    def __init__(self, ha_dir: str, vip: str, port: int, application: str) -> None:
        self.ha_dir, self.vip, self.port, self.application = ha_dir, vip, port, application
        self.planes: dict[str, Any] = {}
        self.backends: list[Any] = []

    async def start(self, name: str, scaleout_mode: str) -> Any:
        from engine.dataplane import DataPlane
        from engine.ha_coordinator import HaCoordinator
        from tests.engine.test_dataplane import StubChecker

        loop = asyncio.get_running_loop()
        factory = _HttpBackend if self.application == "http" else _EchoBackend
        backend = await loop.create_server(lambda: factory(name), "127.0.0.1", 0)
        self.backends.append(backend)
        doc = {
            "revision": 10, "se_name": name,
            "virtual_services": [{
                "uuid": "vs-web", "name": "web", "vip": self.vip, "ports": [self.port], "application": self.application,
                "pool": {"uuid": "pool-web", "name": "web-pool", "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
                         "servers": [{"ip": "127.0.0.1", "port": backend.sockets[0].getsockname()[1]}]},
                "placement": {"ha_mode": SHARED, "epoch": 10, "ses": ["se-a", "se-b"]},
            }],
        }
        plane = DataPlane(health_factory=StubChecker, ha=partial(HaCoordinator, se_name=name, ha_dir=self.ha_dir, peer_timeout=5.0, scaleout_mode=scaleout_mode))
        assert {} == await plane.apply(SliceConfig.from_dict(doc))
        self.planes[name] = plane
        return plane

    async def start_pair(self, mode_a: str, mode_b: str = "auto") -> tuple[Any, Any]:
        a = await self.start("se-a", mode_a)
        await wait_for(lambda: a.ha.status()["vs-web"]["accepting"], 5.0, what="se-a accepting")
        b = await self.start("se-b", mode_b)
        await wait_for(lambda: b.ha.status()["vs-web"]["holding"] and a.ha.relays.knows("se-b"), 5.0, what="se-b linked, holding the socket")
        # se-a looks busy: every new connection goes to se-b.
        a.open_connections = lambda: 1000
        await wait_for(lambda: a.ha.shares.own_open == 1000, 5.0, what="se-a to report itself busy")
        return a, b

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.vip, self.port, local_addr=(CLIENT_IP, 0))

    async def get(self) -> Optional[str]:
        try:
            reader, writer = await self.connect()
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 3)
            writer.close()
        except (OSError, asyncio.TimeoutError):
            return None
        return data.split(b"\r\n\r\n", 1)[1].decode() if data.startswith(b"HTTP/1.1 200") else None

    async def close(self) -> None:
        for plane in self.planes.values():
            await plane.close()
        for backend in self.backends:
            backend.close()


def _run(n: int, application: str, scenario: Callable[[_Pair], Awaitable[None]], timeout: float = 10, loop_name: str = "uvloop") -> None:
    ha_dir = tempfile.mkdtemp(prefix="avha", dir="/tmp")
    vip = _vip(n)
    env = _Pair(ha_dir, vip, free_port(vip), application)

    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(env), timeout)
        finally:
            await env.close()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop) as runner:
            runner.run(main())
    finally:
        for entry in os.listdir(ha_dir):
            os.unlink(os.path.join(ha_dir, entry))
        os.rmdir(ha_dir)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_relay_mode_serves_on_the_secondary_with_the_client_address(loop_name: str) -> None:
    """Relay mode: the secondary serves the connection, and its X-Forwarded-For is the client's address, not the primary's."""

    async def scenario(env: _Pair) -> None:
        a, b = await env.start_pair("relay")
        assert "relay" == a.ha.status()["vs-web"]["distribution"]
        bodies = [await env.get() for _ in range(5)]
        assert [f"se=se-b xff={CLIENT_IP}"] * 5 == bodies
        status_a, status_b = a.ha.status()["vs-web"], b.ha.status()["vs-web"]
        assert ("relay", {"se-b": 5}, "relay", {"relay": 5}, 0) == (
            status_a["distribution"], status_a["relayed"], status_b["distribution"], status_b["received"], b.ha.taken)
        # Served by the primary itself (now se-b looks busy): the same client address, taken the usual way.
        del a.open_connections
        b.open_connections = lambda: 1000
        await wait_for(lambda: a.ha.shares.own_open == 0 and a.ha.shares.peer_open.get("se-b") == 1000, 5.0, what="se-b to look busy")
        assert [f"se=se-a xff={CLIENT_IP}"] * 2 == [await env.get() for _ in range(2)]

    _run(30, "http", scenario, loop_name=loop_name)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_relay_carries_a_large_l4_transfer_both_ways_with_back_pressure_and_half_close(loop_name: str) -> None:
    """L4 through the relay: the backend speaks first, echoes megabytes intact (by hash) while the client does
    not read (the relay pauses instead of buffering), and answers after the client's EOF; then both ends close."""

    async def scenario(env: _Pair) -> None:
        a, b = await env.start_pair("relay")
        reader, writer = await env.connect()
        assert b"hi se=se-b\n" == await reader.readline()
        await wait_for(lambda: len(a.ha.relays.active) == 1, 5.0, what="the relay")
        relay = next(iter(a.ha.relays.active))
        chunk = os.urandom(256 * 1024)
        sent = hashlib.sha256()
        total = 0
        stop = asyncio.Event()

        async def write() -> None:
            nonlocal total
            while not stop.is_set() and total < 64 << 20:
                writer.write(chunk)
                sent.update(chunk)
                total += len(chunk)
                await writer.drain()
            writer.write_eof()

        writing = asyncio.create_task(write())
        # Nobody reads the echo: the primary must stop reading from the secondary, not buffer.
        await wait_for(lambda: not relay.server.transport.is_reading(), 8, what="back-pressure on the relay")
        buffered = relay.client.transport.get_write_buffer_size()
        stop.set()
        got = hashlib.sha256()
        received = 0
        tail = b""
        while data := await reader.read(1 << 20):
            pending = tail + data
            if len(pending) > 4:
                got.update(pending[:-4])
                received += len(pending) - 4
                tail = pending[-4:]
            else:
                tail = pending
        await writing
        writer.close()
        print(f"relayed {total >> 20} MiB each way; primary buffered {buffered} bytes to the client while it did not read")
        assert (total, sent.hexdigest(), b"bye\n") == (received, got.hexdigest(), tail)
        assert buffered < 1 << 20
        await wait_for(lambda: not a.ha.relays.active and not b.open_connections(), 5.0, what="the relay and the secondary's connection to end")
        assert {"se-b": 1} == a.ha.status()["vs-web"]["relayed"]

    _run(31, "l4", scenario, timeout=15, loop_name=loop_name)


def test_auto_mode_passes_the_socket_and_relays_when_the_send_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto mode passes the accepted socket; when sending it is refused, the connection is relayed and the link stays."""
    real = socket.send_fds

    def refuse(sock: socket.socket, buffers: Any, fds: Any, *args: Any) -> int:
        if b'"t":"conn"' in b"".join(buffers):
            raise PermissionError(errno.EPERM, "fd passing refused")
        return real(sock, buffers, fds, *args)

    async def scenario(env: _Pair) -> None:
        a, b = await env.start_pair("auto")
        assert [f"se=se-b xff={CLIENT_IP}"] * 2 == [await env.get() for _ in range(2)]
        assert ("fd_passing", {}, 2) == (a.ha.status()["vs-web"]["distribution"], a.ha.status()["vs-web"]["relayed"], b.ha.taken)
        monkeypatch.setattr(socket, "send_fds", refuse)
        assert [f"se=se-b xff={CLIENT_IP}"] * 2 == [await env.get() for _ in range(2)]
        status_a, status_b = a.ha.status()["vs-web"], b.ha.status()["vs-web"]
        assert ("fd_passing+relay", {"se-b": 2}, {"fd_passing": 2, "relay": 2}, ["se-b"]) == (
            status_a["distribution"], status_a["relayed"], status_b["received"], a.ha.links.peers())

    _run(32, "http", scenario)


def test_unreachable_intake_leaves_the_connection_to_the_primary() -> None:
    """A relay that cannot be opened (the secondary's intake is gone): the primary serves the connection itself."""

    async def scenario(env: _Pair) -> None:
        a, b = await env.start_pair("relay")
        b.ha.relays._intake.close()
        await b.ha.relays._intake.wait_closed()
        assert [f"se=se-a xff={CLIENT_IP}"] * 2 == [await env.get() for _ in range(2)]
        assert {} == a.ha.status()["vs-web"]["relayed"]

    _run(33, "http", scenario)


@pytest.mark.parametrize(
    ("who", "data"),
    [
        ("se-b", b"AVI-RELAY vs-other 127.0.0.1 5000 TOKEN\nGET / HTTP/1.1\r\n\r\n"),  # a VS it does not serve
        ("se-a", b"AVI-RELAY vs-web 127.0.0.1 5000 TOKEN\nGET / HTTP/1.1\r\n\r\n"),  # the VS's primary
        ("se-b", b"AVI-RELAY vs-web 127.0.0.1 TOKEN\nGET / HTTP/1.1\r\n\r\n"),  # a malformed header
        ("se-b", b"AVI-RELAY vs-web 127.0.0.1 5000 " + b"0" * 32 + b"\nGET / HTTP/1.1\r\n\r\n"),  # a stranger's token
        ("se-b", b"A" * 600),  # no end of header within 512 bytes
    ],
    ids=["unknown-vs", "primary", "malformed", "wrong-token", "too-long"],
)
def test_intake_closes_what_it_must_not_serve(who: str, data: bytes) -> None:
    """The intake closes a connection for a VS it is not a secondary of, a bad header, a wrong token, or one longer than 512 bytes."""

    async def scenario(env: _Pair) -> None:
        a, b = await env.start_pair("relay")
        plane = {"se-a": a, "se-b": b}[who]
        reader, writer = await asyncio.open_connection(*plane.ha.relays.address)
        writer.write(data.replace(b"TOKEN", plane.ha.relays.token.encode()))
        assert b"" == await asyncio.wait_for(reader.read(), 3)
        writer.close()
        assert [] == [conn for lst in plane.listeners_of("vs-web") for conn in lst.connections]

    _run(34, "http", scenario)


# -- real processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_relay_mode_processes_share_connections(pair: tuple[SE, SE, str]) -> None:
    """Two SE processes, the primary in relay mode: about half the new connections reach the secondary
    through the relay and the status says so; when the secondary dies the primary keeps them all."""
    a, b, _ = pair
    vip = _vip(35)
    port = free_port(vip)
    a.scaleout_mode = "relay"
    for se in (a, b):
        se.write_slice(vip, port, [a.name, b.name], 10, revision=10, mode=SHARED)
    a.start()
    a.wait_role("active", distribution="relay")
    b.start()
    b.wait_role("secondary", holding=True)
    wait_until(lambda: get(vip, port) == "se=se-b", 5, interval=0.01, what="se-a to relay a connection to se-b")
    bodies = [get(vip, port) for _ in range(40)]
    print(f"relayed pair: {bodies.count('se=se-a')} served by se-a, {bodies.count('se=se-b')} by se-b")
    assert 40 == bodies.count("se=se-a") + bodies.count("se=se-b")
    assert bodies.count("se=se-b") >= 10 and bodies.count("se=se-a") >= 10
    relayed = bodies.count("se=se-b") + 1
    status = wait_until(lambda: a.vs() if a.vs().get("relayed") == {"se-b": relayed} else None, 5, interval=0.01, what=f"se-a to count {relayed} relayed")
    assert "relay" == status["distribution"]
    status = wait_until(lambda: b.vs() if b.vs().get("received") == {"relay": relayed} else None, 5, interval=0.01, what=f"se-b to count {relayed} relayed")
    assert "relay" == status["distribution"]
    b.signal(signal.SIGKILL)
    assert b.proc is not None
    b.proc.wait(5)
    wait_until(lambda: get(vip, port) == "se=se-a", 5, interval=0.01, what="se-a to serve alone")
    assert ["se=se-a"] * 20 == [get(vip, port) for _ in range(20)]
