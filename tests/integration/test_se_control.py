"""The controller side of Service Engines: registration, placement as an event, slices, status."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

import pytest

from simulations.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.slow


def open_slice_stream(cluster: LocalCluster, node: str, se_uuid: str, version: int) -> Any:
    url = urllib.parse.urlsplit(cluster.api(node))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"/api/serviceengine/{se_uuid}/slice?watch=true&version={version}",
                 headers={"Authorization": f"Bearer {cluster.token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def next_slice(resp: Any) -> dict[str, Any]:
    while True:
        doc = json.loads(resp.readline())
        if not doc.get("heartbeat"):
            return doc


def test_register_place_stream_and_report(cluster3: LocalCluster) -> None:
    """An SE registers once, a VS placed on it appears in its slice stream on any node, and its report shows."""
    code, se = cluster3.request("n1", "POST", "/api/serviceengine/register", {"name": "se-1"})
    assert code == 200
    code, again = cluster3.request("n2", "POST", "/api/serviceengine/register", {"name": "se-1"})
    assert code == 200 and again["uuid"] == se["uuid"]

    _, hm = cluster3.request("n1", "POST", "/api/healthmonitor", {"name": "hm1", "type": "HEALTH_MONITOR_TCP", "send_interval": 2, "receive_timeout": 1})
    _, pool = cluster3.request("n1", "POST", "/api/pool", {"name": "p1", "default_server_port": 9001, "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
                                                          "servers": [{"ip": {"addr": "127.0.0.1", "type": "V4"}}, {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": 9002, "ratio": 2}],
                                                          "health_monitor_refs": [hm["url"]]})
    _, vip = cluster3.request("n1", "POST", "/api/vsvip", {"name": "v1", "vip": [{"ip_address": {"addr": "127.10.0.5", "type": "V4"}}]})
    # In a group with no SE of its own, so the leader's reconciler leaves it unplaced until it is placed by hand.
    _, group = cluster3.request("n1", "POST", "/api/serviceenginegroup", {"name": "by-hand"})
    code, vs = cluster3.request("n1", "POST", "/api/virtualservice", {"name": "vs1", "services": [{"port": 8080}], "pool_ref": pool["url"],
                                                                      "vsvip_ref": vip["url"], "se_group_ref": group["url"]})
    assert code == 201

    conn, resp = open_slice_stream(cluster3, "n3", se["uuid"], -1)
    empty = next_slice(resp)
    assert empty["virtual_services"] == []

    code, placed = cluster3.request("n2", "POST", f"/api/virtualservice/{vs['uuid']}/placement", {"serviceengine_refs": ["se-1"]})
    assert code == 200, placed
    assert placed["runtime"]["serviceengines"] == ["se-1"]
    current = next_slice(resp)
    assert current["revision"] > empty["revision"]
    [svc] = current["virtual_services"]
    assert (svc["vip"], svc["ports"], svc["application"]) == ("127.10.0.5", [8080], "http")
    assert [(s["ip"], s["port"], s["ratio"]) for s in svc["pool"]["servers"]] == [("127.0.0.1", 9001, 1), ("127.0.0.1", 9002, 2)]
    assert svc["pool"]["monitors"][0]["type"] == "HEALTH_MONITOR_TCP"

    cluster3.request("n1", "PATCH", f"/api/pool/{pool['uuid']}", {"replace": {"lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS"}})
    changed = next_slice(resp)
    assert changed["virtual_services"][0]["pool"]["lb_algorithm"] == "LB_ALGORITHM_LEAST_CONNECTIONS"
    conn.close()

    report = {"applied_revision": changed["revision"], "nack": None, "servers": {pool["uuid"]: {"127.0.0.1:9001": True, "127.0.0.1:9002": False}}}
    for node in cluster3.ids:
        assert cluster3.request(node, "POST", f"/api/serviceengine/{se['uuid']}/status", report)[0] == 200
    _, shown = cluster3.request("n2", "GET", f"/api/serviceengine/{se['uuid']}")
    assert shown["runtime"]["applied_revision"] == changed["revision"]
    assert shown["runtime"]["lag"] == 0
    assert shown["runtime"]["virtualservices"] == ["vs1"]
    _, pool_now = cluster3.request("n3", "GET", f"/api/pool/{pool['uuid']}")
    assert pool_now["runtime"]["servers"] == {"127.0.0.1:9001": {"se-1": "UP"}, "127.0.0.1:9002": {"se-1": "DOWN"}}
    code, _ = cluster3.request("n1", "PUT", f"/api/pool/{pool['uuid']}", pool_now)
    assert code == 200

    code, events = cluster3.request("n1", "GET", "/api/events?since=1&limit=1000")
    assert any(e["type"] == "VirtualServicePlaced" and e["data"]["vs_uuid"] == vs["uuid"] for e in events["results"])


def test_placement_refusals(cluster3: LocalCluster) -> None:
    """Placing on an unknown SE is refused naming the field; an SE with VSs cannot be deleted."""
    _, se = cluster3.request("n1", "POST", "/api/serviceengine/register", {"name": "se-2"})
    _, vip = cluster3.request("n1", "POST", "/api/vsvip", {"name": "v2", "vip": [{"ip_address": {"addr": "127.10.0.6", "type": "V4"}}]})
    _, vs = cluster3.request("n1", "POST", "/api/virtualservice", {"name": "vs2", "services": [{"port": 80}], "vsvip_ref": vip["url"]})
    code, body = cluster3.request("n1", "POST", f"/api/virtualservice/{vs['uuid']}/placement", {"serviceengine_refs": ["nope"]})
    assert code == 422 and body["error"]["field"] == "serviceengine_refs[0]"
    assert cluster3.request("n1", "POST", f"/api/virtualservice/{vs['uuid']}/placement", {"serviceengine_refs": ["se-2"]})[0] == 200
    code, body = cluster3.request("n2", "DELETE", f"/api/serviceengine/{se['uuid']}")
    assert code == 409 and "vs2" in body["error"]["message"]
    assert cluster3.request("n2", "DELETE", f"/api/virtualservice/{vs['uuid']}")[0] == 204
    wait_until(lambda: cluster3.request("n3", "GET", f"/api/serviceengine/{se['uuid']}")[1]["runtime"]["virtualservices"] == [], 5)
    assert cluster3.request("n2", "DELETE", f"/api/serviceengine/{se['uuid']}")[0] == 204


def test_registering_on_every_node_at_once_is_idempotent(cluster3: LocalCluster) -> None:
    """The same SE name registered on all three nodes concurrently gets one uuid from each, never a conflict."""
    from concurrent.futures import ThreadPoolExecutor

    for i in range(20):
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda node, i=i: cluster3.request(node, "POST", "/api/serviceengine/register", {"name": f"twice-{i}"}), cluster3.ids))
        assert [code for code, _ in answers] == [200, 200, 200], answers
        assert len({body["uuid"] for _, body in answers}) == 1


def test_a_deleted_se_is_fenced_its_process_stops_and_cannot_register_again(cluster3: LocalCluster, tmp_path: Any) -> None:
    """Delete a running SE's record: its process learns it (slice 404, then registration with its
    old uuid refused with 410), stops serving and exits 78; no ghost record appears."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AVICTL_HOME": str(tmp_path / "home"), "AVICTL_TOKEN": cluster3.token, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "avictl", "se", "run", "--name", "se-doomed", "--controller", cluster3.api("n1"),
         "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def registered() -> Any:
            code, body = cluster3.request("n2", "GET", "/api/serviceengine?name=se-doomed")
            return body["results"][0] if code == 200 and body["results"] else None

        se = wait_until(registered, 20, what="se-doomed to register")
        code, _ = cluster3.request("n3", "DELETE", f"/api/serviceengine/{se['uuid']}")
        assert code == 204
        assert proc.wait(30) == 78
        assert b"was deleted" in proc.stderr.read()  # type: ignore[union-attr]
        code, again = cluster3.request("n1", "POST", "/api/serviceengine/register", {"name": "se-doomed", "uuid": se["uuid"]})
        assert (code, again["error"]["field"]) == (410, "uuid"), again
        code, listed = cluster3.request("n1", "GET", "/api/serviceengine?name=se-doomed")
        assert listed["count"] == 0
        code, fresh = cluster3.request("n1", "POST", "/api/serviceengine/register", {"name": "se-doomed"})
        assert code == 200 and fresh["uuid"] != se["uuid"], "a new SE (no old identity) may take the name"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
