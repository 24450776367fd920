"""Health monitoring of pool servers: Avi's up/down rules, and the checks that feed them.

Core (pure): ``ServerHealth`` is one server as one monitor sees it; ``ServerStatus`` combines a
pool's monitors for one server. The rules:

- A server starts UNKNOWN, which counts as up: traffic flows to a new server (and after an SE
  restart) at once instead of waiting ``successful_checks x send_interval`` for proof. The price is
  that a dead new server gets traffic until ``failed_checks`` checks have failed. (Avi itself can
  hold new servers down until they are proven up; optimism suits an SE that restarts into a live
  pool.)
- It goes DOWN after ``failed_checks`` consecutive failures and UP after ``successful_checks``
  consecutive successes; either result resets the other streak, so a flapping server keeps its
  state.
- With several monitors, a server is up only while no monitor says DOWN.

Shell: ``HealthChecker`` runs one pool's checks on the event loop: one task per enabled server and
monitor, so tasks are bounded by the config, and at most ``max_in_flight`` probes at a time. Each
task's first check is at a random point of its first interval, then every ``send_interval`` at a
fixed rate (a late check skips the slots it missed rather than bunching). Disabled servers are not
checked; they keep their last state until enabled again.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
from typing import Callable, Optional, Sequence

import structlog

from engine.config import MonitorConfig, PoolConfig, ServerConfig

__all__ = [
    "DOWN",
    "HealthChecker",
    "MonitorUnavailable",
    "ServerHealth",
    "ServerStatus",
    "UNKNOWN",
    "UP",
    "http_request_bytes",
    "response_code_matcher",
]

log = structlog.get_logger(__name__)

UNKNOWN = "UNKNOWN"
UP = "UP"
DOWN = "DOWN"

TCP = "HEALTH_MONITOR_TCP"
HTTP = "HEALTH_MONITOR_HTTP"
PING = "HEALTH_MONITOR_PING"


class MonitorUnavailable(ValueError):
    """A monitor this SE cannot run: ICMP sockets refused, or settings it cannot act on."""

    def __init__(self, monitor: str, reason: str) -> None:
        super().__init__(f"health monitor {monitor}: {reason}")
        self.monitor = monitor
        self.reason = reason


# -- core ---------------------------------------------------------------------------------------------


class ServerHealth:
    """One server as one monitor sees it: UNKNOWN (counts as up), UP or DOWN."""

    __slots__ = ("successful_checks", "failed_checks", "state", "_streak")

    def __init__(self, successful_checks: int, failed_checks: int, state: str = UNKNOWN) -> None:
        if successful_checks < 1 or failed_checks < 1:
            raise ValueError("successful_checks and failed_checks must be at least 1")
        self.successful_checks = successful_checks
        self.failed_checks = failed_checks
        self.state = state
        self._streak = 0  # > 0: consecutive successes, < 0: consecutive failures

    @property
    def up(self) -> bool:
        return self.state != DOWN

    def record(self, success: bool) -> Optional[bool]:
        """Count one check result; the new up-ness if it changed, else None.

        UNKNOWN becoming UP is a change of state but not of up-ness, so it returns None.
        """
        was_up = self.state != DOWN
        if success:
            self._streak = self._streak + 1 if self._streak > 0 else 1
            if self._streak >= self.successful_checks:
                self.state = UP
        else:
            self._streak = self._streak - 1 if self._streak < 0 else -1
            if -self._streak >= self.failed_checks:
                self.state = DOWN
        is_up = self.state != DOWN
        return None if is_up == was_up else is_up


class ServerStatus:
    """One server under all of its pool's monitors: up only while no monitor says DOWN."""

    __slots__ = ("_health",)

    def __init__(self, monitors: Sequence[MonitorConfig]) -> None:
        self._health: dict[str, ServerHealth] = {}
        self.reconfigure(monitors)

    @property
    def up(self) -> bool:
        return all(h.state != DOWN for h in self._health.values())

    def record(self, monitor: str, success: bool) -> Optional[bool]:
        """Count one result of ``monitor``; the server's new up-ness if it changed, else None."""
        health = self._health.get(monitor)
        if health is None:
            return None
        was_up = self.up
        if health.record(success) is None:
            return None
        is_up = self.up
        return None if is_up == was_up else is_up

    def reconfigure(self, monitors: Sequence[MonitorConfig]) -> Optional[bool]:
        """Take a changed monitor list; the new up-ness if it changed, else None.

        Monitors that stay (same name) keep their state and streak under their new thresholds;
        new ones start UNKNOWN; removed ones stop counting.
        """
        was_up = self.up
        health: dict[str, ServerHealth] = {}
        for monitor in monitors:
            if monitor.name in health:
                continue
            kept = self._health.get(monitor.name)
            if kept is None:
                kept = ServerHealth(monitor.successful_checks, monitor.failed_checks)
            else:
                kept.successful_checks = monitor.successful_checks
                kept.failed_checks = monitor.failed_checks
            health[monitor.name] = kept
        self._health = health
        is_up = self.up
        return None if is_up == was_up else is_up

    def monitor_states(self) -> dict[str, str]:
        return {name: h.state for name, h in self._health.items()}


