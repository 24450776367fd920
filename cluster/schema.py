"""The object kinds of the REST API, written as data, and the pure functions that check bodies.

The wire format is the real Avi / NSX Advanced Load Balancer JSON: its field names, enums and
``*_ref`` strings. avictl implements a subset of the fields. A client that sends a field outside
that subset gets a :class:`ValidationError` naming it. The field is never silently dropped.

Everything here is pure. Nothing does I/O, reads the clock or parses URLs. How a ref is written
(URL, ``/api/<kind>/<uuid>``, ``/api/<kind>?name=<name>``) is the caller's concern: it turns refs
into its stored form with :func:`map_refs` after :func:`normalize`, and back into URLs on output.

Contracts the caller relies on
------------------------------
* ``normalize(kind, body)`` (POST) and ``normalize(kind, body, existing=stored)`` (PUT) return
  the stored form: every implemented field with its default filled in, in schema order.
  - The server-managed fields :data:`SERVER_MANAGED_FIELDS` (``uuid``, ``url``, ``_last_modified``,
    ``tenant_ref``) are accepted on input and never appear in the output. The caller keeps them in
    its own record (tenant from ``X-Avi-Tenant``, ``_last_modified`` read from the raw body).
  - A field sent as JSON ``null`` counts as not given, at every depth. This covers unknown fields
    too, because the SDK sends ``None`` for optional arguments it leaves unset.
  - Default refs are written by name (``/api/serviceenginegroup?name=Default-Group``), a form
    every ref resolver must accept. Mapping refs after normalizing makes them canonical.
  - Integers may arrive as decimal strings (``"port": "8080"``). The protobuf JSON mapping that
    the real product uses accepts this, and avisdk's samples send it. Stored as ints.
  - PUT replaces the whole object, and an omitted field goes back to its default. There are
    these exceptions (all taken from ``existing``):
    ``name`` when omitted; write-only fields when omitted, so that a GET-modify-PUT of a
    redacted body keeps the password; and read-only fields, whose client values are ignored.
* :func:`normalize` of its own output is the identity (``normalize(normalize(x)) ==
  normalize(x)``, and the same with ``existing=``). Property tests check this.
* Write-only fields are stored and must be removed from responses with :func:`redact`.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import attrs

__all__ = [
    "BUILTINS",
    "INT_TEXT",
    "KINDS",
    "SERVER_MANAGED_FIELDS",
    "Field",
    "KindSchema",
    "ValidationError",
    "apply_patch",
    "check_local_vip",
    "check_local_vips",
    "map_refs",
    "name_ref",
    "normalize",
    "normalize_reference",
    "redact",
    "ref_fields",
    "thaw",
]

SERVER_MANAGED_FIELDS: tuple[str, ...] = ("uuid", "url", "_last_modified", "tenant_ref")



class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()


class ValidationError(Exception):
    """A body the API refuses (HTTP 422). ``field`` is a dotted path like ``servers[1].ratio``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


# -- the field-definition DSL ----------------------------------------------------------------------


@attrs.frozen(eq=False)
class Field:
    """One field of a kind or of a nested object.

    ``type`` is one of string, integer, number, boolean, enum, ref, object, list.
    ``only_when=(sibling, values)``: the field is allowed (and its default filled) only when the
    already-normalized sibling has one of ``values``. ``required_when`` has the same shape.
    ``less_than`` / ``at_most`` name a sibling this field must stay below (strictly / or equal).
    ``unique_by`` (lists): dotted sub-paths that make an item's identity ("" = the item itself).
    ``alias_for``: a ``*_name`` convenience field that sets the named ref field to
    ``/api/<target>?name=<value>``. It is never stored.
    ``auto_id`` (a string field of list items): when omitted it gets the smallest unused "1", "2", ...
    ``sticky``: when a PUT omits it, the value is taken from ``existing``.
    """

    type: str
    default: Any = _MISSING
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] = ()
    fields: Mapping[str, Field] | None = None
    item: Field | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_by: tuple[str, ...] | None = None
    ref: str | None = None
    format: str | None = None
    min_length: int | None = None
    read_only: bool = False
    write_only: bool = False
    sticky: bool = False
    only_when: tuple[str, tuple[str, ...]] | None = None
    required_when: tuple[str, tuple[str, ...]] | None = None
    less_than: str | None = None
    at_most: str | None = None
    alias_for: str | None = None
    auto_id: bool = False
    title: str | None = None
    description: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


@attrs.frozen(eq=False)
class KindSchema:
    """One object kind. ``read_only``: clients may not write it at all (built-ins only).
    ``creatable``: clients may POST it (service engines are made by the system)."""

    kind: str
    title: str
    fields: Mapping[str, Field]
    read_only: bool = False
    creatable: bool = True
    description: str = ""


def name_ref(kind: str, name: str) -> str:
    """The by-name ref form ``/api/<kind>?name=<name>`` (name percent-encoded)."""
    return f"/api/{kind}?name={quote(name, safe='')}"


def _string(**kw: Any) -> Field:
    return Field("string", **kw)


def _integer(default: Any = _MISSING, lo: int | None = None, hi: int | None = None, **kw: Any) -> Field:
    return Field("integer", default=default, minimum=lo, maximum=hi, **kw)


def _boolean(default: Any = _MISSING, **kw: Any) -> Field:
    return Field("boolean", default=default, **kw)


def _enum(values: tuple[str, ...], default: Any = _MISSING, **kw: Any) -> Field:
    return Field("enum", default=default, enum=values, **kw)


def _ref(kind: str, default_name: str | None = None, **kw: Any) -> Field:
    default = name_ref(kind, default_name) if default_name is not None else _MISSING
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
# handles conditional fields after unconditional ones, so the order of declaration is free.

