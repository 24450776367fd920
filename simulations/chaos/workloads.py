"""Client workloads of a chaos run: bounded in rate and time, asyncio + aiohttp, every outcome recorded.

- :class:`WriteWorkload`: unique-name pool creates through :class:`simulations.writers.Writer`
  (stable ``X-Avi-Command-Id``, retried across nodes); outcomes acked / failed / unknown.
- :class:`DataPlaneWorkload`: HTTP traffic through a VIP: a new connection every 20 ms plus a
  few long-lived keep-alive connections (a request every 200 ms each, reconnecting when one is
  dropped); every request is a :class:`Probe` (start, end, ok, error). Which SE answered is not
  visible in the response (the SEs are not changed for this); the runner reads it from the SEs'
  telemetry through the API instead.
- :class:`RegisterWorkload`: a few keys, each key one pool object whose ``default_server_port``
  is the register value. Clients alternately read it (a linearizable GET) and compare-and-set it
  (PUT with the ``_last_modified`` they read and a new, never used value). Every operation goes
  into a :class:`HistoryBuilder` with ``time.monotonic()`` invoke / complete times, for
  :func:`simulations.chaos.checkers.check_linearizable`.

Each written value is unique, so a value names exactly one version of the object and the
revision-based precondition of the PUT is the value-based cas of the register model.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from typing import Any, Optional

import aiohttp
import attrs

from simulations.chaos.history import HistoryBuilder, Operation
from simulations.writers import Writer, WriteResult

__all__ = ["DataPlaneWorkload", "Probe", "RegisterWorkload", "WriteWorkload", "no_retry_session"]

REQUEST_TIMEOUT = 3.0


def no_retry_session() -> aiohttp.ClientSession:
    """A session that never resends a request by itself.

    aiohttp resends an idempotent request (PUT, GET) once when a kept-alive connection drops
    mid-request; if the retry then cannot connect, the caller sees ``ClientConnectorError`` for
    a PUT the server may already have applied (found by the leader-kill scenario: a cas reported
    as refused had landed). With the resend off, a connect error really means nothing was sent.
    """
    session = aiohttp.ClientSession()
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError("this aiohttp has no _retry_connection; cannot tell a refused cas from a lost answer")
    session._retry_connection = False
    return session


class WriteWorkload:
    """``concurrency`` clients creating uniquely named pools, at most ``rate`` writes/s in all."""

    def __init__(self, api_urls: list[str], token: str, *, prefix: str = "cw", concurrency: int = 4,
                 rate: float = 100.0, retry_for: float = 10.0) -> None:
        self.writer = Writer(api_urls, token, prefix=prefix, retry_for=retry_for)
        self.prefix = prefix
        self.concurrency = concurrency
        self.rate = rate

    @property
    def results(self) -> list[WriteResult]:
        return self.writer.results

    async def run(self, session: aiohttp.ClientSession, stop_at: float) -> None:
        interval = self.concurrency / self.rate if self.rate > 0 else 0.0

        async def worker(i: int) -> None:
            while time.monotonic() < stop_at:
                began = time.monotonic()
                await self.writer.write_one(session, start_node=i)
                rest = interval - (time.monotonic() - began)
                if rest > 0:
                    await asyncio.sleep(rest)

        await asyncio.gather(*(worker(i) for i in range(self.concurrency)))


class RegisterWorkload:
    """Read / compare-and-set registers; each key is a pool named ``{prefix}-k{i}``."""

    def __init__(self, api_urls: list[str], token: str, *, keys: int = 3, clients_per_key: int = 2,
                 prefix: str = "creg", think: float = 0.02, seed: int = 0) -> None:
        self.api_urls = api_urls
        self.token = token
        self.keys = [f"{prefix}-k{i}" for i in range(keys)]
        self.clients_per_key = clients_per_key
        self.think = think
        self.rng = random.Random(seed)
        self.uuids: dict[str, str] = {}
        self.initial: dict[str, int] = {}
        self.history = HistoryBuilder()
        self._values = itertools.count(10_000)
        self._process_ids = itertools.count()
        self.counts = {"ok": 0, "fail": 0, "unknown": 0}
        self.notes: dict[tuple[Any, float], str] = {}  # (process, invoked_at) -> node and answer, for reports

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def setup(self, session: aiohttp.ClientSession) -> None:
        """Create one pool per key (before any fault), remembering its uuid and initial value."""
        for name in self.keys:
            value = next(self._values)
            body = {"name": name, "default_server_port": value,
                    "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}
            deadline = time.monotonic() + 20
            command_id = uuid.uuid4().hex
            pending = self.history.invoke("setup", "write", name, at=time.monotonic(), value=value)
            while True:
                try:
                    async with session.post(f"{self.api_urls[0]}/api/pool", json=body,
                                            headers={**self._headers(), "X-Avi-Command-Id": command_id},
                                            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
                        data = await resp.json(content_type=None)
                        if resp.status in (200, 201):
                            self.uuids[name] = data["uuid"]
                            self.initial[name] = value
                            self.history.complete(pending, "ok", at=time.monotonic())
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not create register {name}")
                await asyncio.sleep(0.2)

    async def _read(self, session: aiohttp.ClientSession, process: int, key: str, url: str) -> Optional[dict[str, Any]]:
        pending = self.history.invoke(process, "read", key, at=time.monotonic())
        try:
            async with session.get(f"{url}/api/pool/{self.uuids[key]}", headers=self._headers(),
                                   timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
                data = await resp.json(content_type=None)
                done = time.monotonic()
                if resp.status == 200:
                    self.history.complete(pending, "ok", at=done, value=data["default_server_port"])
                    self.counts["ok"] += 1
                    return data
                # A read that got no value took no effect: a definite failure.
                self.history.complete(pending, "fail", at=done)
                self.counts["fail"] += 1
                return None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            self.history.complete(pending, "fail", at=time.monotonic())
            self.counts["fail"] += 1
            return None

    async def _cas(self, session: aiohttp.ClientSession, process: int, key: str, url: str, obj: dict[str, Any]) -> str:
        expected = obj["default_server_port"]
        new = next(self._values)
        body = {k: v for k, v in obj.items() if k not in ("runtime",)}
        body["default_server_port"] = new
        pending = self.history.invoke(process, "cas", key, at=time.monotonic(), expected=expected, new=new)
        outcome: str
        note = ""
        try:
            async with session.put(f"{url}/api/pool/{self.uuids[key]}", json=body,
                                   headers={**self._headers(), "X-Avi-Command-Id": uuid.uuid4().hex},
                                   timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
                raw = await resp.read()
                done = time.monotonic()
                note = f"{resp.status} {raw[:160].decode(errors='replace')}"
                if 200 <= resp.status < 300:
                    outcome = "ok"
                elif resp.status == 504 or resp.status >= 500 and resp.status != 503:
                    outcome = "unknown"
                else:  # 412 (cas failed), 503 (no quorum, nothing proposed), 409, other refusals
                    outcome = "fail"
        except aiohttp.ClientConnectorError as exc:
            done, outcome = time.monotonic(), "fail"  # never connected: nothing was sent
            note = repr(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            done, outcome = time.monotonic(), "unknown"
            note = repr(exc)
        self.notes[(process, pending.invoked_at)] = f"{url}: {note}"
        self.history.complete(pending, outcome, at=None if outcome == "unknown" else done)
        self.counts[outcome] += 1
        return outcome

    async def run(self, session: aiohttp.ClientSession, stop_at: float) -> None:
        async def client(key: str, index: int) -> None:
            process = next(self._process_ids)
            node = index
            while time.monotonic() < stop_at:
                url = self.api_urls[node % len(self.api_urls)]
                obj = await self._read(session, process, key, url)
                if obj is None:
                    node += 1
                    await asyncio.sleep(0.05)
                    continue
                await asyncio.sleep(self.think * self.rng.random())
                if time.monotonic() >= stop_at:
                    break
                outcome = await self._cas(session, process, key, url, obj)
                if outcome == "unknown":
                    # The op stays open forever: later ops come from a new process (Jepsen's rule).
                    process = next(self._process_ids)
                    node += 1
                elif outcome == "fail":
                    node += 1 if self.rng.random() < 0.5 else 0
                await asyncio.sleep(self.think * self.rng.random())

        await asyncio.gather(*(client(key, i) for key in self.keys for i in range(self.clients_per_key)))

    def operations(self) -> list[Operation]:
        return self.history.history()


# -- data plane -------------------------------------------------------------------------------------


@attrs.frozen
class Probe:
    """One HTTP request through the VIP: ``kind`` "new" (its own connection) or "keepalive"."""

    kind: str
    client: int
    start: float  # monotonic
    end: float
    ok: bool
    error: str = ""
    reconnected: bool = False  # a keep-alive request that had to open a new connection first


class _HttpError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; (status, the server keeps the connection open)."""
    line = await reader.readline()
    if not line:
        raise _HttpError("closed before a response")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise _HttpError(f"bad status line {line[:60]!r}")
    status = int(parts[1])
    length: Optional[int] = None
    chunked = False
    keep = parts[0] == b"HTTP/1.1"
    while True:
        header = await reader.readline()
        if not header:
            raise _HttpError("closed in the headers")
        if header in (b"\r\n", b"\n"):
            break
        name, _, value = header.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection":
            keep = value == b"keep-alive" if not keep else value != b"close"
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()  # until EOF
        keep = False
    return status, keep


