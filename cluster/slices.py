"""Per-SE slices of the config view, versioned like xDS snapshots. Pure.

A slice holds what one Service Engine serves: the virtual services placed on it with their VIP,
ports, application type, pool, servers and health monitors, in the plain-data form that
``engine.config.SliceConfig.from_dict`` reads. Its version is the view revision at which its
content last changed, so an SE that applied version V is up to date exactly while the slice's
version is still V.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from cluster.schema import KINDS
from cluster.views import ConfigView, StoredObject, ref_uuid

__all__ = ["SliceCache", "slice_for"]

# For profiles stored before http_profile existed (the schema fills it in on every write since).
_HTTP_PROFILE_DEFAULTS: dict[str, Any] = {
    name: field.default for name, field in (KINDS["applicationprofile"].fields["http_profile"].fields or {}).items()
}


def _target(view: ConfigView, ref: Any) -> Optional[StoredObject]:
    return view.get(ref_uuid(ref)) if ref else None


def _monitor(obj: StoredObject) -> dict[str, Any]:
    body = obj.body
    http = body.get("http_monitor") or {}
    return {
        "name": obj.name,
        "type": body.get("type"),
        "send_interval": body.get("send_interval", 10),
        "receive_timeout": body.get("receive_timeout", 4),
        "successful_checks": body.get("successful_checks", 2),
        "failed_checks": body.get("failed_checks", 2),
        "http_request": http.get("http_request", "GET / HTTP/1.0"),
        "http_response_codes": list(http.get("http_response_code") or ["HTTP_2XX"]),
    }


def _pool(view: ConfigView, obj: StoredObject) -> dict[str, Any]:
    body = obj.body
    default_port = body.get("default_server_port", 80)
    servers = [
        {
            "ip": (s.get("ip") or {}).get("addr"),
            "port": s.get("port") or default_port,
            "ratio": s.get("ratio", 1),
            "enabled": s.get("enabled", True),
        }
        for s in body.get("servers") or []
    ]
    monitors = [_monitor(m) for m in (_target(view, r) for r in body.get("health_monitor_refs") or []) if m is not None]
    return {
        "uuid": obj.uuid,
        "name": obj.name,
        "lb_algorithm": body.get("lb_algorithm", "LB_ALGORITHM_LEAST_CONNECTIONS"),
        "servers": servers,
        "monitors": monitors,
        "graceful_disable_timeout": 60.0 * float(body.get("graceful_disable_timeout", 1)),
    }


def _placement(view: ConfigView, vs: StoredObject) -> dict[str, Any]:
    """Who serves the VS and in which role: the SE names, primary (active) first, and the epoch.

    ``epoch`` is the log revision of the VS's last placement: it orders VIP ownership claims, so an
    SE that sees a placement with a higher epoch than the one it serves under yields at once.
    """
    group = _target(view, vs.body.get("se_group_ref"))
    names = []
    for se_uuid in view.placement(vs.uuid):
        se = view.get(se_uuid)
        names.append(se.name if se is not None else se_uuid)
    return {
        "ha_mode": (group.body.get("ha_mode") if group is not None else None) or "HA_MODE_SHARED",
        "epoch": view.placement_revision(vs.uuid),
        "ses": names,
        # How long connections established on an SE the VS leaves (scale-in, migrate) may finish.
        "scalein_timeout": float(group.body.get("vs_scalein_timeout", 30)) if group is not None else 30.0,
    }


def _http_limits(profile: Optional[StoredObject]) -> dict[str, Any]:
    """The profile's http_profile in the SE's units (bytes, seconds)."""
    http = {**_HTTP_PROFILE_DEFAULTS, **((profile.body.get("http_profile") or {}) if profile is not None else {})}
    return {
        "max_header_size": 1024 * http["client_max_header_size"],
        "max_request_size": 1024 * http["client_max_request_size"],
        "max_header_count": http["max_header_count"],
        "header_timeout": http["client_header_timeout"] / 1000.0,
    }


def _virtual_service(view: ConfigView, vs: StoredObject) -> Optional[dict[str, Any]]:
    vsvip = _target(view, vs.body.get("vsvip_ref"))
    addrs = [((v or {}).get("ip_address") or {}).get("addr") for v in (vsvip.body.get("vip") or [])] if vsvip else []
    if not addrs or not addrs[0]:
        return None
    profile = _target(view, vs.body.get("application_profile_ref"))
    l7 = profile is None or profile.body.get("type", "APPLICATION_PROFILE_TYPE_HTTP") == "APPLICATION_PROFILE_TYPE_HTTP"
    pool = _target(view, vs.body.get("pool_ref"))
    doc = {
        "uuid": vs.uuid,
        "name": vs.name,
        "vip": addrs[0],
        "ports": [s.get("port") for s in vs.body.get("services") or []],
        "application": "http" if l7 else "l4",
        "enabled": bool(vs.body.get("enabled", True)),
        "pool": None if pool is None else _pool(view, pool),
        "placement": _placement(view, vs),
    }
    if l7:
        doc["http_limits"] = _http_limits(profile)
    return doc


def slice_for(view: ConfigView, se_uuid: str) -> dict[str, Any]:
    """The slice of ``se_uuid`` without its version."""
    se = view.get(se_uuid)
    services = []
    for vs_uuid in sorted(view.placed_on(se_uuid)):
        vs = view.get(vs_uuid)
        if vs is None:
            continue
        doc = _virtual_service(view, vs)
        if doc is not None:
            services.append(doc)
    return {"se_name": se.name if se else se_uuid, "virtual_services": services}


class SliceCache:
    """The current slice of every SE and the revision at which it last changed."""

    def __init__(self) -> None:
        self._slices: dict[str, tuple[int, dict[str, Any]]] = {}
        self._encoded: dict[str, tuple[int, bytes]] = {}

    def refresh(self, view: ConfigView) -> set[str]:
        """Recompute every SE's slice; return the SEs whose slice changed."""
        changed = set()
        current = {o.uuid for o in view.list("serviceengine")}
        for se_uuid in current:
            content = slice_for(view, se_uuid)
            old = self._slices.get(se_uuid)
            if old is None or old[1] != content:
                self._slices[se_uuid] = (view.revision, content)
                changed.add(se_uuid)
        for gone in set(self._slices) - current:
            del self._slices[gone]
            self._encoded.pop(gone, None)
            changed.add(gone)
        return changed

    def encoded(self, se_uuid: str) -> Optional[tuple[int, bytes]]:
        """The current slice as one JSON line, encoded once per version however many watchers send it."""
        entry = self._slices.get(se_uuid)
        if entry is None:
            return None
        version = entry[0]
        cached = self._encoded.get(se_uuid)
        if cached is None or cached[0] != version:
            cached = (version, json.dumps({"revision": version, **entry[1]}).encode() + b"\n")
            self._encoded[se_uuid] = cached
        return cached

    def get(self, se_uuid: str) -> Optional[dict[str, Any]]:
        entry = self._slices.get(se_uuid)
        if entry is None:
            return None
        version, content = entry
        return {"revision": version, **content}
