"""The CLI's shorthands: short kind names (``vs``) and short values (``round_robin``,
``active_standby``, ``tcp``, "yes", "8080", "a,b") turned into the wire values
:func:`cluster.schema.normalize` accepts, read off the schema's field definitions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cluster.schema import INT_TEXT, KINDS, Field

__all__ = ["CLI_ALIASES", "VALUE_ALIASES", "expand_alias"]

CLI_ALIASES: dict[str, str] = {
    "vs": "virtualservice",
    "hm": "healthmonitor",
    "segroup": "serviceenginegroup",
    "seg": "serviceenginegroup",
    "se": "serviceengine",
    "vip": "vsvip",
    "appprofile": "applicationprofile",
}

# Explicit CLI value aliases (lower-case keys). Anything not listed is still expanded when it is
# the unique suffix of an allowed value (``least_connections`` -> ``LB_ALGORITHM_LEAST_CONNECTIONS``).
VALUE_ALIASES: dict[tuple[str, str], dict[str, Any]] = {
    ("pool", "lb_algorithm"): {
        "rr": "LB_ALGORITHM_ROUND_ROBIN",
        "round_robin": "LB_ALGORITHM_ROUND_ROBIN",
        "least_connections": "LB_ALGORITHM_LEAST_CONNECTIONS",
        "least_conns": "LB_ALGORITHM_LEAST_CONNECTIONS",
        "consistent_hash": "LB_ALGORITHM_CONSISTENT_HASH",
    },
    ("pool", "lb_algorithm_hash"): {
        "source_ip": "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS",
        "source_ip_address": "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS",
    },
    ("serviceenginegroup", "ha_mode"): {
        "active_standby": "HA_MODE_LEGACY_ACTIVE_STANDBY",
        "legacy_active_standby": "HA_MODE_LEGACY_ACTIVE_STANDBY",
        "active_active": "HA_MODE_SHARED_PAIR",
        "shared_pair": "HA_MODE_SHARED_PAIR",
        "n_plus_m": "HA_MODE_SHARED",
        "n+m": "HA_MODE_SHARED",
        "shared": "HA_MODE_SHARED",
    },
    ("healthmonitor", "type"): {
        "tcp": "HEALTH_MONITOR_TCP",
        "http": "HEALTH_MONITOR_HTTP",
        "ping": "HEALTH_MONITOR_PING",
        "icmp": "HEALTH_MONITOR_PING",
    },
    ("cloud", "vtype"): {"none": "CLOUD_NONE", "local": "CLOUD_NONE", "vcenter": "CLOUD_VCENTER"},
    ("cloud", "vcenter_configuration.privilege"): {
        "write": "WRITE_ACCESS",
        "read": "READ_ACCESS",
        "none": "NO_ACCESS",
        "no": "NO_ACCESS",
        "no_access": "NO_ACCESS",
    },
    ("virtualservice", "application_profile_name"): {
        "http": "System-HTTP",
        "l7": "System-HTTP",
        "l4": "System-L4-Application",
        "tcp": "System-L4-Application",
    },
}

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def _field_at(kind: str, dotted: str) -> tuple[Field, Field] | None:
    """(field as declared, its scalar type with lists unwrapped) at a dotted path, or None."""
    ks = KINDS.get(kind)
    if ks is None:
        return None
    fields: Mapping[str, Field] | None = ks.fields
    found: tuple[Field, Field] | None = None
    for part in _plain_path(dotted).split("."):
        if fields is None or part not in fields:
            return None
        declared = inner = fields[part]
        while inner.type == "list" and inner.item is not None:
            inner = inner.item
        found = (declared, inner)
        fields = inner.fields
    return found


def _plain_path(dotted: str) -> str:
    return re.sub(r"\[\d*\]", "", dotted)


def _expand_scalar(kind: str, field: str, f: Field, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if f.type == "boolean":
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else value
    if f.type == "integer":
        return int(text) if INT_TEXT.match(text) else value
    if not f.enum:
        return value
    if text in f.enum:
        return text
    key = text.lower().replace("-", "_")
    table = VALUE_ALIASES.get((kind, _plain_path(field)), {})
    if key in table:
        return table[key]
    upper = key.upper()
    if upper in f.enum:
        return upper
    matches = [v for v in f.enum if v.endswith("_" + upper)]
    return matches[0] if len(matches) == 1 else value


def expand_alias(kind: str, field: str, value: Any) -> Any:
    """Turn a CLI value into its wire value: enum aliases (``round_robin``,
    ``active_standby``, ``tcp``), "true"/"false" for booleans, digits for integers, and a
    comma-separated string into a list for list fields. ``kind`` may be a CLI alias and ``field``
    a dotted path (``vcenter_configuration.privilege``). Anything unknown comes back unchanged,
    so that :func:`cluster.schema.normalize` reports it with the allowed values."""
    kind = CLI_ALIASES.get(kind, kind)
    found = _field_at(kind, field)
    if found is None:
        return value
    declared, scalar = found
    if declared.type == "list" and not re.search(r"\[\d*\]$", field):
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list):
            return [_expand_scalar(kind, field, scalar, v.strip() if isinstance(v, str) else v) for v in items]
    return _expand_scalar(kind, field, scalar, value)
