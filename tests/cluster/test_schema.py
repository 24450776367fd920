"""Tests of cluster.schema: the object kinds, their defaults, validation, refs and PATCH."""

from __future__ import annotations

import copy
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from cluster import schema
from cluster.schema import (
    BUILTINS,
    KINDS,
    ValidationError,
    apply_patch,
    check_local_vip,
    check_local_vips,
    map_refs,
    name_ref,
    normalize,
    normalizers,
    redact,
    ref_fields,
)
from cluster.schema import refs as refs_module

# -- the exact bodies avisdk's samples post (virtualservice_examples_api.py) -----------------------


def sdk_server_obj(servers: list[str]) -> list[dict[str, Any]]:
    """VirtualServiceExample.get_server_obj, verbatim in behaviour (the port stays a string)."""
    servers_obj = []
    for server in servers:
        parts = server.split(":")
        ip_addr = parts[0]
        port = parts[1] if len(parts) == 2 else 80
        servers_obj.append({"ip": {"addr": ip_addr, "type": "V4"}, "port": port})
    return servers_obj


def sdk_pool(name: str, servers_obj: list[dict[str, Any]], health_monitors: Any = None) -> dict[str, Any]:
    """VirtualServiceExample.create_pool's body."""
    return {
        "lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS",
        "default_server_port": 80,
        "name": name,
        "servers": servers_obj,
        "health_monitor_refs": health_monitors,
    }


def sdk_vsvip(vsvip_name: str, vip: str) -> dict[str, Any]:
    """VirtualServiceExample.create_vsvip's body."""
    return {"name": vsvip_name, "vip": [{"vip_id": "1", "ip_address": {"addr": vip, "type": "V4"}}]}


def sdk_basic_vs(vs_name: str, pool_ref: str, vsvip_ref: str) -> dict[str, Any]:
    """VirtualServiceExample.create_basic_vs's virtualservice body."""
    services_obj = [{"port": 80, "enable_ssl": False}]
    return {
        "name": vs_name,
        "type": "VS_TYPE_NORMAL",
        "enabled": True,
        "services": services_obj,
        "application_profile_name": "System-HTTP",
        "pool_ref": pool_ref,
        "vsvip_ref": vsvip_ref,
    }


BASE = "http://127.0.0.1:9000"


def test_sdk_basic_vs_pool_body_normalizes() -> None:
    """The pool create_basic_vs posts (string port, null monitors) is accepted, port coerced."""
    body = sdk_pool("web-pool", sdk_server_obj(["10.10.10.1:8080", "10.10.10.2"]))
    got = normalize("pool", json.loads(json.dumps(body)))
    assert [{"ip": {"addr": "10.10.10.1", "type": "V4"}, "port": 8080, "ratio": 1, "enabled": True},
            {"ip": {"addr": "10.10.10.2", "type": "V4"}, "port": 80, "ratio": 1, "enabled": True}] == got["servers"]
    assert [] == got["health_monitor_refs"]


def test_sdk_custom_vs_pool_with_monitor_refs_normalizes() -> None:
    """The pool create_custom_vs posts, with three monitor URLs, keeps them as refs."""
    refs = [f"{BASE}/api/healthmonitor/healthmonitor-{i}#System-X" for i in range(3)]
    got = normalize("pool", sdk_pool("p", sdk_server_obj(["10.0.0.1:81"]), refs))
    assert refs == got["health_monitor_refs"]


def test_sdk_vsvip_body_normalizes() -> None:
    """The vsvip create_basic_vs posts is accepted unchanged apart from defaults."""
    got = normalize("vsvip", sdk_vsvip("web-vsvip", "127.10.0.1"))
    assert {
        "name": "web-vsvip",
        "cloud_ref": "/api/cloud?name=Default-Cloud",
        "vip": [{"vip_id": "1", "ip_address": {"addr": "127.10.0.1", "type": "V4"}}],
    } == got


def test_sdk_basic_vs_body_normalizes() -> None:
    """The virtualservice create_basic_vs posts is accepted; application_profile_name becomes a ref."""
    pool_ref, vsvip_ref = f"{BASE}/api/pool/pool-1", f"{BASE}/api/vsvip/vsvip-1"
    got = normalize("virtualservice", sdk_basic_vs("web", pool_ref, vsvip_ref))
    assert {
        "name": "web",
        "cloud_ref": "/api/cloud?name=Default-Cloud",
        "se_group_ref": "/api/serviceenginegroup?name=Default-Group",
        "vsvip_ref": vsvip_ref,
        "services": [{"port": 80, "enable_ssl": False}],
        "pool_ref": pool_ref,
        "application_profile_ref": "/api/applicationprofile?name=System-HTTP",
        "enabled": True,
        "type": "VS_TYPE_NORMAL",
    } == got


def test_sdk_bodies_round_trip_through_get_and_put() -> None:
    """A GET-modify-PUT of what the API returned is accepted and changes nothing."""
    stored = normalize("virtualservice", sdk_basic_vs("web", "/api/pool/pool-1", "/api/vsvip/vsvip-1"))
    response = {"uuid": "virtualservice-1", "url": f"{BASE}/api/virtualservice/virtualservice-1",
                "tenant_ref": f"{BASE}/api/tenant/tenant-1#admin", "_last_modified": "7", **redact("virtualservice", stored)}
    assert stored == normalize("virtualservice", response, existing=stored)


# -- defaults --------------------------------------------------------------------------------------


def test_pool_defaults() -> None:
    """A pool with only a name gets the brief's defaults."""
    assert {
        "name": "p",
        "cloud_ref": "/api/cloud?name=Default-Cloud",
        "servers": [],
        "default_server_port": 80,
        "lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS",
        "health_monitor_refs": [],
        "graceful_disable_timeout": 1,
    } == normalize("pool", {"name": "p"})


def test_server_defaults() -> None:
    """A server gets ratio 1, enabled true, type V4, and no port (the pool's default applies)."""
    got = normalize("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}}]})
    assert [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "ratio": 1, "enabled": True}] == got["servers"]


