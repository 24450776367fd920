"""One Service Engine for the HA tests: a DataPlane with its HA coordinator, no controller.

Usage: ``python -m tests.engine._ha_proc NAME SLICE_FILE HA_DIR STATUS_FILE BACKEND_PORT [SCALEOUT_MODE]``

It serves the slice in SLICE_FILE (re-applied whenever the file changes), runs a tiny HTTP backend
on 127.0.0.1:BACKEND_PORT that answers ``se=NAME`` (so a test sees which SE proxied a request),
and rewrites STATUS_FILE (JSON: pid, ha status, listening addresses) whenever it changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from functools import partial
from typing import Any, Callable

import uvloop

from engine.config import PoolConfig, SliceConfig
from engine.dataplane import DataPlane
from engine.ha_coordinator import HaCoordinator


class _AllUp:
    """Health checker stand-in: every server is up."""

    def __init__(self, pool: PoolConfig, on_change: Callable[[str, bool], None]) -> None:
        self.pool = pool

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def update(self, pool: PoolConfig) -> None:
        self.pool = pool

    def states(self) -> dict[str, bool]:
        return {s.key: True for s in self.pool.servers}


class _Backend(asyncio.Protocol):
    """HTTP/1.1 keep-alive server answering every request with ``se=NAME``."""

    name = b""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            body = b"se=" + self.name
            close = b"connection: close" in head.lower()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), b"Connection: close\r\n" if close else b"", body)
            )
            if close:
                self.transport.close()
                return


def _write_status(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


async def main(name: str, slice_file: str, ha_dir: str, status_file: str, backend_port: int, scaleout_mode: str = "auto") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _Backend.name = name.encode()
    backend = await loop.create_server(_Backend, "127.0.0.1", backend_port, reuse_address=True)
    plane = DataPlane(health_factory=_AllUp, ha=partial(HaCoordinator, se_name=name, ha_dir=ha_dir, scaleout_mode=scaleout_mode))
    seen: tuple[int, int] = (0, 0)
    last_status = ""
    while not stop.is_set():
        try:
            st = os.stat(slice_file)
            if (st.st_mtime_ns, st.st_size) != seen:
                seen = (st.st_mtime_ns, st.st_size)
                with open(slice_file) as f:
                    doc = json.load(f)
                errors = await plane.apply(SliceConfig.from_dict(doc))
                if errors:
                    print(f"{name}: apply errors {errors}", file=sys.stderr, flush=True)
        except (OSError, ValueError) as exc:
            print(f"{name}: slice not applied: {exc}", file=sys.stderr, flush=True)
        status = {
            "pid": os.getpid(),
            "ha": plane.ha.status() if plane.ha is not None else {},
            "takeovers": plane.ha.takeovers if plane.ha is not None else {},
            "listening": sorted(f"{a[0]}:{a[1]}" for a in plane.listening()),
        }
        text = json.dumps(status, sort_keys=True)
        if text != last_status:
            _write_status(status_file, status)
            last_status = text
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except asyncio.TimeoutError:
            pass
    await plane.close()
    backend.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), *sys.argv[6:7]))
