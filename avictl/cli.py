"""The ``avictl`` command line: local cluster lifecycle, CRUD for every kind, apply, events.

Every command that prints data takes ``-o table|json|yaml`` (default ``table``, or
``$AVICTL_OUTPUT``). Errors leave through :func:`avictl.errors.run_guarded`: one line on stderr,
exit 1 when refused, 2 for bad usage.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import attrs
import click
import yaml

from avictl import render
from avictl.client import ApiError, Client
from avictl.context import Context, NodeEntry, avictl_home, context_path, load_context, save_context
from avictl.errors import Refused, UsageFault, run_guarded
from avictl.nodes import free_ports, pid_alive, port_free, start_controller, stop_processes, tail
from avictl.objects import (
    ALL_KINDS,
    LIMITED_KINDS,
    READ_ONLY_KINDS,
    canonical_kind,
    differences,
    expand_alias,
    merge,
    parse_fields,
    parse_server,
    prepare,
    to_ref,
    vip_entry,
)

__all__ = ["cli", "Settings"]

UP_TIMEOUT = 30.0
DOWN_TIMEOUT = 10.0
STATUS_DEADLINE = 5.0
UPDATE_ATTEMPTS = 3


# -- the root group ----------------------------------------------------------------------------


class AvictlGroup(click.Group):
    """The root group: resolves kind aliases and turns every expected error into one line."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        invoke = lambda: super(AvictlGroup, self).main(  # noqa: E731
            args, prog_name or "avictl", complete_var, standalone_mode=False, **extra
        )
        sys.exit(run_guarded(invoke))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            kind = canonical_kind(cmd_name)
            if kind is not None:
                command = super().get_command(ctx, kind)
        return command


@attrs.define
class Settings:
    """Global options; the client is built on first use, so local commands need no context."""

    api: tuple[str, ...] = ()
    token: Optional[str] = None
    deadline: float = 15.0
    tenant: Optional[str] = None
    _client: Optional[Client] = None

    def client(self) -> Client:
        if self._client is None:
            context = load_context() if not (self.api and self.token) else None
            endpoints = [u for value in self.api for u in value.split(",") if u.strip()]
            if not endpoints and context is not None:
                _fail_if_cluster_stopped(context)
                endpoints = context.api_urls
            token = self.token or (context.token if context else None)
            self._client = Client([e.strip() for e in endpoints], token, deadline=self.deadline, tenant=self.tenant)
        return self._client


def _fail_if_cluster_stopped(context: Context) -> None:
    """Say at once that a local cluster is down, instead of retrying for the deadline: every node
    of the context was started here (it has a pid) and none of those processes runs."""
    local = [n for n in context.nodes if n.pid]
    if not local or len(local) != len(context.nodes) or any(pid_alive(n.pid, n.config) for n in local):
        return
    raise Refused(f"the cluster in {context_path()} is not running (no controller process of {', '.join(n.id for n in local)} is alive); "
                  "start it with 'avictl cluster up'")


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o", "--output", "fmt", type=click.Choice(render.FORMATS), default="table", show_default=True,
        envvar="AVICTL_OUTPUT", help="Output format.",
    )(fn)


def emit(text: str) -> None:
    if text:
        click.echo(text)


def note(text: str) -> None:
    """Progress and remarks go to stderr, so stdout stays parseable."""
    click.echo(text, err=True)


@click.group(cls=AvictlGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--api", multiple=True, envvar="AVICTL_API", metavar="URL",
              help="Controller API URL (repeatable or comma-separated; default: the context's nodes).")
@click.option("--token", envvar="AVICTL_TOKEN", metavar="TOKEN", help="Bearer token (default: the context's).")
@click.option("--deadline", type=click.FloatRange(0.0, 3600.0), default=15.0, envvar="AVICTL_DEADLINE", show_default=True,
              help="Seconds to keep retrying a request across nodes.")
@click.option("--tenant", envvar="AVICTL_TENANT", help="Tenant (X-Avi-Tenant; default admin).")
@click.pass_context
def cli(ctx: click.Context, api: tuple[str, ...], token: Optional[str], deadline: float, tenant: Optional[str]) -> None:
    """avictl: an event-sourced load-balancer controller cluster.

    \b
    Start here:
      avictl cluster up --nodes 3
      avictl pool create web-pool --server 127.0.0.1:9001 --algorithm round_robin
      avictl vs create web --vip 127.10.0.1 --port 8080 --pool web-pool
      avictl events --follow

    The context (nodes, token) lives in $AVICTL_HOME/context.json (default ~/.avictl).
    """
    if isinstance(ctx.obj, Settings):
        return  # injected (tests)
    api = tuple(a for value in api for a in value.split())
    ctx.obj = Settings(api=api, token=token, deadline=deadline, tenant=tenant)


def settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(Settings)
    assert obj is not None
    return obj


def client_of(ctx: click.Context) -> Client:
    return settings(ctx).client()


# -- cluster -----------------------------------------------------------------------------------


