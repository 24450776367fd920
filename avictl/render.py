"""Output: the same data as an aligned table, JSON or YAML (``-o table|json|yaml``).

Pure: every function takes data and returns text; the CLI prints it.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Callable, Iterable, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

import yaml

__all__ = [
    "FORMATS",
    "cell",
    "dump",
    "event_row",
    "inline",
    "printable",
    "ref_name",
    "render_apply",
    "render_cluster",
    "render_events",
    "render_object",
    "render_objects",
    "table",
    "EVENT_HEADERS",
]

FORMATS = ("table", "json", "yaml")

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def inline(value: Any) -> str:
    """A value on one line: text as it is, anything else as compact JSON (``null`` when absent)."""
    if isinstance(value, str):
        return printable(value)
    return json.dumps(value, separators=(", ", ": "), sort_keys=False)


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON (indented) or YAML (block style, key order kept)."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    raise ValueError(f"not a data format: {fmt!r}")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return printable(str(value))


def printable(text: str) -> str:
    """``text`` safe for a terminal: each control or formatting character (ESC, a newline, a
    bidi override) shown as its escape (``\\x1b``), never sent raw."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned plain-text table; the last column is not padded."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headers)] + cells:
        lines.append("  ".join(text.ljust(widths[i]) if i < len(row) - 1 else text for i, text in enumerate(row)).rstrip())
    return "\n".join(lines)


def ref_name(ref: Any) -> Optional[str]:
    """The name a ref points at: its ``#name`` suffix, its ``?name=`` query, else its uuid."""
    if not isinstance(ref, str) or not ref:
        return None
    if "#" in ref:
        return ref.rsplit("#", 1)[1]
    parts = urlsplit(ref)
    names = parse_qs(parts.query).get("name")
    if names:
        return names[0]
    return parts.path.rstrip("/").rsplit("/", 1)[-1] or ref


def _refs(values: Any) -> Optional[str]:
    if not values:
        return None
    return ",".join(str(ref_name(v)) for v in values)


def _short_enum(value: Any, prefix: str) -> Any:
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix):].lower()
    return value


def _servers(obj: dict[str, Any]) -> Optional[str]:
    servers = obj.get("servers") or []
    if not servers:
        return None
    out = []
    for s in servers:
        addr = (s.get("ip") or {}).get("addr", "?") if isinstance(s, dict) else "?"
        port = s.get("port") if isinstance(s, dict) else None
        out.append(f"{addr}:{port}" if port else str(addr))
    return ",".join(out)


def _vips(obj: dict[str, Any]) -> Optional[str]:
    addrs = [((v or {}).get("ip_address") or {}).get("addr") for v in obj.get("vip") or [] if isinstance(v, dict)]
    return ",".join(a for a in addrs if a) or None


def _ports(obj: dict[str, Any]) -> Optional[str]:
    ports = [s.get("port") for s in obj.get("services") or [] if isinstance(s, dict)]
    return ",".join(str(p) for p in ports if p is not None) or None


_NAME: Column = ("NAME", lambda o: o.get("name"))
_UUID: Column = ("UUID", lambda o: o.get("uuid"))