class DataPlaneWorkload:
    """Traffic through ``host:port``, bounded in rate and time, every request recorded as a :class:`Probe`.

    - A new connection every ``interval`` s (one ``GET`` with ``Connection: close``), each in its
      own task so a request stuck on a paused SE does not hold up the next ones; at most
      ``max_in_flight`` at once (a new one is skipped, and counted, while that many are open).
    - ``keepalive`` clients each holding one connection and sending a request every
      ``keepalive_interval`` s; a request that fails drops the connection, the next one reconnects
      (``drops`` counts them per client).

    Every request has a ``timeout`` (connect + answer). ``max_requests`` caps the new-connection
    probes of one run.
    """

    def __init__(self, host: str, port: int, *, interval: float = 0.02, keepalive: int = 3,
                 keepalive_interval: float = 0.2, timeout: float = 2.0, max_in_flight: int = 200,
                 max_requests: int = 20_000) -> None:
        self.host, self.port = host, port
        self.interval = interval
        self.keepalive = keepalive
        self.keepalive_interval = keepalive_interval
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_requests = max_requests
        self.probes: list[Probe] = []
        self.drops = [0] * keepalive
        self.skipped = 0
        self._in_flight = 0

    def _request(self, path: str, close: bool) -> bytes:
        conn = "close" if close else "keep-alive"
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: {conn}\r\n\r\n".encode()

    async def _one_new(self, seq: int) -> None:
        start = time.monotonic()
        ok, error = False, ""
        writer: Optional[asyncio.StreamWriter] = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(self._request(f"/dp/new/{seq}", close=True))
                await writer.drain()
                status, _ = await _read_response(reader)
                ok = status == 200
                error = "" if ok else f"status {status}"
        except TimeoutError:
            error = "timeout"
        except (OSError, asyncio.IncompleteReadError, _HttpError, ValueError) as exc:
            error = type(exc).__name__
        finally:
            if writer is not None:
                writer.close()
            self._in_flight -= 1
        self.probes.append(Probe("new", 0, start, time.monotonic(), ok, error))

    async def _new_connections(self, stop_at: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        seq = 0
        next_at = time.monotonic()
        while seq < self.max_requests:
            now = time.monotonic()
            if now >= stop_at:
                break
            if self._in_flight >= self.max_in_flight:
                self.skipped += 1
            else:
                seq += 1
                self._in_flight += 1
                task = asyncio.create_task(self._one_new(seq))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _keepalive_client(self, index: int, stop_at: float) -> None:
        reader: Optional[asyncio.StreamReader] = None
        writer: Optional[asyncio.StreamWriter] = None
        seq = 0
        opened_once = False
        while time.monotonic() < stop_at:
            began = time.monotonic()
            seq += 1
            reconnected = False
            ok, error = False, ""
            try:
                async with asyncio.timeout(self.timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                        reconnected = opened_once
                        opened_once = True
                    assert reader is not None
                    writer.write(self._request(f"/dp/keep/{index}/{seq}", close=False))
                    await writer.drain()
                    status, keep = await _read_response(reader)
                    ok = status == 200
                    error = "" if ok else f"status {status}"
                    if not keep:  # the server closed it on purpose: reopen, not a drop
                        writer.close()
                        reader = writer = None
            except TimeoutError:
                error = "timeout"
            except (OSError, asyncio.IncompleteReadError, _HttpError, ValueError) as exc:
                error = type(exc).__name__
            if not ok and writer is not None:
                writer.close()
                reader = writer = None
                self.drops[index] += 1
            self.probes.append(Probe("keepalive", index, began, time.monotonic(), ok, error, reconnected))
            await asyncio.sleep(max(0.0, self.keepalive_interval - (time.monotonic() - began)))
        if writer is not None:
            writer.close()

    async def run(self, stop_at: float) -> None:
        await asyncio.gather(self._new_connections(stop_at),
                             *(self._keepalive_client(i, stop_at) for i in range(self.keepalive)))

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("new", "keepalive"):
            probes = [p for p in self.probes if p.kind == kind]
            out[kind] = {"requests": len(probes), "ok": sum(1 for p in probes if p.ok),
                         "failed": sum(1 for p in probes if not p.ok)}
        out["keepalive"]["drops"] = sum(self.drops)
        out["keepalive"]["reconnects"] = sum(1 for p in self.probes if p.reconnected)
        out["new"]["skipped_at_cap"] = self.skipped
        return out
