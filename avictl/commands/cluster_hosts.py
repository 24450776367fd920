"""``avictl cluster init|join``: a cluster of controllers on one, or three, hosts.

On the first host, ``cluster init --listen ADDR --peer ADDR2 --peer ADDR3`` makes the cluster
(one secret, the admin's password and token, a node for each address), starts this host's node
and prints one join token per other host. On each other host, ``cluster join --token T``
writes that host's node config from the token and starts it. No secret is typed by hand; each
host's context lists every node, so ``avictl`` on any of them talks to the whole cluster.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid as uuidlib
from pathlib import Path
from typing import Optional

import attrs
import click

from avictl import render
from avictl.client import Client
from avictl.commands._output import emit, note, output_option
from avictl.commands.cluster import UP_TIMEOUT, _wait_for_leader, cluster_group
from avictl.context import Context, NodeEntry, avictl_home, context_path, load_context, save_context
from avictl.errors import Refused, UsageFault
from avictl.launcher import (
    ADMIN_USER,
    Credentials,
    JoinGrant,
    NodeAddress,
    NodeLayout,
    join_token,
    node_configs,
    node_ids,
    read_join_token,
)
from avictl.nodes import port_free, start_controller

__all__ = ["cluster_init", "cluster_join"]

DEFAULT_API_PORT = 7001
DEFAULT_RAFT_PORT = 7002


def _address(value: str, option: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UsageFault(f"{option} {value!r} is not an IPv4 address") from None


def _fresh_home() -> Path:
    home = avictl_home()
    if load_context(home) is not None:
        raise UsageFault(f"{context_path(home)} already holds a cluster; 'avictl cluster down --purge' (or another AVICTL_HOME) first")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def _start_local(home: Path, grant: JoinGrant, timeout: Optional[float], fmt: str) -> None:
    """Write this host's node config, start it, save a context naming every node; wait for a leader
    when ``timeout`` is given."""
    layout = NodeLayout(home / "nodes")
    node = grant.node
    if not port_free(node.api_port, node.api_host) or not port_free(int(node.raft_addr.rsplit(":", 1)[1]), node.api_host):
        raise Refused(f"{node.api_host}: port {node.api_port} or {node.raft_addr.rsplit(':', 1)[1]} is in use (or not this host's address)")
    layout.data_dir(node.node_id).mkdir(parents=True, exist_ok=True)
    os.chmod(layout.node_dir(node.node_id), 0o700)
    config = attrs.evolve(node, data_dir=str(layout.data_dir(node.node_id)))
    config.save(layout.config_path(node.node_id))
    entries = []
    for node_id, address in grant.addresses.items():
        local = node_id == node.node_id
        # Another host's node: this host neither starts nor stops it (no config, no pid here).
        entries.append(NodeEntry(id=node_id, api=address.api_url, raft=address.raft_addr, pid=None,
                                 data_dir=config.data_dir if local else "", config=str(layout.config_path(node_id)) if local else "",
                                 log=str(layout.log_path(node_id)) if local else ""))
    context = Context(cluster_id=grant.cluster_id, username=ADMIN_USER, password=grant.credentials.password,
                      token=grant.credentials.token, nodes=tuple(entries))
    proc = start_controller(str(layout.config_path(node.node_id)), str(layout.log_path(node.node_id)))
    context = context.with_node(attrs.evolve(context.node(node.node_id), pid=proc.pid))  # type: ignore[arg-type]
    save_context(context, home)
    note(f"started {node.node_id} pid {proc.pid} (api {config.api_url}, raft {config.raft_addr}, log {layout.log_path(node.node_id)})")
    if timeout is not None:
        # This node's view of the cluster: a leader once a majority runs (the others may join later).
        mine = attrs.evolve(context, nodes=tuple(n for n in context.nodes if n.id == node.node_id))
        status = _wait_for_leader(mine, {node.node_id: proc}, timeout)
        emit(render.render_cluster(status, fmt))


@cluster_group.command("init")
@click.option("--listen", required=True, metavar="ADDR", help="This host's address (IPv4): the API and Raft listen on it.")
@click.option("--peer", "peers", multiple=True, metavar="ADDR", help="Another controller host's address (give two, or none).")
@click.option("--api-port", type=click.IntRange(1, 65535), default=DEFAULT_API_PORT, show_default=True)
@click.option("--raft-port", type=click.IntRange(1, 65535), default=DEFAULT_RAFT_PORT, show_default=True)
@click.option("--timeout", type=click.FloatRange(1.0, 600.0), default=UP_TIMEOUT, show_default=True,
              help="Seconds to wait for a leader (with no --peer: this one node).")
@output_option
def cluster_init(listen: str, peers: tuple[str, ...], api_port: int, raft_port: int, timeout: float, fmt: str) -> None:
    """Make a cluster whose controllers run on this host and the --peer hosts; start this one.

    Prints one 'avictl cluster join' line per peer (on stdout; it holds the cluster secret: hand
    it over a private channel). The cluster has a leader once a majority has joined.
    """
    addresses_in = [_address(listen, "--listen"), *(_address(p, "--peer") for p in peers)]
    if len(addresses_in) not in (1, 3):
        raise UsageFault(f"a cluster has 1 or 3 controllers: give two --peer addresses or none, not {len(peers)}")
    if len(set(addresses_in)) != len(addresses_in):
        raise UsageFault("--listen and --peer must be three different addresses")
    home = _fresh_home()
    addresses = {node_id: NodeAddress(host, api_port, raft_port) for node_id, host in zip(node_ids(len(addresses_in)), addresses_in, strict=True)}
    credentials = Credentials.generate()
    configs = node_configs(NodeLayout(home / "nodes"), addresses, credentials)
    cluster_id = uuidlib.uuid4().hex
    grants = {node_id: JoinGrant(cluster_id, config, credentials, addresses) for node_id, config in configs.items()}
    note(f"new cluster {cluster_id[:12]}: {', '.join(f'{n} {a.host}' for n, a in addresses.items())}")
    for node_id in list(addresses)[1:]:
        emit(f"# on {addresses[node_id].host}:\navictl cluster join {addresses['n1'].api_url} --token {join_token(grants[node_id])}")
    _start_local(home, grants["n1"], timeout if len(addresses) == 1 else None, fmt)
    if len(addresses) > 1:
        note("this node elects a leader once one more node has joined ('avictl cluster status')")


@cluster_group.command("join")
@click.argument("url", required=False)
@click.option("--token", "token", required=True, metavar="TOKEN", help="The join token 'avictl cluster init' printed for this host.")
@click.option("--listen", metavar="ADDR", help="This host's address; must be the one the token was made for.")
@click.option("--timeout", type=click.FloatRange(1.0, 600.0), default=UP_TIMEOUT, show_default=True,
              help="Seconds to wait for a leader.")
@output_option
def cluster_join(url: Optional[str], token: str, listen: Optional[str], timeout: float, fmt: str) -> None:
    """Start this host's controller of a cluster 'avictl cluster init' made (URL: any running node)."""
    home = _fresh_home()
    try:
        grant = read_join_token(token, data_dir="")
    except ValueError as exc:
        raise UsageFault(str(exc)) from None
    if listen is not None and _address(listen, "--listen") != grant.node.api_host:
        raise UsageFault(f"this token is for the node on {grant.node.api_host}, not {listen}")
    if url:
        _wait_healthy(url, grant.credentials.token, min(timeout, 15.0))
    _start_local(home, grant, timeout, fmt)


def _wait_healthy(url: str, token: str, seconds: float) -> None:
    """Until ``url`` answers /healthz (the first node may still be starting), for at most ``seconds``."""
    client = Client([url], token)
    deadline = time.monotonic() + seconds
    while True:
        try:
            code, _ = client.probe(url.rstrip("/"), "/healthz", timeout=2.0)
            if code == 200:
                return
            problem = f"answered {code} to /healthz"
        except OSError as exc:
            problem = f"does not answer ({exc})"
        if time.monotonic() >= deadline:
            raise Refused(f"{url} {problem} after {seconds:g} s; start the first node with 'avictl cluster init' first")
        time.sleep(0.2)