def test_consistent_hash_gets_source_ip_hash() -> None:
    """lb_algorithm_hash defaults to source IP only when the algorithm is consistent hash."""
    got = normalize("pool", {"name": "p", "lb_algorithm": "LB_ALGORITHM_CONSISTENT_HASH"})
    assert "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS" == got["lb_algorithm_hash"]
    assert "lb_algorithm_hash" not in normalize("pool", {"name": "p"})


def test_healthmonitor_defaults() -> None:
    """A monitor gets 10 s interval, 4 s timeout, 2/2 checks."""
    assert {
        "name": "m",
        "type": "HEALTH_MONITOR_TCP",
        "send_interval": 10,
        "receive_timeout": 4,
        "successful_checks": 2,
        "failed_checks": 2,
    } == normalize("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP"})


def test_http_monitor_defaults() -> None:
    """An HTTP monitor gets "GET / HTTP/1.0" and HTTP_2XX, also when http_monitor is partial."""
    full = {"http_request": "GET / HTTP/1.0", "http_response_code": ["HTTP_2XX"]}
    assert full == normalize("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_HTTP"})["http_monitor"]
    partial = {"name": "m", "type": "HEALTH_MONITOR_HTTP", "http_monitor": {"http_request": "HEAD /health HTTP/1.1"}}
    assert ["HTTP_2XX"] == normalize("healthmonitor", partial)["http_monitor"]["http_response_code"]


def test_segroup_defaults() -> None:
    """An SE group gets the brief's sizing, HA and rebalance defaults."""
    got = normalize("serviceenginegroup", {"name": "g"})
    expected = {
        "ha_mode": "HA_MODE_SHARED", "memory_per_se": 2048, "vcpus_per_se": 1, "min_scaleout_per_vs": 1,
        "max_scaleout_per_vs": 4, "max_se": 10, "max_vs_per_se": 10, "buffer_se": 1, "max_cpu_usage": 80,
        "min_cpu_usage": 30, "auto_rebalance": False, "vs_scalein_timeout": 30, "se_deprovision_delay": 120,
        "se_name_prefix": "Avi", "cloud_ref": "/api/cloud?name=Default-Cloud",
    }
    assert expected == {k: got[k] for k in expected}


def test_virtualservice_defaults() -> None:
    """A VS gets Default-Group, Default-Cloud, System-HTTP, enabled and VS_TYPE_NORMAL."""
    got = normalize("virtualservice", {"name": "v", "vsvip_ref": "/api/vsvip/vsvip-1", "services": [{"port": 80}]})
    assert {
        "name": "v",
        "cloud_ref": "/api/cloud?name=Default-Cloud",
        "se_group_ref": "/api/serviceenginegroup?name=Default-Group",
        "vsvip_ref": "/api/vsvip/vsvip-1",
        "services": [{"port": 80, "enable_ssl": False}],
        "application_profile_ref": "/api/applicationprofile?name=System-HTTP",
        "enabled": True,
        "type": "VS_TYPE_NORMAL",
    } == got


def test_cloud_defaults() -> None:
    """A cloud is local by default, and a vCenter cloud gets WRITE_ACCESS."""
    assert {"name": "c", "vtype": "CLOUD_NONE"} == normalize("cloud", {"name": "c"})
    body = {"name": "vc", "vtype": "CLOUD_VCENTER",
            "vcenter_configuration": {"vcenter_url": "https://vc", "username": "u", "password": "pw", "datacenter": "DC0"}}
    assert "WRITE_ACCESS" == normalize("cloud", body)["vcenter_configuration"]["privilege"]


def test_vip_ids_are_assigned_when_omitted() -> None:
    """VIPs without vip_id get the smallest unused "1", "2", ..."""
    got = normalize("vsvip", {"name": "v", "vip": [{"ip_address": {"addr": "127.1.0.1"}},
                                                   {"vip_id": "1", "ip_address": {"addr": "127.1.0.2"}}]})
    assert ["2", "1"] == [v["vip_id"] for v in got["vip"]]


def test_builtins_are_normalized_and_ordered() -> None:
    """Every built-in body is its own normal form, and each by-name ref names an earlier built-in."""
    seen: set[tuple[str, str]] = set()
    for kind, name, body in BUILTINS:
        assert name == body["name"]
        assert body == normalize(kind, body, internal=True)
        for _path, target, value in ref_fields(kind, body):
            assert (target, value.split("=", 1)[1]) in seen
        seen.add((kind, name))
    assert {("tenant", "admin"), ("cloud", "Default-Cloud"), ("serviceenginegroup", "Default-Group"),
            ("healthmonitor", "System-TCP"), ("healthmonitor", "System-HTTP"), ("healthmonitor", "System-Ping"),
            ("applicationprofile", "System-HTTP"), ("applicationprofile", "System-L4-Application")} == seen


# -- errors name the field -------------------------------------------------------------------------

VS = {"name": "v", "vsvip_ref": "/api/vsvip/vsvip-1", "services": [{"port": 80}]}
POOL2 = {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}}, {"ip": {"addr": "10.0.0.2"}, "ratio": 21}]}