def response_code_matcher(monitor: str, codes: Sequence[str]) -> Callable[[int], bool]:
    """A predicate on status codes for ``http_response_codes``.

    Knows ``HTTP_ANY``, the classes ``HTTP_1XX``..``HTTP_5XX`` and exact codes (``HTTP_404`` or
    ``404``). No codes means ``HTTP_2XX``, Avi's default. Anything else is MonitorUnavailable.
    """
    classes: set[int] = set()
    exact: set[int] = set()
    for code in codes or ("HTTP_2XX",):
        spec = code.upper().removeprefix("HTTP_")
        if spec == "ANY":
            return lambda status: True
        if len(spec) == 3 and spec[0] in "12345" and spec[1:] == "XX":
            classes.add(int(spec[0]))
        elif len(spec) == 3 and spec.isdigit() and 100 <= int(spec) <= 599:
            exact.add(int(spec))
        else:
            raise MonitorUnavailable(monitor, f"http_response_codes: unknown code {code!r}")
    return lambda status: status // 100 in classes or status in exact


def http_request_bytes(request: str, host: str) -> bytes:
    """The bytes an HTTP monitor sends for ``http_request`` (``"GET / HTTP/1.0"`` style).

    Line ends may be written as ``\\n`` or ``\\r\\n``; extra header lines are kept. An HTTP/1.1
    request gets ``Host`` (the server's ``ip:port``) and ``Connection: close`` unless it has them.
    """
    lines = [line.strip() for line in request.replace("\r\n", "\n").strip("\n").split("\n")]
    headers = [line for line in lines[1:] if line]
    if lines[0].upper().endswith("HTTP/1.1"):
        names = {h.split(":", 1)[0].strip().lower() for h in headers}
        if "host" not in names:
            headers.append(f"Host: {host}")
        if "connection" not in names:
            headers.append("Connection: close")
    return ("\r\n".join([lines[0], *headers]) + "\r\n\r\n").encode("latin-1")


def _validate(monitors: Sequence[MonitorConfig]) -> None:
    for m in monitors:
        if m.type not in (TCP, HTTP, PING):
            raise MonitorUnavailable(m.name, f"unknown type {m.type!r}")
        if not (m.send_interval > 0 and m.receive_timeout > 0):
            raise MonitorUnavailable(m.name, "send_interval and receive_timeout must be positive")
        if m.successful_checks < 1 or m.failed_checks < 1:
            raise MonitorUnavailable(m.name, "successful_checks and failed_checks must be at least 1")
        if m.type == HTTP:
            response_code_matcher(m.name, m.http_response_codes)
            if not m.http_request.strip():
                raise MonitorUnavailable(m.name, "http_request is empty")
            try:
                http_request_bytes(m.http_request, "0.0.0.0:0")
            except UnicodeEncodeError:
                raise MonitorUnavailable(m.name, "http_request must be Latin-1 text") from None
        if m.type == PING:
            _icmp_socket_type(m.name)


# -- ICMP -----------------------------------------------------------------------------------------------


def _icmp_socket(kind: int) -> socket.socket:
    return socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)


