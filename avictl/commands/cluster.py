"""``avictl cluster up|status|down``: a local cluster of controller processes, and its context."""

from __future__ import annotations

import os
import shutil
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Optional

import attrs
import click

from avictl import render
from avictl.client import Client
from avictl.commands._output import emit, note, output_option
from avictl.commands._settings import client_of, settings
from avictl.context import Context, NodeEntry, avictl_home, context_path, load_context, save_context
from avictl.errors import Refused, UsageFault
from avictl.nodes import pid_alive, port_free, start_controller, stop_processes, tail

__all__ = ["DOWN_TIMEOUT", "STATUS_DEADLINE", "UP_TIMEOUT", "cluster_group"]

UP_TIMEOUT = 30.0
DOWN_TIMEOUT = 10.0
STATUS_DEADLINE = 5.0


@click.group("cluster")
def cluster_group() -> None:
    """Start, inspect and stop a local cluster of controllers."""


def _new_cluster(home: Path, count: int, base_port: Optional[int], local_cloud: bool = True) -> Context:
    """Write the node configs of a new cluster under ``$AVICTL_HOME/nodes/``; the context to save."""
    from avictl.launcher import ADMIN_USER, Credentials, NodeLayout, loopback_addresses, node_configs

    ports: Optional[list[int]] = None
    if base_port is not None:
        ports = [base_port + i for i in range(2 * count)]
        if ports[-1] > 65535:
            raise UsageFault(f"--base-port {base_port}: needs {2 * count} ports up to 65535")
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise Refused(f"port {busy[0]} on 127.0.0.1 is in use; pick another --base-port")
    layout = NodeLayout(home / "nodes")
    credentials = Credentials.generate()
    configs = node_configs(layout, loopback_addresses(count, ports), credentials, local_cloud_home=str(home) if local_cloud else "")
    entries = []
    for node_id, config in configs.items():
        layout.data_dir(node_id).mkdir(parents=True, exist_ok=True)
        os.chmod(layout.node_dir(node_id), 0o700)
        config.save(layout.config_path(node_id))
        entries.append(NodeEntry(
            id=node_id, api=config.api_url, raft=config.raft_addr, pid=None, data_dir=config.data_dir,
            config=str(layout.config_path(node_id)), log=str(layout.log_path(node_id)),
        ))
    return Context(cluster_id=uuidlib.uuid4().hex, username=ADMIN_USER, password=credentials.password, token=credentials.token,
                   nodes=tuple(entries))


