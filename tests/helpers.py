"""The small helpers every test package shares: a free port, and waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Callable

from simulations.local_cluster import free_port as _free_port
from simulations.local_cluster import wait_until

__all__ = ["free_port", "wait_for", "wait_until"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel reports free on ``host`` (bound and released at once)."""
    if host == "127.0.0.1":
        return _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_for(condition: Callable[[], Any], timeout: float, *, interval: float = 0.01, what: str = "condition") -> Any:
    """Poll ``condition`` on the running loop until it returns something true; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)
