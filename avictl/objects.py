"""Client-side object helpers: kinds and aliases, ``--field`` parsing, refs by name, and apply's diff.

Pure: no I/O. The server validates every object; this module only translates what a user types
(``round_robin``, ``pool_ref: web-pool``, ``servers.0``-free dotted keys) into the wire format and
decides whether a desired object differs from the stored one.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import parse_qs, quote, urlsplit

from avictl.errors import UsageFault

__all__ = [
    "ALL_KINDS",
    "CRUD_KINDS",
    "KIND_ALIASES",
    "LIMITED_KINDS",
    "READ_ONLY_KINDS",
    "SERVER_FIELDS",
    "alias_target",
    "canonical_kind",
    "differences",
    "expand_alias",
    "merge",
    "parse_field",
    "parse_fields",
    "parse_server",
    "parse_value",
    "prepare",
    "ref_target",
    "to_ref",
    "vip_entry",
]

CRUD_KINDS = ("pool", "healthmonitor", "vsvip", "serviceenginegroup", "virtualservice", "cloud", "tenant", "applicationprofile")
# Kinds with fewer verbs: SEs are made by the system (operators may update or delete them).
LIMITED_KINDS: dict[str, tuple[str, ...]] = {
    "serviceengine": ("list", "show", "update", "delete"),
}
READ_ONLY_KINDS = tuple(k for k, verbs in LIMITED_KINDS.items() if "update" not in verbs)
ALL_KINDS = CRUD_KINDS + tuple(LIMITED_KINDS)
KIND_ALIASES = {"hm": "healthmonitor", "segroup": "serviceenginegroup", "vs": "virtualservice", "se": "serviceengine"}
# Fields the server computes; a desired object's copy of them is never compared nor sent.
SERVER_FIELDS = frozenset({"uuid", "url", "_last_modified", "tenant_ref"})

# Used when avictl.aliases offers no expansion (it is the authority when cluster.schema is present).
_LOCAL_VALUE_ALIASES: dict[tuple[str, str], dict[str, str]] = {
    ("pool", "lb_algorithm"): {
        "round_robin": "LB_ALGORITHM_ROUND_ROBIN",
        "least_connections": "LB_ALGORITHM_LEAST_CONNECTIONS",
        "consistent_hash": "LB_ALGORITHM_CONSISTENT_HASH",
    },
    ("healthmonitor", "type"): {
        "tcp": "HEALTH_MONITOR_TCP",
        "http": "HEALTH_MONITOR_HTTP",
        "ping": "HEALTH_MONITOR_PING",
    },
    ("serviceenginegroup", "ha_mode"): {
        "n_plus_m": "HA_MODE_SHARED",
        "active_active": "HA_MODE_SHARED_PAIR",
        "active_standby": "HA_MODE_LEGACY_ACTIVE_STANDBY",
    },
    ("cloud", "vtype"): {"none": "CLOUD_NONE", "vcenter": "CLOUD_VCENTER"},
}

_REF_TARGETS = {
    "pool": "pool",
    "pool_group": "poolgroup",
    "vsvip": "vsvip",
    "se_group": "serviceenginegroup",
    "cloud": "cloud",
    "tenant": "tenant",
    "health_monitor": "healthmonitor",
    "application_profile": "applicationprofile",
    "network_profile": "networkprofile",
    "virtualservice": "virtualservice",
}

_MISSING = object()
_optional_modules: dict[str, Any] = {}


def _optional(name: str) -> Any:
    """The module ``name`` (``cluster.schema``, or ``avictl.aliases``, which reads it) when it can be
    imported, else ``None`` (the CLI then uses its own tables)."""
    if name not in _optional_modules:
        module: Any
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional: absent or broken, the server still validates
            module = None
        _optional_modules[name] = module
    return _optional_modules[name]


def canonical_kind(name: str) -> Optional[str]:
    """The API kind for a CLI name or alias (``vs`` -> ``virtualservice``), or ``None``."""
    if name in ALL_KINDS:
        return name
    if name in KIND_ALIASES:
        return KIND_ALIASES[name]
    extra = getattr(_optional("avictl.aliases"), "CLI_ALIASES", None)
    if isinstance(extra, Mapping):
        target = extra.get(name)
        if isinstance(target, str) and target in ALL_KINDS:
            return target
    return None


def expand_alias(kind: str, field: str, value: Any) -> Any:
    """A CLI short value (``round_robin``) as the wire enum (``LB_ALGORITHM_ROUND_ROBIN``)."""
    if not isinstance(value, str):
        return value
    fn = getattr(_optional("avictl.aliases"), "expand_alias", None)
    if callable(fn):
        try:
            expanded = fn(kind, field, value)
        except Exception:  # noqa: BLE001 - a translation aid only; the server validates
            expanded = value
        if expanded != value:
            return expanded
    return _LOCAL_VALUE_ALIASES.get((kind, field), {}).get(value.lower(), value)


def ref_target(field: str) -> Optional[str]:
    """The kind a ``*_ref`` / ``*_refs`` field points at (Avi's naming convention)."""
    for suffix in ("_refs", "_ref"):
        if field.endswith(suffix):
            stem = field[: -len(suffix)]
            return _REF_TARGETS.get(stem, stem.replace("_", ""))
    return None


def to_ref(target: str, value: Any) -> Any:
    """A bare name as ``/api/<target>?name=<name>``; URLs, paths and uuids are left as they are."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(("/api/", "http://", "https://")) or value.startswith(f"{target}-"):
        return value
    return f"/api/{target}?name={quote(value, safe='')}"


def parse_value(text: str) -> Any:
    """JSON when the text parses as JSON (``80``, ``true``, ``[1,2]``, ``"80"``), else the text itself."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def parse_field(pair: str) -> tuple[list[str], Any]:
    """``a.b=v`` -> (``["a", "b"]``, parsed ``v``)."""
    key, sep, raw = pair.partition("=")
    if not sep:
        raise UsageFault(f"--field {pair!r}: expected KEY=VALUE")
    path = key.strip().split(".")
    if not all(path):
        raise UsageFault(f"--field {pair!r}: the key must be NAME or NAME.NAME...")
    return path, parse_value(raw)


def parse_fields(pairs: Iterable[str]) -> dict[str, Any]:
    """Repeated ``--field KEY=VALUE`` as one object; dotted keys make nested objects, later keys win."""
    out: dict[str, Any] = {}
    for pair in pairs:
        path, value = parse_field(pair)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageFault(f"--field {pair!r}: {'.'.join(path[: i + 1])} is already set to a value")
            node = child
        node[path[-1]] = value
    return out


def prepare(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A user's object as the wire format: aliases expanded, refs by bare name made ``?name=`` refs."""
    out: dict[str, Any] = {}
    for field, value in body.items():
        target = ref_target(field)
        if target is not None and field.endswith("_refs") and isinstance(value, list):
            value = [to_ref(target, v) for v in value]
        elif target is not None:
            value = to_ref(target, value)
        else:
            value = expand_alias(kind, field, value)
        out[field] = value
    return out


def parse_server(text: str, default_port: Optional[int] = None) -> dict[str, Any]:
    """``IP[:PORT]`` (``[v6]:PORT`` for IPv6) as a pool server."""
    host, port_text = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UsageFault(f"--server {text!r}: expected IP[:PORT]") from None
    server: dict[str, Any] = {"ip": {"addr": str(addr), "type": "V4" if addr.version == 4 else "V6"}}
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageFault(f"--server {text!r}: the port must be 1-65535")
        server["port"] = int(port_text)
    elif default_port is not None:
        server["port"] = default_port
    return server


def vip_entry(addr: str, vip_id: str = "1") -> dict[str, Any]:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise UsageFault(f"--vip {addr!r}: expected an IP address") from None
    return {"vip_id": vip_id, "ip_address": {"addr": str(ip), "type": "V4" if ip.version == 4 else "V6"}}


# -- apply's diff ------------------------------------------------------------------------------


def _ref_key(ref: str) -> tuple[str, str]:
    """``("name", N)`` for a by-name ref, else ``("uuid", U)``."""
    base = ref.split("#", 1)[0]
    parts = urlsplit(base)
    names = parse_qs(parts.query).get("name")
    if names and parts.path.rstrip("/").count("/") <= 2:
        return "name", names[0]
    return "uuid", parts.path.rstrip("/").rsplit("/", 1)[-1]


def _same_ref(want: str, have: Any) -> bool:
    if not isinstance(have, str):
        return False
    how, key = _ref_key(want)
    if how == "uuid":
        return _ref_key(have) == ("uuid", key)
    # Stored refs come back as URLs with a ``#name`` suffix.
    return "#" in have and have.rsplit("#", 1)[1] == key


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _same(field: str, want: Any, have: Any) -> bool:
    if have is _MISSING:
        return _empty(want)
    if ref_target(field) is not None:
        if field.endswith("_refs") and isinstance(want, list):
            return isinstance(have, list) and len(want) == len(have) and all(
                _same_ref(w, h) if isinstance(w, str) else w == h for w, h in zip(want, have, strict=True)
            )
        if isinstance(want, str):
            return _same_ref(want, have)
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_same(k, v, have.get(k, _MISSING)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(_same(field, w, h) for w, h in zip(want, have, strict=True))
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    return bool(want == have)


def alias_target(kind: Optional[str], field: str) -> Optional[str]:
    """The ref field a never-stored ``*_name`` convenience field sets (``application_profile_name``)."""
    spec = getattr(_optional("cluster.schema"), "KINDS", {}).get(kind) if kind else None
    declared = getattr(spec, "fields", {}).get(field) if spec is not None else None
    target = getattr(declared, "alias_for", None)
    return target if isinstance(target, str) else None


def differences(desired: Mapping[str, Any], stored: Mapping[str, Any], kind: Optional[str] = None) -> list[str]:
    """The top-level fields of ``desired`` whose value differs from ``stored``.

    Only fields ``desired`` names count: a field the user left out keeps whatever the server
    stored (defaults included). Objects compare as subsets (the server fills defaults into
    nested objects, e.g. a server's ``ratio``); lists compare element by element; refs compare
    by name against the stored ref's ``#name`` suffix, or by uuid. A convenience field the
    server never stores (``application_profile_name``) compares with the ref it sets. A
    write-only field (a password) is never returned, so it always counts as different.
    """
    out = []
    for field, want in desired.items():
        if field in SERVER_FIELDS or field == "kind":
            continue
        target = alias_target(kind, field) if field not in stored else None
        if target is not None and isinstance(want, str):
            same = _same_ref(to_ref(ref_target(target) or target, want), stored.get(target))
        else:
            same = _same(field, want, stored.get(field, _MISSING))
        if not same:
            out.append(field)
    return out


def merge(stored: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with ``desired`` laid over it: objects merge key by key, lists and scalars replace."""
    out = dict(stored)
    for key, value in desired.items():
        if key == "kind":
            continue
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out
