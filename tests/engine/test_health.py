"""Health monitoring: Avi's up/down rules, and real checks against sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import health
from engine.config import MonitorConfig, PoolConfig, ServerConfig
from engine.health import DOWN, UNKNOWN, UP, HealthChecker, MonitorUnavailable, ServerHealth, ServerStatus
from tests.helpers import free_port, wait_for

INTERVAL = 0.2
TIMEOUT = 0.15


# -- the pure state machine ------------------------------------------------------------------------


def test_new_server_counts_as_up() -> None:
    """A server no check has judged is UNKNOWN, which takes traffic."""
    h = ServerHealth(2, 3)
    assert (UNKNOWN, True) == (h.state, h.up)


def test_down_after_failed_checks_consecutive_failures() -> None:
    """The failed_checks-th failure in a row marks the server down, and only that one reports."""
    h = ServerHealth(2, 3)
    assert [None, None, False] == [h.record(False) for _ in range(3)]
    assert DOWN == h.state


def test_up_after_successful_checks_consecutive_successes() -> None:
    """A down server comes back on the successful_checks-th success in a row."""
    h = ServerHealth(2, 1, state=DOWN)
    assert [None, True] == [h.record(True) for _ in range(2)]
    assert UP == h.state


def test_unknown_becoming_up_is_not_a_change() -> None:
    """UNKNOWN to UP changes the state but not up-ness, so record() reports nothing."""
    h = ServerHealth(1, 1)
    assert (None, UP) == (h.record(True), h.state)


def test_a_success_resets_the_failure_streak() -> None:
    """Failures must be consecutive: one success in between starts the count again."""
    h = ServerHealth(2, 2)
    for result in (False, True, False, True, False):
        assert h.record(result) is None
    assert h.up


@given(
    successful=st.integers(2, 5),
    failed=st.integers(2, 5),
    start=st.sampled_from([UNKNOWN, UP, DOWN]),
    length=st.integers(1, 40),
)
def test_flapping_never_changes_state(successful: int, failed: int, start: str, length: int) -> None:
    """Alternating results never reach a threshold of two or more."""
    h = ServerHealth(successful, failed, state=start)
    results = [i % 2 == 0 for i in range(length)]
    assert [None] * length == [h.record(r) for r in results]
    assert start == h.state


@given(successful=st.integers(1, 5), failed=st.integers(1, 5), results=st.lists(st.booleans(), max_size=60))
def test_state_follows_the_latest_streak(successful: int, failed: int, results: list[bool]) -> None:
    """After any history: reports are exactly the changes of up-ness, and a change is only ever
    made by a streak that just reached its threshold."""
    h = ServerHealth(successful, failed)
    for i, result in enumerate(results):
        was_up = h.up
        change = h.record(result)
        assert (None if h.up == was_up else h.up) == change
        streak = 0
        for earlier in reversed(results[: i + 1]):
            if earlier != result:
                break
            streak += 1
        if change is False:
            assert not result and streak >= failed
        if change is True:
            assert result and streak >= successful
        if not result and streak >= failed:
            assert DOWN == h.state
        if result and streak >= successful:
            assert UP == h.state


def monitor(name: str = "hm", type: str = "HEALTH_MONITOR_TCP", successful: int = 2, failed: int = 2, **kwargs: object) -> MonitorConfig:
    return MonitorConfig(name, type, kwargs.pop("send_interval", INTERVAL), kwargs.pop("receive_timeout", TIMEOUT), successful, failed, **kwargs)  # type: ignore[arg-type]


def test_server_is_up_only_while_every_monitor_is() -> None:
    """With two monitors, either one saying DOWN takes the server down."""
    status = ServerStatus([monitor("a", failed=1, successful=1), monitor("b", failed=1, successful=1)])
    assert [False, None, None, True] == [
        status.record("a", False),
        status.record("b", False),
        status.record("a", True),
        status.record("b", True),
    ]


def test_reconfigure_keeps_state_and_drops_removed_monitors() -> None:
    """Removing the monitor that holds a server down brings it up; kept monitors keep state."""
    status = ServerStatus([monitor("a", failed=1), monitor("b", failed=1)])
    status.record("b", False)
    assert status.reconfigure([monitor("a", failed=1)]) is True
    status.record("a", False)
    assert (None, {"a": DOWN, "c": UNKNOWN}) == (status.reconfigure([monitor("a", failed=3), monitor("c")]), status.monitor_states())


@pytest.mark.parametrize(
    ("codes", "status", "expected"),
    [
        (("HTTP_2XX",), 204, True),
        (("HTTP_2XX",), 301, False),
        (("HTTP_2XX", "HTTP_3XX"), 302, True),
        (("HTTP_ANY",), 503, True),
        (("HTTP_404",), 404, True),
        (("200",), 201, False),
        ((), 200, True),
    ],
)
def test_response_codes(codes: tuple[str, ...], status: int, expected: bool) -> None:
    """Classes, HTTP_ANY and exact codes match as Avi's http_response_code does."""
    assert expected is health.response_code_matcher("hm", codes)(status)


