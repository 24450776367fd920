"""avictl apply: create when absent, PUT only when a named field differs, nothing on re-apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.avictl.fake_api import FakeApi

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
vip: [{vip_id: "1", ip_address: {addr: 127.10.0.1, type: V4}}]
---
kind: vs
name: web
vsvip_ref: web-vsvip
pool_ref: /api/pool?name=web-pool
services: [{port: 8080}]
enabled: true
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return str(path)


def test_first_apply_creates_in_order(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """Every object is created in document order, refs by name resolved."""
    result = run("apply", "-f", write(tmp_path, MANIFEST))
    assert 0 == result.exit_code, result.stderr
    assert ["created healthmonitor web-hm", "created pool web-pool", "created vsvip web-vsvip",
            "created virtualservice web"] == result.stdout.splitlines()
    assert ["POST"] * 4 == [r.method for r in api.writes()]
    pool = api.by_name("pool", "web-pool")
    assert pool is not None and "LB_ALGORITHM_ROUND_ROBIN" == pool["lb_algorithm"]
    assert [f"/api/healthmonitor/{api.by_name('healthmonitor', 'web-hm')['uuid']}"] == pool["health_monitor_refs"]
    assert "HEALTH_MONITOR_HTTP" == api.by_name("healthmonitor", "web-hm")["type"]


def test_reapply_unchanged_writes_nothing(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """Re-applying the same file makes no write and no event, although the server filled in defaults."""
    path = write(tmp_path, MANIFEST)
    run("apply", "-f", path)
    writes, revision = len(api.writes()), api.revision
    result = run("apply", "-f", path)
    assert 0 == result.exit_code, result.stderr
    assert ["unchanged healthmonitor web-hm", "unchanged pool web-pool", "unchanged vsvip web-vsvip",
            "unchanged virtualservice web"] == result.stdout.splitlines()
    assert writes == len(api.writes())
    assert revision == api.revision


def test_changed_field_is_one_put_with_last_modified(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """A changed field means exactly one PUT, of the stored object merged with the document."""
    run("apply", "-f", write(tmp_path, MANIFEST))
    before = api.by_name("pool", "web-pool")
    assert before is not None
    changed = MANIFEST.replace("lb_algorithm: round_robin", "lb_algorithm: least_connections")
    result = run("apply", "-f", write(tmp_path, changed))
    assert 0 == result.exit_code, result.stderr
    assert "updated pool web-pool" in result.stdout.splitlines()
    puts = [r for r in api.writes() if r.method == "PUT"]
    assert 1 == len(puts)
    assert str(before["_rev"]) == puts[0].body["_last_modified"]
    assert "LB_ALGORITHM_LEAST_CONNECTIONS" == puts[0].body["lb_algorithm"]
    assert 80 == puts[0].body["default_server_port"]  # a field the document leaves out is kept
    assert puts[0].path.endswith(before["uuid"])


def test_json_output_names_changed_fields(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """-o json reports action, kind, name, uuid and which fields changed."""
    import json

    run("apply", "-f", write(tmp_path, MANIFEST))
    result = run("apply", "-o", "json", "-f", write(tmp_path, MANIFEST.replace("send_interval: 5", "send_interval: 6")))
    doc = json.loads(result.stdout)
    assert {"action": "updated", "kind": "healthmonitor", "name": "web-hm", "fields": ["send_interval"]} == {
        k: v for k, v in doc[0].items() if k != "uuid"}
    assert "unchanged" == doc[1]["action"]


def test_dry_run_writes_nothing(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """--dry-run only reports."""
    result = run("apply", "--dry-run", "-f", write(tmp_path, MANIFEST.split("---")[0]))
    assert "created healthmonitor web-hm (dry run)" == result.stdout.strip()
    assert [] == api.writes()


def test_stdin(run: Any, api: FakeApi) -> None:
    """-f - reads the documents from stdin."""
    result = run("apply", "-f", "-", input="kind: tenant\nname: blue\n")
    assert "created tenant blue" == result.stdout.strip()


def test_bad_documents_are_usage_errors_before_any_write(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """An unknown kind, a missing name or broken YAML anywhere stops apply before it writes (exit 2)."""
    for text, message in [
        ("kind: tenant\nname: a\n---\nkind: widget\nname: b\n", "document 2: kind 'widget' is not one of"),
        ("kind: tenant\nname: a\n---\nkind: pool\n", "document 2: name must be a non-empty string"),
        ("kind: tenant\nname: [a\n", "not valid YAML at line"),
        ("- a\n- b\n", "document 1: expected a mapping"),
    ]:
        result = run("apply", "-f", write(tmp_path, text))
        assert 2 == result.exit_code, (text, result.stderr)
        assert message in result.stderr
        assert 1 == len(result.stderr.strip().splitlines())
    assert [] == api.writes()


def test_refused_object_stops_with_its_name(run: Any, api: FakeApi, tmp_path: Path) -> None:
    """A refusal names the object; objects before it stay applied; invalid input exits 2."""
    text = "kind: tenant\nname: a\n---\nkind: pool\nname: p\nbogus: 1\n---\nkind: tenant\nname: c\n"
    result = run("apply", "-f", write(tmp_path, text))
    assert 2 == result.exit_code
    assert "created tenant a" == result.stdout.strip()
    assert "error: pool p: unknown field bogus (field: bogus)\n" == result.stderr
    assert api.by_name("tenant", "c") is None
