"""Every object kind of the API as data (its fields, defaults, ranges, enums and refs), written in
a small DSL over :class:`~cluster.schema.fields.Field`, and :data:`KINDS`, the kinds by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from cluster.schema.fields import MISSING, Field, KindSchema, ValidationError, name_ref

__all__ = [
    "APPLICATION_PROFILES",
    "HA_MODES",
    "HTTP_RESPONSE_CODES",
    "KINDS",
    "LB_ALGORITHMS",
    "MONITOR_TYPES",
    "PRIVILEGES",
    "REBALANCE_CRITERIA",
    "SE_STATES",
    "kind_schema",
]


# -- the field-definition DSL ----------------------------------------------------------------------


def _string(**kw: Any) -> Field:
    return Field("string", **kw)


def _integer(default: Any = MISSING, lo: int | None = None, hi: int | None = None, **kw: Any) -> Field:
    return Field("integer", default=default, minimum=lo, maximum=hi, **kw)


def _boolean(default: Any = MISSING, **kw: Any) -> Field:
    return Field("boolean", default=default, **kw)


def _enum(values: tuple[str, ...], default: Any = MISSING, **kw: Any) -> Field:
    return Field("enum", default=default, enum=values, **kw)


def _ref(kind: str, default_name: str | None = None, **kw: Any) -> Field:
    default = name_ref(kind, default_name) if default_name is not None else MISSING
    desc = kw.pop("description", "")
    desc = (desc + " " if desc else "") + f"It is a reference to an object of type {_TITLES[kind]}."
    return Field("ref", default=default, ref=kind, description=desc, **kw)


def _object(title: str, fields: Mapping[str, Field], **kw: Any) -> Field:
    return Field("object", fields=dict(fields), title=title, **kw)


def _list(item: Field, default: Any = (), **kw: Any) -> Field:
    return Field("list", item=item, default=default, **kw)


_TITLES = {
    "tenant": "Tenant",
    "cloud": "Cloud",
    "serviceenginegroup": "ServiceEngineGroup",
    "serviceengine": "ServiceEngine",
    "healthmonitor": "HealthMonitor",
    "applicationprofile": "ApplicationProfile",
    "pool": "Pool",
    "vsvip": "VsVip",
    "virtualservice": "VirtualService",
}


def _common(**fields: Field) -> dict[str, Field]:
    out = {
        "name": _string(required=True, sticky=True, min_length=1, description="A user friendly name, unique per kind and tenant."),
        "description": _string(),
    }
    out.update(fields)
    return out


# -- the kinds -------------------------------------------------------------------------------------

LB_ALGORITHMS = ("LB_ALGORITHM_LEAST_CONNECTIONS", "LB_ALGORITHM_ROUND_ROBIN", "LB_ALGORITHM_CONSISTENT_HASH")
HA_MODES = ("HA_MODE_SHARED", "HA_MODE_SHARED_PAIR", "HA_MODE_LEGACY_ACTIVE_STANDBY")
MONITOR_TYPES = ("HEALTH_MONITOR_TCP", "HEALTH_MONITOR_HTTP", "HEALTH_MONITOR_PING")
HTTP_RESPONSE_CODES = ("HTTP_ANY", "HTTP_1XX", "HTTP_2XX", "HTTP_3XX", "HTTP_4XX", "HTTP_5XX")
REBALANCE_CRITERIA = (
    "SE_AUTO_REBALANCE_CPU",
    "SE_AUTO_REBALANCE_PPS",
    "SE_AUTO_REBALANCE_MBPS",
    "SE_AUTO_REBALANCE_OPEN_CONNS",
    "SE_AUTO_REBALANCE_CPS",
)
SE_STATES = ("SE_STATE_ENABLED", "SE_STATE_DISABLED_FOR_PLACEMENT", "SE_STATE_DISABLED")
PRIVILEGES = ("WRITE_ACCESS", "READ_ACCESS", "NO_ACCESS")
APPLICATION_PROFILES = ("System-HTTP", "System-L4-Application")

_IP_ADDR = _object(
    "IpAddr",
    {
        "addr": _string(required=True, format="ipv4", description="IP address (IPv4 only in avictl)."),
        "type": _enum(("V4",), default="V4"),
    },
)
_PORT_RANGE = {"lo": 1, "hi": 65535}

_TENANT = KindSchema(
    "tenant",
    "Tenant",
    _common(local=_boolean(True, description="Tenant-local settings (the real product's default).")),
    description="A tenant. Every object belongs to one (default `admin`).",
)

_VCENTER_CONFIGURATION = _object(
    "vCenterConfiguration",
    {
        "vcenter_url": _string(required_when=("privilege", ("WRITE_ACCESS", "READ_ACCESS")), description="vCenter hostname, IP address or URL."),
        "username": _string(required_when=("privilege", ("WRITE_ACCESS", "READ_ACCESS"))),
        "password": _string(write_only=True, required_when=("privilege", ("WRITE_ACCESS", "READ_ACCESS")), description="Write-only: never returned."),
        "datacenter": _string(description="Datacenter for virtual infrastructure discovery."),
        "privilege": _enum(
            PRIVILEGES,
            default="WRITE_ACCESS",
            description="WRITE_ACCESS: discover and create SEs; READ_ACCESS: discover only; NO_ACCESS: SEs deployed by hand.",
        ),
    },
)
# privilege is declared last but the required_when rules above read it: _normalize_object
# (normalizers.py) handles conditional fields after unconditional ones, so the order of
# declaration is free.

_LINUXSERVER_CONFIGURATION = _object(
    "LinuxServerConfiguration",
    {
        "hosts": _list(
            _object(
                "LinuxServerHost",
                {
                    "host_ip": attrs.evolve(_IP_ADDR, required=True, description="The host's address: an SE whose data interface holds it belongs to this cloud."),
                    "se_group_ref": _ref("serviceenginegroup", description="The SE group the host's SE joins (default: Default-Group)."),
                },
            ),
            unique_by=("host_ip.addr",),
            description="The hosts an operator provides; on each, 'avictl se run --data-interface IF' runs one SE.",
        ),
    },
)

_CLOUD = KindSchema(
    "cloud",
    "Cloud",
    _common(
        vtype=_enum(
            ("CLOUD_NONE", "CLOUD_LINUXSERVER", "CLOUD_VCENTER"),
            default="CLOUD_NONE",
            description="CLOUD_NONE is the local cloud (VIPs in 127.0.0.0/8); CLOUD_LINUXSERVER, SEs on hosts an operator provides.",
        ),
        vcenter_configuration=attrs.evolve(
            _VCENTER_CONFIGURATION,
            only_when=("vtype", ("CLOUD_VCENTER",)),
            required_when=("vtype", ("CLOUD_VCENTER",)),
        ),
        linuxserver_configuration=attrs.evolve(
            _LINUXSERVER_CONFIGURATION,
            only_when=("vtype", ("CLOUD_LINUXSERVER",)),
            required_when=("vtype", ("CLOUD_LINUXSERVER",)),
        ),
    ),
    description="Where service engines run: the local host (CLOUD_NONE), hosts an operator provides (CLOUD_LINUXSERVER) or a vCenter.",
)

_SEGROUP = KindSchema(
    "serviceenginegroup",
    "ServiceEngineGroup",
    _common(
        cloud_ref=_ref("cloud", "Default-Cloud"),
        ha_mode=_enum(
            HA_MODES,
            default="HA_MODE_SHARED",
            description=(
                "HA_MODE_SHARED (N+M: each VS on one SE, buffer_se spares), HA_MODE_SHARED_PAIR "
                "(active/active: VS on >= 2 SEs), HA_MODE_LEGACY_ACTIVE_STANDBY (2 SEs, standby takes every VIP)."
            ),
        ),
        algo=_enum(("PLACEMENT_ALGO_PACKED", "PLACEMENT_ALGO_DISTRIBUTED"), default="PLACEMENT_ALGO_PACKED"),
        memory_per_se=_integer(2048, 1024, 131072, description="MB."),
        vcpus_per_se=_integer(1, 1, 64),
        disk_per_se=_integer(15, 1, None, description="GB."),
        min_scaleout_per_vs=_integer(1, 1, 64, at_most="max_scaleout_per_vs"),
        max_scaleout_per_vs=_integer(4, 1, 64),
        max_se=_integer(10, 0, 1000),
        max_vs_per_se=_integer(10, 1, 1000),
        buffer_se=_integer(1, 0, 1000),
        max_cpu_usage=_integer(80, 40, 90, description="Percent."),
        min_cpu_usage=_integer(30, 20, 60, less_than="max_cpu_usage", description="Percent."),
        auto_rebalance=_boolean(False, description="Off: threshold crossings only raise alerts."),
        auto_rebalance_criteria=_list(_enum(REBALANCE_CRITERIA), default=("SE_AUTO_REBALANCE_CPU",), unique_by=("",)),
        auto_rebalance_interval=_integer(300, 1, None, description="Seconds between two autoscale decisions for one VS (cooldown)."),
        auto_rebalance_capacity_per_se=_list(
            _integer(lo=1),
            description=(
                "Capacity of one SE for each entry of auto_rebalance_criteria, in order (CPU: ignored, it is a percentage); "
                "load above max_cpu_usage percent of it scales out, below min_cpu_usage percent scales in."
            ),
        ),
        vs_scaleout_timeout=_integer(600, 0, None, description="Seconds."),
        vs_scalein_timeout=_integer(30, 0, None, description="Seconds to drain a scaled-in SE."),
        se_deprovision_delay=_integer(120, 0, 525600, description="Minutes an unused SE is kept."),
        se_name_prefix=_string(default="Avi", min_length=1, format="name_token",
                               description="SEs the cloud starts for the group are named <se_name_prefix>-<n>."),
        vcenter_folder=_string(default="AviSeFolder", min_length=1),
        vcenter_datastore_mode=_enum(
            ("VCENTER_DATASTORE_ANY", "VCENTER_DATASTORE_LOCAL", "VCENTER_DATASTORE_SHARED"),
            default="VCENTER_DATASTORE_ANY",
        ),
    ),
    description="Placement, HA and sizing policy for a set of service engines.",
)

_SE = KindSchema(
    "serviceengine",
    "ServiceEngine",
    _common(
        se_group_ref=_ref("serviceenginegroup", "Default-Group", read_only=True),
        cloud_ref=_ref("cloud", "Default-Cloud", read_only=True),
        enable_state=_enum(
            SE_STATES,
            default="SE_STATE_ENABLED",
            description="SE_STATE_DISABLED_FOR_PLACEMENT: keep VSs, place no new ones; SE_STATE_DISABLED: VSs migrate away.",
        ),
        resources=_object(
            "SeResources",
            {
                "num_vcpus": _integer(lo=1),
                "memory": _integer(lo=1, description="MB."),
                "disk": _integer(lo=1, description="GB."),
            },
            read_only=True,
        ),
        data_vnics=_list(
            _object(
                "vNIC",
                {
                    "mac_address": _string(required=True, description="The interface's MAC address."),
                    "if_name": _string(description="The interface's name on the SE's host."),
                    "vnic_networks": _list(
                        _object(
                            "vNICNetwork",
                            {
                                "ip": _object(
                                    "IpAddrPrefix",
                                    {"ip_addr": attrs.evolve(_IP_ADDR, required=True), "mask": _integer(required=True, lo=0, hi=32)},
                                    required=True,
                                ),
                                "mode": _enum(("STATIC", "DHCP"), default="STATIC"),
                            },
                        ),
                    ),
                },
            ),
            read_only=True,
            description="The SE's data interfaces, as it reported them when it registered.",
        ),
    ),
    creatable=False,
    description="A service engine: registered by the system; clients may change enable_state.",
)

_HEALTHMONITOR = KindSchema(
    "healthmonitor",
    "HealthMonitor",
    _common(
        type=_enum(MONITOR_TYPES, required=True),
        send_interval=_integer(10, 1, 3600, description="Seconds between checks."),
        receive_timeout=_integer(4, 1, 2400, less_than="send_interval", description="Seconds; must be less than send_interval."),
        successful_checks=_integer(2, 1, 50),
        failed_checks=_integer(2, 1, 50),
        http_monitor=_object(
            "HealthMonitorHttp",
            {
                "http_request": _string(default="GET / HTTP/1.0", min_length=1),
                "http_response_code": _list(_enum(HTTP_RESPONSE_CODES), default=("HTTP_2XX",), min_items=1, unique_by=("",)),
            },
            default={},
            only_when=("type", ("HEALTH_MONITOR_HTTP",)),
        ),
    ),
    description="How servers of a pool are checked.",
)

# The http_profile fields the SE enforces (engine.l7); the product's other ones are refused by name.
_HTTP_PROFILE = _object(
    "HTTPApplicationProfile",
    {
        "client_max_header_size": _integer(
            12, 1, 64, description="KB. One header field of a request (431 past it), and its request line (414)."
        ),
        "client_max_request_size": _integer(
            48, 1, 256, description="KB. A request's whole head (431 past it); a value below client_max_header_size counts as that."
        ),
        "max_header_count": _integer(
            256, 0, 4096, description="Fields in a request head (431 past it) or a response head (502); 0 for no limit."
        ),
        "client_header_timeout": _integer(
            10000, 10, 100000000, description="Milliseconds a client has to send a whole request head, from its first read (408)."
        ),
    },
    default={},
    only_when=("type", ("APPLICATION_PROFILE_TYPE_HTTP",)),
)

_APPLICATIONPROFILE = KindSchema(
    "applicationprofile",
    "ApplicationProfile",
    _common(
        type=_enum(("APPLICATION_PROFILE_TYPE_HTTP", "APPLICATION_PROFILE_TYPE_L4"), required=True),
        http_profile=_HTTP_PROFILE,
    ),
    description=(
        "How a virtual service's traffic is proxied: HTTP (L7, with http_profile's limits) or L4. Built in: System-HTTP "
        "and System-L4-Application, which may be changed but not deleted."
    ),
)

_POOL = KindSchema(
    "pool",
    "Pool",
    _common(
        cloud_ref=_ref("cloud", "Default-Cloud"),
        servers=_list(
            _object(
                "Server",
                {
                    "ip": attrs.evolve(_IP_ADDR, required=True),
                    "port": _integer(description="Defaults to the pool's default_server_port when omitted.", **_PORT_RANGE),
                    "ratio": _integer(1, 1, 20),
                    "enabled": _boolean(True),
                },
            ),
            max_items=5000,
            unique_by=("ip.addr", "port"),
        ),
        default_server_port=_integer(80, **_PORT_RANGE),
        lb_algorithm=_enum(LB_ALGORITHMS, default="LB_ALGORITHM_LEAST_CONNECTIONS"),
        lb_algorithm_hash=_enum(
            ("LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS",),
            default="LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS",
            only_when=("lb_algorithm", ("LB_ALGORITHM_CONSISTENT_HASH",)),
        ),
        health_monitor_refs=_list(_ref("healthmonitor"), unique_by=("",)),
        graceful_disable_timeout=_integer(1, -1, 7200, description="Minutes; 0 immediate, -1 infinite."),
    ),
    description="Backend servers and how requests are spread over them.",
)

_VSVIP = KindSchema(
    "vsvip",
    "VsVip",
    _common(
        cloud_ref=_ref("cloud", "Default-Cloud"),
        vip=_list(
            _object(
                "Vip",
                {
                    "vip_id": _string(auto_id=True, min_length=1, description="Unique in the vsvip; assigned '1', '2', ... when omitted."),
                    "ip_address": attrs.evolve(_IP_ADDR, required=True),
                },
            ),
            default=MISSING,
            required=True,
            min_items=1,
            unique_by=("vip_id",),
        ),
    ),
    description="Virtual IP addresses. On the local cloud (CLOUD_NONE): 127.0.0.0/8 except 127.0.0.1.",
)

_VIRTUALSERVICE = KindSchema(
    "virtualservice",
    "VirtualService",
    _common(
        cloud_ref=_ref("cloud", "Default-Cloud"),
        se_group_ref=_ref("serviceenginegroup", "Default-Group"),
        vsvip_ref=_ref("vsvip", required=True),
        services=_list(
            _object(
                "Service",
                {
                    "port": _integer(required=True, **_PORT_RANGE),
                    "enable_ssl": _boolean(False),
                },
            ),
            default=MISSING,
            required=True,
            min_items=1,
            unique_by=("port",),
        ),
        pool_ref=_ref("pool"),
        application_profile_ref=_ref("applicationprofile", "System-HTTP"),
        application_profile_name=_enum(
            APPLICATION_PROFILES,
            alias_for="application_profile_ref",
            description="Convenience: sets application_profile_ref by name (wins over it when both are given); not stored.",
        ),
        enabled=_boolean(True),
        type=_enum(("VS_TYPE_NORMAL",), default="VS_TYPE_NORMAL"),
    ),
    description="A virtual service: a VIP and ports, served by a pool, placed on an SE group.",
)

KINDS: dict[str, KindSchema] = {
    k.kind: k
    for k in (_TENANT, _CLOUD, _SEGROUP, _SE, _HEALTHMONITOR, _APPLICATIONPROFILE, _POOL, _VSVIP, _VIRTUALSERVICE)
}


def kind_schema(kind: str) -> KindSchema:
    """The schema of ``kind``; a :class:`ValidationError` naming the known kinds when there is none."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValidationError("", f"unknown object kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None
