"""The official Avi SDK (avisdk from PyPI) drives a node unchanged, as an existing Avi user would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from simulations.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

# Runs in a child process: the SDK's sample module reconfigures the root logger on import.
SDK_FLOW = textwrap.dedent(
    """
    import json, sys
    from avi.sdk.avi_api import ApiSession
    from avi.sdk.samples.virtualservice_examples_api import VirtualServiceExample

    controller, password = sys.argv[1], sys.argv[2]
    api = ApiSession.get_session(controller, "admin", password)
    VirtualServiceExample(api).create_basic_vs("sdk-vs", "127.10.9.1", ["127.0.0.5:8080", "127.0.0.6"])
    out = {}
    vs = api.get_object_by_name("virtualservice", "sdk-vs")
    pool = api.get_object_by_name("pool", "sdk-vs-pool")
    vsvip = api.get_object_by_name("vsvip", "sdk-vs-vsvip")
    out["vs_pool_ref"] = vs["pool_ref"]
    out["pool_url"] = pool["url"]
    out["pool_servers"] = [(s["ip"]["addr"], s["port"]) for s in pool["servers"]]
    out["vip"] = vsvip["vip"][0]["ip_address"]["addr"]
    out["obj_ref"] = api.get_obj_ref(pool)

    stale = dict(pool)
    pool["lb_algorithm"] = "LB_ALGORITHM_ROUND_ROBIN"
    out["put_status"] = api.put("pool/%s" % pool["uuid"], data=pool).status_code
    stale["default_server_port"] = 81
    out["stale_put_status"] = api.put("pool/%s" % pool["uuid"], data=stale).status_code
    out["algorithm"] = api.get_object_by_name("pool", "sdk-vs-pool")["lb_algorithm"]
    out["patch_status"] = api.patch("pool/%s" % pool["uuid"], data={"add": {"servers": [{"ip": {"addr": "127.0.0.7", "type": "V4"}, "port": 80}]}}).status_code

    out["delete_statuses"] = [
        api.delete_by_name("virtualservice", "sdk-vs").status_code,
        api.delete_by_name("pool", "sdk-vs-pool").status_code,
        api.delete_by_name("vsvip", "sdk-vs-vsvip").status_code,
    ]
    out["after_delete"] = api.get_object_by_name("virtualservice", "sdk-vs")
    print("RESULT " + json.dumps(out))
    """
)


def test_official_sdk_sample_flow(cluster3: LocalCluster) -> None:
    """get_session, the sample's create_basic_vs, get_object_by_name, put (and a stale 412), patch, delete."""
    proc = subprocess.run(
        [sys.executable, "-c", SDK_FLOW, cluster3.api("n2"), cluster3.password],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["vs_pool_ref"].split("#")[0] == out["pool_url"]
    assert out["obj_ref"] == out["pool_url"]
    assert sorted(out["pool_servers"]) == [["127.0.0.5", 8080], ["127.0.0.6", 80]]
    assert out["vip"] == "127.10.9.1"
    assert out["put_status"] == 200
    assert out["stale_put_status"] == 412
    assert out["algorithm"] == "LB_ALGORITHM_ROUND_ROBIN"
    assert out["patch_status"] == 200
    assert out["delete_statuses"] == [204, 204, 204]
    assert out["after_delete"] is None