ERRORS = [
    # unknown fields, top level and nested
    ("pool", {"name": "p", "fail_action": {}}, "fail_action", "unknown field"),
    ("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}, "hostname": "a"}]}, "servers[0].hostname", "unknown field"),
    ("virtualservice", {**VS, "ssl_profile_name": "System-Standard"}, "ssl_profile_name", "unknown field"),
    ("cloud", {"name": "c", "vtype": "CLOUD_VCENTER", "vcenter_configuration": {"vcenter_url": "x", "username": "u",
               "password": "p", "content_lib": {}}}, "vcenter_configuration.content_lib", "unknown field"),
    # wrong types
    ("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}}, {"ip": {"addr": "10.0.0.2"}, "ratio": "x"}]},
     "servers[1].ratio", "expected integer, got string"),
    ("pool", {"name": "p", "servers": {"ip": {"addr": "10.0.0.1"}}}, "servers", "expected array, got object"),
    ("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}, "enabled": "yes"}]}, "servers[0].enabled",
     "expected boolean, got string"),
    ("pool", {"name": "p", "default_server_port": True}, "default_server_port", "expected integer, got boolean"),
    # int() refuses text of more than 4 300 digits: refused as text, not a 500
    ("pool", {"name": "p", "default_server_port": "1" * 5000}, "default_server_port", "expected integer, got string"),
    ("pool", {"name": "p", "servers": [None]}, "servers[0]", "got null"),
    ("pool", {"name": 5}, "name", "expected string, got integer"),
    ("virtualservice", {**VS, "pool_ref": 3}, "pool_ref", "expected string (a reference), got integer"),
    ("vsvip", {"name": "v", "vip": [{"vip_id": 1, "ip_address": {"addr": "127.1.1.1"}}]}, "vip[0].vip_id", "expected string"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_HTTP", "http_monitor": "GET /"}, "http_monitor", "expected object"),
    # ranges
    ("pool", POOL2, "servers[1].ratio", "between 1 and 20"),
    ("pool", {"name": "p", "default_server_port": 70000}, "default_server_port", "between 1 and 65535"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP", "send_interval": 3601}, "send_interval", "between 1 and 3600"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP", "failed_checks": 0}, "failed_checks", "between 1 and 50"),
    ("serviceenginegroup", {"name": "g", "memory_per_se": 512}, "memory_per_se", "between 1024 and 131072"),
    ("serviceenginegroup", {"name": "g", "max_cpu_usage": 95}, "max_cpu_usage", "between 40 and 90"),
    ("serviceenginegroup", {"name": "g", "min_cpu_usage": 10}, "min_cpu_usage", "between 20 and 60"),
    ("serviceenginegroup", {"name": "g", "max_scaleout_per_vs": 65}, "max_scaleout_per_vs", "between 1 and 64"),
    ("virtualservice", {**VS, "services": [{"port": 0}]}, "services[0].port", "between 1 and 65535"),
    # enums list the allowed values
    ("pool", {"name": "p", "lb_algorithm": "LB_ALGORITHM_RANDOM"}, "lb_algorithm",
     "not one of: LB_ALGORITHM_LEAST_CONNECTIONS, LB_ALGORITHM_ROUND_ROBIN, LB_ALGORITHM_CONSISTENT_HASH"),
    ("serviceenginegroup", {"name": "g", "ha_mode": "active_standby"}, "ha_mode",
     "not one of: HA_MODE_SHARED, HA_MODE_SHARED_PAIR, HA_MODE_LEGACY_ACTIVE_STANDBY"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_UDP"}, "type", "HEALTH_MONITOR_TCP, HEALTH_MONITOR_HTTP"),
    ("vsvip", {"name": "v", "vip": [{"ip_address": {"addr": "127.1.1.1", "type": "V6"}}]}, "vip[0].ip_address.type", "not one of: V4"),
    ("virtualservice", {**VS, "application_profile_name": "System-Secure-HTTP"}, "application_profile_name",
     "not one of: System-HTTP, System-L4-Application"),
    ("serviceenginegroup", {"name": "g", "auto_rebalance_criteria": ["SE_AUTO_REBALANCE_RAM"]}, "auto_rebalance_criteria[0]",
     "SE_AUTO_REBALANCE_CPU"),
    # required
    ("pool", {"servers": []}, "name", "is required"),
    ("pool", {"name": "  "}, "name", "must not be empty"),
    ("healthmonitor", {"name": "m"}, "type", "is required"),
    ("virtualservice", {"name": "v", "services": [{"port": 80}]}, "vsvip_ref", "is required"),
    ("virtualservice", {"name": "v", "vsvip_ref": "/api/vsvip/vsvip-1"}, "services", "is required"),
    ("virtualservice", {**VS, "services": []}, "services", "at least 1 item"),
    ("vsvip", {"name": "v", "vip": [{"vip_id": "1"}]}, "vip[0].ip_address", "is required"),
    ("pool", {"name": "p", "servers": [{"port": 80}]}, "servers[0].ip", "is required"),
    ("cloud", {"name": "c", "vtype": "CLOUD_VCENTER"}, "vcenter_configuration", "is required"),
    ("cloud", {"name": "c", "vtype": "CLOUD_VCENTER", "vcenter_configuration": {"vcenter_url": "x", "username": "u"}},
     "vcenter_configuration.password", "is required"),
    # formats and duplicates
    ("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.300"}}]}, "servers[0].ip.addr", "not a valid IPv4 address"),
    ("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}, "port": 80}, {"ip": {"addr": "10.0.0.1"}, "port": "80"}]},
     "servers[1]", "duplicate of servers[0]"),
    ("virtualservice", {**VS, "services": [{"port": 80}, {"port": 80, "enable_ssl": True}]}, "services[1]", "duplicate"),
    ("vsvip", {"name": "v", "vip": [{"vip_id": "a", "ip_address": {"addr": "127.1.1.1"}},
                                    {"vip_id": "a", "ip_address": {"addr": "127.1.1.2"}}]}, "vip[1]", "same vip_id"),
    ("pool", {"name": "p", "health_monitor_refs": ["/api/healthmonitor/h-1", "/api/healthmonitor/h-1"]},
     "health_monitor_refs[1]", "duplicate"),
    ("virtualservice", {**VS, "pool_ref": ""}, "pool_ref", "must not be empty"),
    # cross-field rules
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP", "send_interval": 5, "receive_timeout": 5}, "receive_timeout",
     "must be less than send_interval (5)"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP", "send_interval": 2}, "receive_timeout", "less than send_interval"),
    ("serviceenginegroup", {"name": "g", "min_cpu_usage": 50, "max_cpu_usage": 45}, "min_cpu_usage", "less than max_cpu_usage"),
    ("serviceenginegroup", {"name": "g", "min_scaleout_per_vs": 3, "max_scaleout_per_vs": 2}, "min_scaleout_per_vs",
     "at most max_scaleout_per_vs (2)"),
    ("pool", {"name": "p", "lb_algorithm_hash": "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS"}, "lb_algorithm_hash",
     "only allowed when lb_algorithm is LB_ALGORITHM_CONSISTENT_HASH"),
    ("healthmonitor", {"name": "m", "type": "HEALTH_MONITOR_TCP", "http_monitor": {}}, "http_monitor",
     "only allowed when type is HEALTH_MONITOR_HTTP"),
    ("cloud", {"name": "c", "vcenter_configuration": {"privilege": "NO_ACCESS"}}, "vcenter_configuration",
     "only allowed when vtype is CLOUD_VCENTER"),
]


