"""Bounded loops a lab host runs for the harness, one JSON line per event on stdout, and the
harness-side handles that start them in a host's network namespace and collect what they see.

    ip netns exec NS python -m simulations.lab_probe tcp --target 10.99.0.100:8080 \\
        --interval 0.02 --timeout 0.05 --count 1500 --max-seconds 30 [--http /]
    ip netns exec NS python -m simulations.lab_probe arp --target 10.99.0.100 --source 10.99.0.31 \\
        --interval 0.1 --count 300 --max-seconds 30

``tcp`` (:class:`Prober`): a new TCP connection every ``interval``, each with its own
``timeout``; with ``--http PATH`` each is one ``GET PATH`` and succeeds on a 2xx or 3xx status
line, without it on an established connection. ``arp`` (:class:`ArpWatch`): a broadcast ARP
request for the target every ``interval`` from eth0 (a raw AF_PACKET socket, so every holder of
the address answers every round, as ``arping -b`` does, at intervals arping cannot make), and
every ARP frame whose sender address is the target: replies, and the holder's own gratuitous ARP.

Each loop runs in a process of its own (``ip netns exec``), so its neighbour table is the host's
and the harness's threads cannot delay it. Rounds start on a fixed schedule (round i at
``start + i * interval``; one that overruns delays the next, never overlaps it) and stop after
``count`` rounds or ``max_seconds``, whichever comes first, or at SIGTERM. Times are
CLOCK_MONOTONIC, the same clock as the harness's ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, TypeVar

import attrs

__all__ = ["ArpFrame", "ArpResult", "ArpWatch", "Attempt", "Outage", "ProbeResult", "Prober", "probe_once"]

MAX_COUNT = 100_000
MAX_SECONDS = 600.0
BODY_KEPT = 512


@attrs.frozen
class Attempt:
    """One connection: when it started and ended (monotonic seconds), whether it was served, why not."""

    i: int
    start: float
    end: float
    ok: bool
    error: Optional[str] = None
    status: Optional[int] = None
    body: Optional[str] = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Attempt":
        return cls(int(doc["i"]), float(doc["start"]), float(doc["end"]), bool(doc["ok"]), doc.get("error"), doc.get("status"),
                   doc.get("body"))


@attrs.frozen
class Outage:
    """A run of failed attempts: from the first one's start to the start of the next served one
    (or the last failed one's end when none followed)."""

    start: float
    end: float
    failures: int
    recovered: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


@attrs.frozen
class ProbeResult:
    attempts: tuple[Attempt, ...]

    @property
    def served(self) -> int:
        return sum(1 for a in self.attempts if a.ok)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.attempts if not a.ok)

    def outages(self) -> list[Outage]:
        out: list[Outage] = []
        run: list[Attempt] = []
        for attempt in self.attempts:
            if not attempt.ok:
                run.append(attempt)
                continue
            if run:
                out.append(Outage(run[0].start, attempt.start, len(run), True))
                run = []
        if run:
            out.append(Outage(run[0].start, run[-1].end, len(run), False))
        return out

    def longest_outage(self) -> float:
        """The longest outage in seconds (0.0 when every attempt was served)."""
        return max((o.seconds for o in self.outages()), default=0.0)

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.attempts:
            if not a.ok:
                counts[a.error or "?"] = counts.get(a.error or "?", 0) + 1
        return counts


@attrs.frozen
class ArpFrame:
    """An ARP frame from the watched address: when, in which request round, from which MAC; ``op``
    is ``reply``, or ``request`` for the holder's own (gratuitous) ARP."""

    t: float
    round: int
    mac: str
    op: str


@attrs.frozen
class ArpResult:
    """Every round's send time (index = round) and every frame from the watched address."""

    sent: tuple[float, ...]
    frames: tuple[ArpFrame, ...]

    def macs(self) -> dict[str, int]:
        """MAC -> how many replies it sent."""
        counts: dict[str, int] = {}
        for f in self.frames:
            if f.op == "reply":
                counts[f.mac] = counts.get(f.mac, 0) + 1
        return counts

    def by_round(self) -> dict[int, frozenset[str]]:
        """Round -> the MACs that answered it (rounds nobody answered are absent)."""
        out: dict[int, set[str]] = {}
        for f in self.frames:
            if f.op == "reply" and f.round >= 0:
                out.setdefault(f.round, set()).add(f.mac)
        return {r: frozenset(m) for r, m in sorted(out.items())}

    def unanswered(self) -> list[int]:
        """The rounds no MAC answered."""
        answered = self.by_round()
        return [r for r in range(len(self.sent)) if r not in answered]

    def contested(self) -> list[int]:
        """The rounds more than one MAC answered (two holders of the address at once)."""
        return [r for r, macs in self.by_round().items() if len(macs) > 1]