@cli.group("cluster")
def cluster_group() -> None:
    """Start, inspect and stop a local cluster of controllers."""


def _new_cluster(home: Path, count: int, base_port: Optional[int], local_cloud: bool = True) -> Context:
    from cluster.config import NodeConfig, PeerConfig, hash_password, hash_token

    if base_port is not None:
        ports = [base_port + i for i in range(2 * count)]
        if ports[-1] > 65535:
            raise UsageFault(f"--base-port {base_port}: needs {2 * count} ports up to 65535")
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise Refused(f"port {busy[0]} on 127.0.0.1 is in use; pick another --base-port")
    else:
        ports = free_ports(2 * count)
    ids = [f"n{i + 1}" for i in range(count)]
    api_port = {node_id: ports[2 * i] for i, node_id in enumerate(ids)}
    raft_port = {node_id: ports[2 * i + 1] for i, node_id in enumerate(ids)}
    secret = secrets.token_hex(32)
    password = secrets.token_urlsafe(16)
    token = secrets.token_urlsafe(32)
    password_hash, token_hash = hash_password(password), hash_token(token)
    entries = []
    for node_id in ids:
        node_dir = home / "nodes" / node_id
        data_dir = node_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(node_dir, 0o700)
        peers = tuple(
            PeerConfig(other, f"http://127.0.0.1:{api_port[other]}", f"127.0.0.1:{raft_port[other]}")
            for other in ids if other != node_id
        )
        config = NodeConfig(
            node_id=node_id,
            data_dir=str(data_dir),
            api_host="127.0.0.1",
            api_port=api_port[node_id],
            raft_addr=f"127.0.0.1:{raft_port[node_id]}",
            peers=peers,
            cluster_secret=secret,
            admin_user="admin",
            admin_password_hash=password_hash,
            admin_token_hash=token_hash,
            local_cloud_home=str(home) if local_cloud else "",
        )
        config_file = node_dir / "node.json"
        config.save(config_file)
        entries.append(NodeEntry(
            id=node_id, api=config.api_url, raft=config.raft_addr, pid=None, data_dir=str(data_dir),
            config=str(config_file), log=str(node_dir / "controller.log"),
        ))
    return Context(cluster_id=uuidlib.uuid4().hex, username="admin", password=password, token=token, nodes=tuple(entries))


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


# -- controller --------------------------------------------------------------------------------


@cli.group("controller")
def controller_group() -> None:
    """Run a controller node in the foreground."""


