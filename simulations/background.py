"""A continuous, bounded write load from a thread of its own (for tests and scenarios)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

from simulations.local_cluster import LocalCluster
from simulations.writers import Writer

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Writes continuously until stopped, at most ``max_seconds``."""

    def __init__(self, cluster: LocalCluster, concurrency: int = 4, max_seconds: float = 120.0, prefix: str = "bg") -> None:
        self.writer = Writer([cluster.api(n) for n in cluster.ids], cluster.token, prefix=prefix)
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            import aiohttp

            deadline = time.monotonic() + self.max_seconds
            async with aiohttp.ClientSession() as session:

                async def worker(i: int) -> None:
                    while not self._stop.is_set() and time.monotonic() < deadline:
                        await self.writer.write_one(session, start_node=i)

                await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

        asyncio.run(main())

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)

    def first_ack_started_after(self, moment: float) -> Optional[float]:
        acks = [r.finished for r in list(self.writer.results) if r.outcome == "acked" and r.started >= moment]
        return min(acks) if acks else None
