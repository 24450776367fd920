"""``python -m simulations.bench data-plane``: the Service Engine's proxies against HAProxy.

One run, on one machine, one proxy at a time (never both: they would share the proxy CPU):

1. nginx backends (``worker_processes 1``, two ports on 127.0.0.1, ``return 200 "ok\\n"`` on ``/``
   and a static file for bulk transfers, no access log), the same for every proxy;
2. direct to nginx, as a reference;
3. one Service Engine process (``engine.dataplane.DataPlane`` on uvloop) serving an L4 VS and an
   L7 VS over both backends, with an HTTP health monitor on each pool, its telemetry and (when
   the engine has it) its L7 request log, drained every 5 s as the SE agent does;
4. HAProxy (``nbthread 1``), one ``mode tcp`` and one ``mode http`` frontend/backend pair over the
   same backends with the same health checks (and an httplog line per L7 request when the SE
   logs requests); then again with ``option splice-auto`` and with forced
   ``splice-request``/``splice-response`` plus ``tune.pipesize``, for bulk L4 only.

The proxy under test runs alone on one CPU (``taskset``); wrk, the bulk client, nginx and this
process share the other. Loads: wrk with the same settings everywhere (HTTP through the L4 proxy,
through the L7 proxy, and direct); bulk L4 (and L7) throughput from a socket reader downloading
the big file a bounded number of times, one connection each.

Each phase also records CPU use from /proc: busy per CPU, the proxy's user, system and softirq
time (loopback delivery of what it sends runs as softirq on its CPU), nginx, the load tool and
``other`` (everything that is not ours). A phase in which other work used more than a tenth of a
CPU is measured again after a quiet second (``--retries``); each figure is the best of the rounds,
undisturbed ones first, and a figure that never got a quiet run is flagged ``interfered``.

Prints a human table to stderr; stdout ends with one JSON line (``l4_ratio``, ``l7_ratio``,
``bulk_ratio`` are SE / HAProxy; ``bulk_ratio`` is against HAProxy's best splice mode; the
``*_cpu_efficiency_ratio`` figures compare requests or bytes per CPU-second of the proxy, which
depend much less on what else the machine is doing). Installs nothing: exit status 2, with the
``apt-get install`` line to run, when a tool is missing; 1 when a part that was asked for failed
(its error is in the JSON as well).

Internal: ``python -m simulations.bench.data_plane se-child SLICE.json`` is the SE process and
``... bulk-client HOST PORT DOWNLOADS STREAMS BYTES MAX_S`` the bulk client.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["HELP", "add_arguments", "run", "summarize"]

HELP = "requests/s, latency and bulk throughput of the SE's L4/L7 proxies vs HAProxy, pinned CPUs"

_QUICK = {"duration_s": 3.0, "warmup_s": 1.0, "bulk_downloads": 4, "rounds": 1, "retries": 2}
_FULL = {"duration_s": 10.0, "warmup_s": 2.0, "bulk_downloads": 24, "rounds": 3, "retries": 1}

#: CPU (in CPUs) that processes other than ours may use during a phase before it is measured again
_INTERFERENCE = 0.1

#: tool -> the Debian package that provides it
_PACKAGES = {"haproxy": "haproxy", "wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}

# Each listener on its own loopback address, so no proxy can answer for another.
_SE_L4 = "127.0.0.2"
_SE_L7 = "127.0.0.3"
_HA_L4 = "127.0.0.4"
_HA_L7 = "127.0.0.5"
_BACKEND_HOST = "127.0.0.1"
_BULK_PATH = "/bulk.bin"

_MONITOR_INTERVAL_S = 5
_RISE = 2
_FALL = 3

_LOG_SHIP_INTERVAL_S = 5.0  # the SE agent's full-report interval, which carries the request logs

_MSG = "@@ "  # prefix of the SE child's protocol lines on stdout (anything else is a log line)


_LOADS = ("l4", "l7", "bulk_l4", "bulk_l7")


def _loads_arg(text: str) -> tuple[str, ...]:
    loads = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [load for load in loads if load not in _LOADS]
    if unknown or not loads:
        raise argparse.ArgumentTypeError(f"unknown load(s) {', '.join(unknown) or '(none)'}; choose from {','.join(_LOADS)}")
    return loads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one round of 3 s phases and 4 bulk downloads instead of 3 rounds of 10 s and 24")
    parser.add_argument(
        "--retries", type=int, default=None, help="extra attempts at a phase disturbed by other work on the machine (default 2 quick, 1 full)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (each: direct, SE, HAProxy; the order of the proxies alternates)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk phase (overrides --quick)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--bulk-downloads", type=int, default=None, help="downloads of the bulk file per proxy and mode")
    parser.add_argument("--bulk-streams", type=int, default=1, help="concurrent bulk downloads (default 1)")
    parser.add_argument("--bulk-mib", type=int, default=64, help="size of the bulk file in MiB (default 64)")
    parser.add_argument("--only", choices=("se", "haproxy"), default=None, help="run one proxy only (plus the direct reference)")
    parser.add_argument(
        "--loads",
        type=_loads_arg,
        default=_LOADS,
        help=f"comma-separated subset of {','.join(_LOADS)} to run (default all; the ratios of the others are null)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    parser.add_argument(
        "--wait-idle", type=float, default=30.0, help="seconds to wait for an idle machine before each round (default 30); then it runs anyway"
    )


# -- tools, CPUs, versions ------------------------------------------------------------------------


def _missing_tools() -> list[str]:
    return [tool for tool in _PACKAGES if shutil.which(tool) is None]


def _cpus() -> tuple[int, int]:
    """(load CPU, proxy CPU): the proxy gets the highest CPU we may use, alone; the same CPU twice on one core."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def _hard_nofile() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _engine_fingerprint() -> str:
    """The git commit, and a hash of the engine's sources when they differ from it (work in progress)."""
    import hashlib

    head = _first_line(["git", "-C", str(_REPO_ROOT), "rev-parse", "--short", "HEAD"])
    digest = hashlib.sha256()
    for path in sorted((_REPO_ROOT / "engine").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    dirty = subprocess.run(["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "engine"], capture_output=True, text=True, timeout=10).stdout.strip()
    return f"{head}" + (f"+dirty engine sha256:{digest.hexdigest()[:12]}" if dirty else "")


def _versions() -> dict[str, Any]:
    import httptools
    import uvloop

    vv = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True, timeout=10).stdout
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "haproxy": _first_line(["haproxy", "-v"]),
        "haproxy_splice": "+LINUX_SPLICE" in vv or "+SPLICE" in vv,
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "python": sys.version.split()[0],
        "engine": _engine_fingerprint(),
        "uvloop": uvloop.__version__,
        "httptools": httptools.__version__,
        "kernel": platform.release(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
    }


# -- CPU accounting -------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_times() -> dict[int, tuple[int, int, int]]:
    """``{cpu: (busy ticks, total ticks, irq + softirq ticks)}`` from /proc/stat."""
    out: dict[int, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = ticks[3] + ticks[4]
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks), ticks[5] + ticks[6])
    return out


def _group_cpu_s(pgids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """CPU seconds (user, system) used so far by every process of each process group."""
    totals = {label: (0.0, 0.0) for label in pgids}
    by_pgid = {pgid: label for label, pgid in pgids.items()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        label = by_pgid.get(int(fields[2]))
        if label is not None:
            user, system = totals[label]
            totals[label] = (user + int(fields[11]) / _CLK_TCK, system + int(fields[12]) / _CLK_TCK)
    return totals


def _own_cpu_s() -> tuple[float, float]:
    """CPU seconds of this process, and of its children that have been waited for (the load tools)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, waited.ru_utime + waited.ru_stime


class _CpuWindow:
    """Per-CPU busy fraction and per-process CPU use (in CPUs) over one measured phase.

    ``client`` is the load tool (wrk or the bulk client), which must have exited and been waited
    for when ``result`` is called; ``softirq`` is interrupt work the kernel did not charge to a
    process (loopback TCP delivery, mostly); ``other`` is whatever else ran on the machine
    meanwhile: well above zero means the figures were taken on a busy machine.
    """

    def __init__(self, groups: dict[str, int], proxy_cpu: int) -> None:
        self._groups = groups
        self._proxy_cpu = proxy_cpu
        self._cpu = _cpu_times()
        self._proc = _group_cpu_s(groups)
        self._own = _own_cpu_s()
        self._t = time.monotonic()

    def result(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._t, 1e-9)
        cpu = _cpu_times()
        proc = _group_cpu_s(self._groups)
        own = _own_cpu_s()
        busy = {}
        busy_s = 0.0
        irq_s = 0.0
        irq_by_cpu = {}
        for n, (b, t, i) in cpu.items():
            b0, t0, i0 = self._cpu.get(n, (0, 0, 0))
            busy[f"cpu{n}"] = round((b - b0) / max(t - t0, 1), 3)
            busy_s += (b - b0) / _CLK_TCK
            irq_s += (i - i0) / _CLK_TCK
            irq_by_cpu[n] = (i - i0) / _CLK_TCK
        used = {label: (sum(proc[label]) - sum(self._proc[label])) / elapsed for label in self._groups}
        used["client"] = (own[1] - self._own[1]) / elapsed
        used["bench"] = (own[0] - self._own[0]) / elapsed
        used["softirq"] = irq_s / elapsed
        used["other"] = max(0.0, busy_s / elapsed - sum(used.values()))
        out: dict[str, Any] = {"cpu_busy": busy, "process_cpu": {label: round(v, 3) for label, v in used.items()}}
        out["softirq_by_cpu"] = {f"cpu{n}": round(v / elapsed, 3) for n, v in irq_by_cpu.items()}
        if "proxy" in proc:
            # Loopback delivery of what the proxy sends runs as softirq on its CPU, charged to no
            # process: it is part of the proxy's cost (other work on that CPU adds a little).
            out["proxy_cpu_s"] = {
                "user": round(proc["proxy"][0] - self._proc["proxy"][0], 3),
                "system": round(proc["proxy"][1] - self._proc["proxy"][1], 3),
                "softirq": round(irq_by_cpu.get(self._proxy_cpu, 0.0), 3),
            }
        return out


def _background_busy(seconds: float = 1.0) -> dict[str, float]:
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    return {f"cpu{n}": round((after[n][0] - before[n][0]) / max(after[n][1] - before[n][1], 1), 3) for n in after}


def _wait_idle(budget_s: float, threshold: float = 0.1) -> dict[str, float]:
    """Wait (at most ``budget_s``) for a second in which no CPU is busier than ``threshold``."""
    deadline = time.monotonic() + budget_s
    busy = _background_busy()
    while max(busy.values()) > threshold and time.monotonic() < deadline:
        busy = _background_busy()
    return busy


# -- processes ------------------------------------------------------------------------------------


class _Children:
    """Every child process this run started, each in its own process group; ``stop_all`` ends them."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (an nginx worker)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs = []


_REPO_ROOT = Path(__file__).resolve().parents[2]


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))


def _http_get_status(host: str, port: int, path: str = "/", timeout: float = 1.0) -> Optional[int]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None


def _wait_http(host: str, port: int, deadline_s: float, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before serving {host}:{port}")
        if _http_get_status(host, port) == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not answer 200 within {deadline_s:g} s")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# -- nginx ----------------------------------------------------------------------------------------


def _nginx_conf(tmp: Path, ports: list[int]) -> str:
    listens = "\n".join(f"        listen {_BACKEND_HOST}:{p} backlog=4096;" for p in ports)
    return f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    default_type application/octet-stream;
    server {{
{listens}
        root {tmp}/www;
        location = / {{ return 200 "ok\\n"; }}
        location = {_BULK_PATH} {{ }}
    }}
}}
"""


def _make_bulk_file(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)


# -- the SE child -------------------------------------------------------------------------------------


def _slice(l4_port: int, l7_port: int, backend_ports: list[int]) -> dict[str, Any]:
    def pool(name: str) -> dict[str, Any]:
        return {
            "uuid": f"pool-{name}",
            "name": f"pool-{name}",
            "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
            "servers": [{"ip": _BACKEND_HOST, "port": p, "ratio": 1, "enabled": True} for p in backend_ports],
            "monitors": [
                {
                    "name": "bench-http",
                    "type": "HEALTH_MONITOR_HTTP",
                    "send_interval": _MONITOR_INTERVAL_S,
                    "receive_timeout": 2,
                    "successful_checks": _RISE,
                    "failed_checks": _FALL,
                    "http_request": "GET / HTTP/1.0",
                    "http_response_codes": ["HTTP_2XX"],
                }
            ],
        }

    return {
        "revision": 1,
        "se_name": "bench-se",
        "virtual_services": [
            {"uuid": "vs-l4", "name": "bench-l4", "vip": _SE_L4, "ports": [l4_port], "application": "l4", "enabled": True, "pool": pool("l4")},
            {"uuid": "vs-l7", "name": "bench-l7", "vip": _SE_L7, "ports": [l7_port], "application": "http", "enabled": True, "pool": pool("l7")},
        ],
    }


def _se_child(slice_path: str) -> int:
    """The SE process: serve the slice on uvloop; answer ``telemetry`` and ``stop`` lines on stdin."""
    import asyncio

    import structlog
    import uvloop

    from engine.config import SliceConfig
    from engine.dataplane import DataPlane

    # structlog prints to stdout by default; stdout carries the protocol.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    def say(doc: dict[str, Any]) -> None:
        sys.stdout.write(_MSG + json.dumps(doc) + "\n")
        sys.stdout.flush()

    def monitors(plane: DataPlane) -> dict[str, Any]:
        # Reaches into the data plane to show the monitors' own verdicts (UNKNOWN until checked).
        pools = getattr(plane, "_pools", {})
        return {p.config.name: p.checker.monitor_states() for p in pools.values() if hasattr(p.checker, "monitor_states")}

    def state(plane: DataPlane) -> dict[str, Any]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "telemetry": plane.telemetry(),
            "server_states": plane.server_states(),
            "monitor_states": monitors(plane),
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        plane = DataPlane()
        errors = await plane.apply(SliceConfig.from_dict(json.loads(Path(slice_path).read_text())))
        say(
            {
                "event": "ready",
                "pid": os.getpid(),
                "errors": errors,
                "loop": f"{type(loop).__module__}.{type(loop).__name__}",
                "listening": {f"{a[0]}:{a[1]}": name for a, name in plane.listening().items()},
            }
        )
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def commands() -> None:
            while True:
                line = (await reader.readline()).strip()
                if not line or line == b"stop":
                    stop.set()
                    return
                if line == b"telemetry":
                    say({"event": "telemetry", **state(plane)})

        shipped = {"batches": 0, "records": 0}

        async def ship_logs() -> None:
            # What the SE agent does with request logs: take a batch every report interval and
            # encode it into the status report (which goes nowhere here).
            while True:
                await asyncio.sleep(_LOG_SHIP_INTERVAL_S)
                batch = plane.take_request_logs()
                json.dumps(batch)
                shipped["batches"] += 1
                shipped["records"] += sum(len(records) for records in batch.values())

        tasks = [loop.create_task(commands())]
        if hasattr(plane, "take_request_logs"):
            tasks.append(loop.create_task(ship_logs()))
        await stop.wait()
        for task in tasks:
            task.cancel()
        say({"event": "stopped", "request_logs_shipped": shipped if len(tasks) > 1 else None, **state(plane)})
        await plane.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return 0


class _SeProcess:
    """The parent's handle on the SE child: its protocol lines arrive through a reader thread."""

    def __init__(self, children: _Children, cmd: list[str], stderr_path: Path, **popen: Any) -> None:
        self._stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = children.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, **popen)
        self._lines: queue.Queue[Optional[dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_MSG):
                self._lines.put(json.loads(line[len(_MSG) :]))
        self._lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"SE sent no {event!r} within {timeout:g} s; stderr: {_tail(self._stderr_path)}") from None
            if msg is None:
                raise RuntimeError(f"SE exited ({self.proc.poll()}) before {event!r}; stderr: {_tail(self._stderr_path)}")
            if msg.get("event") == event:
                return msg

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self._stderr.close()