@pytest.mark.parametrize(("kind", "body", "field", "fragment"), ERRORS, ids=[f"{e[0]}:{e[2]}:{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_the_field(kind: str, body: dict[str, Any], field: str, fragment: str) -> None:
    """Each refusal names the offending field's dotted path and says what is wrong."""
    with pytest.raises(ValidationError) as info:
        normalize(kind, body)
    assert field == info.value.field
    assert fragment in info.value.message
    assert f"{field}: {info.value.message}" == str(info.value)


def test_unknown_kind_is_refused() -> None:
    """An unknown kind is a ValidationError listing the known kinds."""
    with pytest.raises(ValidationError, match="known: applicationprofile, cloud"):
        normalize("poolgroup", {"name": "x"})


def test_http_profile_holds_the_limits_the_se_enforces_and_nothing_else() -> None:
    """An HTTP profile gets http_profile with the product's defaults; a value out of the product's
    range, a field avictl does not enforce, and http_profile on an L4 profile are refused by name."""
    http = normalize("applicationprofile", {"name": "x", "type": "APPLICATION_PROFILE_TYPE_HTTP"})
    assert {"client_max_header_size": 12, "client_max_request_size": 48, "max_header_count": 256, "client_header_timeout": 10000} == http["http_profile"]
    assert "http_profile" not in normalize("applicationprofile", {"name": "y", "type": "APPLICATION_PROFILE_TYPE_L4"})
    for body, field in [
        ({"http_profile": {"client_max_header_size": 65}}, "http_profile.client_max_header_size"),
        ({"http_profile": {"client_header_timeout": 5}}, "http_profile.client_header_timeout"),
        ({"http_profile": {"max_header_count": 4097}}, "http_profile.max_header_count"),
        ({"http_profile": {"keepalive_timeout": 30000}}, "http_profile.keepalive_timeout"),
        ({"http_profile": {"client_max_body_size": 0}}, "http_profile.client_max_body_size"),
        ({"type": "APPLICATION_PROFILE_TYPE_L4", "http_profile": {"max_header_count": 10}}, "http_profile"),
    ]:
        with pytest.raises(ValidationError) as refused:
            normalize("applicationprofile", {"name": "x", "type": "APPLICATION_PROFILE_TYPE_HTTP", **body})
        assert field == refused.value.field


def test_service_engine_is_not_client_creatable() -> None:
    """Clients cannot POST a service engine, but may PUT its enable_state."""
    assert not KINDS["serviceengine"].creatable
    with pytest.raises(ValidationError, match="created by the system"):
        normalize("serviceengine", {"name": "se-1"})
    stored = normalize("serviceengine", {"name": "se-1", "resources": {"num_vcpus": 1, "memory": 2048, "disk": 15},
                                         "se_group_ref": "/api/serviceenginegroup/g-1"}, internal=True)
    put = {**stored, "enable_state": "SE_STATE_DISABLED", "resources": {"num_vcpus": 64}, "se_group_ref": "/api/x"}
    got = normalize("serviceengine", put, existing=stored)
    assert "SE_STATE_DISABLED" == got["enable_state"]
    assert stored["resources"] == got["resources"]
    assert "/api/serviceenginegroup/g-1" == got["se_group_ref"]


# -- nulls and server-managed fields ---------------------------------------------------------------


def test_nulls_count_as_not_given() -> None:
    """null at any depth, even for fields avictl does not implement, means "not given"."""
    body = {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1", "type": None}, "port": None, "ratio": None}],
            "lb_algorithm": None, "health_monitor_refs": None, "description": None, "fail_action": None,
            "connection_ramp_duration": None}
    assert normalize("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}}]}) == normalize("pool", body)


def test_server_managed_fields_are_accepted_and_dropped() -> None:
    """uuid, url, _last_modified and tenant_ref may be sent back, and are not in the stored form."""
    body = {"name": "p", "uuid": "pool-1", "url": f"{BASE}/api/pool/pool-1", "_last_modified": "12",
            "tenant_ref": f"{BASE}/api/tenant/tenant-1#admin"}
    assert normalize("pool", {"name": "p"}) == normalize("pool", body)


def test_server_managed_fields_are_unknown_when_nested() -> None:
    """Server-managed names are only special at the top level."""
    with pytest.raises(ValidationError) as info:
        normalize("pool", {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}, "uuid": "x"}]})
    assert "servers[0].uuid" == info.value.field


def test_integer_strings_and_integral_floats_are_coerced() -> None:
    """"8080" and 8080.0 are read as 8080 (protobuf JSON mapping); "80.5" is refused."""
    got = normalize("pool", {"name": "p", "default_server_port": "8080", "graceful_disable_timeout": 5.0})
    assert (8080, 5) == (got["default_server_port"], got["graceful_disable_timeout"])
    with pytest.raises(ValidationError, match="expected integer"):
        normalize("pool", {"name": "p", "default_server_port": "80.5"})


# -- PUT with existing -----------------------------------------------------------------------------

VCENTER: dict[str, Any] = {"name": "vc", "vtype": "CLOUD_VCENTER",
           "vcenter_configuration": {"vcenter_url": "https://vc", "username": "u", "password": "s3cret", "datacenter": "DC0"}}


def test_redact_removes_write_only_password() -> None:
    """Responses never carry the vCenter password."""
    stored = normalize("cloud", VCENTER)
    out = redact("cloud", stored)
    assert "password" not in out["vcenter_configuration"]
    assert "s3cret" == stored["vcenter_configuration"]["password"]