def _wait_for_leader(context: Context, procs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll until every node answers /healthz and /api/cluster names a leader."""
    probe = Client(context.api_urls, context.token)
    started = time.monotonic()
    deadline = started + timeout
    serving: set[str] = set()
    asked_leader = False
    note(f"waiting for {', '.join(n.id for n in context.nodes)} to serve...")
    while True:
        for node in context.nodes:
            proc = procs.get(node.id)
            if proc is not None and proc.poll() is not None:
                last = tail(node.log)
                raise Refused(
                    f"{node.id} exited with code {proc.returncode} before serving"
                    + (f": {last[:300]}" if last else "") + f" (log: {node.log})"
                )
            if node.id in serving:
                continue
            try:
                status, _ = probe.probe(node.api, "/healthz", timeout=1.0)
            except OSError:
                continue
            if status == 200:
                serving.add(node.id)
                note(f"{node.id} serving at {node.api}")
        if len(serving) == len(context.nodes):
            if not asked_leader:
                note("waiting for a leader...")
                asked_leader = True
            for node in context.nodes:
                try:
                    status, doc = probe.probe(node.api, "/api/cluster", timeout=3.0)
                except OSError:
                    continue
                if status == 401:
                    raise Refused(f"{node.id} refuses the context's token: the context does not match the node configs "
                                  f"(see {node.config}); 'avictl cluster down --purge' starts afresh")
                if status == 200 and isinstance(doc, dict) and doc.get("leader"):
                    note(f"leader {doc['leader']} after {time.monotonic() - started:.1f} s")
                    return doc
                break
        if time.monotonic() >= deadline:
            missing = [n.id for n in context.nodes if n.id not in serving]
            what = f"{', '.join(missing)} not serving" if missing else "no leader elected"
            logs = context.nodes[0].log.rsplit("/", 2)[0] if context.nodes else ""
            raise Refused(f"cluster not ready within {timeout:g} s: {what} (logs: {logs}/*/controller.log; "
                          "'avictl cluster down' stops what was started)")
        time.sleep(0.1)


@cluster_group.command("up")
@click.option("--nodes", "count", type=click.Choice(["1", "3"]), default=None,
              help="Controllers to start for a new cluster (default 1; an existing context keeps its count).")
@click.option("--base-port", type=click.IntRange(1024, 65535), default=None,
              help="Node i (0-based) uses API port BASE+2i and Raft port BASE+2i+1 (default: free ports).")
@click.option("--timeout", type=click.FloatRange(1.0, 600.0), default=UP_TIMEOUT, show_default=True,
              help="Seconds to wait for every node to serve and a leader to be elected.")
@click.option("--local-cloud/--no-local-cloud", default=True, show_default=True,
              help="A new cluster starts the Service Engines its SE groups need as processes on this host "
                   "(state and logs under $AVICTL_HOME/se/<name>/); without it SEs are started by hand with 'avictl se run'.")
@output_option
def cluster_up(count: Optional[str], base_port: Optional[int], timeout: float, local_cloud: bool, fmt: str) -> None:
    """Start the local cluster (or restart the nodes of the context that are not running).

    Writes the node configs under $AVICTL_HOME/nodes/<id>/ and the context (API URLs, admin
    password and token, pids) to $AVICTL_HOME/context.json. 'avictl cluster down' also stops the
    Service Engines the local cloud started.
    """
    home = avictl_home()
    context = load_context(home)
    if context is None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        n = int(count or "1")
        context = _new_cluster(home, n, base_port, local_cloud)
        note(f"new cluster {context.cluster_id[:12]} with {n} node{'s' if n > 1 else ''} in {home}")
    else:
        if count is not None and int(count) != len(context.nodes):
            raise UsageFault(
                f"the context at {context_path(home)} has {len(context.nodes)} node(s), not {count}; "
                "'avictl cluster down --purge' first to make a new cluster"
            )
        if base_port is not None:
            note("--base-port ignored: the existing cluster keeps its ports")
    procs: dict[str, Any] = {}
    for node in context.nodes:
        if not node.config:
            continue  # another host's node ('cluster join'): it is started there
        if pid_alive(node.pid, node.config):
            note(f"{node.id} already running (pid {node.pid})")
            continue
        if not Path(node.config).exists():
            raise UsageFault(f"{node.id}: config {node.config} is missing; 'avictl cluster down --purge' starts afresh")
        proc = start_controller(node.config, node.log)
        procs[node.id] = proc
        context = context.with_node(attrs.evolve(node, pid=proc.pid))
        note(f"started {node.id} pid {proc.pid} (api {node.api}, log {node.log})")
        # Saved at once so 'cluster down' can stop what was started even if the wait fails.
        save_context(context, home)
    save_context(context, home)
    status = _wait_for_leader(context, procs, timeout)
    emit(render.render_cluster(status, fmt))


def _stop_cloud_ses(home: Path, controllers: list[str], timeout: float) -> None:
    """Stop the SEs the local cloud started for this cluster (they outlive the controllers by design)."""
    from cluster.cloud.local import LocalCloud

    cloud = LocalCloud(home, controllers, "stopping")
    for name, pid in sorted(cloud.running().items()):
        cloud.stop(name, timeout=max(timeout, 0.5))
        note(f"service engine {name}: stopped (pid {pid})")


@cluster_group.command("status")
@output_option
@click.pass_context
def cluster_status(ctx: click.Context, fmt: str) -> None:
    """Nodes with role, term, commit index and applied revision; the leader and cluster state."""
    # Any live node answers /api/cluster (no quorum needed): retrying long only delays the news.
    status = client_of(ctx).get("/api/cluster", deadline=min(settings(ctx).deadline, STATUS_DEADLINE))
    emit(render.render_cluster(status, fmt))


@cluster_group.command("down")
@click.option("--purge", is_flag=True, help="Also delete the nodes' data and the context.")
@click.option("--timeout", type=click.FloatRange(0.0, 600.0), default=DOWN_TIMEOUT, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
def cluster_down(purge: bool, timeout: float) -> None:
    """Stop every controller of the context (SIGTERM, then SIGKILL after --timeout).

    Data and context are kept, so 'avictl cluster up' brings the same cluster back.
    """
    home = avictl_home()
    context = load_context(home)
    if context is None:
        note(f"no cluster context at {context_path(home)}; nothing to stop")
    else:
        outcome = stop_processes(((n.pid, n.config) for n in context.nodes if n.pid), timeout)
        for node in context.nodes:
            state = outcome.get(node.pid or -1, "not running")
            note(f"{node.id}: {state}" + (f" (pid {node.pid})" if node.pid and state != "not running" else ""))
        _stop_cloud_ses(home, context.api_urls, timeout)
        context = attrs.evolve(context, nodes=tuple(attrs.evolve(n, pid=None) for n in context.nodes))
        if not purge:
            save_context(context, home)
    if purge:
        shutil.rmtree(home / "nodes", ignore_errors=True)
        context_path(home).unlink(missing_ok=True)
        note(f"purged {home / 'nodes'} and {context_path(home)}")
