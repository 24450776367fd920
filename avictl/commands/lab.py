"""``avictl lab up|status|down|env|exec|cut|heal``: the network lab of :mod:`simulations.lab` on this machine.

The lab outlives the command that brought it up (a keeper process owns it); its state, logs and
data are under ``$AVICTL_HOME/lab/``. Needs root, iproute2 and nftables.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Optional

import click

from avictl import render
from avictl.client import Client
from avictl.commands._output import emit, note, output_option
from avictl.context import avictl_home
from avictl.errors import Refused, UsageFault

__all__ = ["lab_group"]

UP_TIMEOUT = 90.0
STATUS_DEADLINE = 3.0


def _lab_dir() -> Path:
    return avictl_home() / "lab"


@click.group("lab")
def lab_group() -> None:
    """A lab of network namespaces on one bridge: 3 controller hosts, 3 SE hosts, a client, 2 backends.

    \b
      avictl lab up                 # everything started, a leader elected, SEs reporting
      avictl lab status             # hosts, addresses, MACs, processes, the cluster
      eval "$(avictl lab env)"      # point avictl at the lab's controllers
      avictl lab exec client -- ip neigh
      avictl lab cut c1; avictl lab heal
      avictl lab down               # removes every namespace, link and process it made
    """


def _state_or_fail() -> Any:
    from simulations.lab import load_state

    state = load_state(_lab_dir())
    if state is None:
        raise Refused(f"no lab in {_lab_dir()}: 'avictl lab up' makes one")
    return state


@lab_group.command("up")
@click.option("--timeout", type=click.FloatRange(5.0, 600.0), default=UP_TIMEOUT, show_default=True,
              help="Seconds to wait for a leader, the SEs to report and the backends to answer.")
@output_option
def lab_up(timeout: float, fmt: str) -> None:
    """Build the lab and start everything in it; it stays up until 'avictl lab down'."""
    from simulations.lab import Lab, NetnsUnavailable, load_state

    previous = load_state(_lab_dir())
    if previous is not None:
        from simulations.lab import describe

        if describe(previous)["owner_alive"]:
            raise Refused(f"a lab is already up ({_lab_dir()}): 'avictl lab status' shows it, 'avictl lab down' removes it")
        note("removing what is left of a lab whose keeper is gone")
    try:
        lab = Lab(_lab_dir(), detached=True)
    except NetnsUnavailable as exc:
        raise Refused(str(exc)) from None
    try:
        lab.up(timeout=timeout, progress=note)
    except BaseException as exc:
        note(f"the lab did not come up ({type(exc).__name__}: {exc}); removing it (logs stay in {_lab_dir()})")
        lab.close()
        if isinstance(exc, (TimeoutError, RuntimeError, OSError)):
            raise Refused(f"lab up failed: {exc}") from None
        raise
    note(f"the lab is up; state and logs in {lab.dir}")
    _emit_status(lab.state(), fmt)


@lab_group.command("status")
@output_option
def lab_status(fmt: str) -> None:
    """Hosts (address, MAC, namespace), the processes on each, and the cluster as the controllers see it."""
    _emit_status(_state_or_fail(), fmt)


def _cluster_view(state: Any) -> dict[str, Any]:
    """Leader and SEs from the controllers, or why they did not answer."""
    if not state.api_urls:
        return {"error": "no controllers started"}
    client = Client(list(state.api_urls), state.token, deadline=STATUS_DEADLINE)
    try:
        cluster = client.get("/api/cluster", deadline=STATUS_DEADLINE)
        ses = client.get("/api/serviceengine", deadline=STATUS_DEADLINE)
    except Refused as exc:
        return {"error": str(exc)}
    return {
        "leader": cluster.get("leader"),
        "nodes": [{"id": n.get("id"), "api": n.get("api"), "role": n.get("role"), "term": n.get("term")} for n in cluster.get("nodes") or []],
        "serviceengines": [{"name": se.get("name"), "oper_status": (se.get("runtime") or {}).get("oper_status"),
                            "last_heartbeat": (se.get("runtime") or {}).get("last_heartbeat")} for se in ses.get("results") or []],
    }


def _emit_status(state: Any, fmt: str) -> None:
    from simulations.lab import describe

    doc = describe(state)
    doc["cluster"] = _cluster_view(state)
    if fmt != "table":
        emit(render.dump(doc, fmt))
        return
    rows = []
    for h in doc["hosts"]:
        procs = ", ".join(f"{p['role']} {p['name']} pid {p['pid']} {'running' if p['alive'] else 'gone'}" for p in h["processes"])
        rows.append([h["host"], h["role"], h["address"], h["mac"], h["namespace"] if h["present"] else f"{h['namespace']} (missing)", procs or "-"])
    lines = [render.table(["HOST", "ROLE", "ADDRESS", "MAC", "NAMESPACE", "PROCESSES"], rows), ""]
    lines.append(f"bridge {doc['bridge']} {doc['harness_address']} ({doc['subnet']}; this host); owner pid {doc['owner_pid']} "
                 f"{'alive' if doc['owner_alive'] else 'gone'}; files in {doc['dir']}")
    cluster = doc["cluster"]
    if "error" in cluster:
        lines.append(f"cluster: {cluster['error']}")
    else:
        lines.append(f"cluster: leader {cluster['leader'] or '-'}; " + ", ".join(f"{n['id']} {n['role']}" for n in cluster["nodes"]))
        lines.append("service engines: " + (", ".join(f"{se['name']} {se['oper_status']}" for se in cluster["serviceengines"]) or "-"))
    emit("\n".join(lines))


@lab_group.command("down")
@click.option("--timeout", type=click.FloatRange(0.0, 60.0), default=3.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
def lab_down(timeout: float) -> None:
    """Stop every process of the lab and remove its namespaces, veths, bridge and keeper (logs stay)."""
    from simulations import netns
    from simulations.lab import TAG, load_state, teardown

    state = load_state(_lab_dir())
    if state is None:
        removed = netns.cleanup_stale(TAG) if os.geteuid() == 0 else []
        note(f"no lab in {_lab_dir()}" + (f"; removed leftovers of dead labs: {', '.join(removed)}" if removed else "; nothing to do"))
        return
    left = teardown(state, timeout)
    if left:
        raise Refused(f"the lab is not entirely gone: {', '.join(left)}")
    note(f"lab down: {len(state.hosts)} namespaces, {len(state.hosts) + 1} links and every process removed (logs stay in {state.dir})")


@lab_group.command("cut")
@click.argument("host")
@click.option("--from", "peers", multiple=True, metavar="PEER",
              help="A host, address or prefix HOST stops talking to (repeatable; default: the whole lab).")
@click.option("--arp", is_flag=True, help="Drop ARP too (an unplugged cable), not only IPv4.")
def lab_cut(host: str, peers: tuple[str, ...], arp: bool) -> None:
    """Cut HOST off by nftables in its namespace (replacing any cut it had); this host still reaches it."""
    import ipaddress

    from simulations.lab import apply_ruleset, cut_ruleset

    state = _state_or_fail()
    addresses = {h.name: h.address for h in state.hosts}
    namespace = _namespace(state, host)
    try:
        targets = [str(ipaddress.IPv4Network(addresses.get(p, p), strict=False)) for p in peers] or [state.subnet]
    except ValueError as exc:
        raise UsageFault(f"--from: {exc}") from None
    apply_ruleset(namespace, cut_ruleset(targets, harness=state.bridge_address, arp=arp))
    note(f"{host} ({addresses[host]}) cut from {', '.join(targets)}{' (ARP too)' if arp else ''}; 'avictl lab heal {host}' undoes it")


@lab_group.command("heal")
@click.argument("hosts", nargs=-1)
def lab_heal(hosts: tuple[str, ...]) -> None:
    """Remove the cuts of HOSTS (default: every host)."""
    from simulations.lab import apply_ruleset, heal_ruleset

    state = _state_or_fail()
    for host in hosts or [h.name for h in state.hosts]:
        apply_ruleset(_namespace(state, host), heal_ruleset())
    note(f"healed {', '.join(hosts) if hosts else 'every host'}")


@lab_group.command("env")
def lab_env() -> None:
    """Shell lines that point avictl at the lab's controllers: eval "$(avictl lab env)"."""
    state = _state_or_fail()
    if not state.api_urls:
        raise Refused("the lab has no controllers")
    emit(f"export AVICTL_API={shlex.quote(','.join(state.api_urls))}")
    emit(f"export AVICTL_TOKEN={shlex.quote(state.token)}")


@lab_group.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def lab_exec(host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in HOST's network namespace (e.g. 'avictl lab exec client -- ip neigh')."""
    os.execvp("ip", ["ip", "netns", "exec", _namespace(_state_or_fail(), host), *command])


def _namespace(state: Any, host: str) -> str:
    namespace: Optional[str] = next((h.namespace for h in state.hosts if h.name == host), None)
    if namespace is None:
        raise UsageFault(f"no host {host!r} in the lab; hosts: {', '.join(h.name for h in state.hosts)}")
    return namespace
