"""The small helpers every test package shares: free ports, and waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from avictl.nodes import free_ports
from simulations.local_cluster import free_port, wait_until

__all__ = ["free_port", "free_ports", "wait_for", "wait_until", "wait_until_or_none"]


def wait_until_or_none(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Like :func:`wait_until`, but None instead of TimeoutError when ``timeout`` passes first."""
    try:
        return wait_until(predicate, timeout, interval)
    except TimeoutError:
        return None


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