def test_unknown_response_code_is_refused() -> None:
    """A code the monitor cannot interpret is refused when the checker is built."""
    pool = make_pool([ServerConfig("127.0.0.1", 80)], [monitor(type="HEALTH_MONITOR_HTTP", http_response_codes=("HTTP_6XX",))])
    with pytest.raises(MonitorUnavailable, match="HTTP_6XX"):
        HealthChecker(pool, lambda key, up: None)


def test_http_1_1_requests_get_host_and_connection_close() -> None:
    """HTTP/1.1 requests need a Host header; HTTP/1.0 ones are sent as written."""
    assert b"GET /ok HTTP/1.1\r\nHost: 10.0.0.1:80\r\nConnection: close\r\n\r\n" == health.http_request_bytes("GET /ok HTTP/1.1", "10.0.0.1:80")
    assert b"GET / HTTP/1.0\r\n\r\n" == health.http_request_bytes("GET / HTTP/1.0", "10.0.0.1:80")
    assert b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" == health.http_request_bytes("HEAD / HTTP/1.1\nHost: x\n", "10.0.0.1:80")


# -- the checker, against real sockets -----------------------------------------------------------


def make_pool(servers: list[ServerConfig], monitors: list[MonitorConfig]) -> PoolConfig:
    return PoolConfig("pool-uuid", "web-pool", "LB_ALGORITHM_ROUND_ROBIN", tuple(servers), tuple(monitors))


class Backend:
    """An HTTP server on 127.0.0.1 that answers every request with ``status`` and can be stopped
    and restarted on the same port."""

    def __init__(self, listeners: int = 1) -> None:
        self.listeners = listeners
        self.ports: list[int] = []
        self.status = 200
        self.port = 0
        self.requests: list[bytes] = []
        self.active = 0
        self.max_active = 0
        self.delay = 0.0
        self.accepted_at: list[float] = []
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for i in range(self.listeners):
            port = self.ports[i] if i < len(self.ports) else 0
            server = await asyncio.start_server(self._handle, "127.0.0.1", port, reuse_address=True)
            self._servers.append(server)
            if i >= len(self.ports):
                self.ports.append(server.sockets[0].getsockname()[1])
        self.port = self.ports[0]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(asyncio.get_running_loop().time())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(request)
            await asyncio.sleep(self.delay)
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.active -= 1
            writer.close()

    @property
    def server(self) -> ServerConfig:
        return ServerConfig("127.0.0.1", self.port)


@pytest.fixture
async def backend():  # type: ignore[no-untyped-def]
    b = Backend()
    await b.start()
    yield b
    await b.stop()