def _download(host: str, port: int, expected: int, deadline: float, view: memoryview) -> float:
    """One download of the bulk file on a fresh connection; the seconds from connect to last byte."""
    request = f"GET {_BULK_PATH} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode()
    started = time.perf_counter()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(max(deadline - started, 0.1))
        s.connect((host, port))
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            n = s.recv_into(view)
            if not n:
                break
            head += bytes(view[:n])
        head, _, body = head.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            raise RuntimeError(f"{host}:{port}: {head[:200]!r}")
        got = len(body)
        while got < expected:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{host}:{port}: {got} of {expected} bytes by the deadline")
            n = s.recv_into(view)
            if not n:
                break
            got += n
    if got != expected:
        raise RuntimeError(f"{host}:{port}: got {got} bytes, want {expected}")
    return time.perf_counter() - started


def _bulk_client(host: str, port: int, downloads: int, streams: int, expected: int, max_time: float) -> int:
    """Download the bulk file ``downloads`` times over ``streams`` concurrent connections, one
    connection per download; print the wall-clock seconds and the seconds each download took.

    A socket reader rather than curl: curl's 16 KiB reads cap it near 1.3 GB/s on this machine,
    below what the proxies can do; ``recv_into`` a 4 MiB buffer with a 4 MiB receive buffer
    roughly doubles that (``recv_into`` releases the GIL, so streams overlap).
    """
    seconds: list[float] = []
    failures: list[str] = []
    deadline = time.perf_counter() + max_time * downloads
    todo = iter(range(downloads))
    lock = threading.Lock()

    def worker() -> None:
        view = memoryview(bytearray(4 << 20))
        while not failures:
            with lock:
                if next(todo, None) is None:
                    return
            try:
                took = _download(host, port, expected, min(deadline, time.perf_counter() + max_time), view)
            except (OSError, RuntimeError) as exc:
                failures.append(str(exc) or type(exc).__name__)
                return
            seconds.append(took)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(max(1, streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        print(failures[0], file=sys.stderr)
        return 1
    print(json.dumps({"wall_s": wall, "seconds": seconds}))
    return 0


# -- HAProxy --------------------------------------------------------------------------------------


_SPLICE = {
    "default": "",
    "splice-auto": "    option splice-auto\n",
    "splice-forced": "    option splice-request\n    option splice-response\n",
}


def _haproxy_maxconn() -> int:
    # HAProxy 2.6 refuses to start when maxconn needs more fds (two per connection, plus its
    # own) than the hard RLIMIT_NOFILE allows.
    return max(256, min(4096, (_hard_nofile() - 256) // 2))


def _engine_logs_requests() -> bool:
    """Whether this engine records L7 requests (it has no switch: then every request is logged)."""
    from engine.dataplane import DataPlane

    return hasattr(DataPlane, "take_request_logs")


def _haproxy_conf(tmp: Path, mode: str, l4_port: int, l7_port: int, backend_ports: list[int], request_logs: bool) -> str:
    check = f"check inter {_MONITOR_INTERVAL_S}s rise {_RISE} fall {_FALL}"
    servers = "\n".join(f"    server b{i} {_BACKEND_HOST}:{p} {check}" for i, p in enumerate(backend_ports, 1))
    pipesize = "    tune.pipesize 1048576\n" if mode == "splice-forced" else ""
    # Like the SE, log every L7 request (one httplog line each, to stdout, which is /dev/null).
    global_log = "    log stdout format raw local0 info\n" if request_logs else ""
    l7_log = "    log global\n    option httplog\n" if request_logs else ""
    return f"""global
    nbthread 1
    maxconn {_haproxy_maxconn()}
{pipesize}{global_log}    stats socket {tmp}/haproxy.sock mode 600 level user

defaults
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    timeout check 2s
{_SPLICE[mode]}
frontend l4
    mode tcp
    bind {_HA_L4}:{l4_port}
    default_backend l4_pool

backend l4_pool
    mode tcp
    balance roundrobin
    option httpchk GET /
{servers}

frontend l7
    mode http
{l7_log}    option http-keep-alive
    option forwardfor
    bind {_HA_L7}:{l7_port}
    default_backend l7_pool

backend l7_pool
    mode http
    balance roundrobin
    option http-keep-alive
    http-reuse always
    option httpchk GET /
{servers}
"""


def _haproxy_servers(sock_path: Path) -> dict[str, Any]:
    """``{"backend/server": "status check_status"}`` from the stats socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(sock_path))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as exc:
        return {"error": str(exc)}
    lines = data.decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return {"error": "unexpected 'show stat' output"}
    header = lines[0][2:].split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") not in (None, "", "FRONTEND", "BACKEND"):
            out[f"{row['pxname']}/{row['svname']}"] = f"{row.get('status')} {row.get('check_status')}".strip()
    return out


# -- loads ----------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> Optional[float]:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)], 4) if match else None


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), totals and errors from ``wrk --latency`` output."""
    out: dict[str, Any] = {"rps": None, "p50_ms": None, "p75_ms": None, "p90_ms": None, "p99_ms": None, "requests": None, "errors": 0, "non_2xx": 0}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            out["rps"] = round(float(line.split()[1]), 1)
        elif m := re.fullmatch(r"(50|75|90|99)(?:\.0+)?%\s+(\S+)", line):
            out[f"p{m.group(1)}_ms"] = _ms(m.group(2))
        elif m := re.match(r"(\d+) requests in ", line):
            out["requests"] = int(m.group(1))
        elif line.startswith("Socket errors:"):
            out["errors"] = sum(int(n) for n in re.findall(r"\d+", line))
        elif line.startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(line.split(":")[1])
    return out


class _Bench:
    """Runs the loads with the settings of one run; every call is bounded in time."""

    def __init__(self, args: argparse.Namespace, profile: dict[str, Any], load_cpu: int, proxy_cpu: int, groups: dict[str, int]) -> None:
        self.duration_s = float(args.duration if args.duration is not None else profile["duration_s"])
        self.warmup_s = float(profile["warmup_s"])
        self.connections = int(args.connections)
        self.threads = int(args.threads)
        self.downloads = int(args.bulk_downloads if args.bulk_downloads is not None else profile["bulk_downloads"])
        self.bulk_bytes = int(args.bulk_mib) << 20
        self.streams = int(args.bulk_streams)
        self.retries = max(0, int(args.retries if args.retries is not None else profile["retries"]))
        self.retry_wait_s = 10.0
        self.load_cpu = load_cpu
        self.proxy_cpu = proxy_cpu
        self.groups = groups

    def _wrk(self, url: str, seconds: float) -> str:
        cmd = ["taskset", "-c", str(self.load_cpu), "wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds:g}s", "--latency", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        if done.returncode != 0:
            raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _clean(self, measure: Callable[[], dict[str, Any]], metric: str) -> dict[str, Any]:
        """Measure; while other work used more than ``_INTERFERENCE`` of a CPU meanwhile, wait for
        a quiet second and measure again (``retries`` times at most). The best clean attempt wins,
        else the best of them all, flagged ``interfered``."""
        attempts = []
        for attempt in range(1 + self.retries):
            if attempt:
                _wait_idle(self.retry_wait_s)
            result = measure()
            attempts.append(result)
            if result["process_cpu"]["other"] <= _INTERFERENCE:
                break
        clean = [r for r in attempts if r["process_cpu"]["other"] <= _INTERFERENCE]
        best = max(clean or attempts, key=lambda r: r[metric])
        best["attempts"] = len(attempts)
        best["interfered"] = not clean
        return best

    def requests(self, host: str, port: int) -> dict[str, Any]:
        url = f"http://{host}:{port}/"
        if self.warmup_s > 0:
            self._wrk(url, self.warmup_s)
        return self._clean(lambda: self._requests_once(url), "rps")

    def _requests_once(self, url: str) -> dict[str, Any]:
        window = _CpuWindow(self.groups, self.proxy_cpu)
        output = self._wrk(url, self.duration_s)
        result = parse_wrk(output)
        result.update(window.result())
        if result["rps"] is None:
            raise RuntimeError(f"could not read wrk output: {output[-500:]}")
        cpu = result.get("proxy_cpu_s")
        if cpu and result["requests"]:
            # CPU the proxy spent per request: unlike req/s, it does not depend on who else was busy.
            result["proxy_us_per_request"] = {k: round(v * 1e6 / result["requests"], 2) for k, v in cpu.items()}
        return result

    def bulk(self, host: str, port: int) -> dict[str, Any]:
        return self._clean(lambda: self._bulk_once(host, port), "gb_per_s")

    def _bulk_once(self, host: str, port: int) -> dict[str, Any]:
        # A download slower than 20 MB/s is a failure, not a figure.
        max_time = max(10.0, self.bulk_bytes * self.streams / 20e6)
        cmd = [
            "taskset", "-c", str(self.load_cpu), sys.executable, "-m", "simulations.bench.data_plane",
            "bulk-client", host, str(port), str(self.downloads), str(self.streams), str(self.bulk_bytes), f"{max_time:g}",
        ]  # fmt: skip
        window = _CpuWindow(self.groups, self.proxy_cpu)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.downloads * max_time + 30, env=_child_env(), cwd=_REPO_ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"bulk client for {host}:{port}: {(done.stderr or done.stdout).strip()[-1000:]}")
        timing = json.loads(done.stdout)
        seconds = timing["seconds"]
        result = {
            "gb_per_s": round(self.downloads * self.bulk_bytes / timing["wall_s"] / 1e9, 3),
            "downloads": self.downloads,
            "streams": self.streams,
            "bytes_each": self.bulk_bytes,
            "per_download_gb_per_s": [round(self.bulk_bytes / t / 1e9, 3) for t in seconds],
        }
        result.update(window.result())
        cpu = result.get("proxy_cpu_s")
        if cpu:
            result["proxy_cpu_s_per_gb"] = {k: round(v * 1e9 / (self.downloads * self.bulk_bytes), 3) for k, v in cpu.items()}
        return result


def _attempt(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
        results[key] = {"error": _error_text(exc)}
    _say(f"  {key}: {_describe(results[key])}")


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (ImportError, AttributeError, TypeError, KeyError, NameError)):
        return "".join(traceback.format_exception(exc))[-3000:]
    return f"{type(exc).__name__}: {exc}"[-3000:]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    cpu = ", ".join(f"{k} {v:.0%}" for k, v in r.get("cpu_busy", {}).items())
    procs = ", ".join(f"{k} {v:.0%}" for k, v in r.get("process_cpu", {}).items() if v >= 0.005)
    if r.get("interfered"):
        cpu = f"DISTURBED by other work after {r['attempts']} attempts; {cpu}"
    elif r.get("attempts", 1) > 1:
        cpu = f"clean at attempt {r['attempts']}; {cpu}"
    if "rps" in r:
        errors = f", errors {r['errors']}, non-2xx {r['non_2xx']}" if r["errors"] or r["non_2xx"] else ""
        return f"{r['rps']:.0f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms{errors} (busy: {cpu}; {procs})"
    return f"{r['gb_per_s']:.2f} GB/s over {r['downloads']} x {r['bytes_each'] >> 20} MiB, {r['streams']} at a time (busy: {cpu}; {procs})"


# -- the phases -----------------------------------------------------------------------------------


def _run_loads(bench: _Bench, out: dict[str, Any], loads: tuple[str, ...], targets: dict[str, tuple[str, int]]) -> None:
    """Each of ``loads`` (``l4``, ``l7``, ``bulk_l4``, ``bulk_l7``) against its proxy's ``targets``, into ``out``."""
    for load in loads:
        kind, _, which = load.partition("_")
        host, port = targets[which if kind == "bulk" else load]
        run = bench.bulk if kind == "bulk" else bench.requests
        _attempt(out, load, lambda: run(host, port))  # noqa: B023 - called before the next iteration


def _run_se(bench: _Bench, children: _Children, tmp: Path, proxy_cpu: int, backend_ports: list[int], loads: tuple[str, ...]) -> dict[str, Any]:
    # Imported here, not at the top: this module is also the se-child and bulk-client processes (and the bench CLI imports every subcommand module), which stay on the standard library.
    from simulations.local_cluster import free_port

    l4_port, l7_port = free_port(_SE_L4), free_port(_SE_L7)
    slice_path = tmp / "slice.json"
    slice_path.write_text(json.dumps(_slice(l4_port, l7_port, backend_ports), indent=2))
    cmd = ["taskset", "-c", str(proxy_cpu), sys.executable, "-m", "simulations.bench.data_plane", "se-child", str(slice_path)]
    out: dict[str, Any] = {}
    se = _SeProcess(children, cmd, tmp / "se-stderr.log", env=_child_env(), cwd=_REPO_ROOT)
    try:
        ready = se.expect("ready", 30.0)
        if ready["errors"]:
            raise RuntimeError(f"SE could not serve: {ready['errors']}")
        out["loop"] = ready["loop"]
        _wait_http(_SE_L7, l7_port, 10.0, se.proc)
        bench.groups["proxy"] = se.proc.pid
        _run_loads(bench, out, loads, {"l4": (_SE_L4, l4_port), "l7": (_SE_L7, l7_port)})
        se.send("stop")
        final = se.expect("stopped", 20.0)
        out["telemetry"] = {
            name: {k: vs[k] for k in ("total_connections", "requests", "responses", "connect_failures", "bytes_in", "bytes_out")}
            for name, vs in final["telemetry"].items()
        }
        out["server_states"] = final["server_states"]
        out["monitor_states"] = final["monitor_states"]
        out["cpu_s"] = round(final["cpu_s"], 2)
        out["request_logs_shipped"] = final.get("request_logs_shipped")
    finally:
        bench.groups.pop("proxy", None)
        children.stop(se.proc)
        se.close()
    return out


def _run_haproxy(
    bench: _Bench, children: _Children, tmp: Path, proxy_cpu: int, backend_ports: list[int], mode: str, loads: tuple[str, ...], request_logs: bool
) -> dict[str, Any]:
    from simulations.local_cluster import free_port

    l4_port, l7_port = free_port(_HA_L4), free_port(_HA_L7)
    conf = tmp / f"haproxy-{mode}.cfg"
    conf.write_text(_haproxy_conf(tmp, mode, l4_port, l7_port, backend_ports, request_logs))
    check = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True, timeout=10)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {conf.name}: {(check.stderr or check.stdout).strip()[-1500:]}")
    log_path = tmp / f"haproxy-{mode}.log"
    out: dict[str, Any] = {"maxconn": _haproxy_maxconn()}
    with log_path.open("wb") as log_file:
        # stdout carries the request log lines; alerts and warnings go to stderr.
        proc = children.start(["taskset", "-c", str(proxy_cpu), "haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            try:
                _wait_http(_HA_L7, l7_port, 10.0, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"haproxy ({mode}) {exc}; log: {_tail(log_path)}") from None
            bench.groups["proxy"] = proc.pid
            _run_loads(bench, out, loads, {"l4": (_HA_L4, l4_port), "l7": (_HA_L7, l7_port)})
            out["server_states"] = _haproxy_servers(tmp / "haproxy.sock")
        finally:
            bench.groups.pop("proxy", None)
            children.stop(proc)
    return out


def _se_phase(bench: _Bench, children: _Children, tmp: Path, proxy_cpu: int, backend_ports: list[int], loads: tuple[str, ...] = _LOADS) -> dict[str, Any]:
    _say(f"SE (one process, uvloop, pinned to CPU {proxy_cpu}):")
    try:
        return _run_se(bench, children, tmp, proxy_cpu, backend_ports, loads)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
        _say(f"  SE FAILED: {exc}")
        return {"error": _error_text(exc)}


def _haproxy_phases(
    bench: _Bench, children: _Children, tmp: Path, proxy_cpu: int, backend_ports: list[int], request_logs: bool, selected: tuple[str, ...] = _LOADS
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, every in (("default", _LOADS), ("splice-auto", ("bulk_l4",)), ("splice-forced", ("bulk_l4",))):
        loads = tuple(load for load in every if load in selected)
        if not loads:
            continue
        _say(f"HAProxy {mode} (nbthread 1, pinned to CPU {proxy_cpu}):")
        try:
            out[mode] = _run_haproxy(bench, children, tmp, proxy_cpu, backend_ports, mode, loads, request_logs)
        except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
            out[mode] = {"error": _error_text(exc)}
            _say(f"  HAProxy {mode} FAILED: {exc}")
    return out


# -- the report -----------------------------------------------------------------------------------


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 4) if a is not None and b else None


def _best_of(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per load, the round with the highest figure (req/s or GB/s), undisturbed ones first; other
    keys from the last round."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and ("rps" in value or "gb_per_s" in value):
                metric = "rps" if "rps" in value else "gb_per_s"
                kept = out.get(key)
                rank = (not value.get("interfered"), value[metric])
                if not isinstance(kept, dict) or metric not in kept or rank > (not kept.get("interfered"), kept[metric]):
                    out[key] = value
            elif key not in out or not (isinstance(out[key], dict) and ("rps" in out[key] or "gb_per_s" in out[key])):
                out[key] = value
    return out


def summarize(rounds: list[dict[str, Any]], *, meta: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON report from the rounds' results, best of the rounds per figure (missing parts give nulls)."""
    direct = _best_of([r["direct"] for r in rounds])
    se = _best_of([r["se"] for r in rounds])
    modes = sorted({mode for r in rounds for mode in r["haproxy"]})
    haproxy = {mode: _best_of([r["haproxy"][mode] for r in rounds if mode in r["haproxy"]]) for mode in modes}
    splice = {mode: _get(haproxy, mode, "bulk_l4", "gb_per_s") for mode in ("splice-auto", "splice-forced")}
    best_splice_mode = max((m for m, v in splice.items() if v is not None), key=lambda m: splice[m], default=None)
    best_splice = splice[best_splice_mode] if best_splice_mode is not None else None
    figures: dict[str, Any] = {}
    for side, results in (("direct", direct), ("se", se), ("haproxy", haproxy.get("default", {}))):
        for load in ("l4", "l7", "direct"):
            if load in results:
                figures[f"{side}_{load}" if side != "direct" else "direct"] = {
                    k: _get(results, load, k)
                    for k in ("rps", "p50_ms", "p99_ms", "errors", "non_2xx", "proxy_us_per_request", "cpu_busy", "process_cpu", "interfered")
                }
    bulk = {
        "direct": _get(direct, "bulk", "gb_per_s"),
        "se_l4": _get(se, "bulk_l4", "gb_per_s"),
        "se_l7": _get(se, "bulk_l7", "gb_per_s"),
        "haproxy_l4_default": _get(haproxy, "default", "bulk_l4", "gb_per_s"),
        "haproxy_l4_splice_auto": splice["splice-auto"],
        "haproxy_l4_splice_forced": splice["splice-forced"],
        "haproxy_l7_default": _get(haproxy, "default", "bulk_l7", "gb_per_s"),
    }
    errors = {}
    for n, r in enumerate(rounds, 1):
        for side, results in (("direct", r["direct"]), ("se", r["se"]), *((f"haproxy_{m}", x) for m, x in r["haproxy"].items())):
            for key, value in results.items():
                if isinstance(value, dict) and "error" in value:
                    errors[f"round{n}.{side}.{key}"] = value["error"]
                elif key == "error":
                    errors[f"round{n}.{side}"] = value
    per_round = [
        {
            "se_l4_rps": _get(r, "se", "l4", "rps"),
            "haproxy_l4_rps": _get(r, "haproxy", "default", "l4", "rps"),
            "se_l7_rps": _get(r, "se", "l7", "rps"),
            "haproxy_l7_rps": _get(r, "haproxy", "default", "l7", "rps"),
            "se_bulk_l4": _get(r, "se", "bulk_l4", "gb_per_s"),
            "haproxy_bulk_l4": {m: _get(r, "haproxy", m, "bulk_l4", "gb_per_s") for m in r["haproxy"]},
            "direct_rps": _get(r, "direct", "direct", "rps"),
        }
        for r in rounds
    ]
    def us(results: dict[str, Any], load: str) -> Optional[float]:
        split = _get(results, load, "proxy_us_per_request")
        return float(sum(split.values())) if split else None

    def s_per_gb(results: dict[str, Any], load: str) -> Optional[float]:
        split = _get(results, load, "proxy_cpu_s_per_gb")
        return float(sum(split.values())) if split else None

    return {
        "l4_ratio": _ratio(_get(se, "l4", "rps"), _get(haproxy, "default", "l4", "rps")),
        "l7_ratio": _ratio(_get(se, "l7", "rps"), _get(haproxy, "default", "l7", "rps")),
        "bulk_ratio": _ratio(bulk["se_l4"], best_splice),
        "bulk_ratio_vs_default": _ratio(bulk["se_l4"], bulk["haproxy_l4_default"]),
        "bulk_l7_ratio": _ratio(bulk["se_l7"], bulk["haproxy_l7_default"]),
        # Requests (or bytes) per CPU-second of the proxy, SE / HAProxy: robust to a busy machine.
        "l4_cpu_efficiency_ratio": _ratio(us(haproxy.get("default", {}), "l4"), us(se, "l4")),
        "l7_cpu_efficiency_ratio": _ratio(us(haproxy.get("default", {}), "l7"), us(se, "l7")),
        "bulk_cpu_efficiency_ratio": _ratio(
            s_per_gb(haproxy.get(best_splice_mode, {}), "bulk_l4") if best_splice_mode else None, s_per_gb(se, "bulk_l4")
        ),
        "se_l4_rps": _get(se, "l4", "rps"),
        "haproxy_l4_rps": _get(haproxy, "default", "l4", "rps"),
        "se_l7_rps": _get(se, "l7", "rps"),
        "haproxy_l7_rps": _get(haproxy, "default", "l7", "rps"),
        "direct_rps": _get(direct, "direct", "rps"),
        "latency_ms": {
            name: {"p50": _get(figure, "p50_ms"), "p99": _get(figure, "p99_ms")} for name, figure in figures.items()
        },
        "bulk_gb_per_s": bulk,
        "bulk_best_splice_mode": best_splice_mode,
        "figures": figures,
        "disturbed": sorted(
            f"{side}.{mode + '.' if mode else ''}{load}"
            for side, mode, results in (("direct", "", direct), ("se", "", se), *(("haproxy", m, r) for m, r in haproxy.items()))
            for load, value in results.items()
            if isinstance(value, dict) and value.get("interfered")
        )
        or None,
        "per_round": per_round,
        "errors": errors or None,
        **meta,
        "details": {"best": {"direct": direct, "se": se, "haproxy": haproxy}, "rounds": rounds},
    }


def _table(report: dict[str, Any]) -> str:
    f = report["figures"]
    b = report["bulk_gb_per_s"]

    def row(name: str, key: str) -> str:
        r = f.get(key) or {}
        if r.get("rps") is None:
            return f"| {name} | n/a | | | | |"
        us = r.get("proxy_us_per_request")
        per = f"{sum(us.values()):.1f} ({us['user']:.1f}+{us['system']:.1f}+{us['softirq']:.1f})" if us else ""
        mark = " (disturbed)" if r.get("interfered") else ""
        return f"| {name}{mark} | {r['rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} | {per} | {cpu_note(r)} |"

    def cpu_note(r: dict[str, Any]) -> str:
        busy = " / ".join(f"{v:.0%}" for v in (r.get("cpu_busy") or {}).values())
        procs = r.get("process_cpu") or {}
        named = ", ".join(f"{k} {procs[k]:.0%}" for k in ("proxy", "nginx", "client", "softirq", "other") if k in procs)
        return f"{busy} ({named})"

    def gb(v: Optional[float]) -> str:
        return f"{v:.2f}" if v is not None else "n/a"

    def bulk_row(name: str, value: Optional[float], r: Optional[dict[str, Any]]) -> str:
        per_gb = (r or {}).get("proxy_cpu_s_per_gb")
        per = f"{sum(per_gb.values()):.2f} ({per_gb['user']:.2f}+{per_gb['system']:.2f}+{per_gb['softirq']:.2f})" if per_gb else ""
        mark = " (disturbed)" if (r or {}).get("interfered") else ""
        return f"| {name}{mark} | {gb(value)} | {per} | {cpu_note(r) if r and 'cpu_busy' in r else ''} |"

    d = report["details"]["best"]
    ha = d["haproxy"]
    lines = [
        "| requests (wrk) | req/s | p50 ms | p99 ms | proxy CPU µs/req (user+sys+softirq) | busy CPU0 / CPU1 (CPU used by each, 100% = one CPU) |",
        "|---|---|---|---|---|---|",
        row("direct to nginx", "direct"),
        row("SE L4", "se_l4"),
        row("HAProxy L4 (mode tcp)", "haproxy_l4"),
        row("SE L7", "se_l7"),
        row("HAProxy L7 (mode http)", "haproxy_l7"),
        "",
        "| bulk download | GB/s | proxy CPU s/GB (user+sys+softirq) | busy CPU0 / CPU1 (CPU used by each) |",
        "|---|---|---|---|",
        bulk_row("direct to nginx", b["direct"], _get(d, "direct", "bulk")),
        bulk_row("SE L4", b["se_l4"], _get(d, "se", "bulk_l4")),
        bulk_row("HAProxy L4 default", b["haproxy_l4_default"], _get(ha, "default", "bulk_l4")),
        bulk_row("HAProxy L4 splice-auto", b["haproxy_l4_splice_auto"], _get(ha, "splice-auto", "bulk_l4")),
        bulk_row("HAProxy L4 splice forced, pipesize 1 MiB", b["haproxy_l4_splice_forced"], _get(ha, "splice-forced", "bulk_l4")),
        bulk_row("SE L7", b["se_l7"], _get(d, "se", "bulk_l7")),
        bulk_row("HAProxy L7 default", b["haproxy_l7_default"], _get(ha, "default", "bulk_l7")),
        "",
        f"ratios SE/HAProxy: L4 {report['l4_ratio']}, L7 {report['l7_ratio']}, "
        f"bulk L4 {report['bulk_ratio']} (vs {report['bulk_best_splice_mode']}; vs default {report['bulk_ratio_vs_default']}); "
        f"per proxy CPU-second: L4 {report['l4_cpu_efficiency_ratio']}, L7 {report['l7_cpu_efficiency_ratio']}, "
        f"bulk L4 {report['bulk_cpu_efficiency_ratio']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from simulations.local_cluster import free_port

    missing = _missing_tools()
    if missing:
        packages = sorted({_PACKAGES[t] for t in missing})
        _say(f"data-plane bench needs {', '.join(missing)}; install with:\n    apt-get install -y {' '.join(packages)}")
        print(json.dumps({"error": "missing tools", "missing": missing, "apt_get_install": packages}), flush=True)
        return 2
    profile = dict(_QUICK if args.quick else _FULL)
    n_rounds = max(1, int(args.rounds if args.rounds is not None else profile["rounds"]))
    load_cpu, proxy_cpu = _cpus()
    original_affinity = os.sched_getaffinity(0)
    children = _Children()
    tmp = Path(tempfile.mkdtemp(prefix="avictl-dataplane-"))
    rounds: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    try:
        meta["versions"] = _versions()
        meta["background_cpu_busy"] = _wait_idle(args.wait_idle)
        if max(meta["background_cpu_busy"].values()) > 0.1:
            _say(f"WARNING: the machine is busy before the run: {meta['background_cpu_busy']}; figures will be low and noisy")
        # This process only waits on its children; keep it off the proxy's CPU.
        os.sched_setaffinity(0, {load_cpu})
        os.chmod(tmp, 0o755)  # nginx workers may run as nobody
        (tmp / "www").mkdir(mode=0o755)
        _make_bulk_file(tmp / "www" / _BULK_PATH.lstrip("/"), args.bulk_mib)
        backend_ports = [free_port(_BACKEND_HOST), free_port(_BACKEND_HOST)]
        (tmp / "nginx.conf").write_text(_nginx_conf(tmp, backend_ports))
        nginx_log = (tmp / "nginx-stderr.log").open("wb")
        nginx = children.start(
            ["taskset", "-c", str(load_cpu), "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")],
            stdout=nginx_log,
            stderr=subprocess.STDOUT,
        )
        nginx_log.close()
        for port in backend_ports:
            try:
                _wait_http(_BACKEND_HOST, port, 10.0, nginx)
            except RuntimeError as exc:
                raise RuntimeError(f"nginx {exc}: {_tail(tmp / 'nginx-stderr.log')} {_tail(tmp / 'nginx-error.log')}") from None
        bench = _Bench(args, profile, load_cpu, proxy_cpu, {"nginx": nginx.pid})
        request_logs = _engine_logs_requests()
        meta.update(
            {
                "cpus": {"proxy": proxy_cpu, "load": load_cpu, "note": f"proxy under test alone on CPU {proxy_cpu}; wrk, the bulk client, nginx and this process on CPU {load_cpu}"},
                "wrk": f"-t{bench.threads} -c{bench.connections} -d{bench.duration_s:g}s --latency (after a {bench.warmup_s:g} s warm-up)",
                "bulk": f"{bench.downloads} x {args.bulk_mib} MiB per proxy and mode, {bench.streams} at a time, one connection each (socket reader, 4 MiB recv_into)",
                "health_checks": f"HTTP GET / every {_MONITOR_INTERVAL_S} s per server, rise {_RISE} fall {_FALL}, on both proxies",
                "request_logging": (
                    "L7 only, on both: the SE records every L7 request in its per-VS ring (always on) and the SE child "
                    f"takes and encodes a batch every {_LOG_SHIP_INTERVAL_S:g} s as the agent does; HAProxy writes an httplog line per "
                    "request to stdout (/dev/null). L4 requests are logged by neither"
                    if request_logs
                    else "none on either side: this engine has no request log, so HAProxy runs without one too"
                ),
                "backends": f"nginx, 1 worker, {_BACKEND_HOST}:{backend_ports[0]} and :{backend_ports[1]}, round robin",
                "quick": bool(args.quick),
                "rounds": n_rounds,
                "best_of": "each figure is the best of the rounds (interference only ever lowers them); every round is in details.rounds",
            }
        )
        _say(f"data-plane bench: {meta['cpus']['note']}; wrk {meta['wrk']}; bulk {meta['bulk']}; {n_rounds} round(s)")
        for index in range(n_rounds):
            result: dict[str, Any] = {"direct": {}, "se": {}, "haproxy": {}}
            rounds.append(result)
            if index:
                result["background_cpu_busy"] = _wait_idle(args.wait_idle)
            _say(f"round {index + 1}/{n_rounds}, direct to nginx:")
            if {"l4", "l7"} & set(args.loads):
                _attempt(result["direct"], "direct", lambda: bench.requests(_BACKEND_HOST, backend_ports[0]))
            if {"bulk_l4", "bulk_l7"} & set(args.loads):
                _attempt(result["direct"], "bulk", lambda: bench.bulk(_BACKEND_HOST, backend_ports[0]))
            sides = [side for side in ("se", "haproxy") if args.only in (None, side)]
            for side in sides if index % 2 == 0 else reversed(sides):
                if side == "se":
                    result["se"] = _se_phase(bench, children, tmp, proxy_cpu, backend_ports, args.loads)
                else:
                    result["haproxy"] = _haproxy_phases(bench, children, tmp, proxy_cpu, backend_ports, request_logs, args.loads)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
        meta["error"] = _error_text(exc)
        _say(f"data-plane bench FAILED: {meta['error']}")
    finally:
        children.stop_all()
        os.sched_setaffinity(0, original_affinity)
        if args.keep_tmp:
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = summarize(rounds, meta=meta)
    _say(_table(report))
    print(json.dumps(report), flush=True)
    return 1 if report["errors"] or meta.get("error") else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "se-child":
        sys.exit(_se_child(sys.argv[2]))
    if len(sys.argv) == 8 and sys.argv[1] == "bulk-client":
        sys.exit(_bulk_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])))
    sys.exit("usage: python -m simulations.bench data-plane [--quick]")
