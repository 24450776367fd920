"""A lab as data: its layout (hosts, addresses, ports, names), the processes it started, and the
state file that lets another process (``avictl lab status|down``) see and remove it without a
:class:`simulations.lab.Lab` object.

A process is known by its pid and a *marker*, an argv element that names it (a config path, a
state directory), so a recycled pid is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import attrs

from avictl import nodes
from simulations import netns
from simulations.lab_faults import NFT_TABLE
from simulations.netns import NetHost, run_cmd

__all__ = [
    "BACKEND_HOSTS", "BACKEND_PORT", "CLIENT", "CONTROLLER_HOSTS", "FIRST_VIP", "HOSTS", "LAST_VIP", "PREFIX", "SE_HOSTS", "STATE_FILE",
    "TAG", "LabProcess", "LabState", "check_lab_support", "describe", "leftovers", "load_state", "owner_alive", "role_of", "save_state",
    "stop_all", "teardown",
]

TAG = "avl"
PREFIX = "10.99"
CONTROLLER_HOSTS = ("c1", "c2", "c3")
SE_HOSTS = ("s1", "s2", "s3")
CLIENT = "client"
BACKEND_HOSTS = ("b1", "b2")
HOSTS: dict[str, int] = {"c1": 11, "c2": 12, "c3": 13, "s1": 21, "s2": 22, "s3": 23, CLIENT: 31, "b1": 41, "b2": 42}
BACKEND_PORT = 8000
FIRST_VIP = 100
LAST_VIP = 199
STATE_FILE = "state.json"

def role_of(host: str) -> str:
    if host in CONTROLLER_HOSTS:
        return "controller"
    if host in SE_HOSTS:
        return "se"
    if host in BACKEND_HOSTS:
        return "backend"
    return "client" if host == CLIENT else "host"


def check_lab_support() -> Optional[str]:
    """None when the lab can be built here (root, iproute2, nftables, namespaces); else why not."""
    return netns.check_netns_support(("ip", "nft"))


# -- processes -----------------------------------------------------------------------------------

@attrs.define
class LabProcess:
    """A process the lab started: ``marker`` is an argv element naming it, so a recycled pid is never signalled."""

    role: str
    name: str
    host: str
    pid: int
    marker: str
    log: str
    popen: Optional[subprocess.Popen[bytes]] = attrs.field(default=None, eq=False, repr=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return nodes.pid_alive(self.pid, self.marker)

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGCONT first, so a stopped process dies too); for SIGKILL, wait until it is gone."""
        self.send(signal.SIGCONT)
        self.send(sig)
        if sig == signal.SIGKILL:
            self.wait_gone(5.0)

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "host": self.host, "pid": self.pid, "marker": self.marker, "log": self.log}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "LabProcess":
        return cls(str(doc["role"]), str(doc["name"]), str(doc["host"]), int(doc["pid"]), str(doc["marker"]), str(doc["log"]))


def stop_all(processes: Iterable[LabProcess], timeout: float = 3.0) -> dict[str, str]:
    """SIGTERM every process at once, SIGKILL what is left after ``timeout``; ``role name`` -> what happened."""
    running = [p for p in processes if p.alive()]
    for p in running:
        p.send(signal.SIGCONT)
        p.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    outcome = {}
    for p in running:
        outcome[f"{p.role} {p.name}"] = "stopped" if p.wait_gone(max(0.0, deadline - time.monotonic())) else "killed"
        if outcome[f"{p.role} {p.name}"] == "killed":
            p.kill()
    return outcome


# -- state: what `avictl lab status|down` read from another process -------------------------------

