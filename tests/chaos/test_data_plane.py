"""The data-plane checkers and workload: gaps, recovery and failures per fault from request records,
and the traffic client against a local HTTP server that can drop connections."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from simulations.chaos.checkers import check_gaps, check_no_failures, fault_window
from simulations.chaos.workloads import DataPlaneWorkload
from tests.helpers import wait_for


def _every(start: float, end: float, step: float = 0.02, ok: bool = True, took: float = 0.005) -> list[tuple[float, float, bool]]:
    out = []
    t = start
    while t < end - 1e-9:
        out.append((round(t, 6), round(t + took, 6), ok))
        t += step
    return out


def test_window_gap_is_the_longest_stretch_without_a_success() -> None:
    # Served until 10.0, nothing succeeds from 10.0 to 10.6 (failures), served again after.
    reqs = _every(9.0, 10.0) + _every(10.0, 10.6, ok=False) + _every(10.6, 12.0)
    stats = fault_window(reqs, 10.0, 12.0)
    assert stats.gap == pytest.approx(10.605 - 9.985, abs=1e-6)
    assert stats.recovery == pytest.approx(0.605, abs=1e-6)  # the first request started after the fault that succeeded
    assert stats.failures_after_recovery == 0
    assert stats.failed == 30 and stats.requests == 100


def test_an_answer_from_before_the_fault_does_not_hide_the_gap() -> None:
    # A request sent just before the fault ends just after it; the next success is 0.8 s later.
    reqs = [(9.99, 10.01, True), (10.0, 10.5, False), (10.8, 10.81, True)]
    stats = fault_window(reqs, 10.0, 11.0)
    assert stats.gap == pytest.approx(0.8)
    assert stats.recovery == pytest.approx(0.81)


def test_failures_once_served_again_are_counted_but_not_those_in_flight() -> None:
    # A request stuck on the paused SE (started before recovery) fails late: not counted.
    reqs = [(9.9, 9.91, True), (10.1, 12.1, False), (10.3, 10.31, True), (10.5, 10.51, False), (10.7, 10.71, True)]
    stats = fault_window(reqs, 10.0, 13.0)
    assert stats.recovery == pytest.approx(0.31)
    assert stats.failures_after_recovery == 1
    assert stats.failed == 2


def test_a_request_in_flight_at_the_next_fault_belongs_to_it() -> None:
    # Started 1 ms before the next kill, reset by it: not a failure after the first fault's recovery.
    reqs = [(9.9, 9.91, True), (10.1, 10.11, True), (11.999, 12.01, False), (12.05, 12.06, True)]
    assert fault_window(reqs, 10.0, 12.0).failures_after_recovery == 0
    assert fault_window(reqs, 10.0, 12.0).failed == 1


def test_nothing_served_after_the_fault_is_an_infinite_gap() -> None:
    stats = fault_window(_every(9.0, 10.0) + _every(10.0, 11.0, ok=False), 10.0, 11.0)
    assert stats.gap == math.inf and stats.recovery == math.inf
    assert stats.to_dict()["gap"] == "inf"


def test_window_ends_at_the_next_fault() -> None:
    reqs = _every(9.0, 10.0) + _every(10.0, 10.2) + _every(10.2, 13.0, ok=False)
    assert fault_window(reqs, 10.0, 10.2).gap == pytest.approx(0.02, abs=1e-6)
    assert fault_window(reqs, 10.2, 13.0).gap == math.inf


def test_gap_bounds_median_and_worst() -> None:
    assert check_gaps([0.03, 0.5, 1.9], median_limit=1.0, worst_limit=2.0).ok
    worst = check_gaps([0.03, 0.5, 2.1], median_limit=1.0, worst_limit=2.0)
    assert not worst.ok and [v.kind for v in worst.violations] == ["over_limit"]
    median = check_gaps([1.1, 1.2, 0.1], median_limit=1.0, worst_limit=2.0)
    assert not median.ok and median.violations[0].kind == "median_over_limit"
    assert not check_gaps([math.inf], worst_limit=2.0).ok
    nothing = check_gaps([], median_limit=1.0)
    assert not nothing.ok and nothing.verdict == "unknown"


def test_every_failure_is_a_violation() -> None:
    assert check_no_failures("no_failed_requests", [], details={"requests": 10}).ok
    res = check_no_failures("no_failed_requests", [{"probe": "new", "start": 1.0, "error": "ConnectionRefusedError"}])
    assert not res.ok and res.details["failed"] == 1 and res.to_dict()["violations"][0]["error"] == "ConnectionRefusedError"


async def _serve(state: dict) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if state["drop"]:
                    writer.transport.abort()
                    return
                body = b"hello"
                chunked = b"keep" in head
                close = b"Connection: close" in head
                if chunked:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                        len(body), b"Connection: close\r\n" if close else b"", body))
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_workload_records_requests_drops_and_reconnects() -> None:
    async def scenario() -> DataPlaneWorkload:
        state = {"drop": False}
        server = await _serve(state)
        port = server.sockets[0].getsockname()[1]
        dp = DataPlaneWorkload("127.0.0.1", port, interval=0.02, keepalive=2, keepalive_interval=0.05, timeout=0.5)
        stop_at = time.monotonic() + 1.6
        run = asyncio.create_task(dp.run(stop_at))
        await wait_for(lambda: dp.counts()["new"]["ok"] >= 20, 3.0, what="20 successful new connections")
        state["drop"] = True  # every connection is cut on its next request
        await wait_for(lambda: dp.counts()["new"]["failed"] >= 5 and dp.counts()["keepalive"]["drops"] >= 2, 3.0, what="failures while dropping")
        state["drop"] = False
        await run
        server.close()
        await server.wait_closed()
        return dp

    dp = asyncio.run(scenario())
    counts = dp.counts()
    assert 60 <= counts["new"]["requests"] <= 81
    assert counts["new"]["failed"] >= 5 and counts["new"]["ok"] >= 40
    assert counts["keepalive"]["drops"] >= 2 and counts["keepalive"]["reconnects"] >= 2
    assert counts["keepalive"]["ok"] >= 10
    failed = [p for p in dp.probes if not p.ok]
    assert all(p.error for p in failed)
    assert all(p.start <= p.end for p in dp.probes)
