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

The harness's own traffic (host <-> node) is never cut. The network is a
:class:`simulations.netns.NetnsNet` (tag ``avc``): everything is removed in :meth:`close`
(processes, namespaces, veths, the bridge), also from a finalizer when the object is collected or
the interpreter exits, and leftovers of dead harnesses (names with this prefix whose pid is gone)
are removed when a new cluster is created. Needs root (CAP_NET_ADMIN) and iproute2;
:func:`check_netns_support` says what is missing.

Given a ``network`` made by someone else (the lab of :mod:`simulations.lab`), the nodes run in
that network's ``hosts`` instead, and :meth:`close` leaves the network to its maker.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from avictl.launcher import NodeAddress, node_ids, readdress
from simulations import netns
from simulations.local_cluster import LocalCluster
from simulations.netns import NetnsNet, NetnsUnavailable, check_netns_support, run_cmd

__all__ = ["NetnsCluster", "NetnsUnavailable", "check_netns_support", "cleanup_stale"]

API_PORT = 7001
RAFT_PORT = 7002
TAG = "avc"  # namespaces: avc-<pid>-<node>; links: avcb<pid> (bridge), avc<pid>h<i> (host side of a veth)


def cleanup_stale(prefix_pid: Optional[int] = None) -> list[str]:
    """Remove the namespaces and links of namespaced clusters whose harness pid is dead (or is ``prefix_pid``)."""
    return netns.cleanup_stale(TAG, prefix_pid)


class NetnsCluster(LocalCluster):
    """A 3-node (or ``nodes``) cluster with one network namespace per node; see the module doc."""

    def __init__(self, base_dir: str | Path, nodes: int = 3, *, durable_journal: bool = True,
                 env: Optional[dict[str, str]] = None, network: Optional[NetnsNet] = None,
                 hosts: Optional[Sequence[str]] = None) -> None:
        """``network`` and ``hosts``: run node i in ``network``'s host ``hosts[i]`` (default: a network of its own)."""
        ids = node_ids(nodes)
        if network is None:
            if hosts is not None:
                raise ValueError("hosts name hosts of a given network")
            network = NetnsNet.create(TAG, {n: 11 + i for i, n in enumerate(ids)}, prefix="10.77")
            self._owns_net = True
            hosts = ids
        else:
            hosts = list(hosts or ids)
            unknown = [h for h in hosts if h not in network.hosts]
            if len(hosts) != nodes or unknown:
                raise ValueError(f"{nodes} nodes need {nodes} hosts of the network, not {hosts}")
            self._owns_net = False
        self.net = network
        try:
            super().__init__(base_dir, nodes, durable_journal=durable_journal, env=env)
        except BaseException:
            if self._owns_net:
                network.remove()
            raise
        self.hosts: dict[str, str] = dict(zip(ids, hosts, strict=True))  # node -> host in the network
        self.extra_env: dict[str, dict[str, str]] = {n: {} for n in ids}  # extra env per node (faketime)
        self.node_prefix: dict[str, list[str]] = {n: [] for n in ids}  # argv before python (unused by default)
        self._cuts: set[tuple[str, str]] = set()
        self._cut_lock = threading.Lock()
        self.addrs = {n: network.address(self.hosts[n]) for n in ids}
        self.host_addr = network.bridge_address
        self.configs = readdress(self.configs, {n: NodeAddress(self.addrs[n], API_PORT, RAFT_PORT) for n in ids})

    # -- processes -----------------------------------------------------------------------------

    def namespace(self, node_id: str) -> str:
        return self.net.namespace(self.hosts[node_id])

    def command_prefix(self, node_id: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node_id), *self.node_prefix[node_id]]

    def node_env(self, node_id: str) -> dict[str, str]:
        return self.extra_env[node_id]

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owns_net:
                self.net.remove()

    # -- faults --------------------------------------------------------------------------------

    def _route(self, op: str, src: str, dst: str) -> None:
        run_cmd("ip", "netns", "exec", self.namespace(src), "ip", "route", op, "blackhole", f"{self.addrs[dst]}/32")

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
                run_cmd("ip", "netns", "exec", self.namespace(src), "ip", "route", "del", "blackhole",
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
        proc = run_cmd("ip", "netns", "exec", self.namespace(src), sys.executable, "-c", code, self.addrs[dst], str(port),
                    str(timeout), check=False, timeout=timeout + 10)
        return proc.returncode == 0