class Changes:
    """Records on_change calls so a test can wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, float]] = []
        self._event = asyncio.Event()

    def __call__(self, key: str, up: bool) -> None:
        self.seen.append((key, up, asyncio.get_running_loop().time()))
        self._event.set()

    async def reported(self, key: str, up: bool, within: float) -> float:
        """The loop time of the first report (key, up) at or after now; fails after ``within``."""
        since = asyncio.get_running_loop().time()
        async with asyncio.timeout(within):
            while True:
                for k, u, t in self.seen:
                    if (k, u) == (key, up) and t >= since:
                        return t
                self._event.clear()
                await self._event.wait()


async def test_http_server_goes_down_when_stopped_and_up_when_restarted(backend: Backend) -> None:
    """Stopping the server marks it down within failed_checks x interval + timeout; a restart
    brings it back within successful_checks x interval + timeout."""
    changes = Changes()
    hm = monitor(type="HEALTH_MONITOR_HTTP", http_request="GET /health HTTP/1.1")
    checker = HealthChecker(make_pool([backend.server], [hm]), changes)
    checker.start()
    try:
        key = backend.server.key
        await wait_for(lambda: checker.monitor_states()[key]["hm"] == UP, 3 * INTERVAL + 1)
        assert b"Host: 127.0.0.1:" in backend.requests[0]
        slack = 0.25  # event-loop scheduling on a busy test machine
        await backend.stop()
        stopped = asyncio.get_running_loop().time()
        went_down = await changes.reported(key, False, within=2 * INTERVAL + TIMEOUT + slack)
        assert {key: False} == checker.states()
        await backend.start()
        restarted = asyncio.get_running_loop().time()
        came_up = await changes.reported(key, True, within=2 * INTERVAL + TIMEOUT + slack)
        assert {key: True} == checker.states()
        print(f"down after {went_down - stopped:.3f}s, up after {came_up - restarted:.3f}s")
    finally:
        await checker.stop()


async def test_http_500_is_a_failure(backend: Backend) -> None:
    """A 5xx answer fails an HTTP_2XX monitor and takes the server down."""
    backend.status = 500
    changes = Changes()
    checker = HealthChecker(make_pool([backend.server], [monitor(type="HEALTH_MONITOR_HTTP")]), changes)
    checker.start()
    try:
        await changes.reported(backend.server.key, False, within=3 * INTERVAL + TIMEOUT + 0.5)
        assert b"GET / HTTP/1.0\r\n\r\n" == backend.requests[0]
    finally:
        await checker.stop()


async def test_slow_http_answer_is_a_timeout(backend: Backend) -> None:
    """An answer later than receive_timeout counts as a failure."""
    backend.delay = TIMEOUT * 2
    changes = Changes()
    checker = HealthChecker(make_pool([backend.server], [monitor(type="HEALTH_MONITOR_HTTP", failed=1)]), changes)
    checker.start()
    try:
        await changes.reported(backend.server.key, False, within=2 * INTERVAL + TIMEOUT + 0.5)
    finally:
        await checker.stop()


async def test_tcp_check_of_a_closed_port_fails() -> None:
    """Nothing listening means connection refused, and the server goes down."""
    changes = Changes()
    server = ServerConfig("127.0.0.1", free_port())
    checker = HealthChecker(make_pool([server], [monitor()]), changes)
    checker.start()
    try:
        await changes.reported(server.key, False, within=3 * INTERVAL + TIMEOUT + 0.5)
        assert {server.key: {"hm": DOWN}} == checker.monitor_states()
    finally:
        await checker.stop()


async def test_tcp_check_of_a_listening_port_passes(backend: Backend) -> None:
    """A port that accepts connections is UP and never reported."""
    changes = Changes()
    checker = HealthChecker(make_pool([backend.server], [monitor(successful=1)]), changes)
    checker.start()
    try:
        await wait_for(lambda: checker.monitor_states()[backend.server.key]["hm"] == UP, 2 * INTERVAL + 1)
        assert [] == changes.seen
    finally:
        await checker.stop()


def _icmp_allowed() -> bool:
    try:
        health._icmp_socket_type("probe")
        return True
    except MonitorUnavailable:
        return False


async def test_ping_of_localhost_passes_or_is_refused_up_front() -> None:
    """Where ICMP sockets are allowed, 127.0.0.1 answers; elsewhere construction says why not."""
    pool = make_pool([ServerConfig("127.0.0.1", 80)], [monitor(type="HEALTH_MONITOR_PING", successful=1)])
    if not _icmp_allowed():
        with pytest.raises(MonitorUnavailable, match="ICMP"):
            HealthChecker(pool, lambda key, up: None)
        return
    checker = HealthChecker(pool, Changes())
    checker.start()
    try:
        await wait_for(lambda: checker.monitor_states()["127.0.0.1:80"]["hm"] == UP, 2 * INTERVAL + 1)
    finally:
        await checker.stop()


@pytest.mark.skipif(not _icmp_allowed(), reason="this host refuses ICMP sockets")
async def test_ping_that_cannot_be_sent_fails() -> None:
    """An echo the kernel refuses to send (to the broadcast address) fails the ping monitor."""
    changes = Changes()
    pool = make_pool([ServerConfig("255.255.255.255", 80)], [monitor(type="HEALTH_MONITOR_PING", failed=1)])
    checker = HealthChecker(pool, changes)
    checker.start()
    try:
        await changes.reported("255.255.255.255:80", False, within=2 * INTERVAL + TIMEOUT + 0.5)
    finally:
        await checker.stop()


def test_ping_refused_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither raw nor datagram ICMP sockets permitted, construction fails and says why."""

    def refuse(kind: int) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(health, "_icmp_socket", refuse)
    pool = make_pool([ServerConfig("127.0.0.1", 80)], [monitor("System-Ping", type="HEALTH_MONITOR_PING")])
    with pytest.raises(MonitorUnavailable, match=r"System-Ping: ping needs ICMP sockets.*raw ICMP socket: Operation not permitted"):
        HealthChecker(pool, lambda key, up: None)


