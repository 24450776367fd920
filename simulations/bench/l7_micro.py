"""Python cost of one L7 exchange, in process: ``python -m simulations.bench.l7_micro [--n 200000]``.

Sixteen keep-alive client connections and a pool of idle backend connections, with no-op transports
written in C (so only the proxy's Python, httptools and the object churn are timed), on a uvloop
loop that is not running (only ``loop.time()`` is used). Each exchange feeds the wrk request to the
client side and nginx's response to the backend side, as the loop would. Prints microseconds per
exchange of thread CPU time (min and median of ``--rounds``).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from types import SimpleNamespace

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.3:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 03:42:00 GMT\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


class _Transport:
    """No-op transport whose hot methods are C callables."""

    def __init__(self, peer: tuple[str, int]) -> None:
        sink = collections.deque(maxlen=0)
        self.write = sink.append
        self.writelines = sink.extend
        self.is_closing = bool  # bool() is False
        self._peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._peer if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("closed")


def build(conns: int = 16) -> tuple[list[object], list[object]]:
    import uvloop

    from engine.config import HttpLimits, ServerConfig
    from engine.l7 import L7Connection, _Upstream
    from engine.routing import Balancer
    from engine.telemetry import VsStats
    from engine.upstreams import UpstreamPool

    loop = uvloop.new_event_loop()
    servers = [ServerConfig("127.0.0.1", p) for p in (9001, 9002)]
    upstreams = UpstreamPool()
    pool = SimpleNamespace(balancer=Balancer("LB_ALGORITHM_ROUND_ROBIN", servers), upstreams=upstreams, connect_timeout=3.0)
    vs = SimpleNamespace(stats=VsStats("vs", "vs"), pool=pool, config=SimpleNamespace(http_limits=HttpLimits()))
    listener = SimpleNamespace(loop=loop, vs=vs, connections=set(), draining=False)
    clients = []
    for i in range(conns):
        conn = L7Connection(listener)  # type: ignore[arg-type]
        conn.connection_made(_Transport(("127.0.0.1", 40000 + i)))
        clients.append(conn)
    ups = []
    for s in servers:
        for _ in range(conns):
            up = _Upstream(upstreams, s.key)
            up.connection_made(_Transport((s.ip, s.port)))
            upstreams.put(up, loop.time())
            ups.append(up)
    return clients, ups


def run_once(conns: list[object], n: int) -> float:
    """``n`` exchanges in batches: every connection sends a request, the held writes go out, every
    backend answers, the held writes go out (two polls, as on a loaded loop)."""
    feeds = [c.data_received for c in conns]  # type: ignore[attr-defined]
    queues = [c._queue for c in conns]  # type: ignore[attr-defined]
    stats = conns[0]._stats  # type: ignore[attr-defined]
    flusher = getattr(conns[0], "_flusher", None)
    if flusher is not None:
        scheduled = collections.deque(maxlen=1)
        loop_stub = SimpleNamespace(call_soon=scheduled.append)  # the loop does not run: run() below
        flusher.loop_ref = lambda: loop_stub
        run = flusher.run
    else:
        run = int  # no-op
    rounds = max(1, n // len(conns))
    t0 = time.thread_time()
    for _ in range(rounds):
        for feed in feeds:
            feed(REQUEST)
        run()
        for queue in queues:
            queue[0].upstream.data_received(RESPONSE)
        run()
    dt = time.thread_time() - t0
    assert not any(queues) and stats.responses[2] > 0, stats.responses
    stats.logs.clear()
    return dt / (rounds * len(conns)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    conns, _ = build()
    run_once(conns, 10_000)
    results = [run_once(conns, args.n) for _ in range(args.rounds)]
    print(f"{min(results):.3f} us/exchange min, {statistics.median(results):.3f} median ({', '.join(f'{r:.2f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