_CLOUD = KindSchema(
    "cloud",
    "Cloud",
    _common(
        vtype=_enum(("CLOUD_NONE", "CLOUD_VCENTER"), default="CLOUD_NONE", description="CLOUD_NONE is the local cloud (VIPs in 127.0.0.0/8)."),
        vcenter_configuration=attrs.evolve(
            _VCENTER_CONFIGURATION,
            only_when=("vtype", ("CLOUD_VCENTER",)),
            required_when=("vtype", ("CLOUD_VCENTER",)),
        ),
    ),
    description="Where service engines run: the local host (CLOUD_NONE) or a vCenter.",
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
        se_name_prefix=_string(default="Avi", min_length=1),
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

_APPLICATIONPROFILE = KindSchema(
    "applicationprofile",
    "ApplicationProfile",
    _common(type=_enum(("APPLICATION_PROFILE_TYPE_HTTP", "APPLICATION_PROFILE_TYPE_L4"), required=True)),
    read_only=True,
    description="Built-in only: System-HTTP (L7) and System-L4-Application (L4).",
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
            default=_MISSING,
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
            default=_MISSING,
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


# -- normalize -------------------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "enum": "string",
    "ref": "string (a reference)",
    "object": "object",
    "list": "array",
}
# Decimal text an integer field accepts in place of a number ("port": "8080").
INT_TEXT = re.compile(r"^\s*[+-]?\d{1,30}\s*$")  # bounded: int() refuses over 4 300 digits
# Dotted-quad IPv4 exactly as ipaddress.IPv4Address accepts it (no leading zeros, no spaces),
# ~10x cheaper than constructing one (it was 7 % of a controller's CPU under bulk writes).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")


def _kind(kind: str) -> KindSchema:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValidationError("", f"unknown object kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None


_SCALARS = (str, int, float, bool, type(None))


def thaw(value: Any) -> Any:
    """A fresh JSON value of a field default: tuples (how defaults are frozen) become lists,
    containers are copied."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return copy.deepcopy(value)


def _copy(value: Any) -> Any:
    """A deep copy; scalars (immutable) are returned as they are, the common case on hot paths."""
    return value if type(value) in _SCALARS else copy.deepcopy(value)


def _wrong_type(f: Field, value: Any, path: str) -> ValidationError:
    return ValidationError(path, f"expected {_TYPE_NAMES[f.type]}, got {_json_type(value)}")


def _check_range(f: Field, value: float, path: str) -> None:
    lo, hi = f.minimum, f.maximum
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            raise ValidationError(path, f"must be between {lo} and {hi}, got {value}")
        if lo is not None:
            raise ValidationError(path, f"must be at least {lo}, got {value}")
        raise ValidationError(path, f"must be at most {hi}, got {value}")


def _check_enum(f: Field, value: str, path: str) -> None:
    if value not in f.enum:
        raise ValidationError(path, f"{value!r} is not one of: {', '.join(f.enum)}")


def _normalize_value(f: Field, value: Any, existing: Any, path: str, internal: bool) -> Any:
    t = f.type
    if t == "string":
        if not isinstance(value, str):
            raise _wrong_type(f, value, path)
        if f.min_length is not None and len(value.strip()) < f.min_length:
            raise ValidationError(path, "must not be empty" if f.min_length == 1 else f"must be at least {f.min_length} characters")
        if f.format == "ipv4":
            if not _IPV4.match(value):
                raise ValidationError(path, f"{value!r} is not a valid IPv4 address")
        if f.enum:
            _check_enum(f, value, path)
        return value
    if t == "integer":
        if isinstance(value, bool):
            raise _wrong_type(f, value, path)
        if (isinstance(value, str) and INT_TEXT.match(value)) or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if not isinstance(value, int):
            raise _wrong_type(f, value, path)
        _check_range(f, value, path)
        return value
    if t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(f, value, path)
        _check_range(f, value, path)
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise _wrong_type(f, value, path)
        return value
    if t == "enum":
        if not isinstance(value, str):
            raise ValidationError(path, f"expected one of: {', '.join(f.enum)}; got {_json_type(value)}")
        _check_enum(f, value, path)
        return value
    if t == "ref":
        if not isinstance(value, str):
            raise _wrong_type(f, value, path)
        if not value.strip():
            raise ValidationError(path, f"a reference to a {f.ref} must not be empty")
        return value
    if t == "object":
        assert f.fields is not None
        return _normalize_object(f.fields, value, existing if isinstance(existing, dict) else None, path, internal)
    if t == "list":
        return _normalize_list(f, value, path, internal)
    raise AssertionError(f"unknown field type {t!r}")


def _normalize_list(f: Field, value: Any, path: str, internal: bool) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong_type(f, value, path)
    assert f.item is not None
    if f.min_items is not None and len(value) < f.min_items:
        raise ValidationError(path, f"needs at least {f.min_items} item{'s' if f.min_items > 1 else ''}")
    if f.max_items is not None and len(value) > f.max_items:
        raise ValidationError(path, f"has {len(value)} items; at most {f.max_items} are allowed")
    out = []
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        if item is None:
            raise ValidationError(ipath, f"expected {_TYPE_NAMES[f.item.type]}, got null")
        out.append(_normalize_value(f.item, item, None, ipath, internal))
    if f.item.type == "object" and f.item.fields is not None:
        _assign_auto_ids(f.item.fields, out)
    if f.unique_by is not None:
        seen: dict[Any, int] = {}
        for i, item in enumerate(out):
            key = _item_key(f.unique_by, item)
            if key in seen:
                what = ", ".join(k for k in f.unique_by if k) or "value"
                raise ValidationError(f"{path}[{i}]", f"duplicate of {path}[{seen[key]}] (same {what})")
            seen[key] = i
    return out


def _assign_auto_ids(fields: Mapping[str, Field], items: list[dict[str, Any]]) -> None:
    for name, f in fields.items():
        if not f.auto_id:
            continue
        used = {item[name] for item in items if name in item}
        counter = 1
        for item in items:
            if name not in item:
                while str(counter) in used:
                    counter += 1
                item[name] = str(counter)
                used.add(str(counter))
        # keep the schema's key order in items that just got an id
        for i, item in enumerate(items):
            items[i] = {k: item[k] for k in fields if k in item}


def _get_path(value: Any, dotted: str) -> Any:
    if not dotted:
        return value
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _item_key(unique_by: tuple[str, ...], item: Any) -> Any:
    return tuple(_freeze(_get_path(item, k)) for k in unique_by)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _condition(f: Field, attr: str, out: dict[str, Any]) -> bool | None:
    rule = getattr(f, attr)
    if rule is None:
        return None
    sibling, values = rule
    return out.get(sibling) in values


_FIELD_ORDER: dict[int, tuple[Mapping[str, Field], list[str]]] = {}


def _field_order(fields: Mapping[str, Field]) -> list[str]:
    """Unconditional fields first, then those whose presence depends on a sibling (memoized: the schema is static)."""
    known = _FIELD_ORDER.get(id(fields))
    if known is None or known[0] is not fields:
        order = [n for n, f in fields.items() if f.only_when is None and f.required_when is None]
        order += [n for n, f in fields.items() if f.only_when is not None or f.required_when is not None]
        known = _FIELD_ORDER[id(fields)] = (fields, order)
    return known[1]


def _normalize_object(
    fields: Mapping[str, Field],
    body: Any,
    existing: dict[str, Any] | None,
    path: str,
    internal: bool,
    top: bool = False,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError(path, f"expected object, got {_json_type(body)}")
    for key, value in body.items():
        if key in fields or value is None or (top and key in SERVER_MANAGED_FIELDS):
            continue
        raise ValidationError(_join(path, key), "unknown field (not supported by avictl)")
    given: dict[str, Any] = {k: v for k, v in body.items() if k in fields and v is not None}
    for name, f in fields.items():
        if f.alias_for is not None and name in given:
            alias = _normalize_value(f, given.pop(name), None, _join(path, name), internal)
            target = fields[f.alias_for]
            assert target.ref is not None
            given[f.alias_for] = name_ref(target.ref, alias)
    ordered = _field_order(fields)
    out: dict[str, Any] = {}
    for name in ordered:
        f = fields[name]
        if f.alias_for is not None:
            continue
        fpath = _join(path, name)
        old = existing.get(name) if existing is not None else None
        value = given.get(name)
        client_may_not_set = f.read_only and not internal
        if client_may_not_set or (value is None and (f.sticky or f.write_only or f.read_only)):
            value = old
        allowed = _condition(f, "only_when", out)
        if allowed is False:
            # A value the client merely carried over (what GET returned) is dropped quietly when its
            # condition no longer holds; a value it chose is refused.
            carried = value is None or (old is not None and value == old)
            if name in given and not carried:
                sibling, values = f.only_when  # type: ignore[misc]
                raise ValidationError(fpath, f"only allowed when {sibling} is {' or '.join(values)}")
            continue
        if value is None:
            if f.required or _condition(f, "required_when", out):
                raise ValidationError(fpath, "is required")
            if not f.has_default:
                continue
            value = thaw(f.default)
        out[name] = _normalize_value(f, value, old, fpath, internal)
    for name, f in fields.items():
        for other, strict in ((f.less_than, True), (f.at_most, False)):
            if other is None or name not in out or other not in out:
                continue
            mine, theirs = out[name], out[other]
            if (strict and not mine < theirs) or (not strict and not mine <= theirs):
                relation = "less than" if strict else "at most"
                raise ValidationError(_join(path, name), f"must be {relation} {other} ({theirs}), got {mine}")
    return {k: out[k] for k in fields if k in out}


def normalize(
    kind: str,
    body: Any,
    *,
    existing: dict[str, Any] | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """Validate a client body (POST, or PUT when ``existing`` is the stored object) and return
    the stored form with every default filled. Raises :class:`ValidationError`.

    ``internal=True`` is for the system itself: it may write read-only kinds and read-only
    fields (built-ins, service engine registration). Refs are returned as given (or as by-name
    defaults); map them with :func:`map_refs`. The VIP range of the local cloud is checked by
    :func:`check_local_vips` because only the caller knows the cloud's type.
    """
    ks = _kind(kind)
    if not internal:
        if ks.read_only:
            raise ValidationError("", f"{kind} objects are read-only (built-in)")
        if existing is None and not ks.creatable:
            raise ValidationError("", f"{kind} objects are created by the system, not by clients")
    try:
        return _compiled_normalizer(ks, internal)(body, existing)
    except _Fallback:
        return normalize_reference(kind, body, existing=existing, internal=internal)


def normalize_reference(
    kind: str,
    body: Any,
    *,
    existing: dict[str, Any] | None = None,
    internal: bool = False,
) -> dict[str, Any]:
    """:func:`normalize` by walking the schema: the definition the compiled normalizers must agree
    with, and what answers (and words every refusal) whenever a compiled one gives up."""
    return _normalize_object(_kind(kind).fields, body, existing, "", internal, top=True)


# -- compiled normalizers --------------------------------------------------------------------------
#
# normalize() runs a normalizer compiled once per (kind, internal) from the same Field definitions:
# closures with each field's checks, defaults and order fixed, instead of interpreting the schema
# per object. Contract: a compiled normalizer either returns exactly what _normalize_object returns
# (equal values, same key order, fresh containers, input untouched) or raises _Fallback, and it
# raises _Fallback whenever _normalize_object would raise. It never words an error: what it does
# not accept (every refusal, and values of unusual Python types such as str subclasses) goes to the
# reference walk, which answers or refuses exactly as before. Integers sent as text are accepted.

_Normalizer = Callable[[Any, Any], Any]  # (value, existing value or None) -> stored value


class _Fallback(Exception):
    """A compiled normalizer leaves this body to the reference walk."""


def _give_up(_value: Any, _old: Any) -> Any:
    raise _Fallback


_COMPILED: dict[tuple[str, bool], tuple[KindSchema, _Normalizer]] = {}


def _compiled_normalizer(ks: KindSchema, internal: bool) -> _Normalizer:
    known = _COMPILED.get((ks.kind, internal))
    if known is None or known[0] is not ks:
        known = _COMPILED[(ks.kind, internal)] = (ks, _compile_object(ks.fields, internal, top=True))
    return known[1]


def _compile_value(f: Field, internal: bool) -> _Normalizer:
    t = f.type
    if t == "string":
        return _compile_string(f)
    if t == "integer":
        return _compile_integer(f)
    if t == "number":
        lo, hi = f.minimum, f.maximum

        def number(value: Any, _old: Any) -> Any:
            if type(value) not in (int, float) or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise _Fallback
            return value

        return number
    if t == "boolean":

        def boolean(value: Any, _old: Any) -> Any:
            if value is True or value is False:
                return value
            raise _Fallback

        return boolean
    if t == "enum":
        allowed = frozenset(f.enum)

        def enum(value: Any, _old: Any) -> Any:
            if type(value) is str and value in allowed:
                return value
            raise _Fallback

        return enum
    if t == "ref":

        def ref(value: Any, _old: Any) -> Any:
            if type(value) is str and value.strip():
                return value
            raise _Fallback

        return ref
    if t == "object":
        assert f.fields is not None
        obj = _compile_object(f.fields, internal, top=False)

        def nested(value: Any, old: Any) -> Any:
            return obj(value, old if isinstance(old, dict) else None)

        return nested
    if t == "list":
        return _compile_list(f, internal)
    return _give_up


def _compile_string(f: Field) -> _Normalizer:
    min_length = f.min_length
    ipv4 = _IPV4.match if f.format == "ipv4" else None
    allowed = frozenset(f.enum) if f.enum else None
    if min_length is None and ipv4 is None and allowed is None:

        def plain(value: Any, _old: Any) -> Any:
            if type(value) is str:
                return value
            raise _Fallback

        return plain

    def string(value: Any, _old: Any) -> Any:
        if (
            type(value) is not str
            or (min_length is not None and len(value.strip()) < min_length)
            or (ipv4 is not None and not ipv4(value))
            or (allowed is not None and value not in allowed)
        ):
            raise _Fallback
        return value

    return string


def _compile_integer(f: Field) -> _Normalizer:
    lo, hi = f.minimum, f.maximum
    int_text = INT_TEXT.match

    def integer(value: Any, _old: Any) -> Any:
        if type(value) is not int:  # bool is not int here: refused by the reference walk
            if (type(value) is str and int_text(value)) or (type(value) is float and value.is_integer()):
                value = int(value)
            else:
                raise _Fallback
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Fallback
        return value

    return integer


def _compile_list(f: Field, internal: bool) -> _Normalizer:
    assert f.item is not None
    item_norm = _compile_value(f.item, internal)
    min_items, max_items, unique_by = f.min_items, f.max_items, f.unique_by
    item_fields = f.item.fields if f.item.type == "object" else None
    auto_ids = item_fields is not None and any(sub.auto_id for sub in item_fields.values())

    def normalize_list(value: Any, _old: Any) -> Any:
        if type(value) is not list:
            raise _Fallback
        n = len(value)
        if (min_items is not None and n < min_items) or (max_items is not None and n > max_items):
            raise _Fallback
        # A null item is refused by every item normalizer (None is of no field type).
        out = [item_norm(item, None) for item in value]
        if auto_ids:
            assert item_fields is not None
            _assign_auto_ids(item_fields, out)
        if unique_by is not None and n > 1:
            seen: set[Any] = set()
            for item in out:
                key = _item_key(unique_by, item)
                if key in seen:
                    raise _Fallback
                seen.add(key)
        return out

    return normalize_list


# One field of an object, in the order _normalize_object handles them:
# (name, normalizer, client may not set it, a PUT that omits it keeps the old value, required,
#  only_when, required_when, default: _MISSING / normalized scalar / _THAW (normalize thaw(default))).
_Step = tuple[str, _Normalizer, bool, bool, bool, Any, Any, Any, Any]
_THAW: Any = _Missing()


def _compile_object(fields: Mapping[str, Field], internal: bool, top: bool) -> _Normalizer:
    known = frozenset(fields)
    server_managed = frozenset(SERVER_MANAGED_FIELDS) if top else frozenset()
    aliases: list[tuple[str, _Normalizer, str, str]] = []
    for name, f in fields.items():
        if f.alias_for is not None:
            target_kind = fields[f.alias_for].ref
            assert target_kind is not None
            aliases.append((name, _compile_value(f, internal), f.alias_for, target_kind))
    alias_names = frozenset(name for name, *_rest in aliases)
    steps: list[_Step] = []
    for name in _field_order(fields):
        f = fields[name]
        if f.alias_for is not None:
            continue
        norm = _compile_value(f, internal)
        default: Any = _MISSING
        if f.has_default:
            default = _THAW
            if type(f.default) in _SCALARS and f.type not in ("object", "list"):
                try:
                    default = norm(f.default, None)  # scalars normalize to themselves or an int
                except _Fallback:
                    default = _THAW  # an invalid default: the reference walk refuses it each time
        steps.append((
            name, norm, f.read_only and not internal, f.sticky or f.write_only or f.read_only, f.required,
            f.only_when, f.required_when, default, f.default,
        ))  # fmt: skip
    bounds = [
        (name, other, strict)
        for name, f in fields.items()
        for other, strict in ((f.less_than, True), (f.at_most, False))
        if other is not None
    ]
    processed = [step[0] for step in steps]
    reorder = None if processed == [n for n in fields if n not in alias_names] else tuple(fields)

    def normalize_object(body: Any, existing: Any) -> Any:
        if type(body) is not dict:
            raise _Fallback
        if not known.issuperset(body):
            for key, value in body.items():
                if key not in known and value is not None and key not in server_managed:
                    raise _Fallback
        given = body  # read with .get only: a null counts as not given, keys outside fields are never read
        if aliases and not alias_names.isdisjoint(body):
            given = {k: v for k, v in body.items() if k in known and v is not None}
            for name, norm, target_field, target_kind in aliases:
                if name in given:
                    given[target_field] = name_ref(target_kind, norm(given.pop(name), None))
        out: dict[str, Any] = {}
        for name, norm, fixed, keeps_old, required, only_when, required_when, default, raw_default in steps:
            old = existing.get(name) if existing is not None else None
            value = given.get(name)
            if fixed or (value is None and keeps_old):
                value = old
            if only_when is not None and out.get(only_when[0]) not in only_when[1]:
                if given.get(name) is not None and not (value is None or (old is not None and value == old)):
                    raise _Fallback
                continue
            if value is None:
                if required or (required_when is not None and out.get(required_when[0]) in required_when[1]):
                    raise _Fallback
                if default is _MISSING:
                    continue
                if default is not _THAW:
                    out[name] = default
                    continue
                value = thaw(raw_default)
            out[name] = norm(value, old)
        for name, other, strict in bounds:
            if name in out and other in out:
                mine, theirs = out[name], out[other]
                if (strict and not mine < theirs) or (not strict and not mine <= theirs):
                    raise _Fallback
        if reorder is not None:
            return {k: out[k] for k in reorder if k in out}
        return out

    return normalize_object


# -- local cloud VIPs ------------------------------------------------------------------------------

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_CONTROLLER = ipaddress.IPv4Address("127.0.0.1")


def check_local_vip(addr: Any, field: str = "vip[0].ip_address.addr") -> None:
    """Refuse a VIP the local cloud (CLOUD_NONE) cannot serve: it must be in 127.0.0.0/8 and not
    127.0.0.1 (which the controllers use)."""
    try:
        ip = ipaddress.IPv4Address(addr)
    except (ValueError, TypeError):
        raise ValidationError(field, f"{addr!r} is not a valid IPv4 address") from None
    if ip not in _LOOPBACK:
        raise ValidationError(field, f"{addr} is not usable on the local cloud (CLOUD_NONE): use an address in 127.0.0.0/8 such as 127.10.0.1")
    if ip == _CONTROLLER:
        raise ValidationError(field, "127.0.0.1 is reserved on the local cloud (CLOUD_NONE): use another 127.x.y.z such as 127.10.0.1")


def check_local_vips(body: dict[str, Any]) -> None:
    """:func:`check_local_vip` for every address of a (normalized) vsvip body, with its path."""
    for i, vip in enumerate(body.get("vip") or []):
        addr = _get_path(vip, "ip_address.addr")
        if addr is not None:
            check_local_vip(addr, f"vip[{i}].ip_address.addr")


# -- refs and redaction ----------------------------------------------------------------------------


_HOLDS_REFS: dict[int, bool] = {}


def _holds_refs(f: Field) -> bool:
    """Whether any ref can occur under ``f`` (memoized: the schema is static)."""
    known = _HOLDS_REFS.get(id(f))
    if known is None:
        if f.type == "ref":
            known = True
        elif f.type == "object":
            known = any(_holds_refs(sub) for sub in (f.fields or {}).values())
        elif f.type == "list":
            known = f.item is not None and _holds_refs(f.item)
        else:
            known = False
        _HOLDS_REFS[id(f)] = known
    return known


def _walk_refs(f: Field, value: Any, path: str) -> Iterator[tuple[str, str, str]]:
    if value is None or not _holds_refs(f):
        return
    if f.type == "ref":
        if isinstance(value, str):
            assert f.ref is not None
            yield path, f.ref, value
    elif f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            yield from _walk_refs(sub, value.get(name), _join(path, name))
    elif f.type == "list":
        assert f.item is not None
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _walk_refs(f.item, item, f"{path}[{i}]")
        elif f.item.type == "ref":
            # a lone ref where a list is expected (PATCH delete of one item)
            yield from _walk_refs(f.item, value, path)


def ref_fields(kind: str, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field path, target kind, ref value) for every ref present in ``body``, in schema order.
    Tolerant: a partial or not yet validated body is walked as far as its shape allows."""
    out: list[tuple[str, str, str]] = []
    for name, walk in _compiled_ref_walk(kind):
        value = body.get(name)
        if value is not None:
            walk(value, name, out)
    return out


# (value, its field path, out): appends what _walk_refs yields for a non-null value.
_RefWalk = Callable[[Any, str, list[tuple[str, str, str]]], None]
_REF_WALKS: dict[str, tuple[KindSchema, list[tuple[str, _RefWalk]]]] = {}


def _compiled_ref_walk(kind: str) -> list[tuple[str, _RefWalk]]:
    """:func:`_walk_refs` for each ref-holding field of ``kind``, compiled once into closures."""
    known = _REF_WALKS.get(kind)
    if known is None or known[0] is not KINDS.get(kind):
        ks = _kind(kind)
        known = _REF_WALKS[kind] = (ks, [(name, _compile_ref_walk(f)) for name, f in _ref_holding_fields(kind)])
    return known[1]


def _compile_ref_walk(f: Field) -> _RefWalk:
    if f.type == "ref":
        target = f.ref
        assert target is not None

        def ref(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
            if isinstance(value, str):
                out.append((path, target, value))

        return ref
    if f.type == "object":
        assert f.fields is not None
        subs = [(name, _compile_ref_walk(sub)) for name, sub in f.fields.items() if _holds_refs(sub)]

        def obj(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
            if isinstance(value, dict):
                for name, walk in subs:
                    item = value.get(name)
                    if item is not None:
                        walk(item, _join(path, name), out)

        return obj
    assert f.type == "list" and f.item is not None
    walk_item = _compile_ref_walk(f.item)
    lone_ref = f.item.type == "ref"

    def items(value: Any, path: str, out: list[tuple[str, str, str]]) -> None:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is not None:
                    walk_item(item, f"{path}[{i}]", out)
        elif lone_ref:
            # a lone ref where a list is expected (PATCH delete of one item)
            walk_item(value, path, out)

    return items


_REF_HOLDING: dict[str, list[tuple[str, Field]]] = {}


def _ref_holding_fields(kind: str) -> list[tuple[str, Field]]:
    known = _REF_HOLDING.get(kind)
    if known is None:
        known = _REF_HOLDING[kind] = [(n, f) for n, f in _kind(kind).fields.items() if _holds_refs(f)]
    return known


def rewrite_refs(kind: str, body: dict[str, Any], fn: Callable[[str, str, str], Any]) -> dict[str, Any]:
    """In place: every ref value ``v`` (target kind ``t``, at field path ``p``) of ``body`` becomes
    ``fn(t, v, p)``; only the branches that can hold refs are walked. For a body the caller owns
    (e.g. what :func:`normalize` just returned); :func:`map_refs` copies instead."""
    for name, f in _ref_holding_fields(kind):
        value = body.get(name)
        if value is not None:
            body[name] = _rewrite(f, value, name, fn)
    return body


def check_unique_refs(kind: str, body: dict[str, Any]) -> None:
    """ValidationError naming the item when a list of refs that must be unique names one object
    twice. Run on refs made canonical: two spellings of one ref (by name, by URL) are the same."""
    for name, f in _ref_holding_fields(kind):
        value = body.get(name)
        if value is not None:
            _check_unique_refs(f, value, name)


def _check_unique_refs(f: Field, value: Any, path: str) -> None:
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            item = value.get(name)
            if item is not None and _holds_refs(sub):
                _check_unique_refs(sub, item, _join(path, name))
    elif f.type == "list" and isinstance(value, list):
        assert f.item is not None
        if f.item.type == "ref" and f.unique_by == ("",):
            seen: dict[Any, int] = {}
            for i, item in enumerate(value):
                if item in seen:
                    raise ValidationError(f"{path}[{i}]", f"duplicate of {path}[{seen[item]}] (both refer to the same {f.item.ref})")
                seen[item] = i
        elif _holds_refs(f.item):
            for i, item in enumerate(value):
                _check_unique_refs(f.item, item, f"{path}[{i}]")


def _rewrite(f: Field, value: Any, path: str, fn: Callable[[str, str, str], Any]) -> Any:
    if f.type == "ref":
        assert f.ref is not None
        return fn(f.ref, value, path) if isinstance(value, str) else value
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        for name, sub in f.fields.items():
            if _holds_refs(sub):
                item = value.get(name)
                if item is not None:
                    value[name] = _rewrite(sub, item, _join(path, name), fn)
        return value
    if f.type == "list" and isinstance(value, list):
        assert f.item is not None
        for i, item in enumerate(value):
            value[i] = _rewrite(f.item, item, f"{path}[{i}]", fn)
    return value


def _transform(f: Field, value: Any, on_ref: Callable[[str, str], Any], drop_write_only: bool) -> Any:
    if value is None:
        return None
    if f.type == "ref":
        assert f.ref is not None
        return on_ref(f.ref, value) if isinstance(value, str) else _copy(value)
    if f.type == "object" and isinstance(value, dict):
        assert f.fields is not None
        out = {}
        for key, sub in value.items():
            sf = f.fields.get(key)
            if sf is None:
                out[key] = _copy(sub)
            elif not (drop_write_only and sf.write_only):
                out[key] = _transform(sf, sub, on_ref, drop_write_only)
        return out
    if f.type == "list":
        assert f.item is not None
        if isinstance(value, list):
            return [_transform(f.item, item, on_ref, drop_write_only) for item in value]
        if f.item.type == "ref" and isinstance(value, str):
            return _transform(f.item, value, on_ref, drop_write_only)
    return _copy(value)


def map_refs(kind: str, body: dict[str, Any], fn: Callable[[str, str], Any]) -> dict[str, Any]:
    """A deep copy of ``body`` with every ref value ``v`` (target kind ``t``) replaced by
    ``fn(t, v)``. Fields outside the schema are copied unchanged. Works on partial bodies too
    (e.g. one part of a PATCH)."""
    return _compiled_transform(kind, False)(body, fn)  # type: ignore[no-any-return]


def _same_ref(_target: str, value: str) -> str:
    return value


def redact(kind: str, body: dict[str, Any], refs: Callable[[str, str], Any] = _same_ref) -> dict[str, Any]:
    """A deep copy of ``body`` without its write-only fields (for responses), with every ref value
    ``v`` (target kind ``t``) replaced by ``refs(t, v)`` (by default kept as it is)."""
    return _compiled_transform(kind, True)(body, refs)  # type: ignore[no-any-return]


def without_defaults(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (as rendered) without the fields that hold their schema default, in nested objects
    too (``?skip_default=true``). Refs are kept: their default is a name, the body holds a URL."""
    return _without_defaults(_kind(kind).fields, body)


def _without_defaults(fields: Mapping[str, Field], body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        f = fields.get(key)
        if f is None:
            out[key] = value
            continue
        if f.has_default and f.type != "ref" and value == thaw(f.default):
            continue
        if f.type == "object" and isinstance(value, dict) and f.fields is not None:
            value = _without_defaults(f.fields, value)
        elif f.type == "list" and isinstance(value, list) and f.item is not None and f.item.type == "object" and f.item.fields:
            value = [_without_defaults(f.item.fields, v) if isinstance(v, dict) else v for v in value]
        out[key] = value
    return out


# (value, on_ref) -> what _transform returns for the same field, value, on_ref and drop_write_only.
_Transform = Callable[[Any, Callable[[str, str], Any]], Any]
_TRANSFORMS: dict[tuple[str, bool], tuple[KindSchema, _Transform]] = {}
_DROP: Any = _Missing()


def _compiled_transform(kind: str, drop_write_only: bool) -> _Transform:
    """:func:`_transform` of a whole ``kind`` body, compiled once into closures."""
    known = _TRANSFORMS.get((kind, drop_write_only))
    if known is None or known[0] is not KINDS.get(kind):
        ks = _kind(kind)
        compiled = _compile_transform(Field("object", fields=ks.fields), drop_write_only)
        known = _TRANSFORMS[(kind, drop_write_only)] = (ks, compiled)
    return known[1]


def _copy_value(value: Any, _on_ref: Callable[[str, str], Any]) -> Any:
    return value if type(value) in _SCALARS else copy.deepcopy(value)


def _compile_transform(f: Field, drop_write_only: bool) -> _Transform:
    if f.type == "ref":
        target = f.ref
        assert target is not None

        def ref(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if isinstance(value, str):
                return on_ref(target, value)
            return value if type(value) in _SCALARS else copy.deepcopy(value)

        return ref
    if f.type == "object":
        assert f.fields is not None
        # A field missing here (scalar types, and keys outside the schema) is copied as it is.
        subs: dict[str, Any] = {}
        for name, sub in f.fields.items():
            if drop_write_only and sub.write_only:
                subs[name] = _DROP
            elif sub.type in ("ref", "object", "list"):
                subs[name] = _compile_transform(sub, drop_write_only)

        def obj(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if not isinstance(value, dict):
                return value if type(value) in _SCALARS else copy.deepcopy(value)
            out = {}
            for key, item in value.items():
                transform = subs.get(key)
                if transform is None:
                    out[key] = item if type(item) in _SCALARS else copy.deepcopy(item)
                elif transform is not _DROP:
                    out[key] = None if item is None else transform(item, on_ref)
            return out

        return obj
    if f.type == "list":
        assert f.item is not None
        transform_item = _compile_transform(f.item, drop_write_only)
        lone_ref = f.item.type == "ref"

        def items(value: Any, on_ref: Callable[[str, str], Any]) -> Any:
            if isinstance(value, list):
                return [None if item is None else transform_item(item, on_ref) for item in value]
            if lone_ref and isinstance(value, str):
                return transform_item(value, on_ref)
            return value if type(value) in _SCALARS else copy.deepcopy(value)

        return items
    return _copy_value


# -- PATCH -----------------------------------------------------------------------------------------


def _loose_equal(stored: Any, given: Any) -> bool:
    if isinstance(stored, dict) and isinstance(given, dict):
        return all(_loose_equal(stored.get(k), v) for k, v in given.items() if v is not None)
    if isinstance(stored, int) and not isinstance(stored, bool) and isinstance(given, str) and INT_TEXT.match(given):
        return stored == int(given)
    return bool(stored == given)


def _same_identity(unique_by: tuple[str, ...], old: dict[str, Any], item: dict[str, Any]) -> bool:
    return all(
        (_get_path(old, k) is None and _get_path(item, k) is None)
        or (_get_path(item, k) is not None and _loose_equal(_get_path(old, k), _get_path(item, k)))
        for k in unique_by
    )


def _deep_merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for k, v in extra.items():
            if v is not None:
                out[k] = _deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(extra)


def _patch_part(fields: Mapping[str, Field], op: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ValidationError(op, f"expected object, got {_json_type(part)}")
    for key, value in part.items():
        if key not in fields and key not in SERVER_MANAGED_FIELDS and value is not None:
            raise ValidationError(key, "unknown field (not supported by avictl)")
    return {k: v for k, v in part.items() if k in fields}


def _set_alias_aware(fields: Mapping[str, Field], body: dict[str, Any], key: str, value: Any) -> None:
    f = fields[key]
    if f.alias_for is not None:
        body.pop(f.alias_for, None)
    body[key] = copy.deepcopy(value)


def _patch_add(fields: Mapping[str, Field], body: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if value is None:
            continue
        f = fields[key]
        if f.type == "list":
            assert f.item is not None
            items = value if isinstance(value, list) else [value]
            current = body.get(key)
            merged = list(current) if isinstance(current, list) else []
            for item in items:
                if item is None:
                    continue
                if isinstance(item, dict) and f.unique_by:
                    same = [i for i, old in enumerate(merged) if isinstance(old, dict) and _same_identity(f.unique_by, old, item)]
                    if same:
                        merged[same[0]] = _deep_merge(merged[same[0]], item)
                        continue
                elif not isinstance(item, dict) and any(_loose_equal(old, item) for old in merged):
                    continue
                merged.append(copy.deepcopy(item))
            body[key] = merged
        elif f.type == "object":
            body[key] = _deep_merge(body.get(key), value)
        else:
            _set_alias_aware(fields, body, key, value)


def _patch_delete(fields: Mapping[str, Field], body: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        f = fields[key]
        if f.type == "list" and value is not None:
            items = value if isinstance(value, list) else [value]
            current = body.get(key)
            if isinstance(current, list):
                body[key] = [old for old in current if not any(_loose_equal(old, g) for g in items if g is not None)]
        elif f.type == "object" and isinstance(value, dict) and isinstance(body.get(key), dict):
            assert f.fields is not None
            inner = dict(body[key])
            _patch_delete(f.fields, inner, {k: v for k, v in value.items() if k in f.fields})
            body[key] = inner
        else:
            body.pop(key, None)
            if f.alias_for is not None:
                body.pop(f.alias_for, None)


_POINTER_TOKEN = re.compile(r"~[01]")


def _pointer(path: Any, where: str) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationError(where, "a JSON pointer starting with '/' is required")
    return [_POINTER_TOKEN.sub(lambda m: "~" if m.group() == "~0" else "/", t) for t in path[1:].split("/")]


def _json_patch(fields: Mapping[str, Field], body: dict[str, Any], ops: Any) -> None:
    if not isinstance(ops, list):
        raise ValidationError("json_patch", f"expected array, got {_json_type(ops)}")
    for n, op in enumerate(ops):
        where = f"json_patch[{n}]"
        if not isinstance(op, dict):
            raise ValidationError(where, f"expected object, got {_json_type(op)}")
        kind = op.get("op")
        if kind not in ("add", "remove", "replace"):
            raise ValidationError(f"{where}.op", f"{kind!r} is not one of: add, remove, replace")
        tokens = _pointer(op.get("path"), f"{where}.path")
        if tokens[0] not in fields:
            raise ValidationError(tokens[0], "unknown field (not supported by avictl)")
        parent: Any = body
        for t in tokens[:-1]:
            if isinstance(parent, list) and t.isdigit() and int(t) < len(parent):
                parent = parent[int(t)]
            elif isinstance(parent, dict) and parent.get(t) is not None:
                parent = parent[t]
            else:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
        last = tokens[-1]
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, list):
            if last == "-" and kind == "add":
                parent.append(value)
                continue
            if not last.isdigit() or int(last) > len(parent) or (kind != "add" and int(last) == len(parent)):
                raise ValidationError(f"{where}.path", f"{op['path']!r}: index out of range")
            i = int(last)
            if kind == "add":
                parent.insert(i, value)
            elif kind == "remove":
                del parent[i]
            else:
                parent[i] = value
            continue
        if not isinstance(parent, dict):
            raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
        f = fields.get(last) if parent is body else None
        if kind == "add" and f is not None and f.type == "list" and isinstance(parent.get(last), list):
            # Avi reading of "add" on a whole list: append the given item(s), as the SDK sample
            # (add_server_to_pool) expects; RFC 6902 would replace the list.
            parent[last] = parent[last] + (value if isinstance(value, list) else [value])
        elif kind == "remove":
            if last not in parent:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
            del parent[last]
        else:
            if kind == "replace" and last not in parent:
                raise ValidationError(f"{where}.path", f"{op['path']!r} does not exist")
            if f is not None and f.alias_for is not None:
                parent.pop(f.alias_for, None)
            parent[last] = value


PATCH_OPERATIONS = ("replace", "add", "delete", "json_patch")


def apply_patch(
    kind: str,
    stored: dict[str, Any],
    patch: Any,
    *,
    resolve: Callable[[str, str], Any] | None = None,
) -> dict[str, Any]:
    """Apply an Avi PATCH body to ``stored`` and return the client-style body to pass to
    ``normalize(kind, body, existing=stored)``.

    ``{"add": {...}, "replace": {...}, "delete": {...}}``, applied in the order replace, add,
    delete, then ``json_patch`` (the newer ``[{op, path, value}]`` form that avisdk's samples use).

    * replace: set each given field (a list or object is replaced whole).
    * add: list fields get the given items appended. An object item whose identity
      (``unique_by``, e.g. a server's ip.addr + port) is already there is merged into the
      existing item, and a scalar item already present is skipped, so re-running an add changes
      nothing. Object fields are deep-merged and scalar fields are set.
    * delete: list fields lose every item that matches a given item. A given object item matches
      when all of the fields it gives are equal (``{"ip": {"addr": "10.0.0.1"}}`` matches that
      server on any port). A null or missing item deletes nothing. An object field given with an
      object deletes inside it. Any other field is reset (removed, so that normalize puts its
      default back). Its value is ignored, and ``null`` works.
    * Null values count as not given (except as a delete selector), and unknown fields are refused.

    Refs in ``stored`` are in the caller's canonical form. Pass ``resolve`` (the same resolver
    used with :func:`map_refs` on input) so that refs in the patch are compared in that form too.
    """
    ks = _kind(kind)
    if not isinstance(patch, dict):
        raise ValidationError("", f"a PATCH body must be an object, got {_json_type(patch)}")
    unknown = [k for k in patch if k not in PATCH_OPERATIONS]
    if unknown:
        raise ValidationError(unknown[0], f"unknown PATCH operation; use one of: {', '.join(PATCH_OPERATIONS)}")
    if not any(patch.get(op) is not None for op in PATCH_OPERATIONS):
        raise ValidationError("", f"a PATCH body needs one of: {', '.join(PATCH_OPERATIONS)}")
    body = copy.deepcopy(stored)
    fields = ks.fields
    for op in ("replace", "add", "delete"):
        if patch.get(op) is None:
            continue
        part = _patch_part(fields, op, patch[op])
        if resolve is not None:
            part = map_refs(kind, part, resolve)
        if op == "replace":
            for key, value in part.items():
                if value is not None:
                    _set_alias_aware(fields, body, key, value)
        elif op == "add":
            _patch_add(fields, body, part)
        else:
            _patch_delete(fields, body, part)
    if patch.get("json_patch") is not None:
        _json_patch(fields, body, patch["json_patch"])
    return body


# -- built-in objects ------------------------------------------------------------------------------


def _builtins() -> list[tuple[str, str, dict[str, Any]]]:
    raw: list[tuple[str, dict[str, Any]]] = [
        ("tenant", {"name": "admin"}),
        ("cloud", {"name": "Default-Cloud", "vtype": "CLOUD_NONE"}),
        ("serviceenginegroup", {"name": "Default-Group"}),
        ("healthmonitor", {"name": "System-TCP", "type": "HEALTH_MONITOR_TCP"}),
        ("healthmonitor", {"name": "System-HTTP", "type": "HEALTH_MONITOR_HTTP"}),
        ("healthmonitor", {"name": "System-Ping", "type": "HEALTH_MONITOR_PING"}),
        ("applicationprofile", {"name": "System-HTTP", "type": "APPLICATION_PROFILE_TYPE_HTTP"}),
        ("applicationprofile", {"name": "System-L4-Application", "type": "APPLICATION_PROFILE_TYPE_L4"}),
    ]
    return [(kind, body["name"], normalize(kind, body, internal=True)) for kind, body in raw]


# In dependency order: every by-name ref in a body names an object listed before it.
BUILTINS: list[tuple[str, str, dict[str, Any]]] = _builtins()
