"""Output rendering: tables, JSON and YAML of the same data."""

from __future__ import annotations

import json

import yaml

from avictl import render

POOL = {
    "url": "http://h/api/pool/pool-1", "uuid": "pool-1", "name": "web",
    "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
    "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80}, {"ip": {"addr": "10.0.0.2", "type": "V4"}, "port": 81}],
    "health_monitor_refs": ["http://h/api/healthmonitor/healthmonitor-9#System-TCP"],
}


def test_table_aligns_columns() -> None:
    """Columns are padded to the widest cell; None shows as '-'; bools lower-case."""
    assert "A    BB\nxxx  -\ny    true" == render.table(["A", "BB"], [["xxx", None], ["y", True]])


def test_pool_table_shows_key_fields() -> None:
    """A pool row shows name, uuid, short algorithm, servers and monitor names."""
    lines = render.render_objects("pool", [POOL], "table").splitlines()
    assert ["NAME", "UUID", "ALGORITHM", "SERVERS", "MONITORS"] == lines[0].split()
    assert ["web", "pool-1", "round_robin", "10.0.0.1:80,10.0.0.2:81", "System-TCP"] == lines[1].split()


def test_vs_table_uses_ref_names() -> None:
    """Refs show as the names after '#'."""
    vs = {"name": "web", "uuid": "virtualservice-1", "vsvip_ref": "http://h/api/vsvip/vsvip-1#web-vsvip",
          "services": [{"port": 8080}, {"port": 8443}], "pool_ref": "/api/pool?name=web-pool",
          "se_group_ref": "http://h/api/serviceenginegroup/serviceenginegroup-1#Default-Group", "enabled": True}
    row = render.render_objects("virtualservice", [vs], "table").splitlines()[1].split()
    assert ["web", "virtualservice-1", "web-vsvip", "8080,8443", "web-pool", "Default-Group", "true", "-"] == row
    placed = dict(vs, runtime={"serviceengines": ["Avi-1", "Avi-2"]})
    assert render.render_objects("virtualservice", [placed], "table").splitlines()[1].split()[-1] == "Avi-1,Avi-2"


def test_json_and_yaml_carry_the_same_data() -> None:
    """-o json and -o yaml are the raw objects, key order kept."""
    assert [POOL] == json.loads(render.render_objects("pool", [POOL], "json"))
    text = render.render_objects("pool", [POOL], "yaml")
    assert [POOL] == yaml.safe_load(text)
    assert text.index("uuid") < text.index("lb_algorithm")


def test_show_table_is_field_value() -> None:
    """A single object as a table lists its fields."""
    lines = render.render_object("pool", {"name": "web", "servers": [{"port": 80}]}, "table").splitlines()
    assert ["FIELD", "VALUE"] == lines[0].split()
    assert 'servers  [{"port":80}]' == lines[2]


def test_cluster_table() -> None:
    """Cluster status shows one row per node and the leader and state."""
    status = {"leader": "n2", "state": "CLUSTER_UP_HA_ACTIVE", "nodes": [
        {"id": "n1", "api": "http://127.0.0.1:1", "role": "follower", "term": 3, "commit_index": 10, "applied_revision": 8},
        {"id": "n2", "api": "http://127.0.0.1:2", "role": "leader", "term": 3, "commit_index": 10, "applied_revision": 8},
        {"id": "n3", "api": "http://127.0.0.1:3", "role": "unreachable"},
    ]}
    text = render.render_cluster(status, "table")
    lines = text.splitlines()
    assert ["ID", "API", "ROLE", "TERM", "COMMIT", "APPLIED"] == lines[0].split()
    assert ["n3", "http://127.0.0.1:3", "unreachable", "-", "-", "-"] == lines[3].split()
    assert "leader: n2  state: CLUSTER_UP_HA_ACTIVE" == lines[-1]
    assert status == json.loads(render.render_cluster(status, "json"))


def test_events_table() -> None:
    """Events show revision, UTC time, type, object and a short command id."""
    event = {"revision": 3, "type": "ObjectCreated", "time": 0.5, "command_id": "0123456789abcdef",
             "data": {"kind": "pool", "name": "web", "uuid": "pool-1"}}
    row = render.render_events([event], "table").splitlines()[1].split()
    assert ["3", "1970-01-01T00:00:00.500Z", "ObjectCreated", "pool/web", "0123456789ab"] == row


def test_ref_name() -> None:
    """A ref's name comes from #name, ?name=, else its last path segment."""
    assert "x" == render.ref_name("http://h/api/pool/pool-1#x")
    assert "y" == render.ref_name("/api/pool?name=y")
    assert "pool-1" == render.ref_name("/api/pool/pool-1")
    assert render.ref_name(None) is None


def test_apply_lines() -> None:
    """apply's table output is one 'action kind name' line per object."""
    results = [{"action": "created", "kind": "pool", "name": "a"}, {"action": "unchanged", "kind": "vsvip", "name": "b"}]
    assert "created pool a\nunchanged vsvip b" == render.render_apply(results, "table")