def test_put_of_redacted_body_keeps_password() -> None:
    """A GET-modify-PUT without the password keeps the stored one."""
    stored = normalize("cloud", VCENTER)
    body = redact("cloud", stored)
    body["vcenter_configuration"]["privilege"] = "READ_ACCESS"
    got = normalize("cloud", body, existing=stored)
    assert ("s3cret", "READ_ACCESS") == (got["vcenter_configuration"]["password"], got["vcenter_configuration"]["privilege"])


def test_put_can_change_password() -> None:
    """A PUT that sends a password replaces it."""
    stored = normalize("cloud", VCENTER)
    body = copy.deepcopy(VCENTER)
    body["vcenter_configuration"]["password"] = "new"
    assert "new" == normalize("cloud", body, existing=stored)["vcenter_configuration"]["password"]


def test_put_resets_omitted_fields_to_defaults() -> None:
    """PUT replaces the object: an omitted field returns to its default; an omitted name is kept."""
    stored = normalize("pool", {"name": "p", "default_server_port": 8080})
    assert {**stored, "default_server_port": 80} == normalize("pool", {"servers": []}, existing=stored)


# -- refs ------------------------------------------------------------------------------------------


def test_ref_fields_lists_every_ref() -> None:
    """ref_fields finds scalar and list refs with their paths and target kinds."""
    vs = normalize("virtualservice", {**VS, "pool_ref": "/api/pool/pool-1"})
    assert [
        ("cloud_ref", "cloud", "/api/cloud?name=Default-Cloud"),
        ("se_group_ref", "serviceenginegroup", "/api/serviceenginegroup?name=Default-Group"),
        ("vsvip_ref", "vsvip", "/api/vsvip/vsvip-1"),
        ("pool_ref", "pool", "/api/pool/pool-1"),
        ("application_profile_ref", "applicationprofile", "/api/applicationprofile?name=System-HTTP"),
    ] == ref_fields("virtualservice", vs)
    pool = normalize("pool", {"name": "p", "health_monitor_refs": ["/api/healthmonitor?name=System-TCP", "hm-2"]})
    assert [("health_monitor_refs[0]", "healthmonitor", "/api/healthmonitor?name=System-TCP"),
            ("health_monitor_refs[1]", "healthmonitor", "hm-2")] == ref_fields("pool", pool)[1:]


def test_map_refs_replaces_every_ref_and_only_refs() -> None:
    """map_refs calls fn(target, value) for each ref and copies everything else."""
    pool = normalize("pool", {"name": "p", "health_monitor_refs": ["a", "b"], "servers": [{"ip": {"addr": "10.0.0.1"}}]})
    got = map_refs("pool", pool, lambda target, value: f"{target}:{value}")
    assert ["healthmonitor:a", "healthmonitor:b"] == got["health_monitor_refs"]
    assert "cloud:/api/cloud?name=Default-Cloud" == got["cloud_ref"]
    assert pool["servers"] == got["servers"]
    assert ["a", "b"] == pool["health_monitor_refs"]


def test_map_refs_works_on_partial_bodies() -> None:
    """map_refs on a PATCH part touches only what is there, including a lone ref for a list."""
    assert {"health_monitor_refs": "X"} == map_refs("pool", {"health_monitor_refs": "x"}, lambda t, v: v.upper())
    assert {"servers": [{"ip": {"addr": "10.0.0.1"}}]} == map_refs(
        "pool", {"servers": [{"ip": {"addr": "10.0.0.1"}}]}, lambda t, v: 1 / 0)


def test_name_ref_encodes_names() -> None:
    """By-name refs percent-encode the name."""
    assert "/api/pool?name=web%20pool%26x" == name_ref("pool", "web pool&x")


# -- local cloud VIPs ------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["127.10.0.1", "127.0.0.2", "127.255.255.254"])
def test_local_vip_accepts_loopback(addr: str) -> None:
    """Any 127/8 address other than 127.0.0.1 is a valid local VIP."""
    check_local_vip(addr)


@pytest.mark.parametrize(("addr", "fragment"), [("127.0.0.1", "reserved"), ("10.0.0.1", "127.0.0.0/8"), ("nope", "IPv4")])
def test_local_vip_refuses(addr: str, fragment: str) -> None:
    """127.0.0.1, non-loopback and malformed addresses are refused."""
    with pytest.raises(ValidationError, match=fragment):
        check_local_vip(addr)


def test_check_local_vips_names_the_vip() -> None:
    """check_local_vips reports the path of the offending VIP."""
    body = normalize("vsvip", {"name": "v", "vip": [{"ip_address": {"addr": "127.1.0.1"}}, {"ip_address": {"addr": "10.1.1.1"}}]})
    with pytest.raises(ValidationError) as info:
        check_local_vips(body)
    assert "vip[1].ip_address.addr" == info.value.field


# -- PATCH -----------------------------------------------------------------------------------------


def stored_pool(**extra: Any) -> dict[str, Any]:
    body = {"name": "p", "servers": [{"ip": {"addr": "10.0.0.1"}, "port": 80}, {"ip": {"addr": "10.0.0.2"}, "port": 80}]}
    body.update(extra)
    return normalize("pool", body)


def patched(kind: str, stored: dict[str, Any], patch: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return normalize(kind, apply_patch(kind, stored, patch, **kw), existing=stored)


def addrs(pool: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(s["ip"]["addr"], s.get("port")) for s in pool["servers"]]


def test_patch_add_appends_servers() -> None:
    """add on servers appends the new ones with defaults filled."""
    got = patched("pool", stored_pool(), {"add": {"servers": [{"ip": {"addr": "10.0.0.3", "type": "V4"}, "port": "8080"}]}})
    assert [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 8080)] == addrs(got)
    assert 1 == got["servers"][2]["ratio"]


