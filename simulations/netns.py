"""Network namespaces on one bridge, for harnesses that need hosts with addresses of their own.

One :class:`NetnsNet` is one run's network (``T`` is the harness's tag, ``P`` its owner pid, ``k``
a free third octet of the harness's ``/16``)::

    host:  bridge TbP  A.B.k.1/24
             |-- veth TPh1 <-> eth0 in netns T-P-<host1>  A.B.k.<octet1>
             |-- veth TPh2 <-> eth0 in netns T-P-<host2>  A.B.k.<octet2>
             ...

Every namespace has its loopback up and no default route: it reaches the other namespaces and the
bridge's own address (the harness on the host), nothing else. Each eth0 gets the MAC
``02:00:`` + its IPv4 address in hex, so a neighbour table names its hosts at a glance.

Names carry the owner pid, so parallel harnesses never collide; a run whose owner pid is dead is
a leftover, and :func:`cleanup_stale` (called whenever a network is made) removes it: the
processes still in its namespaces (SIGKILL), the namespaces, the veths, the bridge. The owner is
normally the harness itself; a network meant to outlive its maker (``avictl lab up``) names a
long-lived keeper process instead and is removed by whoever stops the keeper. Needs root
(CAP_NET_ADMIN) and iproute2; :func:`check_netns_support` says what is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
import weakref
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import attrs

__all__ = [
    "NetHost",
    "NetnsNet",
    "NetnsUnavailable",
    "check_netns_support",
    "cleanup_stale",
    "in_namespace",
    "kill_namespace_processes",
    "link_names",
    "mac_of",
    "namespace_names",
    "pid_alive",
    "remove_objects",
    "run_cmd",
]

_LOCK = "/run/avictl-netns.lock"  # serializes the choice of a free /24 between harnesses
_TAG_RE = re.compile(r"^[a-z]{2,4}$")
_CLONE_NEWNET = 0x40000000


class NetnsUnavailable(RuntimeError):
    """This machine cannot make namespaced hosts (not root, no ``ip``, no netns support)."""


def run_cmd(*args: str, check: bool = True, timeout: float = 10.0, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """Run ``args``; RuntimeError naming the command and its stderr when ``check`` and it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_netns_support(tools: Sequence[str] = ("ip",)) -> Optional[str]:
    """None when namespaces, veths and bridges can be made here and ``tools`` are installed; else why not, in one sentence."""
    packages = {"ip": "iproute2", "nft": "nftables", "arping": "iputils-arping", "tcpdump": "tcpdump"}
    for tool in tools:
        if shutil.which(tool) is None:
            return f"the `{tool}` command ({packages.get(tool, tool)}) is not installed"
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_NET_ADMIN); running as uid {os.geteuid()}"
    probe = f"avc-probe{os.getpid()}"
    made = run_cmd("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    run_cmd("ip", "netns", "del", probe, check=False)
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def mac_of(address: str) -> str:
    """The MAC this module gives the interface holding IPv4 ``address``: ``02:00:`` + the address in hex."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def namespace_names() -> list[str]:
    out = run_cmd("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_names() -> list[str]:
    out = run_cmd("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _patterns(tag: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The names of tag ``tag``'s namespaces and links; group 1 (or 2) is the owner pid."""
    return re.compile(rf"^{tag}-(\d+)-[a-z0-9]+$"), re.compile(rf"^{tag}(?:b(\d+)|(\d+)h\d+p?)$")


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in namespace ``ns`` (only ever a namespace this module made)."""
    out = run_cmd("ip", "netns", "pids", ns, check=False).stdout
    for token in out.split():
        try:
            os.kill(int(token), signal.SIGCONT)
            os.kill(int(token), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def remove_objects(namespaces: Iterable[str], links: Iterable[str]) -> None:
    """Kill what runs in ``namespaces``, delete them, then the ``links`` still present (idempotent)."""
    for ns in namespaces:
        kill_namespace_processes(ns)
        run_cmd("ip", "netns", "del", ns, check=False)
    present = set(link_names())
    for link in links:
        if link in present:  # a veth goes with its namespace's end
            run_cmd("ip", "link", "del", link, check=False)


def cleanup_stale(tag: str, prefix_pid: Optional[int] = None) -> list[str]:
    """Remove tag ``tag``'s namespaces and links whose owner pid is dead (or is ``prefix_pid``).

    Returns what was removed. Safe while other harnesses run: a live owner's objects are left alone.
    """
    ns_re, link_re = _patterns(tag)

    def stale(pid: int) -> bool:
        return pid == prefix_pid or (pid != os.getpid() and not pid_alive(pid))

    namespaces = [ns for ns in namespace_names() if (m := ns_re.match(ns)) and stale(int(m.group(1)))]
    links = [ln for ln in link_names() if (m := link_re.match(ln)) and stale(int(m.group(1) or m.group(2)))]
    remove_objects(namespaces, links)
    return namespaces + links


def _used_third_octets(prefix: str) -> set[int]:
    out = run_cmd("ip", "-o", "-4", "addr", "show", check=False).stdout + run_cmd("ip", "-4", "route", "show", "table", "all",
                                                                                check=False).stdout
    return {int(m.group(1)) for m in re.finditer(rf"\b{re.escape(prefix)}\.(\d+)\.\d+", out)}


@attrs.frozen
class NetHost:
    """One namespaced host: its name, namespace, the bridge side of its veth, its eth0 address and MAC."""

    name: str
    namespace: str
    host_link: str
    address: str
    mac: str


@attrs.define
class _Made:
    """What one run made; what the finalizer removes (it must not refer to the :class:`NetnsNet`)."""

    namespaces: list[str] = attrs.field(factory=list)
    links: list[str] = attrs.field(factory=list)
    closed: bool = False

    def remove(self) -> None:
        if self.closed:
            return
        self.closed = True
        remove_objects(list(self.namespaces), list(self.links))


def _finalize(made: _Made) -> None:
    try:
        made.remove()
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        pass


_TAGS: set[str] = set()  # tags this process made networks of, for the exit-time sweep


class NetnsNet:
    """A bridge and one namespace per host, all named ``tag`` + owner pid; see the module doc.

    Made by :meth:`create`; :meth:`remove` (also run by a finalizer, unless ``keep`` was asked)
    deletes everything, processes in the namespaces included.
    """

    def __init__(self, tag: str, owner_pid: int, bridge: str, subnet: ipaddress.IPv4Network, hosts: Mapping[str, NetHost],
                 made: _Made, *, keep: bool) -> None:
        self.tag = tag
        self.owner_pid = owner_pid
        self.bridge = bridge
        self.subnet = subnet
        self.hosts = dict(hosts)
        self._made = made
        self._finalizer = None if keep else weakref.finalize(self, _finalize, made)

    @classmethod
    def create(cls, tag: str, hosts: Mapping[str, int], *, prefix: str = "10.77", third_octet: Optional[int] = None,
               owner_pid: Optional[int] = None, keep: bool = False) -> "NetnsNet":
        """Make the bridge and one namespace per entry of ``hosts`` (name -> last octet of its address).

        ``prefix`` is the ``/16`` to take a free ``/24`` from: ``third_octet`` when free, else the
        first free one (from one derived from the owner pid). ``owner_pid`` (default: this process)
        names the run; ``keep`` leaves it in place when this process exits.
        """
        if not _TAG_RE.match(tag):
            raise ValueError(f"tag {tag!r}: 2 to 4 lowercase letters")
        for name, octet in hosts.items():
            if not re.match(r"^[a-z][a-z0-9]{0,9}$", name):
                raise ValueError(f"host name {name!r}: a lowercase letter, then up to 9 lowercase letters or digits")
            if not 2 <= octet <= 254:
                raise ValueError(f"{name}: last octet {octet} is not in 2..254 (1 is the bridge's)")
        if len(set(hosts.values())) != len(hosts):
            raise ValueError("two hosts with the same address")
        problem = check_netns_support()
        if problem is not None:
            raise NetnsUnavailable(f"cannot make network namespaces: {problem}")
        pid = owner_pid if owner_pid is not None else os.getpid()
        cleanup_stale(tag)
        if f"{tag}b{pid}" in link_names():
            raise NetnsUnavailable(f"owner pid {pid} already has a {tag} network (bridge {tag}b{pid}): remove it first, "
                                   "or give this one another owner")
        _TAGS.add(tag)
        made = _Made()
        with open(_LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                used = _used_third_octets(prefix)
                start = third_octet if third_octet is not None else 1 + pid % 200
                order = [third_octet] if third_octet is not None else []
                order += [k for k in range(start, 255)] + [k for k in range(0, start)]
                k = next((k for k in order if k not in used), None)
                if k is None:
                    raise NetnsUnavailable(f"no free /24 left in {prefix}.0.0/16")
                subnet = ipaddress.IPv4Network(f"{prefix}.{k}.0/24")
                bridge = f"{tag}b{pid}"
                net_hosts = {}
                for i, (name, octet) in enumerate(hosts.items()):
                    address = str(subnet.network_address + octet)
                    net_hosts[name] = NetHost(name, f"{tag}-{pid}-{name}", f"{tag}{pid}h{i + 1}", address, mac_of(address))
                net = cls(tag, pid, bridge, subnet, net_hosts, made, keep=keep)
                net._build()
                return net
            except BaseException:
                _finalize(made)
                raise
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build(self) -> None:
        made = self._made
        run_cmd("ip", "link", "add", self.bridge, "type", "bridge")
        made.links.append(self.bridge)
        run_cmd("ip", "addr", "add", f"{self.bridge_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        run_cmd("ip", "link", "set", self.bridge, "up")
        for host in self.hosts.values():
            ns = host.namespace
            run_cmd("ip", "netns", "add", ns)
            made.namespaces.append(ns)
            peer = f"{host.host_link}p"
            run_cmd("ip", "link", "add", host.host_link, "type", "veth", "peer", "name", peer)
            made.links.append(host.host_link)
            run_cmd("ip", "link", "set", peer, "netns", ns)
            run_cmd("ip", "link", "set", host.host_link, "master", self.bridge)
            run_cmd("ip", "link", "set", host.host_link, "up")
            run_cmd("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            run_cmd("ip", "-n", ns, "link", "set", "eth0", "address", host.mac)
            run_cmd("ip", "-n", ns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
            run_cmd("ip", "-n", ns, "link", "set", "eth0", "up")
            run_cmd("ip", "-n", ns, "link", "set", "lo", "up")

    @property
    def bridge_address(self) -> str:
        """The bridge's own address: the harness on the host, as the namespaces see it."""
        return str(self.subnet.network_address + 1)

    def namespace(self, host: str) -> str:
        return self.hosts[host].namespace

    def address(self, host: str) -> str:
        return self.hosts[host].address

    @property
    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.hosts.values()]

    @property
    def links(self) -> list[str]:
        """The bridge and the host side of every veth."""
        return [self.bridge, *(h.host_link for h in self.hosts.values())]

    @property
    def removed(self) -> bool:
        return self._made.closed

    def remove(self) -> None:
        """Kill what runs in the namespaces and delete them, the veths and the bridge (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        else:
            self._made.remove()

    def leftovers(self, timeout: float = 5.0) -> list[str]:
        """This run's namespaces and links still present after :meth:`remove`, waiting up to
        ``timeout`` for the kernel, which tears a namespace's devices down in the background."""
        deadline = time.monotonic() + timeout
        while True:
            namespaces, links = set(namespace_names()), set(link_names())
            left = [n for n in self.namespaces if n in namespaces] + [ln for ln in self.links if ln in links]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)


@contextlib.contextmanager
def in_namespace(namespace: str) -> Iterator[None]:
    """Run the body with the calling *thread* in network namespace ``namespace``.

    Sockets made inside stay in that namespace for their whole life; the thread returns to its
    own namespace on leaving (other threads are never affected: setns(CLONE_NEWNET) is per thread).
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail for our own namespace
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
    finally:
        os.close(own)


@atexit.register
def _cleanup_own() -> None:
    # Whatever this process owns and did not remove (the finalizers run too; belt and braces).
    for tag in sorted(_TAGS):
        try:
            ns_re, _ = _patterns(tag)
            if any((m := ns_re.match(ns)) and int(m.group(1)) == os.getpid() for ns in namespace_names()):
                cleanup_stale(tag, prefix_pid=os.getpid())
        except Exception:  # noqa: BLE001
            pass
