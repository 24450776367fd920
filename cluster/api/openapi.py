"""``/api/openapi.json``: every route of the app, with the object schemas generated from the kinds
of ``cluster.schema``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from cluster.schema import KINDS, Field, thaw

__all__ = ["build_openapi", "openapi_schemas"]

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
        return {"type": "string", "enum": sorted(KINDS)}
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
            op["description"] = "kind is one of: " + ", ".join(sorted(KINDS))
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "avictl controller API", "version": version},
        "components": {
            "schemas": openapi_schemas(),
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


# -- object schemas --------------------------------------------------------------------------------


def _openapi_field(f: Field, components: dict[str, Any]) -> dict[str, Any]:
    if f.type == "object":
        assert f.fields is not None and f.title is not None
        if f.title not in components:
            components[f.title] = {}  # reserve the name before recursing
            components[f.title] = _openapi_object(f.fields, components)
        schema: dict[str, Any] = {"$ref": f"#/components/schemas/{f.title}"}
        extras = _openapi_extras(f)
        if extras:
            # OpenAPI 3.0 ignores siblings of $ref: wrap it
            schema = {"allOf": [schema], **extras}
        return schema
    out: dict[str, Any]
    if f.type == "list":
        assert f.item is not None
        out = {"type": "array", "items": _openapi_field(f.item, components)}
        if f.min_items is not None:
            out["minItems"] = f.min_items
        if f.max_items is not None:
            out["maxItems"] = f.max_items
        if f.unique_by == ("",):
            out["uniqueItems"] = True
    elif f.type in ("enum",):
        out = {"type": "string", "enum": list(f.enum)}
    elif f.type == "ref":
        out = {"type": "string", "x-avi-ref": f.ref}
    else:
        out = {"type": f.type}
        if f.enum:
            out["enum"] = list(f.enum)
        if f.minimum is not None:
            out["minimum"] = f.minimum
        if f.maximum is not None:
            out["maximum"] = f.maximum
        if f.format:
            out["format"] = f.format
        if f.min_length:
            out["minLength"] = f.min_length
    out.update(_openapi_extras(f))
    return out


def _openapi_extras(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {}
    notes = [f.description] if f.description else []
    if f.has_default:
        out["default"] = thaw(f.default)
    if f.read_only:
        out["readOnly"] = True
    if f.write_only or f.alias_for:
        out["writeOnly"] = True
    if f.only_when:
        notes.append(f"Only allowed when {f.only_when[0]} is {' or '.join(f.only_when[1])}.")
    if f.required_when:
        notes.append(f"Required when {f.required_when[0]} is {' or '.join(f.required_when[1])}.")
    if f.less_than:
        notes.append(f"Must be less than {f.less_than}.")
    if f.at_most:
        notes.append(f"Must be at most {f.at_most}.")
    if notes:
        out["description"] = " ".join(notes)
    return out


def _openapi_object(fields: Mapping[str, Field], components: dict[str, Any]) -> dict[str, Any]:
    props = {name: _openapi_field(f, components) for name, f in fields.items()}
    required = [name for name, f in fields.items() if f.required]
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def openapi_schemas() -> dict[str, Any]:
    """OpenAPI 3 ``components.schemas`` for every kind (keyed by the real product's model names,
    e.g. ``Pool``, ``VirtualService``) and their nested objects (``Server``, ``IpAddr``, ...)."""
    components: dict[str, Any] = {}
    for ks in KINDS.values():
        obj = _openapi_object(ks.fields, components)
        server = {
            "uuid": {"type": "string", "readOnly": True, "description": "<kind>-<uuid4>; accepted and ignored on input."},
            "url": {"type": "string", "readOnly": True, "description": "<scheme>://<host>/api/<kind>/<uuid>."},
            "_last_modified": {
                "type": "string",
                "description": "Log revision that last changed the object; send it back on PUT (stale: 412).",
            },
        }
        if ks.kind != "tenant":
            server["tenant_ref"] = {
                "type": "string",
                "x-avi-ref": "tenant",
                "description": "The object's tenant: from X-Avi-Tenant, X-Avi-Tenant-UUID or this field (they must agree; an unknown tenant is 404); default admin. Objects do not move between tenants.",
            }
        obj["properties"] = {**server, **obj["properties"]}
        desc = ks.description
        if ks.read_only:
            desc += " Read-only."
        if not ks.creatable:
            desc += " Not creatable by clients."
        obj["description"] = desc.strip()
        obj["x-avi-kind"] = ks.kind
        components[ks.title] = obj
    return components
