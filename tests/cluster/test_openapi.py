"""Tests of the object schemas in /api/openapi.json, generated from cluster.schema's kinds."""

from __future__ import annotations

import json
from typing import Any

from cluster import schema
from cluster.api.openapi import openapi_schemas
from cluster.schema import KINDS


def _refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs_in(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs_in(v)]
    return []


def test_openapi_covers_every_kind_and_resolves() -> None:
    """Every kind has a component and every $ref points at a component."""
    comps = openapi_schemas()
    assert {k.title for k in KINDS.values()} <= set(comps)
    assert all(r.removeprefix("#/components/schemas/") in comps for r in _refs_in(comps))
    json.dumps(comps)


def test_openapi_reflects_the_field_definitions() -> None:
    """Defaults, ranges, enums, refs, required and write-only come from the same definitions."""
    comps = openapi_schemas()
    pool = comps["Pool"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 65535, "default": 80} == pool["default_server_port"]
    assert "healthmonitor" == pool["health_monitor_refs"]["items"]["x-avi-ref"]
    assert {"minimum": 1, "maximum": 20, "default": 1}.items() <= comps["Server"]["properties"]["ratio"].items()
    assert comps["vCenterConfiguration"]["properties"]["password"]["writeOnly"] is True
    assert ["vsvip_ref", "services"] == comps["VirtualService"]["required"][1:]
    assert list(schema.HA_MODES) == comps["ServiceEngineGroup"]["properties"]["ha_mode"]["enum"]
