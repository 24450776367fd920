"""The network lab of issue 12: controllers, Service Engines, a client and backends, each on a host
of its own (a network namespace), all on one bridge; and the handles tests build on.

Layout (``P`` is the owner pid; the third octet is 0 unless 10.99.0.0/24 is already used on this
machine, then the next free one)::

    harness (host)  bridge avlbP                     10.99.0.1/24
    c1 c2 c3        controllers n1 n2 n3            10.99.0.11-13  API :7001, Raft :7002
    s1 s2 s3        Service Engines s1 s2 s3        10.99.0.21-23
    client          probes, HTTP, arping            10.99.0.31
    b1 b2           backends b1 b2 (HTTP)           10.99.0.41-42  :8000
    10.99.0.100-199 no host holds them: VIPs (:func:`Lab.vip`)

Namespaces are ``avl-P-<host>``, each with ``eth0`` (MAC ``02:00:`` + its address in hex, see
:func:`simulations.netns.mac_of`) and ``lo`` up, no default route: nothing leaves the lab but
traffic to the harness's bridge address. Every process is the command a real host runs, entered
through ``ip netns exec``: ``python -m avictl controller run --config`` (configs from
:mod:`avictl.launcher`, through :class:`~simulations.netns_cluster.NetnsCluster`),
``python -m avictl se run --name S --controller URL,URL,URL`` with a single-use enrolment token
in ``AVICTL_ENROL_TOKEN`` (and ``AVICTL_HOME`` a directory per host), and
``python -m simulations.backend``. Nothing in ``cluster/`` or ``engine/`` knows it is in a lab.

Files: ``<dir>/state.json`` (mode 0600: names, addresses, pids, the admin token),
``<dir>/controllers/<node>/`` (node.json, controller.log, data), ``<dir>/hosts/<host>/`` (the
host's AVICTL_HOME: an SE's state under ``se/<name>/``, its log ``se-<name>.log``; a backend's
``backend-<name>.log``).

Two lifetimes. A harness's lab (the default) is owned by the harness's pid: its processes die with
the harness (PR_SET_PDEATHSIG) and a finalizer removes the network. A *detached* lab
(``avictl lab up``) is owned by a keeper process that sleeps until ``avictl lab down``
(:func:`teardown`) stops it; its processes run in sessions of their own. Either way, a lab whose
owner is dead is a leftover that the next lab made on this machine removes.

Faults are nftables rulesets inside a host's namespace, written through nft's JSON interface
(:mod:`simulations.lab_faults`); removing the namespace removes them. The layout and the state
file are in :mod:`simulations.lab_state`, the client's loops (a TCP/HTTP prober, an ARP watch) in
:mod:`simulations.lab_probe`; everything public is importable from here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import attrs

from avictl import nodes
from simulations.lab_faults import NFT_TABLE, apply_ruleset, cut_ruleset, heal_ruleset
from simulations.lab_probe import ArpWatch, Prober
from simulations.lab_state import (
    BACKEND_HOSTS,
    BACKEND_PORT,
    CLIENT,
    CONTROLLER_HOSTS,
    FIRST_VIP,
    HOSTS,
    LAST_VIP,
    PREFIX,
    SE_HOSTS,
    STATE_FILE,
    TAG,
    LabProcess,
    LabState,
    check_lab_support,
    describe,
    leftovers,
    load_state,
    owner_alive,
    role_of,
    save_state,
    stop_all,
    teardown,
)
from simulations.local_cluster import die_with_parent, wait_until
from simulations.netns import NetHost, NetnsNet, NetnsUnavailable, in_namespace, namespace_names, run_cmd
from simulations.netns_cluster import API_PORT, RAFT_PORT, NetnsCluster

# The layout, the state and the fault rulesets live in lab_state and lab_faults; they are all
# reachable from here.
__all__ = [
    "API_PORT", "BACKEND_HOSTS", "BACKEND_PORT", "CLIENT", "CONTROLLER_HOSTS", "FIRST_VIP", "HOSTS", "LAST_VIP", "NFT_TABLE", "PREFIX",
    "RAFT_PORT", "SE_HOSTS", "STATE_FILE", "TAG",
    "ArpReplies", "HttpResult", "Lab", "LabProcess", "LabState", "Neighbour", "NetnsUnavailable",
    "apply_ruleset", "check_lab_support", "cut_ruleset", "describe", "heal_ruleset", "leftovers", "load_state", "role_of", "stop_all", "teardown",
]

_ROOT = str(Path(__file__).resolve().parent.parent)
_KEEPER_CODE = "import signal\nwhile True:\n    signal.pause()\n"
# A lab's processes get exactly the environment the lab gives them, whatever the harness's shell holds.
_DROPPED_ENV = ("AVICTL_API", "AVICTL_TOKEN", "AVICTL_ENROL_TOKEN", "AVICTL_HOME", "AVICTL_OUTPUT")


# Processes that outlive this one (a detached lab's keeper): held so that no "still running"
# warning is printed for them at exit.
_DETACHED: list[subprocess.Popen[bytes]] = []


@attrs.frozen
class _Cut:
    peers: frozenset[str]
    arp: bool
    keep_harness: bool


# -- what a client host sees ---------------------------------------------------------------------

@attrs.frozen
class HttpResult:
    """One HTTP GET: the status (None when no answer came), the body (at most 64 KiB), the error, the time it took."""

    status: Optional[int]
    body: bytes
    error: Optional[str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class Neighbour:
    """A neighbour (ARP) table entry: the MAC it holds (None while unresolved) and its state (REACHABLE, STALE, ...)."""

    address: str
    mac: Optional[str]
    state: str


@attrs.frozen
class ArpReplies:
    """What arping saw: how many requests went out and each reply's (monotonic time, MAC)."""

    address: str
    sent: int
    replies: tuple[tuple[float, str], ...]

    @property
    def macs(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, mac in self.replies:
            counts[mac] = counts.get(mac, 0) + 1
        return counts


class _LabControllers(NetnsCluster):
    """The lab's controllers: the entry point a real host runs, ``python -m avictl controller run``."""

    def controller_argv(self, node_id: str, config_path: Path) -> list[str]:
        return nodes.controller_command(str(config_path))


class Lab:
    """One lab: the network at once; controllers, SEs and backends when asked (:meth:`up` starts them all).

    ``with Lab(dir) as lab: lab.up()`` in a test; :meth:`close` removes everything. Host names are
    those of :data:`HOSTS`; an SE or a backend is named after its host unless told otherwise.
    """

    def __init__(self, base_dir: str | Path, *, detached: bool = False, hosts: Mapping[str, int] = HOSTS) -> None:
        """``detached``: the lab outlives this process (owned by a keeper; see the module doc)."""
        problem = check_lab_support()
        if problem is not None:
            raise NetnsUnavailable(f"cannot build the lab: {problem}")
        self.dir = Path(base_dir).resolve()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        previous = load_state(self.dir)
        if previous is not None:
            if owner_alive(previous) and set(h.namespace for h in previous.hosts) & set(namespace_names()):
                raise RuntimeError(f"a lab owned by pid {previous.owner_pid} is up in {self.dir}: take it down first")
            teardown(previous)
        for made in ("controllers", "hosts"):  # a new lab is a new cluster: nothing of an old one's data
            shutil.rmtree(self.dir / made, ignore_errors=True)
        self.detached = detached
        self.keeper: Optional[LabProcess] = self._start_keeper() if detached else None
        try:
            self.net = NetnsNet.create(TAG, hosts, prefix=PREFIX, third_octet=0, owner_pid=self.keeper.pid if self.keeper else None,
                                       keep=detached)
        except BaseException:
            if self.keeper is not None:
                self.keeper.kill()
            raise
        self.controllers: Optional[_LabControllers] = None
        self.processes: dict[str, LabProcess] = {}  # "se:s1", "backend:b1"
        self._enrolments: dict[str, str] = {}  # SE name -> the enrolment token it starts with
        self._cuts: dict[str, _Cut] = {}
        self._lock = threading.RLock()
        self._closed = False
        self.save_state()

    def _start_keeper(self) -> LabProcess:
        marker = f"avictl-lab-keeper:{self.dir}"
        popen = subprocess.Popen([sys.executable, "-c", _KEEPER_CODE, marker], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
        _DETACHED.append(popen)
        return LabProcess("keeper", "keeper", "-", popen.pid, marker, "", popen)

    # -- layout --------------------------------------------------------------------------------

    @property
    def hosts(self) -> dict[str, NetHost]:
        return self.net.hosts

    def namespace(self, host: str) -> str:
        return self.net.namespace(host)

    def addr(self, host: str) -> str:
        return self.net.address(host)

    def mac(self, host: str) -> str:
        return self.net.hosts[host].mac

    @property
    def harness_address(self) -> str:
        """The bridge's address: where the harness on the host is seen from inside the lab."""
        return self.net.bridge_address

    def vip(self, i: int = 0) -> str:
        """The i-th address no host holds (10.99.0.100 + i): for VIPs."""
        if not 0 <= i <= LAST_VIP - FIRST_VIP:
            raise ValueError(f"VIP index {i} not in 0..{LAST_VIP - FIRST_VIP}")
        return str(self.net.subnet.network_address + FIRST_VIP + i)

    def host_dir(self, host: str) -> Path:
        """The host's own directory (its AVICTL_HOME)."""
        if host not in self.hosts:
            raise KeyError(f"no host {host!r} in the lab; hosts: {', '.join(self.hosts)}")
        return self.dir / "hosts" / host

    # -- state ---------------------------------------------------------------------------------

    def all_processes(self) -> list[LabProcess]:
        """Every process the lab started and still tracks: controllers, SEs, backends (not the keeper)."""
        procs = []
        if self.controllers is not None:
            for node, popen in self.controllers.procs.items():
                procs.append(LabProcess("controller", node, self.controllers.hosts[node], popen.pid,
                                        str(self.controllers.config_path(node)), str(self.controllers.log_path(node)), popen))
        return procs + list(self.processes.values())

    def state(self) -> LabState:
        return LabState(str(self.dir), self.net.owner_pid, str(self.net.subnet), self.net.bridge, self.net.bridge_address,
                        tuple(self.hosts.values()), tuple(self.api_urls) if self.controllers else (),
                        self.controllers.token if self.controllers else "", tuple(self.all_processes()), self.keeper)

    def save_state(self) -> None:
        with self._lock:
            if not self._closed:
                save_state(self.state())

    # -- processes in a host -------------------------------------------------------------------

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        return {**base, "PYTHONUNBUFFERED": "1", **extra}

    def popen(self, host: str, argv: Sequence[str], *, log: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``host``'s namespace (output to ``log``, else discarded); the caller owns the process."""
        tie = not self.detached and threading.current_thread() is threading.main_thread()
        out: Any = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        try:
            return subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent if tie else None,
                                    env=self._env(env or {}), cwd=_ROOT)
        finally:
            if log is not None:
                out.close()

    def run(self, host: str, *argv: str, timeout: float = 10.0, check: bool = False, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace to completion (text output captured)."""
        return run_cmd("ip", "netns", "exec", self.namespace(host), *argv, check=check, timeout=timeout, input=input)

    def _spawn(self, role: str, name: str, host: str, argv: list[str], *, marker: str, log: Path, env: Mapping[str, str]) -> LabProcess:
        key = f"{role}:{name}"
        with self._lock:
            if self._closed:
                raise RuntimeError("the lab is closed")
            old = self.processes.get(key)
            if old is not None and old.alive():
                raise RuntimeError(f"{role} {name} already runs (pid {old.pid})")
            popen = self.popen(host, argv, log=log, env=env)
            proc = LabProcess(role, name, host, popen.pid, marker, str(log), popen)
            self.processes[key] = proc
        self.save_state()
        return proc

    # -- controllers ---------------------------------------------------------------------------

    def start_controllers(self, timeout: float = 30.0) -> str:
        """Start n1, n2, n3 on c1, c2, c3 and wait for a leader; its id."""
        if self.controllers is None:
            cluster = _LabControllers(self.dir / "controllers", len(CONTROLLER_HOSTS), network=self.net, hosts=CONTROLLER_HOSTS)
            cluster.tie_to_parent = not self.detached
            self.controllers = cluster
        for node in self.controllers.ids:
            if not self.controllers.alive(node):
                self.controllers.start(node)
        self.save_state()
        return self.controllers.wait_leader(timeout)

    def _cluster(self) -> _LabControllers:
        if self.controllers is None:
            raise RuntimeError("the controllers are not started (start_controllers or up)")
        return self.controllers

    @property
    def api_urls(self) -> list[str]:
        cluster = self._cluster()
        return [cluster.api(n) for n in cluster.ids]

    @property
    def token(self) -> str:
        """The admin's API token."""
        return self._cluster().token

    def controller_host(self, node_id: str) -> str:
        return self._cluster().hosts[node_id]

    def request(self, method: str, path: str, body: Any = None, *, node: Optional[str] = None, timeout: float = 5.0) -> tuple[int, Any]:
        """An admin API request from the harness, to ``node`` (default: the leader, else any live node)."""
        cluster = self._cluster()
        target = node or cluster.leader() or next((n for n in cluster.ids if cluster.alive(n)), cluster.ids[0])
        return cluster.request(target, method, path, body, timeout=timeout)

    # -- Service Engines -----------------------------------------------------------------------

    def enrol(self, name: str = "", ttl: int = 3600) -> str:
        """A single-use enrolment token (``POST /api/serviceengine/enrolment``) for SE ``name`` (any new name when empty)."""
        code, body = self.request("POST", "/api/serviceengine/enrolment", {"name": name, "ttl": ttl} if name else {"ttl": ttl})
        if code != 201:
            raise RuntimeError(f"enrolment for {name or 'any SE'} refused: {code} {body}")
        return str(body["token"])

    def start_se(self, host: str, name: Optional[str] = None, *, report_interval: float = 1.0, args: Sequence[str] = ()) -> LabProcess:
        """Run ``avictl se run`` in ``host`` with a state dir of its own; the first start enrols it, a
        restart keeps its identity (the credential in its state dir)."""
        name = name or host
        home = self.host_dir(host)
        state_dir = home / "se" / name
        token = self._enrolments.get(name) or self.enrol(name)
        self._enrolments[name] = token
        argv = [sys.executable, "-m", "avictl", "se", "run", "--name", name, "--controller", ",".join(self.api_urls),
                "--state-dir", str(state_dir), "--report-interval", repr(report_interval), *args]
        return self._spawn("se", name, host, argv, marker=str(state_dir), log=home / f"se-{name}.log",
                           env={"AVICTL_HOME": str(home), "AVICTL_ENROL_TOKEN": token})

    def se(self, name: str) -> LabProcess:
        return self.processes[f"se:{name}"]

    def stop_se(self, name: str, timeout: float = 5.0) -> str:
        """SIGTERM, then SIGKILL after ``timeout``: ``stopped`` | ``killed`` | ``not running``."""
        return stop_all([self.se(name)], timeout).get(f"se {name}", "not running")

    def kill_se(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.se(name).kill(sig)

    def se_record(self, name: str, *, node: Optional[str] = None) -> Optional[dict[str, Any]]:
        """SE ``name``'s object with its runtime (last_heartbeat, oper_status, ...) as ``node`` has it, or None."""
        code, body = self.request("GET", f"/api/serviceengine?name={name}", node=node)
        if code != 200 or not body.get("results"):
            return None
        return dict(body["results"][0])

    def wait_ses_reporting(self, names: Optional[Iterable[str]] = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait until every live controller has a status report from each SE (default: every SE the
        lab started); their records, as the leader has them."""
        names = list(names) if names is not None else [p.name for p in self.processes.values() if p.role == "se"]
        cluster = self._cluster()

        def reporting() -> Optional[dict[str, dict[str, Any]]]:
            records: dict[str, dict[str, Any]] = {}
            for node in [n for n in cluster.ids if cluster.alive(n)]:
                for name in names:
                    try:
                        record = self.se_record(name, node=node)
                    except OSError:
                        return None
                    if record is None or (record.get("runtime") or {}).get("last_heartbeat") is None:
                        return None
                    records[name] = record
            return records

        return dict(wait_until(reporting, timeout, interval=0.2, what=f"SEs {', '.join(names)} to report to every controller"))

    # -- backends ------------------------------------------------------------------------------

    def start_backend(self, host: str, *, port: int = BACKEND_PORT, name: Optional[str] = None) -> LabProcess:
        """``python -m simulations.backend`` on ``host``'s address: answers every path with its name."""
        name = name or host
        argv = [sys.executable, "-m", "simulations.backend", "--host", self.addr(host), "--port", str(port), "--name", name]
        return self._spawn("backend", name, host, argv, marker=name, log=self.host_dir(host) / f"backend-{name}.log", env={})

    def backend(self, name: str) -> LabProcess:
        return self.processes[f"backend:{name}"]

    def stop_backend(self, name: str, timeout: float = 3.0) -> str:
        return stop_all([self.backend(name)], timeout).get(f"backend {name}", "not running")

    def backend_url(self, host: str, path: str = "/", port: int = BACKEND_PORT) -> str:
        return f"http://{self.addr(host)}:{port}{path}"

    def wait_backends(self, hosts: Iterable[str] = BACKEND_HOSTS, timeout: float = 15.0, port: int = BACKEND_PORT) -> None:
        """Wait until each backend answers /healthz from the client host."""
        for host in hosts:
            wait_until(lambda host=host: self.http_get(CLIENT, self.backend_url(host, "/healthz", port), timeout=1.0).status == 200,
                       timeout, interval=0.1, what=f"backend {host} to answer the client")

    # -- the whole lab -------------------------------------------------------------------------

    def up(self, *, timeout: float = 90.0, progress: Optional[Callable[[str], None]] = None) -> "Lab":
        """Controllers elected, the three SEs registered and reporting to every controller, both backends answering the client."""
        say = progress or (lambda _text: None)
        deadline = time.monotonic() + timeout
        say(f"network {self.net.subnet} on bridge {self.net.bridge} ({self.harness_address} is this host); hosts: {', '.join(self.hosts)}")
        leader = self.start_controllers(timeout)
        say(f"controllers {', '.join(self.api_urls)}: leader {leader}")
        for host in SE_HOSTS:
            if f"se:{host}" not in self.processes:
                self.start_se(host)
        for host in BACKEND_HOSTS:
            if f"backend:{host}" not in self.processes:
                self.start_backend(host)
        self.wait_backends(timeout=max(1.0, deadline - time.monotonic()))
        say(f"backends {', '.join(self.addr(h) + f':{BACKEND_PORT}' for h in BACKEND_HOSTS)} answer the client")
        self.wait_ses_reporting(timeout=max(1.0, deadline - time.monotonic()))
        say(f"service engines {', '.join(SE_HOSTS)} registered and reporting")
        return self

    def close(self) -> None:
        """Stop every process, remove the namespaces, veths and bridge, and the keeper (idempotent)."""
        with self._lock:
            if self._closed:
                return
            try:
                stop_all(self.processes.values(), 2.0)
                if self.controllers is not None:
                    self.controllers.close()
            finally:
                self._closed = True
                self.net.remove()
                if self.keeper is not None:
                    self.keeper.kill()
                (self.dir / STATE_FILE).unlink(missing_ok=True)

    def leftovers(self, timeout: float = 5.0) -> list[str]:
        """What of this lab still exists (see :func:`leftovers`); [] after :meth:`close`."""
        return leftovers(self.state(), timeout)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what a host sees ----------------------------------------------------------------------

    def http_get(self, host: str, url: str, *, timeout: float = 2.0, headers: Optional[Mapping[str, str]] = None) -> HttpResult:
        """GET ``url`` from ``host`` (this thread enters its namespace for the request); never raises for network errors."""
        request = urllib.request.Request(url, headers=dict(headers or {}))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        started = time.monotonic()
        with in_namespace(self.namespace(host)):
            try:
                with opener.open(request, timeout=timeout) as resp:
                    return HttpResult(resp.status, resp.read(65536), None, time.monotonic() - started)
            except urllib.error.HTTPError as exc:
                return HttpResult(exc.code, exc.read(65536), None, time.monotonic() - started)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                return HttpResult(None, b"", f"{type(reason).__name__}: {reason}", time.monotonic() - started)

    def can_connect(self, host: str, addr: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from ``host`` to ``addr:port`` is established within ``timeout``."""
        with in_namespace(self.namespace(host)):
            try:
                socket.create_connection((addr, port), timeout=timeout).close()
            except OSError:
                return False
        return True

    def prober(self, host: str, addr: str, port: int, *, interval: float = 0.02, timeout: float = 0.05, count: int = 1000,
               max_seconds: float = 30.0, http_path: Optional[str] = None) -> Prober:
        """A bounded connection loop from ``host`` (not started: ``with lab.prober(...) as p:`` or ``.start()``)."""
        return Prober(self.namespace(host), addr, port, interval=interval, timeout=timeout, count=count, max_seconds=max_seconds,
                      http_path=http_path)

    def neighbour(self, host: str, addr: str) -> Optional[Neighbour]:
        """``host``'s neighbour (ARP) entry for ``addr`` on eth0, or None when it has none."""
        out = run_cmd("ip", "-n", self.namespace(host), "-j", "neigh", "show", "to", addr, "dev", "eth0", check=False).stdout
        for entry in json.loads(out or "[]"):
            if entry.get("dst") == addr:
                return Neighbour(addr, entry.get("lladdr"), ",".join(entry.get("state") or []))
        return None

    def flush_neighbours(self, host: str, addr: Optional[str] = None) -> None:
        run_cmd("ip", "-n", self.namespace(host), "neigh", "flush", "dev", "eth0", *(["to", addr] if addr else []), check=False)

    def arp_watch(self, host: str, addr: str, *, interval: float = 0.1, count: int = 300, max_seconds: float = 30.0) -> ArpWatch:
        """A bounded ARP watch from ``host`` for ``addr``: a broadcast request every ``interval``, every
        answer and gratuitous ARP recorded by round (not started: ``with`` or ``.start()``)."""
        return ArpWatch(self.namespace(host), addr, self.addr(host), interval=interval, count=count, max_seconds=max_seconds)

    def arping(self, host: str, addr: str, *, count: int = 3, interval: int = 1) -> ArpReplies:
        """``arping -b`` from ``host``: ``count`` broadcast requests for ``addr``, ``interval`` whole
        seconds apart (arping's finest), every holder answering each; the replies. Needs iputils-arping;
        :meth:`arp_watch` samples faster."""
        if not 1 <= count <= 600 or not 1 <= interval <= 60:
            raise ValueError("1 <= count <= 600 and 1 <= interval <= 60 (whole seconds)")
        if shutil.which("arping") is None:
            raise NetnsUnavailable("arping (iputils-arping) is not installed; 'make lab-deps' as root installs it")
        argv = ["stdbuf", "-oL", "arping", "-b", "-c", str(count), "-i", str(interval), "-w", str(count * interval + 1), "-I", "eth0", addr]
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        replies, sent, other = [], 0, []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                words = line.split()
                if line.startswith("Unicast reply from") and len(words) >= 5:
                    replies.append((time.monotonic(), words[4].strip("[]").lower()))
                elif line.startswith("Sent ") and len(words) > 1 and words[1].isdigit():
                    sent = int(words[1])
                elif not line.startswith(("ARPING", "Received")):
                    other.append(line.strip())
            proc.wait(count * interval + 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, 1):  # 1: some request had no reply
            raise RuntimeError(f"arping failed ({proc.returncode}): {' '.join(other)}")
        return ArpReplies(addr, sent, tuple(replies))

    # -- faults --------------------------------------------------------------------------------

    def _peer_address(self, peer: str) -> str:
        """A host's address, or an address or prefix as given (``10.99.0.5``, ``10.99.0.0/24``)."""
        net = ipaddress.IPv4Network(self.addr(peer) if peer in self.hosts else peer, strict=False)
        return str(net.network_address) if net.prefixlen == 32 else str(net)

    def cut(self, host: str, peers: Optional[Iterable[str]] = None, *, arp: bool = False, keep_harness: bool = True) -> None:
        """From now on ``host`` exchanges no IPv4 with ``peers`` (host names, addresses or prefixes;
        default: the whole lab subnet), both ways, by nftables in ``host``'s namespace. The harness
        keeps reaching it unless ``keep_harness`` is false; ``arp`` drops ARP too. Cuts add up until :meth:`heal`."""
        targets = {self._peer_address(p) for p in peers} if peers is not None else {str(self.net.subnet)}
        targets.discard(self.addr(host))
        with self._lock:
            old = self._cuts.get(host)
            cut = _Cut(frozenset(targets | (old.peers if old else frozenset())), arp or bool(old and old.arp),
                       keep_harness and (old.keep_harness if old else True))
            ruleset = cut_ruleset(cut.peers, harness=self.harness_address if cut.keep_harness else None, arp=cut.arp)
            apply_ruleset(self.namespace(host), ruleset)
            self._cuts[host] = cut

    def heal(self, host: Optional[str] = None) -> None:
        """Remove the cuts of ``host`` (default: of every host)."""
        with self._lock:
            for name in [host] if host is not None else list(self._cuts):
                apply_ruleset(self.namespace(name), heal_ruleset())
                self._cuts.pop(name, None)

    @property
    def cuts(self) -> dict[str, frozenset[str]]:
        """Host -> the addresses or prefixes it is cut from."""
        with self._lock:
            return {h: c.peers for h, c in self._cuts.items()}