async def test_update_keeps_state_of_servers_that_stay() -> None:
    """A config change keeps a down server down without a report; a new server starts up."""
    changes = Changes()
    down = ServerConfig("127.0.0.1", free_port())
    hm = monitor(failed=1)
    checker = HealthChecker(make_pool([down], [hm]), changes)
    checker.start()
    try:
        await changes.reported(down.key, False, within=2 * INTERVAL + TIMEOUT + 0.5)
        added = ServerConfig("127.0.0.1", free_port())
        checker.update(make_pool([ServerConfig(down.ip, down.port, ratio=5), added], [monitor(failed=1, successful=3)]))
        assert {down.key: False, added.key: True} == checker.states()
        assert 1 == len(changes.seen)
        checker.update(make_pool([ServerConfig(down.ip, down.port, ratio=5), added], []))
        assert (down.key, True) == changes.seen[-1][:2]
        assert {down.key: True, added.key: True} == checker.states()
    finally:
        await checker.stop()


async def test_disabled_servers_are_not_checked() -> None:
    """A disabled server gets no checks, so a dead one keeps its state."""
    changes = Changes()
    server = ServerConfig("127.0.0.1", free_port(), enabled=False)
    checker = HealthChecker(make_pool([server], [monitor(failed=1, send_interval=0.05, receive_timeout=0.04)]), changes)
    checker.start()
    try:
        await asyncio.sleep(0.3)
        assert ({server.key: {"hm": UNKNOWN}}, []) == (checker.monitor_states(), changes.seen)
    finally:
        await checker.stop()


async def test_first_checks_are_spread_and_probes_are_bounded() -> None:
    """100 servers' first checks spread over the interval, with no more than max_in_flight at once."""
    backend = Backend(listeners=100)
    await backend.start()
    backend.delay = 0.02
    servers = [ServerConfig("127.0.0.1", port) for port in backend.ports]
    hm = monitor(type="HEALTH_MONITOR_HTTP", send_interval=0.5, receive_timeout=0.4)
    changes = Changes()
    checker = HealthChecker(make_pool(servers, [hm]), changes, max_in_flight=4, rng=random.Random(1))
    checker.start()
    try:
        await wait_for(lambda: len(backend.accepted_at) >= 100, 3)
        first = backend.accepted_at[:100]
        assert max(first) - min(first) > 0.3
        assert backend.max_active <= 4
        assert (100, []) == (len(checker._tasks), changes.seen)
    finally:
        await checker.stop()
        await backend.stop()
    assert all(task.done() for task in checker._retiring) and not checker._tasks


async def test_stop_ends_every_check(backend: Backend) -> None:
    """After stop() no more probes arrive."""
    checker = HealthChecker(make_pool([backend.server], [monitor(send_interval=0.05, receive_timeout=0.04)]), Changes())
    checker.start()
    await wait_for(lambda: len(backend.accepted_at) >= 2, 1)
    await checker.stop()
    count = len(backend.accepted_at)
    await asyncio.sleep(0.15)
    assert count == len(backend.accepted_at)


async def test_a_check_that_breaks_counts_as_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error inside a check fails it and checking goes on."""
    calls = 0

    async def broken(server: ServerConfig) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    monkeypatch.setattr(health, "_check_tcp", broken)
    changes = Changes()
    server = ServerConfig("127.0.0.1", 80)
    checker = HealthChecker(make_pool([server], [monitor(failed=2)]), changes)
    checker.start()
    try:
        await changes.reported(server.key, False, within=3 * INTERVAL + TIMEOUT + 0.5)
        await wait_for(lambda: calls >= 3, 2 * INTERVAL + 0.5)
    finally:
        await checker.stop()
