"""The objects every cluster starts with (``admin``, ``Default-Cloud``, ``Default-Group``, the
``System-*`` health monitors and application profiles), in their stored form."""

from __future__ import annotations

from typing import Any

from cluster.schema.normalizers import normalize

__all__ = ["BUILTINS"]


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