def test_patch_add_is_idempotent() -> None:
    """Adding a server that is already there merges into it instead of duplicating it."""
    once = patched("pool", stored_pool(), {"add": {"servers": [{"ip": {"addr": "10.0.0.2"}, "port": 80, "ratio": 5}]}})
    assert [("10.0.0.1", 80), ("10.0.0.2", 80)] == addrs(once)
    assert 5 == once["servers"][1]["ratio"]
    assert once == patched("pool", once, {"add": {"servers": [{"ip": {"addr": "10.0.0.2"}, "port": 80, "ratio": 5}]}})


def test_patch_add_scalar_list_skips_present_items() -> None:
    """Adding a monitor ref already present leaves the list unchanged."""
    stored = stored_pool(health_monitor_refs=["/api/healthmonitor/hm-1"])
    got = patched("pool", stored, {"add": {"health_monitor_refs": ["/api/healthmonitor/hm-1", "/api/healthmonitor/hm-2"]}})
    assert ["/api/healthmonitor/hm-1", "/api/healthmonitor/hm-2"] == got["health_monitor_refs"]


def test_patch_add_sets_scalars_and_merges_objects() -> None:
    """add on a scalar sets it; on an object it merges, keeping the stored fields."""
    stored = normalize("cloud", VCENTER)
    got = patched("cloud", stored, {"add": {"description": "lab", "vcenter_configuration": {"privilege": "READ_ACCESS"}}})
    assert ("lab", "READ_ACCESS", "s3cret") == (
        got["description"], got["vcenter_configuration"]["privilege"], got["vcenter_configuration"]["password"])


def test_patch_replace_sets_fields_and_whole_lists() -> None:
    """replace sets scalars and replaces lists whole."""
    got = patched("pool", stored_pool(), {"replace": {"lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
                                                      "servers": [{"ip": {"addr": "10.0.0.9"}}]}})
    assert "LB_ALGORITHM_ROUND_ROBIN" == got["lb_algorithm"]
    assert [("10.0.0.9", None)] == addrs(got)


def test_patch_delete_removes_matching_servers() -> None:
    """delete removes every server matching the fields given (ansible sends just the address)."""
    got = patched("pool", stored_pool(), {"delete": {"servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}}]}})
    assert [("10.0.0.2", 80)] == addrs(got)


def test_patch_delete_of_absent_item_changes_nothing() -> None:
    """Deleting a server that is not there is a no-op."""
    stored = stored_pool()
    assert stored == patched("pool", stored, {"delete": {"servers": [{"ip": {"addr": "10.9.9.9"}}]}})


def test_patch_delete_resets_scalar_to_default() -> None:
    """delete on a scalar field resets it to its default, whatever value is given (null too)."""
    stored = stored_pool(default_server_port=8080, description="x")
    got = patched("pool", stored, {"delete": {"default_server_port": 8080, "description": None}})
    assert 80 == got["default_server_port"]
    assert "description" not in got


def test_patch_delete_inside_object() -> None:
    """delete with an object value deletes inside the stored object."""
    stored = normalize("cloud", VCENTER)
    got = patched("cloud", stored, {"delete": {"vcenter_configuration": {"datacenter": "DC0"}}})
    assert "datacenter" not in got["vcenter_configuration"]
    assert "s3cret" == got["vcenter_configuration"]["password"]


def test_patch_delete_required_field_is_refused_by_normalize() -> None:
    """Resetting a required field leaves a body normalize refuses, naming the field."""
    stored = normalize("virtualservice", VS)
    with pytest.raises(ValidationError) as info:
        patched("virtualservice", stored, {"delete": {"vsvip_ref": None}})
    assert "vsvip_ref" == info.value.field


def test_patch_ops_apply_replace_add_delete_in_order() -> None:
    """In one PATCH, replace runs before add, and add before delete."""
    patch = {"delete": {"servers": [{"ip": {"addr": "10.0.0.5"}}]}, "add": {"servers": [{"ip": {"addr": "10.0.0.5"}}]},
             "replace": {"servers": [{"ip": {"addr": "10.0.0.4"}}]}}
    assert [("10.0.0.4", None)] == addrs(patched("pool", stored_pool(), patch))


def test_patch_with_alias_replaces_ref() -> None:
    """Setting application_profile_name by PATCH replaces the stored application_profile_ref."""
    stored = normalize("virtualservice", VS)
    got = patched("virtualservice", stored, {"replace": {"application_profile_name": "System-L4-Application"}})
    assert "/api/applicationprofile?name=System-L4-Application" == got["application_profile_ref"]


def test_patch_ignores_server_managed_fields_and_nulls() -> None:
    """uuid or tenant_ref inside a PATCH part and null values change nothing."""
    stored = stored_pool()
    assert stored == patched("pool", stored, {"replace": {"uuid": "pool-9", "tenant_ref": "x", "lb_algorithm": None}})


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"merge": {}}, "merge"),
        ({"add": {"hostname": "x"}}, "hostname"),
        ({"add": []}, "add"),
        ({}, ""),
        ({"json_patch": [{"op": "move", "path": "/servers"}]}, "json_patch[0].op"),
        ({"json_patch": [{"op": "remove", "path": "/servers/7"}]}, "json_patch[0].path"),
        ({"json_patch": [{"op": "add", "path": "/hostname", "value": 1}]}, "hostname"),
    ],
)
def test_patch_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    """Malformed PATCH bodies are refused with the offending key."""
    with pytest.raises(ValidationError) as info:
        apply_patch("pool", stored_pool(), patch)
    assert field == info.value.field


def test_patch_resolve_makes_refs_comparable() -> None:
    """With resolve, a monitor given as a URL deletes the stored canonical ref."""
    stored = stored_pool(health_monitor_refs=["/api/healthmonitor/hm-1", "/api/healthmonitor/hm-2"])

    def resolve(target: str, value: str) -> str:
        return f"/api/{target}/{value.rsplit('/', 1)[-1].split('#')[0]}"

    got = patched("pool", stored, {"delete": {"health_monitor_refs": [f"{BASE}/api/healthmonitor/hm-1#System-TCP"]}},
                  resolve=resolve)
    assert ["/api/healthmonitor/hm-2"] == got["health_monitor_refs"]