@controller_group.command("run")
@click.option("--config", "config_path", required=True, metavar="PATH", help="The node's node.json.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def controller_run(config_path: str, log_level: str) -> None:
    """Run one controller node until SIGTERM/SIGINT (for service managers and 'cluster up')."""
    from cluster.config import ConfigError, NodeConfig
    from cluster.logsetup import configure_logging

    try:
        config = NodeConfig.load(config_path)
    except ConfigError as exc:
        raise UsageFault(str(exc)) from None
    configure_logging(node_id=config.node_id, level=log_level)
    from cluster.main import run_controller

    try:
        run_controller(config)
    except OSError as exc:
        raise Refused(f"controller {config.node_id} cannot run: {exc}") from None


# -- CRUD for every kind ------------------------------------------------------------------------


def _find_or_fail(client: Client, kind: str, name: str) -> dict[str, Any]:
    obj = client.find(kind, name)
    if obj is None:
        raise Refused(f"{kind} {name!r} does not exist")
    return obj


def _prefixed(exc: ApiError, prefix: str) -> ApiError:
    return ApiError(exc.status, f"{prefix}: {exc.message}", code=exc.code, field=exc.field, command_id=exc.command_id)


def create_object(client: Client, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST with a client-chosen uuid (``Slug``), so a retry that finds the object made is a success."""
    slug = f"{kind}-{uuidlib.uuid4()}"
    try:
        return dict(client.post(f"/api/{kind}", body, headers={"Slug": slug}) or {})
    except ApiError as exc:
        if exc.status == 409 and client.last_attempts > 1:
            existing = client.find(kind, str(body.get("name")))
            if existing is not None and existing.get("uuid") == slug:
                return existing
        raise


def update_object(
    client: Client, kind: str, name: str, desired: dict[str, Any], stored: Optional[dict[str, Any]] = None
) -> tuple[str, dict[str, Any], list[str]]:
    """GET, merge ``desired``, PUT with ``_last_modified``; on 412 re-read, re-merge and retry.

    Returns (``"updated"`` | ``"unchanged"``, the object, the fields that differed).
    """
    changed: list[str] = []
    for attempt in range(UPDATE_ATTEMPTS):
        if stored is None:
            stored = _find_or_fail(client, kind, name)
        now_changed = differences(desired, stored, kind)
        if not now_changed:
            # After a 412 this can be our own earlier attempt, applied before its answer was lost.
            return ("updated" if changed else "unchanged"), stored, changed
        changed = now_changed
        try:
            action, obj = put_merged(client, kind, stored, desired)
            return action, obj, changed
        except ApiError as exc:
            if exc.status != 412 or attempt == UPDATE_ATTEMPTS - 1:
                raise
        stored = None
    raise AssertionError("unreachable")


def put_merged(client: Client, kind: str, stored: dict[str, Any], desired: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """PUT ``stored`` merged with ``desired``; ``"unchanged"`` when the server made no event of it.

    The server answers an identical body without a new revision, so ``_last_modified`` tells
    whether the write changed anything (a write-only field cannot be compared client-side).
    """
    body = merge(stored, desired)
    body["_last_modified"] = stored.get("_last_modified")
    obj = dict(client.put(f"/api/{kind}/{stored['uuid']}", body) or {})
    changed = obj.get("_last_modified") != stored.get("_last_modified")
    return ("updated" if changed else "unchanged"), obj


def delete_object(client: Client, kind: str, obj: dict[str, Any]) -> None:
    try:
        client.delete(f"/api/{kind}/{obj['uuid']}")
    except ApiError as exc:
        if not (exc.status == 404 and client.last_attempts > 1):  # a retry found it already deleted
            raise


# Kind-specific flags: options, and how their values become fields.


@attrs.define
class Effects:
    """What building a body did besides computing fields (``vs --vip`` makes a vsvip)."""

    undo: list[Callable[[], Any]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def rollback(self) -> None:
        for step in reversed(self.undo):
            try:
                step()
            except ApiError:
                pass

def _pool_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--server", "servers", multiple=True, metavar="IP[:PORT]", help="A backend server (repeatable; replaces the list)."),
        click.option("--algorithm", type=click.Choice(["round_robin", "least_connections", "consistent_hash"]),
                     help="Load-balancing algorithm."),
        click.option("--monitor", "monitors", multiple=True, metavar="NAME", help="A health monitor (repeatable; replaces the list)."),
        click.option("--default-port", type=click.IntRange(1, 65535), help="default_server_port."),
    ]):
        fn = opt(fn)
    return fn


def _pool_fields(client: Client, name: str, creating: bool, effects: Effects, servers: tuple[str, ...] = (), algorithm: Optional[str] = None,
                 monitors: tuple[str, ...] = (), default_port: Optional[int] = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if servers:
        out["servers"] = [parse_server(s) for s in servers]
    if algorithm:
        out["lb_algorithm"] = expand_alias("pool", "lb_algorithm", algorithm)
        if algorithm == "consistent_hash":
            out["lb_algorithm_hash"] = "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS"
    if monitors:
        out["health_monitor_refs"] = [to_ref("healthmonitor", m) for m in monitors]
    if default_port is not None:
        out["default_server_port"] = default_port
    return out


def _hm_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--timeout", "receive_timeout", type=click.IntRange(1, 3600), help="receive_timeout in seconds.")(fn)
    fn = click.option("--interval", type=click.IntRange(1, 3600), help="send_interval in seconds.")(fn)
    return click.option("--type", "hm_type", type=click.Choice(["tcp", "http", "ping"]), help="Monitor type.")(fn)


def _hm_fields(client: Client, name: str, creating: bool, effects: Effects, hm_type: Optional[str] = None, interval: Optional[int] = None,
               receive_timeout: Optional[int] = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hm_type:
        out["type"] = expand_alias("healthmonitor", "type", hm_type)
    elif creating:
        out["type"] = "HEALTH_MONITOR_TCP"
    if interval is not None:
        out["send_interval"] = interval
    if receive_timeout is not None:
        out["receive_timeout"] = receive_timeout
    return out


def _segroup_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--max-se", type=click.IntRange(1, 1000), help="max_se.")(fn)
    return click.option("--ha-mode", type=click.Choice(["active_standby", "active_active", "n_plus_m"]), help="HA mode.")(fn)


def _segroup_fields(client: Client, name: str, creating: bool, effects: Effects, ha_mode: Optional[str] = None,
                    max_se: Optional[int] = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ha_mode:
        out["ha_mode"] = expand_alias("serviceenginegroup", "ha_mode", ha_mode)
    if max_se is not None:
        out["max_se"] = max_se
    return out


def _vsvip_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--vip", "vips", multiple=True, metavar="ADDR", help="A virtual IP (repeatable; replaces the list).")(fn)


def _vsvip_fields(client: Client, name: str, creating: bool, effects: Effects, vips: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"vip": [vip_entry(a, str(i + 1)) for i, a in enumerate(vips)]} if vips else {}


def _vs_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--vip", metavar="ADDR", help="Virtual IP; makes (or updates) the vsvip named <vs>-vsvip."),
        click.option("--vsvip", metavar="NAME", help="Use an existing vsvip instead of --vip."),
        click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535), help="A service port (repeatable; replaces the list)."),
        click.option("--pool", metavar="NAME", help="The pool."),
        click.option("--segroup", metavar="NAME", help="The SE group (default Default-Group)."),
    ]):
        fn = opt(fn)
    return fn


def _ensure_vsvip(client: Client, vsvip_name: str, addr: str, may_update: bool, effects: Effects) -> None:
    wanted = {"vip": [vip_entry(addr)]}
    existing = client.find("vsvip", vsvip_name)
    if existing is None:
        made = create_object(client, "vsvip", {"name": vsvip_name, **wanted})
        effects.undo.append(lambda: delete_object(client, "vsvip", made))
        effects.notes.append(f"created vsvip {vsvip_name}")
    elif differences(wanted, existing, "vsvip"):
        if not may_update:
            raise Refused(f"vsvip {vsvip_name!r} already exists with another address; use --vsvip {vsvip_name} or pick another name")
        update_object(client, "vsvip", vsvip_name, wanted, existing)
        effects.notes.append(f"updated vsvip {vsvip_name}")


def _vs_fields(client: Client, name: str, creating: bool, effects: Effects, vip: Optional[str] = None, vsvip: Optional[str] = None,
               ports: tuple[int, ...] = (), pool: Optional[str] = None, segroup: Optional[str] = None) -> dict[str, Any]:
    if vip and vsvip:
        raise UsageFault("give --vip or --vsvip, not both")
    out: dict[str, Any] = {}
    if vip:
        vsvip_name = f"{name}-vsvip"
        if not creating:
            stored = _find_or_fail(client, "virtualservice", name)
            vsvip_name = render.ref_name(stored.get("vsvip_ref")) or vsvip_name
        vip_entry(vip)  # validate before anything is created
        _ensure_vsvip(client, vsvip_name, vip, not creating, effects)
        out["vsvip_ref"] = to_ref("vsvip", vsvip_name)
    elif vsvip:
        out["vsvip_ref"] = to_ref("vsvip", vsvip)
    if ports:
        out["services"] = [{"port": p} for p in ports]
    if pool:
        out["pool_ref"] = to_ref("pool", pool)
    if segroup:
        out["se_group_ref"] = to_ref("serviceenginegroup", segroup)
    return out


def _no_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _no_fields(client: Client, name: str, creating: bool, effects: Effects) -> dict[str, Any]:
    return {}


KIND_FLAGS: dict[str, tuple[Callable[..., Any], Callable[..., dict[str, Any]]]] = {
    "pool": (_pool_options, _pool_fields),
    "healthmonitor": (_hm_options, _hm_fields),
    "serviceenginegroup": (_segroup_options, _segroup_fields),
    "vsvip": (_vsvip_options, _vsvip_fields),
    "virtualservice": (_vs_options, _vs_fields),
}

KIND_HELP = {
    "pool": "Pools of backend servers.",
    "healthmonitor": "Health monitors (alias: hm).",
    "vsvip": "Virtual IPs.",
    "serviceenginegroup": "Service Engine groups (alias: segroup).",
    "virtualservice": "Virtual services (alias: vs).",
    "cloud": "Clouds.",
    "tenant": "Tenants.",
    "serviceengine": "Service Engines (made by the system; alias: se).",
    "applicationprofile": "Application profiles (built in, read-only).",
}

FIELD_HELP = ("A field as KEY=VALUE (repeatable). VALUE is JSON when it parses (80, true, [..], {..}), else a string "
              "(quote it as JSON to force a string: 'description=\"80\"'); a.b=v sets a nested field; "
              "a *_ref given a bare name refers by name.")


def _body_from(kind: str, client: Client, name: str, creating: bool, fields: tuple[str, ...], flags: dict[str, Any],
               effects: Effects) -> dict[str, Any]:
    from_fields = parse_fields(fields)  # parse first: a typo must not leave a half-made vsvip behind
    _options, to_fields = KIND_FLAGS.get(kind, (_no_options, _no_fields))
    body = to_fields(client, name, creating, effects, **flags)
    body.update(prepare(kind, from_fields))
    return body


def _make_kind_group(kind: str) -> click.Group:
    verbs = LIMITED_KINDS.get(kind, ("list", "show", "create", "update", "delete"))

    @click.group(name=kind, help=KIND_HELP.get(kind))
    def group() -> None:
        pass

    @group.command("list")
    @output_option
    @click.pass_context
    def list_cmd(ctx: click.Context, fmt: str) -> None:
        """List every object of this kind."""
        emit(render.render_objects(kind, client_of(ctx).list_all(kind), fmt))

    @group.command("show")
    @click.argument("name")
    @output_option
    @click.pass_context
    def show_cmd(ctx: click.Context, name: str, fmt: str) -> None:
        """Show one object by name."""
        emit(render.render_object(kind, _find_or_fail(client_of(ctx), kind, name), fmt))

    options, _fields = KIND_FLAGS.get(kind, (_no_options, _no_fields))

    @click.command("create")
    @click.argument("name")
    @click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help=FIELD_HELP)
    @options
    @output_option
    @click.pass_context
    def create_cmd(ctx: click.Context, name: str, fields: tuple[str, ...], fmt: str, **flags: Any) -> None:
        """Create an object named NAME."""
        client = client_of(ctx)
        effects = Effects()
        body = {**_body_from(kind, client, name, True, fields, flags, effects), "name": name}
        try:
            obj = create_object(client, kind, body)
        except ApiError:
            effects.rollback()  # do not leave the vsvip made for a refused vs behind
            raise
        for line in effects.notes:
            note(line)
        emit(render.render_objects(kind, [obj], fmt) if fmt == "table" else render.dump(obj, fmt))

    @click.command("update")
    @click.argument("name")
    @click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help=FIELD_HELP)
    @options
    @output_option
    @click.pass_context
    def update_cmd(ctx: click.Context, name: str, fields: tuple[str, ...], fmt: str, **flags: Any) -> None:
        """Change fields of NAME (read, merge, write back with _last_modified)."""
        client = client_of(ctx)
        effects = Effects()
        desired = _body_from(kind, client, name, False, fields, flags, effects)
        for line in effects.notes:
            note(line)
        if not desired:
            raise UsageFault("nothing to update: give --field KEY=VALUE or a flag")
        action, obj, _changed = update_object(client, kind, name, desired)
        if action == "unchanged":
            note(f"{kind} {name} unchanged")
        emit(render.render_objects(kind, [obj], fmt) if fmt == "table" else render.dump(obj, fmt))

    @click.command("delete")
    @click.argument("name")
    @output_option
    @click.pass_context
    def delete_cmd(ctx: click.Context, name: str, fmt: str) -> None:
        """Delete NAME (a virtual service's own <vs>-vsvip goes with it)."""
        client = client_of(ctx)
        obj = _find_or_fail(client, kind, name)
        delete_object(client, kind, obj)
        deleted = [{"action": "deleted", "kind": kind, "name": name, "uuid": obj.get("uuid")}]
        vsvip_name = render.ref_name(obj.get("vsvip_ref")) if kind == "virtualservice" else None
        if vsvip_name == f"{name}-vsvip":
            vsvip = client.find("vsvip", vsvip_name)
            if vsvip is not None:
                try:
                    delete_object(client, "vsvip", vsvip)
                    deleted.append({"action": "deleted", "kind": "vsvip", "name": vsvip_name, "uuid": vsvip.get("uuid")})
                except ApiError as exc:
                    note(f"kept vsvip {vsvip_name}: {exc}")
        emit(render.render_apply(deleted, fmt))

    for command in (create_cmd, update_cmd, delete_cmd):
        if command.name in verbs:
            group.add_command(command)
    return group


for _kind in ALL_KINDS:
    cli.add_command(_make_kind_group(_kind))


# -- service engines and placement -------------------------------------------------------------


@cli.commands["serviceengine"].command("run")  # type: ignore[attr-defined]
@click.option("--name", required=True, help="The SE's name (registered with the cluster on first start).")
@click.option("--controller", "controllers", multiple=True, metavar="URL",
              help="Controller API URL (repeatable; default: the global --api, else the context's nodes).")
@click.option("--state-dir", metavar="DIR", help="Where the last good slice is kept (default: $AVICTL_HOME/se/<name>).")
@click.option("--report-interval", type=click.FloatRange(0.2, 3600.0), default=5.0, show_default=True,
              help="Seconds between status reports to the controllers.")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT",
              help="Serve Prometheus /metrics here (e.g. 127.0.0.1:9910; port 0 picks one; default: off).")
@click.option("--ha-dir", metavar="DIR",
              help="Where this SE's Unix socket for active/standby VIP handoff lives (default: $AVICTL_HOME/run).")
@click.option("--scaleout-mode", type=click.Choice(["auto", "relay"]), default="auto", show_default=True,
              help="How an active/active primary hands connections to its secondaries: auto passes the accepted "
                   "socket (relaying only when that fails); relay always relays them through this SE.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.pass_context
def se_run(ctx: click.Context, name: str, controllers: tuple[str, ...], state_dir: Optional[str], report_interval: float,
           metrics_listen: Optional[str], ha_dir: Optional[str], scaleout_mode: str, log_level: str) -> None:
    """Run a Service Engine in the foreground: it registers, receives the VSs placed on it and serves them."""
    from cluster.logsetup import configure_logging

    opts = settings(ctx)
    urls = [u.strip() for value in (controllers or opts.api) for u in value.split(",") if u.strip()]
    token = opts.token
    if not urls or not token:
        context = load_context()
        if context is None:
            raise UsageFault("no controller given: use --controller URL and --token, or run 'avictl cluster up' first")
        urls = urls or context.api_urls
        token = token or context.token
    listen = None
    if metrics_listen:
        host, _, port = metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UsageFault(f"--metrics must be HOST:PORT, not {metrics_listen!r}")
        listen = (host, int(port))
    configure_logging(node_id=f"se:{name}", level=log_level)
    from engine.main import run_service_engine

    def _default_ha_dir() -> Path:
        import hashlib
        import tempfile

        # A Unix socket path holds at most 107 bytes: a deep AVICTL_HOME gets a short stand-in.
        run = avictl_home() / "run"
        if len(os.fsencode(str(run / f"{name}.sock"))) <= 107:
            return run
        digest = hashlib.sha1(os.fsencode(str(run))).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"avictl-run-{digest}"

    status = run_service_engine(name, urls, str(token), state_dir or avictl_home() / "se" / name, report_interval=report_interval,
                                metrics_listen=listen, ha_dir=ha_dir or _default_ha_dir(), scaleout_mode=scaleout_mode)
    if status:
        click.echo(f"error: service engine {name} was deleted by the cluster; it stopped serving (exit {status})", err=True)
        sys.exit(status)


@cli.commands["virtualservice"].command("place")  # type: ignore[attr-defined]
@click.argument("name")
@click.option("--se", "ses", multiple=True, metavar="SE", help="A Service Engine to serve NAME on (repeatable; none unplaces it).")
@output_option
@click.pass_context
def vs_place(ctx: click.Context, name: str, ses: tuple[str, ...], fmt: str) -> None:
    """Place virtual service NAME on exactly the given Service Engines (an event in the log)."""
    client = client_of(ctx)
    obj = _find_or_fail(client, "virtualservice", name)
    placed = client.post(f"/api/virtualservice/{obj['uuid']}/placement", {"serviceengine_refs": list(ses)})
    emit(render.render_objects("virtualservice", [placed], fmt))


# The product's VS actions act on one VIP; avictl's virtual services have one, vip_id "0".
_VIP_ID = "0"


def _vs_action(ctx: click.Context, name: str, action: str, body: dict[str, Any], fmt: str) -> None:
    """POST ``body`` to virtual service NAME's action route; print the VS it answers, as ``vs place`` does.

    An SE is sent as given (name, path or URL): the server resolves it.
    """
    client = client_of(ctx)
    obj = _find_or_fail(client, "virtualservice", name)
    answered = client.post(f"/api/virtualservice/{obj['uuid']}/{action}", {"vip_id": _VIP_ID, **body})
    emit(render.render_objects("virtualservice", [answered], fmt))


@cli.commands["virtualservice"].command("scale-out")  # type: ignore[attr-defined]
@click.argument("name")
@click.option("--to", "to_se", metavar="SE", help="The Service Engine to add (default: the controller picks one).")
@output_option
@click.pass_context
def vs_scale_out(ctx: click.Context, name: str, to_se: Optional[str], fmt: str) -> None:
    """Serve virtual service NAME on one more Service Engine."""
    _vs_action(ctx, name, "scaleout", {"to_se_ref": to_se} if to_se else {}, fmt)


@cli.commands["virtualservice"].command("scale-in")  # type: ignore[attr-defined]
@click.argument("name")
@click.option("--se", "se", metavar="SE", help="The Service Engine to remove (default: the controller picks one).")
@output_option
@click.pass_context
def vs_scale_in(ctx: click.Context, name: str, se: Optional[str], fmt: str) -> None:
    """Serve virtual service NAME on one Service Engine fewer."""
    _vs_action(ctx, name, "scalein", {"se_ref": se} if se else {}, fmt)


@cli.commands["virtualservice"].command("migrate")  # type: ignore[attr-defined]
@click.argument("name")
@click.option("--to", "to_se", required=True, metavar="SE", help="The Service Engine to move to.")
@click.option("--from", "from_se", metavar="SE", help="The Service Engine to move from (default: the controller picks).")
@output_option
@click.pass_context
def vs_migrate(ctx: click.Context, name: str, to_se: str, from_se: Optional[str], fmt: str) -> None:
    """Move virtual service NAME from one Service Engine to another."""
    _vs_action(ctx, name, "migrate", {"to_se_ref": to_se, **({"from_se_ref": from_se} if from_se else {})}, fmt)


@cli.commands["virtualservice"].command("switchover")  # type: ignore[attr-defined]
@click.argument("name")
@output_option
@click.pass_context
def vs_switchover(ctx: click.Context, name: str, fmt: str) -> None:
    """Hand virtual service NAME's primary role to another of its Service Engines."""
    _vs_action(ctx, name, "switchover", {}, fmt)


# -- apply -------------------------------------------------------------------------------------


def load_documents(streams: Iterable[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every object of every YAML stream as ``(kind, name, fields)``; all checked before any is applied."""
    out = []
    for stream in streams:
        source = getattr(stream, "name", "<input>")
        try:
            docs = list(yaml.safe_load_all(stream))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise UsageFault(f"{source}: not valid YAML{where}: {problem}") from None
        for i, doc in enumerate(docs, 1):
            if doc is None:
                continue
            label = f"{source} document {i}"
            if not isinstance(doc, dict):
                raise UsageFault(f"{label}: expected a mapping with kind and name")
            raw_kind = doc.get("kind")
            kind = canonical_kind(raw_kind) if isinstance(raw_kind, str) else None
            if kind is None:
                raise UsageFault(f"{label}: kind {raw_kind!r} is not one of {', '.join(ALL_KINDS)}")
            if kind in READ_ONLY_KINDS:
                raise UsageFault(f"{label}: {kind} objects are read-only")
            name = doc.get("name")
            if not isinstance(name, str) or not name:
                raise UsageFault(f"{label}: name must be a non-empty string")
            fields = {k: v for k, v in doc.items() if k != "kind"}
            out.append((kind, name, prepare(kind, fields)))
    return out


@cli.command("apply")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.File("r"),
              help="A YAML file ('-' for stdin); repeatable.")
@click.option("--dry-run", is_flag=True, help="Check everything on the server and show what would change; write nothing.")
@output_option
@click.pass_context
def apply_cmd(ctx: click.Context, files: tuple[Any, ...], dry_run: bool, fmt: str) -> None:
    """Create or update the objects of YAML files: all of them, or none.

    \b
    Each YAML document is one object in the API's wire format, with its kind beside its fields:
      kind: pool            # or an alias: vs, hm, segroup
      name: web-pool
      lb_algorithm: round_robin        # CLI aliases are expanded
      servers: [{ip: {addr: 127.0.0.1, type: V4}, port: 9001}]
      health_monitor_refs: [System-TCP] # refs may be bare names
    Separate objects with '---'; an object may refer to one made earlier in the same files.

    Every document goes to the cluster in one transaction (PUT /api/macro): an absent object is
    created; a present one gets the fields the document names laid over its stored fields (fields
    the document leaves out are kept) and is updated only if that changes it, so re-applying an
    unchanged file writes nothing. One refused document refuses them all, and the error names it.
    --dry-run runs the same checks on the server, commits nothing, and shows each change.
    Prints 'created|updated|unchanged KIND NAME'.
    """
    documents = load_documents(files)
    if not documents:
        note("nothing to apply: the files hold no object")
        return
    client = client_of(ctx)
    data = [{"model_name": kind, **desired} for kind, _name, desired in documents]
    try:
        answer = client.request("PUT", "/api/macro", {"data": data}, query={"dry_run": "true"} if dry_run else None)
    except ApiError as exc:
        raise _located(exc, documents) from None
    results = (answer or {}).get("results") or []
    if fmt != "table":
        emit(render.dump(results, fmt))
        return
    suffix = " (dry run)" if dry_run else ""
    lines = []
    for result in results:
        lines.append(f"{result['action']} {result['kind']} {result['name']}" + (suffix if result["action"] != "unchanged" else ""))
        if dry_run:
            for field, change in (result.get("changes") or {}).items():
                lines.append(f"    {field}: {render.inline(change.get('from'))} -> {render.inline(change.get('to'))}")
    emit("\n".join(lines))


def _located(exc: ApiError, documents: list[tuple[str, str, dict[str, Any]]]) -> ApiError:
    """The server names a refused field by its place in the transaction (``data[3].services[0].port``):
    say which document that is."""
    import re

    match = re.match(r"^data\[(\d+)\]\.?(.*)$", exc.field or "")
    if match is None or int(match.group(1)) >= len(documents):
        return exc
    kind, name, _ = documents[int(match.group(1))]
    return ApiError(exc.status, f"{kind} {name}: {exc.message}; nothing was applied", code=exc.code,
                    field=match.group(2) or None, command_id=exc.command_id)


# -- events ------------------------------------------------------------------------------------


_EVENT_WIDTHS = (6, 24, 16, 34)


def _event_line(event: dict[str, Any]) -> str:
    cells = [render.cell(v) for v in render.event_row(event)]
    return "  ".join(c.ljust(w) for c, w in zip(cells, _EVENT_WIDTHS, strict=False)) + "  " + cells[-1]


@cli.command("events")
@click.option("--since", type=click.IntRange(min=1), default=None, help="First revision to show (default: the last --limit).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Events to show before following.")
@click.option("--follow", "-F", is_flag=True, help="Keep streaming new events until Ctrl-C.")
@output_option
@click.pass_context
def events_cmd(ctx: click.Context, since: Optional[int], limit: int, follow: bool, fmt: str) -> None:
    """The log: committed events with revision, type, time and command id."""
    client = client_of(ctx)
    if since is None:
        head = client.get("/api/events", {"since": 0, "limit": 1})
        current = int((head or {}).get("revision") or 0)
        since = max(1, current - limit + 1)
        if follow and current == 0:
            since = 1
    if not follow:
        doc = client.get("/api/events", {"since": since, "limit": limit})
        emit(render.render_events(list((doc or {}).get("results") or []), fmt))
        return
    if fmt == "table":
        emit("  ".join(h.ljust(w) for h, w in zip(render.EVENT_HEADERS, _EVENT_WIDTHS, strict=False)) + "  " + render.EVENT_HEADERS[-1])
    outage: list[str] = []

    def on_retry(reason: str) -> None:
        if not outage:
            note(f"watch interrupted ({reason}); retrying")
        outage.append(reason)

    try:
        for event in client.watch(since, on_retry=on_retry):
            if outage:
                note("watch resumed")
                outage.clear()
            if fmt == "table":
                emit(_event_line(event))
            elif fmt == "json":
                emit(json.dumps(event, separators=(",", ":")))
            else:
                emit("---\n" + render.dump(event, "yaml"))
    except KeyboardInterrupt:
        return  # Ctrl-C ends --follow: not an error


@cli.command("logs")
@click.argument("vs_name", metavar="VS")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many of the newest logs.")
@output_option
@click.pass_context
def logs_cmd(ctx: click.Context, vs_name: str, limit: int, fmt: str) -> None:
    """The newest client request logs of virtual service VS, from every SE that serves it."""
    client = client_of(ctx)
    vs = _find_or_fail(client, "virtualservice", vs_name)
    logs = client.get(f"/api/virtualservice/{vs['uuid']}/logs", {"limit": limit})["results"]
    if fmt != "table":
        emit(render.dump(logs, fmt))
        return
    rows = ([_log_time(r.get("time")), r.get("se"), r.get("client"), r.get("method"), r.get("uri"), r.get("status"),
             r.get("latency_ms"), r.get("server")] for r in logs)
    emit(render.table(["TIME", "SE", "CLIENT", "METHOD", "URI", "STATUS", "MS", "SERVER"], rows))


def _log_time(when: Any) -> str:
    import datetime

    if not isinstance(when, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


@cli.command("metrics")
@click.argument("vs_name", metavar="VS")
@output_option
@click.pass_context
def metrics_cmd(ctx: click.Context, vs_name: str, fmt: str) -> None:
    """Live counters of virtual service VS on each SE that serves it (as last reported)."""
    client = client_of(ctx)
    vs = _find_or_fail(client, "virtualservice", vs_name)
    per_se = {}
    for se_name in (vs.get("runtime") or {}).get("serviceengines") or []:
        se = client.find("serviceengine", se_name)
        stats = (((se or {}).get("runtime") or {}).get("telemetry") or {}).get(vs_name)
        if stats:
            per_se[se_name] = {k: v for k, v in stats.items() if k not in ("uuid", "name")}
    if fmt != "table":
        emit(render.dump(per_se, fmt))
        return
    rows = ([se, s.get("open_connections"), s.get("total_connections"), s.get("requests"),
             (s.get("responses") or {}).get("2xx"), (s.get("responses") or {}).get("5xx"), s.get("bytes_in"), s.get("bytes_out")]
            for se, s in per_se.items())
    emit(render.table(["SE", "OPEN", "CONNECTIONS", "REQUESTS", "2XX", "5XX", "BYTES_IN", "BYTES_OUT"], rows))


# -- chaos ---------------------------------------------------------------------------------------


@cli.group("chaos")
def chaos_group() -> None:
    """Fault-injection runs against a fresh local cluster, with a verdict (issue 5)."""


@chaos_group.command("list")
@output_option
def chaos_list(fmt: str) -> None:
    """The scenarios `avictl chaos run` knows, and what each needs (root: network namespaces; faketime)."""
    from simulations.chaos.scenarios import SCENARIOS, requirements

    if fmt != "table":
        emit(render.dump([{"name": s.name, "description": s.description, "needs": requirements(s),
                           "criteria": attrs.asdict(s.criteria)} for s in SCENARIOS.values()], fmt))
        return
    emit(render.table(["NAME", "NEEDS", "DESCRIPTION"],
                      ([s.name, ", ".join(requirements(s)) or "-", s.description] for s in SCENARIOS.values())))


@chaos_group.command("run")
@click.option("--scenario", required=True, metavar="NAME", help="A scenario from `avictl chaos list`.")
@click.option("--duration", type=click.FloatRange(1.0, 86400.0), default=60.0, show_default=True,
              help="Seconds of workload and faults.")
@click.option("--seed", type=int, default=None, help="Seed of the fault schedule (default: random, printed in the report).")
@output_option
def chaos_run(scenario: str, duration: float, seed: Optional[int], fmt: str) -> None:
    """Run SCENARIO on a fresh 3-node cluster in a temp dir; exit 1 when the verdict is fail.

    Network scenarios (partition-*, clock-skew) need root; a scenario this machine cannot run
    (clock-skew without faketime) reports the verdict skip with the reason and exits 0.
    """
    from simulations.chaos.report import verdict_rows
    from simulations.chaos.runner import run_scenario
    from simulations.chaos.scenarios import SCENARIOS
    from simulations.netns_cluster import NetnsUnavailable

    if scenario not in SCENARIOS:
        raise UsageFault(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    try:
        report = run_scenario(scenario, duration=duration, seed=seed, progress=note)
    except NetnsUnavailable as exc:
        raise Refused(f"{scenario} needs network namespaces: {exc}") from None
    if fmt == "table":
        emit(render.table(["CHECK", "VERDICT", "DETAIL"], verdict_rows(report)))
    else:
        emit(render.dump(report, fmt))
    if report["verdict"] == "skip":
        note(f"note: {scenario} was not run: {report.get('reason') or 'skipped'}")
        return
    if report["verdict"] != "pass":
        failed = [c["name"] for c in report["checks"] if not c["ok"]]
        raise Refused(f"chaos verdict: fail ({', '.join(failed)}); seed {seed}")
