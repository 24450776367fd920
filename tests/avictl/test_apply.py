"""avictl apply against a real controller: one transaction (PUT /api/macro), all or nothing;
--dry-run checks on the server and shows a diff; re-applying an unchanged file writes nothing.

Each test works in a tenant of its own, so they share one single-node cluster."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from simulations.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

MANIFEST = """\
kind: healthmonitor
name: web-hm
type: http
send_interval: 5
---
kind: pool
name: web-pool
lb_algorithm: round_robin
servers:
  - {ip: {addr: 127.0.0.1, type: V4}, port: 9001}
  - {ip: {addr: 127.0.0.1, type: V4}, port: 9002}
health_monitor_refs: [web-hm]
---
# an empty document is skipped
---
kind: vsvip
name: web-vsvip
vip: [{vip_id: "1", ip_address: {addr: VIP, type: V4}}]
---
kind: vs
name: web
vsvip_ref: web-vsvip
pool_ref: /api/pool?name=web-pool
services: [{port: 8080}]
enabled: true
"""

_tenants = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("apply"), nodes=1)
    try:
        c.start_all(timeout=30)
        yield c
    finally:
        c.close()


class Env:
    def __init__(self, cluster: LocalCluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        n = next(_tenants)
        self.tenant = f"apply-{n}"
        self.vip = f"127.10.40.{n}"
        code, body = cluster.request("n1", "POST", "/api/tenant", {"name": self.tenant})
        assert code == 201, body

    def run(self, *args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(cli, ["--api", self.cluster.api("n1"), "--token", self.cluster.token, "--tenant", self.tenant,
                                        "--deadline", "10", *args], input=input)

    def write(self, text: str) -> str:
        path = self.tmp_path / "app.yaml"
        path.write_text(text.replace("VIP", self.vip))
        return str(path)

    def get(self, kind: str, name: str) -> Any:
        code, body = self.cluster.request("n1", "GET", f"/api/{kind}?name={name}", headers={"X-Avi-Tenant": self.tenant})
        assert code == 200, body
        return body["results"][0] if body["results"] else None

    def revision(self) -> int:
        code, body = self.cluster.request("n1", "GET", "/api/cluster")
        return int(body["nodes"][0]["applied_revision"])


@pytest.fixture
def env(cluster: LocalCluster, tmp_path: Path, home: Path) -> Env:
    return Env(cluster, tmp_path)


def test_first_apply_creates_in_order_in_one_revision_range(env: Env) -> None:
    """Every object is created, refs by name resolved (also to objects of the same file), in one transaction."""
    before = env.revision()
    result = env.run("apply", "-f", env.write(MANIFEST))
    assert 0 == result.exit_code, result.stderr
    assert ["created healthmonitor web-hm", "created pool web-pool", "created vsvip web-vsvip",
            "created virtualservice web"] == result.stdout.splitlines()
    assert env.revision() == before + 4
    pool = env.get("pool", "web-pool")
    assert "LB_ALGORITHM_ROUND_ROBIN" == pool["lb_algorithm"]
    assert pool["health_monitor_refs"][0].endswith(f"/api/healthmonitor/{env.get('healthmonitor', 'web-hm')['uuid']}#web-hm")
    assert "HEALTH_MONITOR_HTTP" == env.get("healthmonitor", "web-hm")["type"]


def test_reapply_unchanged_writes_nothing(env: Env) -> None:
    """Re-applying the same file writes no event, although the server filled in defaults."""
    path = env.write(MANIFEST)
    env.run("apply", "-f", path)
    before = env.revision()
    result = env.run("apply", "-f", path)
    assert 0 == result.exit_code, result.stderr
    assert ["unchanged healthmonitor web-hm", "unchanged pool web-pool", "unchanged vsvip web-vsvip",
            "unchanged virtualservice web"] == result.stdout.splitlines()
    assert env.revision() == before


def test_a_changed_field_updates_only_that_object_and_keeps_the_fields_left_out(env: Env) -> None:
    """A changed field updates that one object (one event); fields the document leaves out keep their stored value."""
    env.run("apply", "-f", env.write(MANIFEST))
    env.cluster.request("n1", "PATCH", f"/api/pool/{env.get('pool', 'web-pool')['uuid']}", {"replace": {"default_server_port": 81}},
                        headers={"X-Avi-Tenant": env.tenant})
    before = env.revision()
    result = env.run("apply", "-f", env.write(MANIFEST.replace("lb_algorithm: round_robin", "lb_algorithm: least_connections")))
    assert 0 == result.exit_code, result.stderr
    assert "updated pool web-pool" in result.stdout.splitlines()
    assert env.revision() == before + 1
    pool = env.get("pool", "web-pool")
    assert ("LB_ALGORITHM_LEAST_CONNECTIONS", 81) == (pool["lb_algorithm"], pool["default_server_port"])


def test_json_output_names_the_changes(env: Env) -> None:
    """-o json reports action, kind, name, uuid and each changed field with its old and new value."""
    env.run("apply", "-f", env.write(MANIFEST))
    result = env.run("apply", "-o", "json", "-f", env.write(MANIFEST.replace("send_interval: 5", "send_interval: 6")))
    doc = json.loads(result.stdout)
    assert doc[0]["action"] == "updated" and doc[0]["kind"] == "healthmonitor" and doc[0]["name"] == "web-hm"
    assert doc[0]["changes"] == {"send_interval": {"from": 5, "to": 6}}
    assert [d["action"] for d in doc[1:]] == ["unchanged"] * 3


def test_dry_run_validates_on_the_server_shows_a_diff_and_writes_nothing(env: Env) -> None:
    """--dry-run reports creations and each update's field changes; an unknown field, a bad address
    or a missing ref fails exactly as the real apply does (exit 2, the document named); nothing is written."""
    env.run("apply", "-f", env.write(MANIFEST))
    before = env.revision()
    result = env.run("apply", "--dry-run", "-f", env.write(MANIFEST.replace("send_interval: 5", "send_interval: 7")
                                                           + "---\nkind: tenant\nname: dry-run-tenant\n"))
    assert 0 == result.exit_code, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["updated healthmonitor web-hm (dry run)", "    send_interval: 5 -> 7"]
    assert "created tenant dry-run-tenant (dry run)" in lines
    for bad, message in [
        ("kind: pool\nname: p\nbogus: 1\n", "pool p: unknown field"),
        ("kind: pool\nname: p\nservers: [{ip: {addr: 300.1.1.1, type: V4}, port: 80}]\n", "pool p:"),
        ("kind: pool\nname: p\nhealth_monitor_refs: [no-such-monitor]\n", "pool p: healthmonitor named 'no-such-monitor' does not exist"),
    ]:
        for args in (["--dry-run"], []):
            result = env.run("apply", *args, "-f", env.write("kind: tenant\nname: t-ok\n---\n" + bad))
            assert 2 == result.exit_code, (bad, args, result.stdout, result.stderr)
            assert message in result.stderr and "nothing was applied" in result.stderr, result.stderr
            assert result.stdout == ""
    assert env.revision() == before
    assert env.get("healthmonitor", "web-hm")["send_interval"] == 5


def test_a_refused_document_in_the_middle_applies_none_of_them(env: Env) -> None:
    """All or nothing: the documents before a refused one are not applied either."""
    text = "kind: healthmonitor\nname: a-hm\ntype: tcp\n---\nkind: pool\nname: p\nbogus: 1\n---\nkind: healthmonitor\nname: c-hm\ntype: tcp\n"
    before = env.revision()
    result = env.run("apply", "-f", env.write(text))
    assert 2 == result.exit_code
    assert "error: pool p: unknown field" in result.stderr and "(field: bogus)" in result.stderr
    assert env.get("healthmonitor", "a-hm") is None and env.get("healthmonitor", "c-hm") is None
    assert env.revision() == before


def test_stdin(env: Env) -> None:
    """-f - reads the documents from stdin."""
    result = env.run("apply", "-f", "-", input="kind: healthmonitor\nname: from-stdin\ntype: tcp\n")
    assert "created healthmonitor from-stdin" == result.stdout.strip(), result.stderr


def test_bad_documents_are_usage_errors_before_any_request(env: Env) -> None:
    """An unknown kind, a missing name or broken YAML anywhere stops apply before it sends anything (exit 2)."""
    before = env.revision()
    for text, message in [
        ("kind: tenant\nname: a\n---\nkind: widget\nname: b\n", "document 2: kind 'widget' is not one of"),
        ("kind: tenant\nname: a\n---\nkind: pool\n", "document 2: name must be a non-empty string"),
        ("kind: tenant\nname: [a\n", "not valid YAML at line"),
        ("- a\n- b\n", "document 1: expected a mapping"),
    ]:
        result = env.run("apply", "-f", env.write(text))
        assert 2 == result.exit_code, (text, result.stderr)
        assert message in result.stderr
        assert 1 == len(result.stderr.strip().splitlines())
    assert env.revision() == before