def test_json_patch_sdk_sample_add_server() -> None:
    """patch_api_example.add_server_to_pool's body appends the servers."""
    data = {"json_patch": [{"op": "add", "path": "/servers", "value": sdk_server_obj(["10.0.0.3:8080"])}]}
    assert [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 8080)] == addrs(patched("pool", stored_pool(), data))


def test_json_patch_sdk_sample_remove_and_replace_server() -> None:
    """patch_api_example's remove and replace by index work on servers."""
    removed = patched("pool", stored_pool(), {"json_patch": [{"op": "remove", "path": "/servers/0"}]})
    assert [("10.0.0.2", 80)] == addrs(removed)
    data = {"json_patch": [{"op": "replace", "path": "/servers/1", "value": sdk_server_obj(["10.0.0.7"])[0]}]}
    assert [("10.0.0.1", 80), ("10.0.0.7", 80)] == addrs(patched("pool", stored_pool(), data))


def test_json_patch_nested_replace() -> None:
    """A pointer into a server replaces one field of it."""
    data = {"json_patch": [{"op": "replace", "path": "/servers/0/ratio", "value": 7}]}
    assert 7 == patched("pool", stored_pool(), data)["servers"][0]["ratio"]


def test_apply_patch_does_not_mutate_stored() -> None:
    """apply_patch returns a new body and leaves its input alone."""
    stored = stored_pool()
    before = copy.deepcopy(stored)
    apply_patch("pool", stored, {"add": {"servers": [{"ip": {"addr": "10.0.0.3"}}]}, "delete": {"servers": [{"port": 80}]}})
    assert before == stored


# -- properties over generated bodies --------------------------------------------------------------

_NAME = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)


def _field_strategy(f: schema.Field) -> st.SearchStrategy[Any]:
    t = f.type
    if t == "string":
        if f.format == "ipv4":
            return st.ip_addresses(v=4).map(str)
        if f.enum:
            return st.sampled_from(f.enum)
        return _NAME if f.min_length else st.text(string.printable, max_size=12)
    if t == "integer":
        lo = f.minimum if f.minimum is not None else -5
        hi = f.maximum if f.maximum is not None else lo + 5000
        ints = st.integers(lo, hi)
        return st.one_of(ints, ints.map(str))
    if t == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if t == "boolean":
        return st.booleans()
    if t == "enum":
        return st.sampled_from(f.enum)
    if t == "ref":
        assert f.ref is not None
        return st.sampled_from([name_ref(f.ref, "x"), f"/api/{f.ref}/{f.ref}-1", f"{BASE}/api/{f.ref}/{f.ref}-2#n"])
    if t == "object":
        assert f.fields is not None
        return _object_strategy(f.fields)
    if t == "list":
        assert f.item is not None
        return st.lists(_field_strategy(f.item), min_size=f.min_items or 0, max_size=3)
    raise AssertionError(t)


def _object_strategy(fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    required = {n: _field_strategy(f) for n, f in fields.items() if f.required}
    optional = {n: st.one_of(st.none(), _field_strategy(f)) for n, f in fields.items() if not f.required and not f.read_only}
    return st.fixed_dictionaries(required, optional=optional)


def _valid(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return normalize(kind, body, internal=True)
    except ValidationError:
        reject()
        raise  # reject() raises; this line is for type checkers


_BODIES = st.sampled_from(sorted(KINDS)).flatmap(lambda k: st.tuples(st.just(k), _object_strategy(KINDS[k].fields)))
_PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


@_PROPERTY
@given(_BODIES)
def test_normalize_is_idempotent(case: tuple[str, dict[str, Any]]) -> None:
    """For generated valid bodies, normalize(normalize(x)) == normalize(x), as POST and as PUT."""
    kind, body = case
    once = _valid(kind, body)
    assert once == normalize(kind, copy.deepcopy(once), internal=True)
    assert once == normalize(kind, copy.deepcopy(once), existing=once, internal=True)


@_PROPERTY
@given(_BODIES)
def test_redacted_put_round_trips(case: tuple[str, dict[str, Any]]) -> None:
    """PUT of a redacted response body with existing=stored gives back the stored object."""
    kind, body = case
    once = _valid(kind, body)
    assert once == normalize(kind, redact(kind, once), existing=once, internal=True)


@_PROPERTY
@given(_BODIES)
def test_map_refs_round_trips_and_matches_ref_fields(case: tuple[str, dict[str, Any]]) -> None:
    """map_refs visits exactly the refs ref_fields reports, and identity mapping changes nothing."""
    kind, body = case
    once = _valid(kind, body)
    seen: list[tuple[str, str]] = []

    def record(target: str, value: str) -> str:
        seen.append((target, value))
        return value

    assert once == map_refs(kind, once, record)
    assert [(t, v) for _p, t, v in ref_fields(kind, once)] == seen
    assert once == normalize(kind, map_refs(kind, once, lambda t, v: v), internal=True)


@_PROPERTY
@given(_BODIES)
def test_identity_patch_changes_nothing(case: tuple[str, dict[str, Any]]) -> None:
    """Adding back what is stored (add of every field) is a no-op after normalize."""
    kind, body = case
    once = _valid(kind, body)
    part = {k: v for k, v in redact(kind, once).items()}
    assert once == normalize(kind, apply_patch(kind, once, {"add": part}), existing=once, internal=True)


def test_switching_away_from_consistent_hash_drops_the_carried_hash_key() -> None:
    """PUT of a GET'd consistent-hash pool with another algorithm drops the hash key instead of refusing."""
    stored = normalize("pool", {"name": "p", "lb_algorithm": "LB_ALGORITHM_CONSISTENT_HASH"})
    body = dict(stored, lb_algorithm="LB_ALGORITHM_ROUND_ROBIN")
    assert "lb_algorithm_hash" not in normalize("pool", body, existing=stored)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet="0123456789.", max_size=17),
    st.tuples(*[st.integers(-5, 300)] * 4).map(lambda t: ".".join(map(str, t))),
    st.text(max_size=20),
))
def test_ipv4_check_agrees_with_ipaddress(text: str) -> None:
    """The fast dotted-quad check accepts exactly what ipaddress.IPv4Address accepts."""
    import ipaddress

    from cluster.schema.normalizers import _IPV4

    try:
        ipaddress.IPv4Address(text)
        valid = True
    except ValueError:
        valid = False
    assert bool(_IPV4.match(text)) == valid, text