# -- the loops (in a lab host) -------------------------------------------------------------------

def probe_once(addr: str, port: int, timeout: float, http_path: Optional[str] = None) -> tuple[bool, Optional[str], Optional[int], Optional[str]]:
    """One attempt: (served, error, HTTP status, start of the body)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((addr, port), timeout=timeout) as sock:
            if http_path is None:
                return True, None, None, None
            sock.sendall(f"GET {http_path} HTTP/1.1\r\nHost: {addr}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while len(data) < 65536:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return False, type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}", None, None
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    if status is None:
        return False, "no HTTP status line", None, None
    return 200 <= status < 400, None if 200 <= status < 400 else f"HTTP {status}", status, body[:BODY_KEPT].decode("utf-8", "replace")


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _rounds(interval: float, count: int, max_seconds: float) -> Iterator[int]:
    """Round numbers on a fixed schedule, until ``count``, ``max_seconds`` or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    begin = time.monotonic()
    for i in range(count):
        due = begin + i * interval
        now = time.monotonic()
        if now - begin >= max_seconds or stop.is_set():
            return
        if due > now and stop.wait(due - now):
            return
        yield i


def _tcp_loop(addr: str, port: int, interval: float, timeout: float, count: int, max_seconds: float, http_path: Optional[str]) -> None:
    for i in _rounds(interval, count, max_seconds):
        start = time.monotonic()
        ok, error, status, body = probe_once(addr, port, timeout, http_path)
        _emit({"i": i, "start": start, "end": time.monotonic(), "ok": ok, "error": error, "status": status, "body": body})


_ETH_P_ARP = 0x0806


def _arp_request(mac: bytes, source: str, target: str) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(source), b"\0" * 6, socket.inet_aton(target))
    return b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP) + arp


def _arp_loop(target: str, source: str, interface: str, interval: float, count: int, max_seconds: float) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP))
    sock.bind((interface, _ETH_P_ARP))
    mac = sock.getsockname()[4]
    request = _arp_request(mac, source, target)
    wanted = socket.inet_aton(target)
    sock.setblocking(False)
    current = -1

    def drain(until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            frame = sock.recv(2048)
            if len(frame) < 42:
                continue
            (op,), sha, spa = struct.unpack("!H", frame[20:22]), frame[22:28], frame[28:32]
            if spa == wanted and sha != mac:
                _emit({"t": time.monotonic(), "round": current, "mac": sha.hex(":"), "op": "reply" if op == 2 else "request"})

    begin = time.monotonic()
    for i in _rounds(interval, count, max_seconds):
        current = i
        sock.send(request)
        _emit({"sent": i, "t": time.monotonic()})
        drain(begin + (i + 1) * interval)
    drain(time.monotonic() + min(interval, 0.5))  # the last round's late replies




def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.lab_probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    tcp = sub.add_parser("tcp", help="a new TCP connection (or HTTP GET) every interval")
    tcp.add_argument("--target", required=True, metavar="ADDR:PORT")
    tcp.add_argument("--timeout", type=float, default=0.05, help="seconds an attempt may take")
    tcp.add_argument("--http", metavar="PATH", help="send GET PATH on each connection")
    arp = sub.add_parser("arp", help="a broadcast ARP request for the target every interval")
    arp.add_argument("--target", required=True, metavar="ADDR")
    arp.add_argument("--source", required=True, metavar="ADDR", help="this host's address (the requests' sender)")
    arp.add_argument("--interface", default="eth0")
    for p in (tcp, arp):
        p.add_argument("--interval", type=float, default=0.02, help="seconds between round starts")
        p.add_argument("--count", type=int, required=True, help=f"rounds, at most {MAX_COUNT}")
        p.add_argument("--max-seconds", type=float, required=True, help=f"at most {MAX_SECONDS:g}")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= MAX_COUNT or not 0 < args.max_seconds <= MAX_SECONDS or args.interval < 0:
        parser.error(f"bounds: 1 <= --count <= {MAX_COUNT}, 0 < --max-seconds <= {MAX_SECONDS:g}, --interval >= 0")
    if args.mode == "arp":
        _arp_loop(args.target, args.source, args.interface, args.interval, args.count, args.max_seconds)
        return
    addr, _, port = args.target.rpartition(":")
    if not addr or not port.isdigit() or args.timeout <= 0:
        parser.error(f"--target must be ADDR:PORT (not {args.target!r}) and --timeout > 0")
    _tcp_loop(addr, int(port), args.interval, args.timeout, args.count, args.max_seconds, args.http)


# -- the harness side ----------------------------------------------------------------------------

_L = TypeVar("_L", bound="_Loop")


class _Loop:
    """One loop process in a namespace; its JSON lines collected by a reader thread as they come.

    ``with loop: ...`` starts it and stops it on leaving; :meth:`wait` lets it finish by itself.
    The process is killed ``max_seconds`` + 10 s after its start in any case.
    """

    def __init__(self, namespace: str, mode_args: list[str], *, interval: float, count: int, max_seconds: float) -> None:
        if not 1 <= count <= MAX_COUNT or not 0 < max_seconds <= MAX_SECONDS:
            raise ValueError(f"a loop is bounded: 1 <= count <= {MAX_COUNT}, 0 < max_seconds <= {MAX_SECONDS:g}")
        self.argv = ["ip", "netns", "exec", namespace, sys.executable, "-m", "simulations.lab_probe", *mode_args,
                     "--interval", repr(interval), "--count", str(count), "--max-seconds", repr(max_seconds)]
        self.max_seconds = max_seconds
        self._docs: list[dict[str, Any]] = []
        self._other: list[str] = []
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen[str]] = None
        self._reader: Optional[threading.Thread] = None
        self._started = 0.0

    def start(self: _L) -> _L:
        if self._proc is not None:
            raise RuntimeError("already started")
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      cwd=str(Path(__file__).resolve().parent.parent))
        self._started = time.monotonic()
        self._reader = threading.Thread(target=self._read, name="lab-loop", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            with self._lock:
                if isinstance(doc, dict):
                    self._docs.append(doc)
                else:
                    self._other.append(line.rstrip())
        self._proc.stdout.close()

    def _snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._docs)

    @property
    def output(self) -> str:
        """What the loop printed that is not an event (errors, a traceback)."""
        with self._lock:
            return "\n".join(self._other)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _finish(self, timeout: Optional[float]) -> None:
        assert self._proc is not None, "start() first"
        limit = self.max_seconds + 10.0 - (time.monotonic() - self._started)
        try:
            self._proc.wait(max(0.0, min(limit, timeout if timeout is not None else limit)))
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def __enter__(self: _L) -> _L:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self._terminate()
        self._finish(10.0)


