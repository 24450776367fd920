"""A :class:`LocalCluster` whose nodes each run in their own network namespace, for partition faults.

Layout (one run; ``P`` is the harness's pid, ``k`` a free third octet of 10.77.0.0/16)::

    host:  bridge avcbP  10.77.k.1/24
             |-- veth avcPh1 <-> eth0 in netns avc-P-n1  10.77.k.11  (API :7001, Raft :7002)
             |-- veth avcPh2 <-> eth0 in netns avc-P-n2  10.77.k.12
             '-- veth avcPh3 <-> eth0 in netns avc-P-n3  10.77.k.13

Each controller is started as ``ip netns exec avc-P-nX python -m cluster.main --config ...`` (``ip``
execs the controller, so the pid the harness holds is the controller's own: kill, SIGSTOP and
PR_SET_PDEATHSIG work as with :class:`LocalCluster`). The API and Raft bind to the node's
namespace address; the harness on the host reaches every API over the bridge, so clients keep
talking to a node that is cut off from its peers.

Faults are routes inside the namespaces, no nftables needed:

- ``cut(src, dst)``: a blackhole route to ``dst``'s address in ``src``'s namespace, so nothing
  ``src`` sends reaches ``dst`` (packets are dropped silently; ``dst`` still reaches ``src``).
  Over TCP a one-way cut breaks a *new* connection both ways (the handshake needs both
  directions), but segments already flowing from ``dst`` on an established connection still
  arrive at ``src``: that is the asymmetric part.
- ``partition(groups)``: ``cut`` both ways between every two nodes of different groups.
- ``heal()``: delete every route ``cut`` added.

The harness's own traffic (host <-> node) is never cut. Everything is removed in :meth:`close`
(processes, namespaces, veths, the bridge), also from a finalizer when the object is collected or
the interpreter exits, and leftovers of dead harnesses (names with this prefix whose pid is gone)
are removed when a new cluster is created. Needs root (CAP_NET_ADMIN) and iproute2;
:func:`check_netns_support` says what is missing.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Iterable, Optional

import attrs

from avictl.launcher import NodeAddress, readdress
from simulations.local_cluster import LocalCluster

__all__ = ["NetnsCluster", "NetnsUnavailable", "check_netns_support", "cleanup_stale"]

API_PORT = 7001
RAFT_PORT = 7002
NS_PREFIX = "avc-"  # namespaces: avc-<pid>-<node>
LINK_PREFIX = "avc"  # links: avcb<pid> (bridge), avc<pid>h<i> (host side of a veth)
_NS_RE = re.compile(r"^avc-(\d+)-n\d+$")
_LINK_RE = re.compile(r"^avc(?:b(\d+)|(\d+)h\d+)$")
_LOCK = "/run/avictl-netns.lock"


class NetnsUnavailable(RuntimeError):
    """This machine cannot run a namespaced cluster (not root, no ``ip``, no netns support)."""


def _run(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_netns_support() -> Optional[str]:
    """None when namespaces, veths and bridges can be made here; else why not, in one sentence."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_NET_ADMIN); running as uid {os.geteuid()}"
    probe = f"{NS_PREFIX}probe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL whatever still runs in namespace ``ns`` (only ever a namespace this module made)."""
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    for token in out.split():
        try:
            os.kill(int(token), signal.SIGCONT)
            os.kill(int(token), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def _remove(namespaces: Iterable[str], links: Iterable[str]) -> None:
    for ns in namespaces:
        _kill_ns_processes(ns)
        _run("ip", "netns", "del", ns, check=False)
    for link in links:
        _run("ip", "link", "del", link, check=False)


def cleanup_stale(prefix_pid: Optional[int] = None) -> list[str]:
    """Remove namespaces and links of this module whose harness pid is dead (or is ``prefix_pid``).

    Returns what was removed. Safe while other harnesses run: a live pid's objects are left alone.
    """
    def stale(pid: int) -> bool:
        return pid == prefix_pid or (pid != os.getpid() and not _pid_alive(pid))

    namespaces = [ns for ns in _namespaces() if (m := _NS_RE.match(ns)) and stale(int(m.group(1)))]
    links = [ln for ln in _links() if (m := _LINK_RE.match(ln)) and stale(int(m.group(1) or m.group(2)))]
    _remove(namespaces, links)
    return namespaces + links


def _used_third_octets() -> set[int]:
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout + _run("ip", "-4", "route", "show", "table", "all",
                                                                          check=False).stdout
    return {int(m.group(1)) for m in re.finditer(r"\b10\.77\.(\d+)\.\d+", out)}


@attrs.define
class _Net:
    """The names of one run's objects; what the finalizer removes."""

    bridge: str
    subnet: ipaddress.IPv4Network
    namespaces: dict[str, str]  # node -> namespace
    host_links: dict[str, str]  # node -> host side of its veth
    made_ns: list[str] = attrs.field(factory=list)
    made_links: list[str] = attrs.field(factory=list)
    closed: bool = False

    def remove(self) -> None:
        if self.closed:
            return
        self.closed = True
        _remove(list(self.made_ns), list(self.made_links))


def _finalize(net: _Net) -> None:
    try:
        net.remove()
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        pass


class NetnsCluster(LocalCluster):
    """A 3-node (or ``nodes``) cluster with one network namespace per node; see the module doc."""

    def __init__(self, base_dir: str | Path, nodes: int = 3, *, durable_journal: bool = True,
                 env: Optional[dict[str, str]] = None) -> None:
        problem = check_netns_support()
        if problem is not None:
            raise NetnsUnavailable(f"cannot build a namespaced cluster: {problem}")
        cleanup_stale()
        super().__init__(base_dir, nodes, durable_journal=durable_journal, env=env)
        pid = os.getpid()
        ids = self.ids
        self.extra_env: dict[str, dict[str, str]] = {n: {} for n in ids}  # extra env per node (faketime)
        self.node_prefix: dict[str, list[str]] = {n: [] for n in ids}  # argv before python (unused by default)
        self._cuts: set[tuple[str, str]] = set()
        self._cut_lock = threading.Lock()
        with open(_LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                used = _used_third_octets()
                free = [k for k in range(1 + pid % 200, 255)] + [k for k in range(1, 1 + pid % 200)]
                k = next((k for k in free if k not in used), None)
                if k is None:
                    raise NetnsUnavailable("no free /24 left in 10.77.0.0/16")
                subnet = ipaddress.IPv4Network(f"10.77.{k}.0/24")
                self.net = _Net(bridge=f"{LINK_PREFIX}b{pid}", subnet=subnet,
                                namespaces={n: f"{NS_PREFIX}{pid}-{n}" for n in ids},
                                host_links={n: f"{LINK_PREFIX}{pid}h{i + 1}" for i, n in enumerate(ids)})
                self._finalizer = weakref.finalize(self, _finalize, self.net)
                self._build()
            except BaseException:
                _finalize(getattr(self, "net", None) or _Net("", ipaddress.IPv4Network("10.77.0.0/24"), {}, {}))
                raise
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.addrs = {n: str(self.net.subnet.network_address + 11 + i) for i, n in enumerate(ids)}
        self.host_addr = str(self.net.subnet.network_address + 1)
        self.configs = readdress(self.configs, {n: NodeAddress(self.addrs[n], API_PORT, RAFT_PORT) for n in ids})

    def _build(self) -> None:
        net = self.net
        bridge = net.bridge
        _run("ip", "link", "add", bridge, "type", "bridge")
        net.made_links.append(bridge)
        _run("ip", "addr", "add", f"{net.subnet.network_address + 1}/{net.subnet.prefixlen}", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i, (node, ns) in enumerate(net.namespaces.items()):
            _run("ip", "netns", "add", ns)
            net.made_ns.append(ns)
            host_if, peer_if = net.host_links[node], f"{net.host_links[node]}p"
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            net.made_links.append(host_if)
            _run("ip", "link", "set", peer_if, "netns", ns)
            _run("ip", "link", "set", host_if, "master", bridge)
            _run("ip", "link", "set", host_if, "up")
            addr = net.subnet.network_address + 11 + i
            _run("ip", "netns", "exec", ns, "ip", "link", "set", peer_if, "name", "eth0")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/{net.subnet.prefixlen}", "dev", "eth0")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    # -- processes -----------------------------------------------------------------------------

    def namespace(self, node_id: str) -> str:
        return self.net.namespaces[node_id]

    def command_prefix(self, node_id: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node_id), *self.node_prefix[node_id]]

    def node_env(self, node_id: str) -> dict[str, str]:
        return self.extra_env[node_id]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._finalizer()

    # -- faults --------------------------------------------------------------------------------

    def _route(self, op: str, src: str, dst: str) -> None:
        _run("ip", "netns", "exec", self.namespace(src), "ip", "route", op, "blackhole", f"{self.addrs[dst]}/32")

    def cut(self, src: str, dst: str) -> None:
        """From now on nothing ``src`` sends reaches ``dst`` (one way)."""
        if src == dst:
            raise ValueError("a node cannot be cut from itself")
        with self._cut_lock:
            self._route("replace", src, dst)
            self._cuts.add((src, dst))

    def partition(self, groups: list[list[str]]) -> None:
        """Cut every two nodes of different groups from each other, both ways; nodes in no group are untouched."""
        seen: set[str] = set()
        for group in groups:
            for node in group:
                if node not in self.configs:
                    raise ValueError(f"unknown node {node!r}")
                if node in seen:
                    raise ValueError(f"{node} is in two groups")
                seen.add(node)
        for i, a_group in enumerate(groups):
            for b_group in groups[i + 1:]:
                for a in a_group:
                    for b in b_group:
                        self.cut(a, b)
                        self.cut(b, a)

    def heal(self) -> None:
        """Remove every cut."""
        with self._cut_lock:
            for src, dst in sorted(self._cuts):
                _run("ip", "netns", "exec", self.namespace(src), "ip", "route", "del", "blackhole",
                     f"{self.addrs[dst]}/32", check=False)
            self._cuts.clear()

    @property
    def cuts(self) -> set[tuple[str, str]]:
        with self._cut_lock:
            return set(self._cuts)

    def can_connect(self, src: str, dst: str, port: int = RAFT_PORT, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from ``src``'s namespace to ``dst``'s ``port`` succeeds now (a probe for tests)."""
        code = ("import socket,sys\n"
                "s=socket.socket()\ns.settimeout(float(sys.argv[3]))\n"
                "try:\n s.connect((sys.argv[1],int(sys.argv[2])))\nexcept OSError:\n sys.exit(1)\n")
        proc = _run("ip", "netns", "exec", self.namespace(src), sys.executable, "-c", code, self.addrs[dst], str(port),
                    str(timeout), check=False, timeout=timeout + 10)
        return proc.returncode == 0


@atexit.register
def _cleanup_own() -> None:
    # Whatever this process made and did not close (the finalizers run too; this is belt and braces).
    try:
        if any((m := _NS_RE.match(ns)) and int(m.group(1)) == os.getpid() for ns in _namespaces()):
            cleanup_stale(prefix_pid=os.getpid())
    except Exception:  # noqa: BLE001
        pass