KIND_COLUMNS: dict[str, list[Column]] = {
    "pool": [
        _NAME, _UUID,
        ("ALGORITHM", lambda o: _short_enum(o.get("lb_algorithm"), "LB_ALGORITHM_")),
        ("SERVERS", _servers),
        ("MONITORS", lambda o: _refs(o.get("health_monitor_refs"))),
    ],
    "healthmonitor": [
        _NAME, _UUID,
        ("TYPE", lambda o: _short_enum(o.get("type"), "HEALTH_MONITOR_")),
        ("INTERVAL", lambda o: o.get("send_interval")),
        ("TIMEOUT", lambda o: o.get("receive_timeout")),
    ],
    "vsvip": [_NAME, _UUID, ("VIP", _vips), ("CLOUD", lambda o: ref_name(o.get("cloud_ref")))],
    "virtualservice": [
        _NAME, _UUID,
        ("VSVIP", lambda o: ref_name(o.get("vsvip_ref"))),
        ("PORTS", _ports),
        ("POOL", lambda o: ref_name(o.get("pool_ref"))),
        ("SEGROUP", lambda o: ref_name(o.get("se_group_ref"))),
        ("ENABLED", lambda o: o.get("enabled")),
        ("SES", lambda o: ",".join((o.get("runtime") or {}).get("serviceengines") or []) or "-"),
    ],
    "serviceenginegroup": [
        _NAME, _UUID,
        ("HA_MODE", lambda o: _short_enum(o.get("ha_mode"), "HA_MODE_")),
        ("MAX_SE", lambda o: o.get("max_se")),
        ("BUFFER_SE", lambda o: o.get("buffer_se")),
    ],
    "serviceengine": [
        _NAME,
        ("SEGROUP", lambda o: ref_name(o.get("se_group_ref"))),
        ("STATE", lambda o: _short_enum(o.get("enable_state"), "SE_STATE_")),
        ("STATUS", lambda o: (o.get("runtime") or {}).get("oper_status") or "-"),
        ("VIRTUALSERVICES", lambda o: ",".join((o.get("runtime") or {}).get("virtualservices") or []) or "-"),
        ("APPLIED", lambda o: (o.get("runtime") or {}).get("applied_revision")),
        ("LAG", lambda o: (o.get("runtime") or {}).get("lag")),
        ("NACK", lambda o: ((o.get("runtime") or {}).get("nack") or {}).get("error") or "-"),
    ],
    "cloud": [_NAME, _UUID, ("VTYPE", lambda o: o.get("vtype"))],
    "tenant": [_NAME, _UUID],
}


def render_objects(kind: str, objects: list[dict[str, Any]], fmt: str) -> str:
    if fmt != "table":
        return dump(objects, fmt)
    columns = KIND_COLUMNS.get(kind, [_NAME, _UUID])
    return table([c[0] for c in columns], ([getter(o) for _h, getter in columns] for o in objects))


def render_object(kind: str, obj: dict[str, Any], fmt: str) -> str:
    """One object; as a table, one FIELD/VALUE row per top-level field."""
    if fmt != "table":
        return dump(obj, fmt)
    return table(["FIELD", "VALUE"], ([k, v] for k, v in obj.items()))


def render_cluster(status: dict[str, Any], fmt: str) -> str:
    if fmt != "table":
        return dump(status, fmt)
    rows = [
        [n.get("id"), n.get("api"), n.get("role"), n.get("term"), n.get("commit_index"), n.get("applied_revision")]
        for n in status.get("nodes") or []
    ]
    body = table(["ID", "API", "ROLE", "TERM", "COMMIT", "APPLIED"], rows)
    return f"{body}\n\nleader: {status.get('leader') or '-'}  state: {status.get('state') or '-'}"


EVENT_HEADERS = ["REV", "TIME", "TYPE", "OBJECT", "COMMAND"]


def _event_time(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        stamp = _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return value


def _event_object(data: Any) -> Any:
    if isinstance(data, dict) and "kind" in data:
        return f"{data.get('kind')}/{data.get('name') or data.get('uuid')}"
    if isinstance(data, dict) and data.get("reason"):
        # Placement, SE lifecycle and scaling decisions: why is what an operator reads them for.
        # Placement reasons start with the VS name; SE events carry the SE name.
        who = data.get("name") or ""
        text = f"{who}: {data['reason']}" if who else str(data["reason"])
        return text if len(text) <= 110 else text[:107] + "..."
    text = json.dumps(data, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def event_row(event: dict[str, Any]) -> list[Any]:
    cmd = event.get("command_id")
    return [
        event.get("revision"),
        _event_time(event.get("time")),
        event.get("type"),
        _event_object(event.get("data")),
        (cmd[:12] if isinstance(cmd, str) else cmd),
    ]


def render_events(events: list[dict[str, Any]], fmt: str) -> str:
    if fmt != "table":
        return dump(events, fmt)
    return table(EVENT_HEADERS, (event_row(e) for e in events))


def render_apply(results: list[dict[str, Any]], fmt: str) -> str:
    """``apply`` results: ``created|updated|unchanged KIND NAME`` lines, or data."""
    if fmt != "table":
        return dump(results, fmt)
    return "\n".join(f"{r['action']} {r['kind']} {printable(str(r['name']))}" for r in results)
