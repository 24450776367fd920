"""--field parsing, alias and ref translation, and apply's diff/merge rules."""

from __future__ import annotations

import pytest

from avictl.errors import UsageFault
from avictl.objects import (
    canonical_kind,
    differences,
    expand_alias,
    merge,
    parse_fields,
    parse_server,
    parse_value,
    prepare,
    ref_target,
    to_ref,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80", 80), ("true", True), ("null", None), ("1.5", 1.5), ('"80"', "80"), ("[1, 2]", [1, 2]),
     ('{"a": 1}', {"a": 1}), ("round_robin", "round_robin"), ("", ""), ("NaN", "NaN"), ("127.0.0.1", "127.0.0.1")],
)
def test_parse_value(text: str, expected: object) -> None:
    """A value is JSON when it parses as JSON, else the text itself."""
    assert expected == parse_value(text)


def test_parse_fields_nested_and_json() -> None:
    """Dotted keys make nested objects; later keys win; JSON values keep their type."""
    fields = parse_fields([
        "max_se=4", "http_monitor.http_request=GET /health HTTP/1.0", 'http_monitor.http_response_code=["HTTP_2XX"]',
        "enabled=false", "max_se=5", "servers=[{\"ip\": {\"addr\": \"10.0.0.1\", \"type\": \"V4\"}, \"port\": 80}]",
        "note=a=b",
    ])
    assert {
        "max_se": 5,
        "http_monitor": {"http_request": "GET /health HTTP/1.0", "http_response_code": ["HTTP_2XX"]},
        "enabled": False,
        "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80}],
        "note": "a=b",
    } == fields


@pytest.mark.parametrize("bad", ["novalue", "=1", "a..b=1", ".a=1"])
def test_parse_fields_refuses_malformed(bad: str) -> None:
    """A field without KEY= or with an empty key segment is a usage error."""
    with pytest.raises(UsageFault):
        parse_fields([bad])


def test_parse_fields_refuses_nesting_under_a_value() -> None:
    """a=1 then a.b=2 cannot both hold."""
    with pytest.raises(UsageFault, match="already set"):
        parse_fields(["a=1", "a.b=2"])


def test_aliases() -> None:
    """CLI short values and kind aliases become the wire names."""
    assert "LB_ALGORITHM_ROUND_ROBIN" == expand_alias("pool", "lb_algorithm", "round_robin")
    assert "HA_MODE_LEGACY_ACTIVE_STANDBY" == expand_alias("serviceenginegroup", "ha_mode", "active_standby")
    assert "HEALTH_MONITOR_HTTP" == expand_alias("healthmonitor", "type", "http")
    assert "LB_ALGORITHM_ROUND_ROBIN" == expand_alias("pool", "lb_algorithm", "LB_ALGORITHM_ROUND_ROBIN")
    assert 3 == expand_alias("pool", "lb_algorithm", 3)
    assert "virtualservice" == canonical_kind("vs")
    assert "serviceenginegroup" == canonical_kind("segroup")
    assert "pool" == canonical_kind("pool")
    assert canonical_kind("nonsense") is None


def test_refs_by_name() -> None:
    """A bare name becomes /api/<kind>?name=<name>; URLs, paths and uuids are kept."""
    assert "serviceenginegroup" == ref_target("se_group_ref")
    assert "healthmonitor" == ref_target("health_monitor_refs")
    assert ref_target("name") is None
    assert "/api/pool?name=web%20pool" == to_ref("pool", "web pool")
    assert "/api/pool/pool-1" == to_ref("pool", "/api/pool/pool-1")
    assert "http://h/api/pool/pool-1#x" == to_ref("pool", "http://h/api/pool/pool-1#x")
    assert {
        "pool_ref": "/api/pool?name=web",
        "health_monitor_refs": ["/api/healthmonitor?name=System-TCP"],
        "lb_algorithm": "LB_ALGORITHM_CONSISTENT_HASH",
    } == prepare("pool", {"pool_ref": "web", "health_monitor_refs": ["System-TCP"], "lb_algorithm": "consistent_hash"})


def test_parse_server() -> None:
    """IP[:PORT] becomes a pool server in the wire format."""
    assert {"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 8080} == parse_server("10.0.0.1:8080")
    assert {"ip": {"addr": "10.0.0.1", "type": "V4"}} == parse_server("10.0.0.1")
    assert {"ip": {"addr": "::1", "type": "V6"}, "port": 80} == parse_server("[::1]:80")
    with pytest.raises(UsageFault):
        parse_server("web:80")
    with pytest.raises(UsageFault):
        parse_server("10.0.0.1:0")


STORED = {
    "url": "http://h/api/pool/pool-1", "uuid": "pool-1", "name": "web", "_last_modified": "7",
    "tenant_ref": "http://h/api/tenant/tenant-a#admin",
    "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN", "default_server_port": 80, "enabled": True,
    "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80, "ratio": 1, "enabled": True}],
    "health_monitor_refs": ["http://h/api/healthmonitor/healthmonitor-9#System-TCP"],
}


def test_unchanged_when_every_given_field_matches() -> None:
    """Only the fields the document names count; server fields and defaults are ignored."""
    desired = prepare("pool", {
        "kind": "pool", "name": "web", "lb_algorithm": "round_robin",
        "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80}],
        "health_monitor_refs": ["System-TCP"], "uuid": "whatever", "_last_modified": "1",
    })
    assert [] == differences(desired, STORED)


def test_refs_compare_by_name_or_uuid() -> None:
    """A by-name ref matches the stored #name; a uuid ref matches the stored uuid."""
    assert [] == differences({"health_monitor_refs": ["/api/healthmonitor/healthmonitor-9"]}, STORED)
    assert ["health_monitor_refs"] == differences({"health_monitor_refs": ["/api/healthmonitor?name=System-HTTP"]}, STORED)


def test_changes_are_named() -> None:
    """A differing scalar, list length, nested value or missing field is reported."""
    assert ["lb_algorithm"] == differences({"lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS"}, STORED)
    assert ["servers"] == differences({"servers": []}, STORED)
    assert ["servers"] == differences({"servers": [{"ip": {"addr": "10.0.0.2"}}]}, STORED)
    assert ["min_servers_up"] == differences({"min_servers_up": 1}, STORED)


def test_bool_is_not_int() -> None:
    """true and 1 differ (Python would say they are equal)."""
    assert ["enabled"] == differences({"enabled": 1}, STORED)
    assert ["default_server_port"] == differences({"default_server_port": True}, {"default_server_port": 1})


def test_empty_matches_absent() -> None:
    """An empty list or null in the document matches a field the server leaves out."""
    assert [] == differences({"health_monitor_refs": [], "description": None}, {"name": "x"})


def test_merge_keeps_unmentioned_and_replaces_lists() -> None:
    """Objects merge key by key; lists and scalars replace; kind is dropped."""
    stored = {"a": {"x": 1, "y": 2}, "l": [1, 2], "keep": True}
    assert {"a": {"x": 1, "y": 3}, "l": [9], "keep": True, "new": "v"} == merge(stored, {"kind": "pool", "a": {"y": 3}, "l": [9], "new": "v"})
    assert {"x": 1, "y": 2} == stored["a"]