@attrs.frozen
class LabState:
    dir: str
    owner_pid: int
    subnet: str
    bridge: str
    bridge_address: str
    hosts: tuple[NetHost, ...]
    api_urls: tuple[str, ...] = ()
    token: str = attrs.field(default="", repr=False)
    processes: tuple[LabProcess, ...] = ()
    keeper: Optional[LabProcess] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": self.dir, "owner_pid": self.owner_pid, "subnet": self.subnet, "bridge": self.bridge,
            "bridge_address": self.bridge_address, "hosts": [attrs.asdict(h) for h in self.hosts],
            "api_urls": list(self.api_urls), "token": self.token, "processes": [p.to_json() for p in self.processes],
            "keeper": self.keeper.to_json() if self.keeper else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "LabState":
        return cls(str(doc["dir"]), int(doc["owner_pid"]), str(doc["subnet"]), str(doc["bridge"]), str(doc["bridge_address"]),
                   tuple(NetHost(**h) for h in doc["hosts"]), tuple(doc.get("api_urls") or ()), str(doc.get("token") or ""),
                   tuple(LabProcess.from_json(p) for p in doc.get("processes") or ()),
                   LabProcess.from_json(doc["keeper"]) if doc.get("keeper") else None)


def load_state(lab_dir: str | Path) -> Optional[LabState]:
    """The state a lab saved in ``lab_dir``, or None when there is none."""
    try:
        return LabState.from_json(json.loads((Path(lab_dir) / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None


def save_state(state: LabState) -> None:
    path = Path(state.dir) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _host_nft_tables() -> list[str]:
    """nftables tables named like the lab's in the host's own namespace (the lab never makes one there)."""
    try:
        out = run_cmd("nft", "-j", "list", "tables", check=False).stdout
        doc = json.loads(out or "{}")
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    return [f"nft table {t['table']['family']} {t['table']['name']}" for t in doc.get("nftables", [])
            if "table" in t and str(t["table"].get("name", "")).startswith(NFT_TABLE)]


def leftovers(state: LabState, timeout: float = 5.0) -> list[str]:
    """What of the lab ``state`` describes still exists: namespaces, links, live processes, nft tables.

    Waits up to ``timeout`` for the kernel, which tears a namespace's devices down in the background.
    """
    namespaces = [h.namespace for h in state.hosts]
    links = [state.bridge, *(h.host_link for h in state.hosts)]
    procs = [*state.processes, *([state.keeper] if state.keeper else [])]
    deadline = time.monotonic() + timeout
    while True:
        present_ns, present_links = set(netns.namespace_names()), set(netns.link_names())
        left = [f"namespace {n}" for n in namespaces if n in present_ns] + [f"link {ln}" for ln in links if ln in present_links]
        left += [f"process {p.role} {p.name} (pid {p.pid})" for p in procs if p.alive()]
        left += _host_nft_tables()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def teardown(state: LabState, timeout: float = 3.0) -> list[str]:
    """Remove the lab ``state`` describes (from any process): stop its processes (SIGTERM, then
    SIGKILL after ``timeout``), remove its namespaces (what still runs in them is killed), veths
    and bridge, stop its keeper, and remove leftovers of dead labs. Returns what is still there."""
    stop_all(state.processes, timeout)
    netns.remove_objects([h.namespace for h in state.hosts], [state.bridge, *(h.host_link for h in state.hosts)])
    if state.keeper is not None:
        state.keeper.kill()
    netns.cleanup_stale(TAG)
    left = leftovers(state)
    if not left:
        (Path(state.dir) / STATE_FILE).unlink(missing_ok=True)
    return left


def owner_alive(state: LabState) -> bool:
    return state.keeper.alive() if state.keeper is not None else netns.pid_alive(state.owner_pid)


def describe(state: LabState) -> dict[str, Any]:
    """Hosts (address, MAC, namespace, whether it exists) and the processes on each, from ``state`` and the system."""
    present = set(netns.namespace_names())
    return {
        "dir": state.dir,
        "subnet": state.subnet,
        "bridge": state.bridge,
        "harness_address": state.bridge_address,
        "owner_pid": state.owner_pid,
        "owner_alive": owner_alive(state),
        "api_urls": list(state.api_urls),
        "hosts": [
            {"host": h.name, "role": role_of(h.name), "address": h.address, "mac": h.mac, "namespace": h.namespace,
             "present": h.namespace in present,
             "processes": [{"role": p.role, "name": p.name, "pid": p.pid, "alive": p.alive(), "log": p.log}
                           for p in state.processes if p.host == h.name]}
            for h in state.hosts
        ],
    }
