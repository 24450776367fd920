"""A secret written to the cluster never leaves it: not in any API response, event, watch stream,
error, metrics page, CLI output or controller log, and it is stored only sealed (three real
controller processes)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cluster import schema
from simulations.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def _vcenter(password: str, **extra: Any) -> dict[str, Any]:
    return {
        "vcenter_url": "https://vc.example/sdk", "username": "svc-avi", "password": password,
        "datacenter": "DC0", "privilege": "READ_ACCESS", **extra,
    }


def _get(cluster: LocalCluster, node: str, path: str, *, auth: bool = True) -> str:
    req = urllib.request.Request(cluster.api(node) + path)
    if auth:
        req.add_header("Authorization", f"Bearer {cluster.token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def _watch_until(cluster: LocalCluster, node: str, last_revision: int) -> str:
    url = urllib.parse.urlsplit(cluster.api(node))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/api/watch?since=1", headers={"Authorization": f"Bearer {cluster.token}"})
    resp = conn.getresponse()
    lines = []
    try:
        while True:
            line = resp.readline().decode()
            lines.append(line)
            doc = json.loads(line)
            if doc.get("revision", 0) >= last_revision:
                return "".join(lines)
    finally:
        conn.close()


def test_a_planted_secret_appears_in_no_output(cluster3: LocalCluster) -> None:
    """Create, PUT, PATCH and a refused write each carry a unique vCenter password; then every
    response, the events and watch streams of every node, /metrics, the CLI's output and every
    controller log are searched for each password: none holds one."""
    planted = [f"S3cret-{secrets.token_hex(8)}" for _ in range(4)]
    outputs: list[str] = []

    code, cloud = cluster3.request("n1", "POST", "/api/cloud", {"name": "vc-secret", "vtype": "CLOUD_VCENTER",
                                                                "vcenter_configuration": _vcenter(planted[0])})
    assert code == 201, cloud
    outputs.append(json.dumps(cloud))
    code, body = cluster3.request("n2", "GET", f"/api/cloud/{cloud['uuid']}")
    body["vcenter_configuration"]["password"] = planted[1]
    code, updated = cluster3.request("n2", "PUT", f"/api/cloud/{cloud['uuid']}", body)
    assert code == 200, updated
    outputs.append(json.dumps(updated))
    code, patched = cluster3.request("n3", "PATCH", f"/api/cloud/{cloud['uuid']}",
                                     {"replace": {"vcenter_configuration": _vcenter(planted[2])}})
    assert code == 200, patched
    outputs.append(json.dumps(patched))
    code, refused = cluster3.request("n1", "POST", "/api/cloud", {"name": "vc-bad", "vtype": "CLOUD_VCENTER",
                                                                  "vcenter_configuration": _vcenter(planted[3], colour="red")})
    assert code == 422, refused
    outputs.append(json.dumps(refused))

    code, found = cluster3.request("n1", "GET", f"/api/cloud?search={planted[2]}")
    assert (code, found["count"]) == (200, 0), "search does not look inside secrets"
    last = int(patched["_last_modified"])
    for node in cluster3.ids:
        for kind in schema.KINDS:
            outputs.append(_get(cluster3, node, f"/api/{kind}?page_size=200"))
        outputs.append(_get(cluster3, node, f"/api/cloud/{cloud['uuid']}"))
        outputs.append(_get(cluster3, node, "/api/events?since=1&limit=10000"))
        outputs.append(_watch_until(cluster3, node, last))
        outputs.append(_get(cluster3, node, "/api/cluster"))
        outputs.append(_get(cluster3, node, "/api/openapi.json", auth=False))
        outputs.append(_get(cluster3, node, "/metrics", auth=False))
    assert any('"vc-secret"' in text for text in outputs), "the outputs searched do hold the cloud"

    env = {**os.environ, "AVICTL_API": cluster3.api("n2"), "AVICTL_TOKEN": cluster3.token, "AVICTL_HOME": str(cluster3.base_dir / "cli")}
    for argv in (["cloud", "show", "vc-secret", "-o", "json"], ["cloud", "list", "-o", "yaml"], ["events", "-o", "json"]):
        done = subprocess.run([sys.executable, "-m", "avictl", *argv], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)

    for node in cluster3.ids:
        outputs.append(cluster3.log_path(node).read_text(errors="replace"))
    for secret in planted:
        leaks = [text[max(0, text.find(secret) - 200): text.find(secret) + 50] for text in outputs if secret in text]
        assert not leaks, f"secret found in output: {leaks[0]}"

    # At rest: the event segments, the Raft journal and dump, the view snapshots of every node.
    cluster3.wait_converged()
    files = [p for node in cluster3.ids for p in Path(cluster3.configs[node].data_dir).rglob("*") if p.is_file()]
    assert any("events" in p.parts for p in files) and any("raft" in p.parts for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in planted[:3]:
            assert secret.encode() not in data, f"secret stored in clear in {path}"
    code, body = cluster3.request("n1", "GET", f"/api/cloud/{cloud['uuid']}")
    body["vcenter_configuration"]["password"] = "$sealed$1$" + "A" * 40
    code, refused = cluster3.request("n1", "PUT", f"/api/cloud/{cloud['uuid']}", body)
    assert (code, refused["error"]["field"]) == (422, "vcenter_configuration.password"), refused
