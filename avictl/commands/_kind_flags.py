"""Kind-specific flags of ``create`` and ``update``: the click options of each kind, and how their
values become wire fields (``vs --vip`` also makes or updates the vsvip it names)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import click

from avictl import render
from avictl.client import Client
from avictl.commands._crud import Effects, create_object, delete_object, find_or_fail, update_object
from avictl.errors import Refused, UsageFault
from avictl.objects import differences, expand_alias, parse_server, to_ref, vip_entry

__all__ = ["KIND_FLAGS", "flags_of"]


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
            stored = find_or_fail(client, "virtualservice", name)
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


def flags_of(kind: str) -> tuple[Callable[..., Any], Callable[..., dict[str, Any]]]:
    """``kind``'s options decorator and field builder; a kind without flags adds no option and no field."""
    return KIND_FLAGS.get(kind, (_no_options, _no_fields))
