"""A bounded write workload against a cluster's REST API that records every outcome.

Each write creates a pool with a unique name and a stable ``X-Avi-Command-Id``; a write whose
outcome is not known (timeout, 504, connection lost mid-request) is retried against the next
node with the same command id until its deadline, the way avictl retries. Outcomes are
``acked`` (2xx), ``failed`` (a definite refusal) or ``unknown``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Optional

import aiohttp
import attrs

__all__ = ["WriteResult", "Writer"]


@attrs.define
class WriteResult:
    name: str
    command_id: str
    outcome: str  # acked | failed | unknown
    started: float
    finished: float
    status: Optional[int] = None
    revision: Optional[int] = None


class Writer:
    def __init__(self, api_urls: list[str], token: str, *, prefix: str = "w", retry_for: float = 10.0) -> None:
        self.api_urls = api_urls
        self.token = token
        self.prefix = prefix
        self.retry_for = retry_for
        self.results: list[WriteResult] = []
        self._seq = 0

    def _body(self, name: str) -> dict[str, Any]:
        return {"name": name, "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}

    async def write_one(self, session: aiohttp.ClientSession, start_node: int = 0) -> WriteResult:
        self._seq += 1
        name = f"{self.prefix}-{self._seq}"
        command_id = uuid.uuid4().hex
        started = time.monotonic()
        deadline = started + self.retry_for
        attempt = 0
        status: Optional[int] = None
        maybe_applied = False
        while time.monotonic() < deadline:
            url = self.api_urls[(start_node + attempt) % len(self.api_urls)]
            attempt += 1
            try:
                async with session.post(
                    f"{url}/api/pool",
                    json=self._body(name),
                    headers={"Authorization": f"Bearer {self.token}", "X-Avi-Command-Id": command_id},
                    timeout=aiohttp.ClientTimeout(total=3.0),
                ) as resp:
                    status = resp.status
                    body = await resp.json(content_type=None)
                    if resp.status in (200, 201):
                        result = WriteResult(name, command_id, "acked", started, time.monotonic(), status, int(body["_last_modified"]))
                        self.results.append(result)
                        return result
                    if resp.status == 504:
                        maybe_applied = True
                    elif resp.status != 503:
                        result = WriteResult(name, command_id, "failed" if not maybe_applied else "unknown", started, time.monotonic(), status)
                        self.results.append(result)
                        return result
            except (aiohttp.ClientConnectionError, ConnectionError):
                pass
            except asyncio.TimeoutError:
                maybe_applied = True
            await asyncio.sleep(min(0.05 * attempt, 0.2))
        result = WriteResult(name, command_id, "unknown" if maybe_applied else "failed", started, time.monotonic(), status)
        self.results.append(result)
        return result

    async def run(self, *, concurrency: int, count: Optional[int] = None, duration: Optional[float] = None) -> list[WriteResult]:
        """Run until ``count`` writes were issued or ``duration`` seconds passed (at least one bound)."""
        assert count is not None or duration is not None
        stop_at = time.monotonic() + (duration if duration is not None else 3600.0)
        issued = 0

        async with aiohttp.ClientSession() as session:

            async def worker(i: int) -> None:
                nonlocal issued
                while time.monotonic() < stop_at and (count is None or issued < count):
                    issued += 1
                    await self.write_one(session, start_node=i)

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return self.results

    @property
    def acked(self) -> list[WriteResult]:
        return [r for r in self.results if r.outcome == "acked"]