def _icmp_socket_type(monitor: str) -> int:
    """SOCK_RAW if this process may open a raw ICMP socket, else SOCK_DGRAM (Linux ping sockets,
    allowed by net.ipv4.ping_group_range), else MonitorUnavailable naming both refusals."""
    errors = []
    for kind, name in ((socket.SOCK_RAW, "raw ICMP socket"), (socket.SOCK_DGRAM, "ICMP datagram socket")):
        try:
            _icmp_socket(kind).close()
            return kind
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")
    raise MonitorUnavailable(
        monitor,
        "ping needs ICMP sockets and this SE may open neither ("
        + "; ".join(errors)
        + "); run as root or with CAP_NET_RAW, or widen net.ipv4.ping_group_range",
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    payload = b"avictl-health-check"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


class _Pinger:
    """One ICMP socket shared by a checker's pings; replies are matched by (source, sequence)."""

    def __init__(self, kind: int, rng: random.Random) -> None:
        self._kind = kind
        self._ident = rng.randrange(1, 0x10000)  # a datagram socket's kernel replaces it with its own
        self._seq = rng.randrange(0x10000)
        self._waiting: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._sock: Optional[socket.socket] = None

    def _open(self) -> socket.socket:
        sock = _icmp_socket(self._kind)
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._sock = sock
        return sock

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def ping(self, ip: str) -> None:
        """Return when ``ip`` answers an echo request; the caller bounds the wait."""
        sock = self._sock or self._open()
        self._seq = (self._seq + 1) & 0xFFFF
        key = (ip, self._seq)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            await asyncio.get_running_loop().sock_sendto(sock, _echo_request(self._ident, self._seq), (ip, 0))
            await future
        finally:
            self._waiting.pop(key, None)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(256):  # bounded so a flood of ICMP cannot starve the loop
            try:
                data, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._kind == socket.SOCK_RAW:
                data = data[(data[0] & 0x0F) * 4 :] if data else data  # raw sockets include the IP header
            if len(data) < 8:
                continue
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
            if icmp_type != 0 or (self._kind == socket.SOCK_RAW and ident != self._ident):
                continue
            future = self._waiting.get((address[0], seq))
            if future is not None and not future.done():
                future.set_result(None)


# -- shell ----------------------------------------------------------------------------------------------


class _ProbeFailed(Exception):
    pass


class HealthChecker:
    """Runs one pool's health monitors against its servers and reports up/down changes.

    ``on_change(key, up)`` is called on the event loop when a server's combined up-ness changes
    (``key`` is ``"ip:port"``); servers start up (UNKNOWN), so a server's first report is a DOWN
    unless ``update`` flips it first. ``loop_time`` is the clock for scheduling, the running loop's ``time`` if None.
    Raises MonitorUnavailable at construction (and from ``update``) for a monitor it cannot run.
    """

    def __init__(
        self,
        pool: PoolConfig,
        on_change: Callable[[str, bool], None],
        *,
        loop_time: Optional[Callable[[], float]] = None,
        max_in_flight: int = 256,
        rng: Optional[random.Random] = None,
    ) -> None:
        _validate(pool.monitors)
        self._on_change = on_change
        self._loop_time = loop_time
        self._rng = rng or random.Random()
        self._max_in_flight = max_in_flight
        self._in_flight: Optional[asyncio.Semaphore] = None
        self._pool = pool
        self._monitors = _by_name(pool.monitors)
        self._servers = _by_key(pool.servers)
        self._status = {key: ServerStatus(pool.monitors) for key in self._servers}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled, not yet finished; stop() awaits them
        self._pinger: Optional[_Pinger] = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start checking; call on the event loop."""
        if self._started:
            return
        self._started = True
        self._in_flight = asyncio.Semaphore(self._max_in_flight)
        self._sync_tasks()

    async def stop(self) -> None:
        """Stop every check and wait for them to end."""
        self._started = False
        for pair in list(self._tasks):
            self._retire(pair)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._pinger is not None:
            self._pinger.close()
            self._pinger = None

    def update(self, pool: PoolConfig) -> None:
        """Take a changed pool: servers that stay keep their state, monitors that stay keep theirs.

        Reports (through ``on_change``) servers whose up-ness the change itself flips, such as a
        DOWN server whose failing monitor was removed. Validates first: on MonitorUnavailable
        nothing changed.
        """
        _validate(pool.monitors)
        old_monitors = self._monitors
        self._pool = pool
        self._monitors = _by_name(pool.monitors)
        self._servers = _by_key(pool.servers)
        status: dict[str, ServerStatus] = {}
        flipped = []
        for key in self._servers:
            kept = self._status.get(key)
            if kept is None:
                status[key] = ServerStatus(pool.monitors)
            else:
                status[key] = kept
                change = kept.reconfigure(pool.monitors)
                if change is not None:
                    flipped.append((key, change))
        self._status = status
        changed = {name for name, m in self._monitors.items() if old_monitors.get(name) != m}
        for pair in list(self._tasks):
            if pair[1] in changed:
                self._retire(pair)
        self._sync_tasks()
        for key, up in flipped:
            self._report(key, up, "monitors changed")

    # -- reading -----------------------------------------------------------------------------------

    def states(self) -> dict[str, bool]:
        """``{"ip:port": up}`` for every server of the pool (disabled ones keep their last state)."""
        return {key: status.up for key, status in self._status.items()}

    def monitor_states(self) -> dict[str, dict[str, str]]:
        """``{"ip:port": {monitor name: UNKNOWN | UP | DOWN}}``."""
        return {key: status.monitor_states() for key, status in self._status.items()}

    # -- checking ----------------------------------------------------------------------------------

    def _sync_tasks(self) -> None:
        """Make the running tasks one per enabled server and monitor, no more."""
        wanted = {(s.key, name) for s in self._servers.values() if s.enabled for name in self._monitors}
        for pair in list(self._tasks):
            if pair not in wanted:
                self._retire(pair)
        if not self._started:
            return
        if self._pinger is None and any(m.type == PING for m in self._monitors.values()):
            self._pinger = _Pinger(_icmp_socket_type(next(m.name for m in self._monitors.values() if m.type == PING)), self._rng)
        for key, name in wanted - self._tasks.keys():
            task = asyncio.get_running_loop().create_task(
                self._watch(self._servers[key], self._monitors[name]), name=f"health {self._pool.name} {key} {name}"
            )
            self._tasks[(key, name)] = task

    def _retire(self, pair: tuple[str, str]) -> None:
        task = self._tasks.pop(pair)
        task.cancel()
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _now(self) -> float:
        return self._loop_time() if self._loop_time is not None else asyncio.get_running_loop().time()

    async def _watch(self, server: ServerConfig, monitor: MonitorConfig) -> None:
        accepts = response_code_matcher(monitor.name, monitor.http_response_codes) if monitor.type == HTTP else None
        interval = monitor.send_interval
        due = self._now() + self._rng.uniform(0, interval)
        while True:
            delay = due - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
            assert self._in_flight is not None
            async with self._in_flight:
                failure = await self._probe(server, monitor, accepts)
            status = self._status.get(server.key)
            if status is not None:
                change = status.record(monitor.name, failure is None)
                if change is not None:
                    self._report(server.key, change, failure or f"{monitor.name} passed")
            due += interval
            late = self._now() - due
            if late > 0:
                due += math.ceil(late / interval) * interval

    def _report(self, key: str, up: bool, reason: str) -> None:
        (log.info if up else log.warning)("server_up" if up else "server_down", pool=self._pool.name, server=key, reason=reason)
        try:
            self._on_change(key, up)
        except Exception:
            log.exception("health_on_change_failed", pool=self._pool.name, server=key)

    async def _probe(self, server: ServerConfig, monitor: MonitorConfig, accepts: Optional[Callable[[int], bool]]) -> Optional[str]:
        """None if the check passed, else why it failed."""
        try:
            async with asyncio.timeout(monitor.receive_timeout):
                if monitor.type == TCP:
                    await _check_tcp(server)
                elif monitor.type == HTTP:
                    assert accepts is not None
                    await _check_http(server, monitor, accepts)
                else:
                    assert self._pinger is not None
                    await self._pinger.ping(server.ip)
        except TimeoutError:
            return f"{monitor.name}: no answer within {monitor.receive_timeout:g}s"
        except _ProbeFailed as exc:
            return f"{monitor.name}: {exc}"
        except OSError as exc:
            return f"{monitor.name}: {exc.strerror or exc}"
        except Exception as exc:  # a check that breaks must fail, not end the server's checks
            log.exception("health_check_error", pool=self._pool.name, server=server.key, monitor=monitor.name)
            return f"{monitor.name}: {type(exc).__name__}: {exc}"
        return None


def _by_key(servers: Sequence[ServerConfig]) -> dict[str, ServerConfig]:
    keyed: dict[str, ServerConfig] = {}
    for server in servers:
        keyed.setdefault(server.key, server)
    return keyed


def _by_name(monitors: Sequence[MonitorConfig]) -> dict[str, MonitorConfig]:
    named: dict[str, MonitorConfig] = {}
    for monitor in monitors:
        named.setdefault(monitor.name, monitor)
    return named


async def _check_tcp(server: ServerConfig) -> None:
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, server.ip, server.port)
    transport.close()


async def _check_http(server: ServerConfig, monitor: MonitorConfig, accepts: Callable[[int], bool]) -> None:
    reader, writer = await asyncio.open_connection(server.ip, server.port, limit=8192)
    try:
        writer.write(http_request_bytes(monitor.http_request, server.key))
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _ProbeFailed("connection closed before a status line") from None
            line = exc.partial
        except asyncio.LimitOverrunError:
            raise _ProbeFailed("status line too long") from None
    finally:
        writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not (len(parts[1]) == 3 and parts[1].isdigit()):
        raise _ProbeFailed(f"not an HTTP status line: {line[:60]!r}")
    status = int(parts[1])
    if not accepts(status):
        raise _ProbeFailed(f"HTTP {status} is not in {', '.join(monitor.http_response_codes)}")
