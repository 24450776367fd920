"""The Service Engine's control side: register, subscribe to its slice, apply it, report back.

xDS-style contract: the SE subscribes with the version it applied; the controller streams newer
slices; the SE validates and applies each one, then ACKs its version, or NACKs with the error and
keeps its last good config. It reports to every controller it knows, so any node can show its
state. With no controller reachable it keeps serving what it has (headless) and reconnects with
backoff, to any controller node; the last good slice is kept on disk, so a restarted SE serves it
before any controller answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import aiohttp
import structlog

from engine.config import SliceConfig, SliceError, read_slice
from engine.dataplane import DataPlane
from engine.ha_coordinator import HaCoordinator
from engine.interfaces import describe as describe_interface

__all__ = ["ServiceEngineAgent"]

log = structlog.get_logger(__name__)


class ServiceEngineAgent:
    def __init__(
        self,
        name: str,
        controllers: list[str],
        token: str,
        state_dir: str | Path,
        *,
        report_interval: float = 5.0,
        dataplane: Optional[DataPlane] = None,
        metrics_listen: Optional[tuple[str, int]] = None,
        ha_dir: Optional[str | Path] = None,
        scaleout_mode: str = "auto",
        data_interface: Optional[str] = None,
    ) -> None:
        if not controllers:
            raise ValueError("an SE needs at least one controller URL")
        self.name = name
        #: the host interface this SE serves VIPs on (a cloud of hosts); None on the local cloud
        self.data_interface = data_interface
        self.controllers = [c.rstrip("/") for c in controllers]
        self.token = token
        self.state_dir = Path(state_dir)
        self.report_interval = report_interval
        if dataplane is None:
            # The data plane calls the factory with itself: the coordinator reads its listeners.
            handoff = partial(HaCoordinator, se_name=name, ha_dir=ha_dir, scaleout_mode=scaleout_mode) if ha_dir is not None else None
            dataplane = DataPlane(ha=handoff)
        self.dataplane = dataplane
        self.uuid: Optional[str] = None
        #: why the cluster refused this SE's identity (it was deleted): the process stops serving
        self.retired: Optional[str] = None
        self.applied: Optional[SliceConfig] = None
        self.applied_revision = -1
        self.nack: Optional[dict[str, Any]] = None
        self.vs_errors: dict[str, str] = {}
        self.connected_to: Optional[str] = None
        self.applied_at: Optional[float] = None
        self._last_sample: Optional[tuple[float, float, int, int]] = None
        self._last_se_stats: dict[str, Any] = {}
        self.metrics_listen = metrics_listen
        self.metrics_port: Optional[int] = None
        self.log = log.bind(se=name)
        self._session: Optional[aiohttp.ClientSession] = None
        self._report_now = asyncio.Event()
        self.dataplane.on_bound = self._bound_on_retry
        if self.dataplane.ha is not None:
            # A takeover or role change is reported at once, not at the next interval.
            self.dataplane.ha.on_change = self._report_now.set

    def _bound_on_retry(self) -> None:
        """A VIP that could not be bound at apply is now served: drop its error and report at once."""
        unbound = self.dataplane.unbound()
        self.vs_errors = {vs: err for vs, err in self.vs_errors.items() if vs in unbound or "cannot bind" not in err}
        if self.nack is not None and self.nack.get("revision") == self.applied_revision and not self.vs_errors:
            self.nack = None
        self.log.info("se_bound_on_retry", still_unbound=unbound or None)
        self._report_now.set()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # -- the last good slice on disk -----------------------------------------------------------

    def _state_file(self) -> Path:
        return self.state_dir / "slice.json"

    def _identity_file(self) -> Path:
        return self.state_dir / "identity.json"

    def _save_identity(self) -> None:
        """The uuid and own credential the cluster gave this SE, kept (owner only) before anything
        else: the enrolment it registered with cannot register it again."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._identity_file().with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"uuid": self.uuid, "credential": self.token}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._identity_file())

    def _save(self, doc: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file().with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"uuid": self.uuid, "slice": doc}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_file())

    async def _restore(self) -> None:
        try:
            identity = json.loads(self._identity_file().read_text())
            if isinstance(identity, dict) and isinstance(identity.get("credential"), str):
                self.uuid, self.token = identity.get("uuid"), identity["credential"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            self.log.warning("se_identity_unreadable", error=str(exc))
        try:
            saved = json.loads(self._state_file().read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.log.warning("se_state_unreadable", error=str(exc))
            return
        self.uuid = self.uuid or saved.get("uuid")
        await self.apply(saved.get("slice"), persist=False)
        self.log.info("se_restored_last_slice", revision=self.applied_revision)

    # -- apply ---------------------------------------------------------------------------------

    async def apply(self, doc: Any, *, persist: bool = True) -> bool:
        """Validate and apply one slice; True when it was applied (maybe with per-VS errors)."""
        try:
            config, refused = read_slice(doc, self.applied)
        except SliceError as exc:
            revision = doc.get("revision") if isinstance(doc, dict) else None
            self.nack = {"revision": revision, "error": str(exc)}
            self.log.warning("slice_nacked", revision=revision, error=str(exc))
            self._report_now.set()
            return False
        errors = {**refused, **await self.dataplane.apply(config)}
        self.applied = config
        self.applied_revision = config.revision
        self.applied_at = time.time()
        self.vs_errors = dict(errors)
        self.nack = (
            {"revision": config.revision, "error": "; ".join(f"{vs}: {err}" for vs, err in sorted(errors.items()))}
            if errors
            else None
        )
        if persist:
            self._save(doc)
        self.log.info("slice_applied", revision=config.revision, virtual_services=len(config.virtual_services), errors=errors or None)
        self._report_now.set()
        return True

    # -- talking to controllers ----------------------------------------------------------------

    async def _register(self, stop: asyncio.Event) -> None:
        assert self._session is not None
        backoff = 0.1
        while not stop.is_set():
            for url in self.controllers:
                try:
                    # The uuid it had, if any: a deleted SE's identity is refused (410), not renewed.
                    identity: dict[str, Any] = {"name": self.name, **({"uuid": self.uuid} if self.uuid else {})}
                    if self.data_interface is not None:
                        identity["data_vnics"] = [describe_interface(self.data_interface).to_report()]
                    async with self._session.post(
                        f"{url}/api/serviceengine/register",
                        json=identity,
                        headers=self._headers,
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200:
                            self.uuid = body["uuid"]
                            if isinstance(body.get("credential"), str):
                                self.token = body["credential"]
                                self._save_identity()
                            self.log.info("se_registered", uuid=self.uuid, controller=url)
                            return
                        if resp.status == 410:
                            self.retired = str(((body or {}).get("error") or {}).get("message") or "deleted by the cluster")
                            self.log.critical("se_retired", uuid=self.uuid, controller=url, reason=self.retired)
                            stop.set()
                            return
                        self.log.warning("se_register_refused", status=resp.status, body=body)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    self.log.info("se_register_retry", controller=url, error=str(exc) or type(exc).__name__)
            await _wait(stop, backoff)
            backoff = min(backoff * 2, 2.0)

    async def _subscribe(self, stop: asyncio.Event) -> None:
        assert self._session is not None
        backoff = 0.1
        start = random.randrange(len(self.controllers))
        attempt = 0
        while not stop.is_set():
            url = self.controllers[(start + attempt) % len(self.controllers)]
            attempt += 1
            try:
                async with self._session.get(
                    f"{url}/api/serviceengine/{self.uuid}/slice",
                    params={"watch": "true", "version": str(self.applied_revision)},
                    headers=self._headers,
                    # Controllers send a line at least every second: three silent ones mean the
                    # controller or the path to it is gone, and the SE moves on to the next.
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=3),
                ) as resp:
                    if resp.status == 404:
                        self.log.warning("se_unknown_to_cluster", controller=url)
                        await self._register(stop)
                        continue
                    if resp.status == 410:
                        body = await resp.json(content_type=None)
                        self.retired = str(((body or {}).get("error") or {}).get("message") or "deleted by the cluster")
                        self.log.critical("se_retired", uuid=self.uuid, controller=url, reason=self.retired)
                        stop.set()
                        return
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    self.connected_to = url
                    self.log.info("se_subscribed", controller=url, version=self.applied_revision)
                    backoff = 0.1
                    async for line in resp.content:
                        if stop.is_set():
                            return
                        doc = json.loads(line)
                        if doc.get("heartbeat"):
                            continue
                        await self.apply(doc)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, ConnectionError) as exc:
                self.log.info("se_subscription_lost", controller=url, error=str(exc) or type(exc).__name__)
            self.connected_to = None
            await _wait(stop, backoff)
            backoff = min(backoff * 2, 2.0)

    def _se_stats(self, telemetry: dict[str, Any]) -> dict[str, Any]:
        """Per-SE figures: CPU and memory of this process, open connections, connections and requests per second."""
        now = time.monotonic()
        cpu = sum(os.times()[:2])
        connections = sum(v.get("total_connections", 0) for v in telemetry.values())
        requests = sum(v.get("requests", 0) for v in telemetry.values())
        last = self._last_sample
        self._last_sample = (now, cpu, connections, requests)
        elapsed = now - last[0] if last else 0.0
        rate = (lambda new, old: round((new - old) / elapsed, 1)) if elapsed > 0 else (lambda new, old: None)
        self._last_se_stats = {
            "cpu_percent": rate(cpu * 100, last[1] * 100) if last else None,
            "memory_mb": round(_rss_bytes() / 2**20, 1),
            "open_connections": sum(v.get("open_connections", 0) for v in telemetry.values()),
            "connections_per_s": rate(connections, last[2]) if last else None,
            "requests_per_s": rate(requests, last[3]) if last else None,
        }
        return self._last_se_stats

    def metrics_text(self) -> str:
        from engine.metrics import render_metrics

        status = {
            "applied_revision": self.applied_revision if self.applied_revision >= 0 else None,
            "nack": self.nack,
            "se": self._last_se_stats,
            "telemetry": self.dataplane.telemetry(),
            "servers": self.dataplane.server_states(),
        }
        return render_metrics(self.name, status)

    async def _serve_metrics(self) -> Any:
        from aiohttp import web

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        assert self.metrics_listen is not None
        site = web.TCPSite(runner, self.metrics_listen[0], self.metrics_listen[1], reuse_address=True)
        await site.start()
        self.metrics_port = runner.addresses[0][1]
        self.log.info("se_metrics_serving", address=f"{self.metrics_listen[0]}:{self.metrics_port}")
        return runner

    def ack(self) -> dict[str, Any]:
        """What an ACK or NACK carries: the applied version and its errors, nothing costly to build."""
        return {
            "applied_revision": self.applied_revision if self.applied_revision >= 0 else None,
            "applied_at": self.applied_at,
            "nack": self.nack,
            "vs_errors": self.vs_errors,
            "connected_to": self.connected_to,
            **self._ha_status(),
        }

    def _ha_status(self) -> dict[str, Any]:
        """``{"ha": {vs_uuid: {role, epoch, took_over_from?, at?, ...}}}`` when this SE does HA handoff."""
        ha = self.dataplane.ha
        return {"ha": ha.status()} if ha is not None else {}

    def status(self) -> dict[str, Any]:
        pools = {}
        if self.applied is not None:
            pools = {vs.pool.name: vs.pool.uuid for vs in self.applied.virtual_services if vs.pool is not None}
        servers = {pools.get(name, name): states for name, states in self.dataplane.server_states().items()}
        telemetry = self.dataplane.telemetry()
        return {
            "se": self._se_stats(telemetry),
            "applied_revision": self.applied_revision if self.applied_revision >= 0 else None,
            "applied_at": self.applied_at,
            "nack": self.nack,
            "vs_errors": self.vs_errors,
            "servers": servers,
            "telemetry": telemetry,
            # The controllers declare an SE down after a few intervals without a report.
            "report_interval": self.report_interval,
            "connected_to": self.connected_to,
            **self._ha_status(),
        }

    async def _report(self, stop: asyncio.Event) -> None:
        """Report to every controller each interval; right after an apply, first to the one we stream from."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while not stop.is_set():
            if self.uuid is not None:
                full = loop.time() >= next_full or self.connected_to is None
                body = self.status() if full else self.ack()
                if full:
                    # Request logs ride on the full reports only, so every controller gets each batch once.
                    body["request_logs"] = self.dataplane.take_request_logs()
                    await asyncio.gather(*(self._post_status(url, body) for url in self.controllers))
                    next_full = loop.time() + self.report_interval
                elif self.connected_to is not None:
                    # The ACK (or NACK) alone, at once: counters and logs follow on the full report.
                    await self._post_status(self.connected_to, body)
            elif next_full <= loop.time():
                # Not registered yet: nothing to report; look again an interval from now, not at once.
                next_full = loop.time() + self.report_interval
            self._report_now.clear()
            try:
                await asyncio.wait_for(self._report_now.wait(), max(0.0, next_full - loop.time()))
            except asyncio.TimeoutError:
                pass

    async def _post_status(self, url: str, body: dict[str, Any]) -> None:
        assert self._session is not None
        try:
            async with self._session.post(
                f"{url}/api/serviceengine/{self.uuid}/status", json=body, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=2),
            ) as resp:
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass

    async def run(self, stop: asyncio.Event) -> None:
        await self._restore()
        metrics_runner = await self._serve_metrics() if self.metrics_listen else None
        self._session = aiohttp.ClientSession()
        reporter = asyncio.create_task(self._report(stop))
        try:
            if self.uuid is None:
                await self._register(stop)
            if not stop.is_set():
                subscriber = asyncio.create_task(self._subscribe(stop))
                await stop.wait()
                subscriber.cancel()
                await asyncio.gather(subscriber, return_exceptions=True)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await self._session.close()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await self.dataplane.close()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
