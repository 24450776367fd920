"""Each Service Engine has its own credential, good for its own routes only; registering needs an
operator's token, the cloud's enrolment for that name, or a single-use enrolment token; status
reports are bounded in size and rate (issue 11, finding 6). Real controller and SE processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from simulations.local_cluster import LocalCluster, wait_until
from tests.integration.test_hostile_api import send

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("se-credentials"), nodes=1)
    try:
        cluster.start_all(timeout=30)
        yield cluster
    finally:
        cluster.close()


def as_token(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def register(cluster: LocalCluster, token: str, name: str, uuid: Optional[str] = None) -> tuple[int, Any]:
    body = {"name": name, **({"uuid": uuid} if uuid else {})}
    code, doc, _, _ = send(cluster, "POST", "/api/serviceengine/register", json.dumps(body).encode(), as_token(token))
    return code, doc


def test_an_se_credential_is_good_for_its_own_routes_only(node: LocalCluster) -> None:
    """SE a's credential reads a's slice and posts a's status; it cannot read b's slice, post in b's
    name, read any object, or register another SE."""
    _, a = register(node, node.token, "cred-a")
    _, b = register(node, node.token, "cred-b")
    a_cred = a["credential"]
    assert a_cred.startswith("avse1.") and a_cred != b["credential"]
    assert send(node, "GET", f"/api/serviceengine/{a['uuid']}/slice", headers=as_token(a_cred))[0] == 200
    assert send(node, "POST", f"/api/serviceengine/{a['uuid']}/status", b'{"applied_revision": 1}', as_token(a_cred))[0] == 200
    assert send(node, "GET", f"/api/serviceengine/{b['uuid']}/slice", headers=as_token(a_cred))[0] == 403
    assert send(node, "GET", "/api/serviceengine/cred-b/slice", headers=as_token(a_cred))[0] == 403
    assert send(node, "POST", f"/api/serviceengine/{b['uuid']}/status", b'{"applied_revision": 1}', as_token(a_cred))[0] == 403
    assert send(node, "GET", "/api/pool", headers=as_token(a_cred))[0] == 403
    assert register(node, a_cred, "cred-c")[0] == 403
    forged = a_cred[:-4] + ("0000" if not a_cred.endswith("0000") else "1111")
    assert send(node, "GET", f"/api/serviceengine/{a['uuid']}/slice", headers=as_token(forged))[0] == 401


def test_an_enrolment_token_registers_one_se_once(node: LocalCluster) -> None:
    """An operator's enrolment token registers one new SE (its name, when it names one), once;
    it cannot take over a registered SE's name."""
    code, made = send(node, "POST", "/api/serviceengine/enrolment", b'{"ttl": 600}', as_token(node.token))[:2]
    assert code == 201, made
    code, first = register(node, made["token"], "enrolled-1")
    assert code == 200 and first["credential"].startswith("avse1."), first
    assert register(node, made["token"], "enrolled-2")[0] == 403, "single use"
    _, bound = send(node, "POST", "/api/serviceengine/enrolment", b'{"name": "only-me", "ttl": 600}', as_token(node.token))[:2]
    assert register(node, bound["token"], "someone-else")[0] == 403
    _, taker = send(node, "POST", "/api/serviceengine/enrolment", b'{"ttl": 600}', as_token(node.token))[:2]
    assert register(node, taker["token"], "enrolled-1")[0] == 409, "a registered SE's identity cannot be taken"
    assert register(node, bound["token"], "only-me")[0] == 200
    code, events = node.request("n1", "GET", "/api/events?since=1&limit=10000")
    text = json.dumps(events)
    assert made["token"] not in text and "SeEnrolmentUsed" in text, "the log keeps the hash, never the token"


def test_status_reports_are_bounded_and_logs_only_for_placed_virtual_services(node: LocalCluster) -> None:
    """A status report over 256 KiB is 413; more than about 20 a second are 429 with Retry-After;
    request logs for a VS not placed on the reporting SE are dropped (no forged log lines)."""
    _, se = register(node, node.token, "bounded")
    cred = as_token(se["credential"])
    big = json.dumps({"applied_revision": 1, "pad": "x" * 300_000}).encode()
    assert send(node, "POST", f"/api/serviceengine/{se['uuid']}/status", big, cred)[0] == 413
    _, pool = node.request("n1", "POST", "/api/pool", {"name": "logs-pool"})
    _, vip = node.request("n1", "POST", "/api/vsvip", {"name": "logs-vip", "vip": [{"ip_address": {"addr": "127.10.44.1", "type": "V4"}}]})
    _, vs = node.request("n1", "POST", "/api/virtualservice", {"name": "logs-vs", "services": [{"port": 80}], "pool_ref": pool["url"], "vsvip_ref": vip["url"]})
    forged = json.dumps({"request_logs": {vs["uuid"]: [{"client": "1.2.3.4", "uri": "/forged"}]}}).encode()
    assert send(node, "POST", f"/api/serviceengine/{se['uuid']}/status", forged, cred)[0] == 200
    assert node.request("n1", "GET", f"/api/virtualservice/{vs['uuid']}/logs")[1]["count"] == 0
    codes = [send(node, "POST", f"/api/serviceengine/{se['uuid']}/status", b'{"applied_revision": 1}', cred)[:3:2] for _ in range(80)]
    limited = [headers for code, headers in codes if code == 429]
    assert limited and all(int(h["Retry-After"]) >= 1 for h in limited)


def test_an_se_process_enrols_once_keeps_its_credential_and_restarts_with_it(node: LocalCluster, tmp_path: Path) -> None:
    """'avictl se run --enrol-token' registers, keeps its credential (owner-only file) and, killed
    and started again with the same spent token, carries on with the credential it kept."""
    _, made = send(node, "POST", "/api/serviceengine/enrolment", b'{"name": "proc-se", "ttl": 600}', as_token(node.token))[:2]
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("AVICTL_TOKEN", "AVICTL_API")}
    env.update({"AVICTL_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"})
    argv = [sys.executable, "-m", "avictl", "se", "run", "--name", "proc-se", "--controller", node.api("n1"),
            "--state-dir", str(state), "--enrol-token", made["token"], "--report-interval", "0.5"]

    def reporting() -> bool:
        code, listed = node.request("n1", "GET", "/api/serviceengine?name=proc-se")
        results = listed["results"] if code == 200 else []
        return bool(results) and (results[0].get("runtime") or {}).get("last_heartbeat") is not None

    for run in range(2):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if run == 1:
                node.request("n1", "POST", "/api/serviceengine/proc-se/status", {})  # forget the last heartbeat seen
                before = node.request("n1", "GET", "/api/serviceengine?name=proc-se")[1]["results"][0]["runtime"]["last_heartbeat"]
                wait_until(lambda b=before: node.request("n1", "GET", "/api/serviceengine?name=proc-se")[1]["results"][0]["runtime"]["last_heartbeat"] != b,
                           20, what="the restarted SE to report with its kept credential")
            else:
                wait_until(reporting, 20, what="the SE to enrol and report")
            identity = state / "identity.json"
            assert stat.S_IMODE(identity.stat().st_mode) == 0o600
            assert json.loads(identity.read_text())["credential"].startswith("avse1.")
        finally:
            proc.kill()
            proc.wait(10)
    code, listed = node.request("n1", "GET", "/api/serviceengine?name=proc-se")
    assert listed["count"] == 1