# -- the compiled normalizers agree with the reference walk ----------------------------------------

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 70000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["", " ", "80", " 7 ", "+3", "1.5", "127.0.0.2", "256.1.1.1", "V4", "LB_ALGORITHM_CONSISTENT_HASH",
                     "HEALTH_MONITOR_HTTP", "CLOUD_VCENTER", "READ_ACCESS", "HA_MODE_SHARED_PAIR", "System-L4-Application"]),
    st.sampled_from([[], {}, [None], [1, 1], ["a", "a"], {"addr": "127.0.0.2"}, 80.0, 2.5]),
).map(copy.deepcopy)  # perturbing mutates what it inserted: never a value hypothesis holds


@st.composite
def _perturbed(draw: st.DrawFn) -> tuple[str, Any, Any, bool]:
    """(kind, body, existing or None, internal): a generated body with a few fields replaced by
    junk, removed or added at any depth, and sometimes a stored object to PUT over."""
    kind, body = draw(_BODIES)
    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(0, 3))):
        holders: list[Any] = [body]
        stack: list[Any] = [body]
        while stack:
            node = stack.pop()
            children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
            for child in children:
                if isinstance(child, (dict, list)):
                    holders.append(child)
                    stack.append(child)
        holder = draw(st.sampled_from(holders))
        if isinstance(holder, dict):
            keys = sorted(holder) + ["name", "port", "type", "extra", "uuid", "application_profile_name", "vip_id"]
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()) and key in holder:
                del holder[key]
            else:
                holder[key] = draw(_JUNK)
        elif holder:
            holder[draw(st.integers(0, len(holder) - 1))] = draw(_JUNK)
        else:
            holder.append(draw(_JUNK))
    existing = None
    if draw(st.booleans()):
        try:
            existing = normalize(kind, draw(_object_strategy(KINDS[kind].fields)), internal=True)
        except ValidationError:
            existing = None
    return kind, body, existing, draw(st.booleans())


_VS = {"name": "v", "vsvip_ref": "/api/vsvip?name=x", "services": [{"port": 80}], "application_profile_name": "System-L4-Application"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_perturbed())
@example(("virtualservice", _VS, None, False))
@example(("virtualservice", dict(_VS, application_profile_ref="/api/applicationprofile?name=System-HTTP"), None, True))
@example(("vsvip", {"name": "v", "vip": [{"ip_address": {"addr": "127.1.1.1"}}, {"vip_id": "1", "ip_address": {"addr": "127.1.1.2"}}]}, None, False))
def test_compiled_normalizer_agrees_with_the_reference(case: tuple[str, Any, Any, bool]) -> None:
    """On plain JSON input the compiled normalizer gives up exactly when the reference walk refuses,
    and otherwise returns the same stored body (values, types and key order), leaving its input as it was."""
    kind, body, existing, internal = case
    before = copy.deepcopy(body)
    try:
        expected: Any = schema.normalize_reference(kind, copy.deepcopy(body), existing=existing, internal=internal)
    except ValidationError:
        expected = None
    try:
        got = normalizers._compiled_normalizer(KINDS[kind], internal)(body, existing)
    except normalizers._Fallback:
        got = None
    assert repr(expected) == repr(got)
    assert before == body


def test_the_bulk_pool_body_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The body the bulk benchmark posts, with its port as a string too, never reaches the reference walk."""

    def refuse(*_args: Any, **_kw: Any) -> Any:
        raise AssertionError("fell back to the reference walk")

    monkeypatch.setattr(normalizers, "normalize_reference", refuse)
    body = {"name": "bench-1", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": "80"}]}
    assert 80 == normalize("pool", body)["servers"][0]["port"]


def test_a_refusal_is_worded_by_the_reference_walk() -> None:
    """An invalid body gets the reference walk's error, naming the field by its path."""
    with pytest.raises(ValidationError) as err:
        normalize("pool", {"name": "p", "servers": [{"ip": {"addr": "127.0.0.2"}, "port": 80}, {"ip": {"addr": "1.2.3.x"}}]})
    assert ("servers[1].ip.addr", "'1.2.3.x' is not a valid IPv4 address") == (err.value.field, err.value.message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_perturbed(), st.booleans())
@example(("cloud", {"name": "c", "vtype": "CLOUD_VCENTER", "vcenter_configuration": {"vcenter_url": "v", "password": "pw"}}, None, False), True)
@example(("pool", {"name": "p", "health_monitor_refs": "/api/healthmonitor?name=x", "servers": [None, {"ip": None}]}, None, False), False)
def test_compiled_ref_walks_agree_with_the_reference(case: tuple[str, Any, Any, bool], drop_write_only: bool) -> None:
    """On any body, valid or not, the compiled copy (map_refs, redact) and ref_fields give what the
    schema-walking _transform and _walk_refs give, calling the ref mapping in the same order."""
    kind, body, _existing, _internal = case
    if not isinstance(body, dict):
        return
    fields = KINDS[kind].fields
    calls: dict[str, list[tuple[str, str]]] = {"compiled": [], "reference": []}

    def mapper(who: str) -> Any:
        def on_ref(target: str, value: str) -> str:
            calls[who].append((target, value))
            return f"<{target}:{value}>"

        return on_ref

    before = copy.deepcopy(body)
    got = refs_module._compiled_transform(kind, drop_write_only)(body, mapper("compiled"))
    expected = refs_module._transform(schema.Field("object", fields=fields), body, mapper("reference"), drop_write_only)
    assert repr(expected) == repr(got)
    assert calls["reference"] == calls["compiled"]
    assert before == body
    walked = [ref for name, f in fields.items() if body.get(name) is not None for ref in refs_module._walk_refs(f, body[name], name)]
    assert walked == ref_fields(kind, body)