class Prober(_Loop):
    """``tcp`` from ``namespace`` to ``addr:port`` (see the module doc)."""

    def __init__(self, namespace: str, addr: str, port: int, *, interval: float = 0.02, timeout: float = 0.05,
                 count: int = 1000, max_seconds: float = 30.0, http_path: Optional[str] = None) -> None:
        mode = ["tcp", "--target", f"{addr}:{port}", "--timeout", repr(timeout), *(["--http", http_path] if http_path is not None else [])]
        super().__init__(namespace, mode, interval=interval, count=count, max_seconds=max_seconds)

    @property
    def attempts(self) -> list[Attempt]:
        """The attempts so far."""
        return [Attempt.from_json(d) for d in self._snapshot()]

    def result(self) -> ProbeResult:
        return ProbeResult(tuple(self.attempts))

    def wait(self, timeout: Optional[float] = None) -> ProbeResult:
        """Wait for the loop to end by itself (at most ``timeout``, then it is stopped); its result."""
        self._finish(timeout)
        return self.result()

    def stop(self) -> ProbeResult:
        """End the loop now (SIGTERM: the attempt under way completes); its result."""
        self._terminate()
        return self.wait(10.0)


class ArpWatch(_Loop):
    """``arp`` from ``namespace`` (whose address is ``source``) for ``target`` (see the module doc)."""

    def __init__(self, namespace: str, target: str, source: str, *, interval: float = 0.1, count: int = 300,
                 max_seconds: float = 30.0) -> None:
        super().__init__(namespace, ["arp", "--target", target, "--source", source], interval=interval, count=count,
                         max_seconds=max_seconds)

    def result(self) -> ArpResult:
        docs = self._snapshot()
        sent = tuple(float(d["t"]) for d in docs if "sent" in d)
        frames = tuple(ArpFrame(float(d["t"]), int(d["round"]), str(d["mac"]), str(d["op"])) for d in docs if "mac" in d)
        return ArpResult(sent, frames)

    def wait(self, timeout: Optional[float] = None) -> ArpResult:
        self._finish(timeout)
        return self.result()

    def stop(self) -> ArpResult:
        self._terminate()
        return self.wait(10.0)


if __name__ == "__main__":
    main()
