"""``/api/openapi.json``: every route of the app, with the object schemas from ``cluster.schema``."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from cluster import schema

__all__ = ["build_openapi"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string", "nullable": True}},
            "required": ["code", "message"],
        }
    },
}

_DESCRIPTIONS = {
    "/login": "Log in (form or JSON: username with password or token); sets sessionid and csrftoken cookies.",
    "/logout": "Clear the session cookies.",
    "/api/macro": (
        "POST: create an object hierarchy in one transaction, {model_name, data}, where x_ref_data / "
        "x_refs_data create the referred objects (data may be a list, each item with its own "
        "model_name); 201 with the created objects, children first. PUT: the same hierarchy, each "
        "object created when absent or updated by the fields given (merged over the stored ones), "
        "all or nothing; 200 with results [{action: created|updated|unchanged, kind, name, uuid, "
        "changes}]. DELETE: delete the top object and the objects named in its *_data fields that "
        "are neither built in nor used elsewhere (204). ?dry_run=true: the same checks and results, "
        "nothing written."
    ),
    "/healthz": "Liveness of this node.",
    "/metrics": "Prometheus metrics of this node.",
    "/api/openapi.json": "This document.",
    "/api/cluster": "The controller nodes with role, term, commit index and applied revision, and the leader.",
    "/api/events": "Committed events from ?since=REV (at most ?limit=N).",
    "/api/watch": "Committed events from ?since=REV as newline-delimited JSON, then every new one as it commits.",
    "/internal/status": "This node's status (cluster-internal token).",
    "/internal/records": "Raw event-store records after ?after_raft_index (cluster-internal token).",
}


def _path_parameter(route: web.AbstractRoute, name: str) -> dict[str, Any]:
    """A path parameter's schema: the values its route's pattern allows, when it lists them."""
    if name == "kind":
        return {"type": "string", "enum": sorted(schema.KINDS)}
    pattern = route.resource.get_info().get("pattern") if route.resource else None
    found = re.search(rf"\(\?P<{name}>((?:\w+\|)+\w+)\)", pattern.pattern) if pattern is not None else None
    if found:
        return {"type": "string", "enum": found.group(1).split("|")}
    return {"type": "string"}


def build_openapi(router: web.UrlDispatcher, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method == "HEAD":
            continue
        op: dict[str, Any] = {
            "summary": _DESCRIPTIONS.get(path, _object_summary(route.method, path)),
            "responses": {
                "default": {"description": "error", "content": {"application/json": {"schema": _ERROR}}},
                "200": {"description": "success"},
            },
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": _path_parameter(route, name)}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        if params:
            op["parameters"] = params
        if "{kind}" in path:
            op["description"] = "kind is one of: " + ", ".join(sorted(schema.KINDS))
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "avictl controller API", "version": version},
        "components": {
            "schemas": schema.openapi_schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }


def _object_summary(method: str, path: str) -> str:
    one = "{uuid}" in path
    return {
        ("GET", False): "List objects of a kind: {count, results, next}; name, page, page_size, fields, sort, stale.",
        ("POST", False): "Create an object (201 with the stored object).",
        ("GET", True): "Read one object.",
        ("PUT", True): "Replace an object; send _last_modified back to update safely (412 when stale).",
        ("PATCH", True): "Change an object with {add, replace, delete}.",
        ("DELETE", True): "Delete an object (409 while it is referenced).",
    }.get((method, one), f"{method} {path}")
