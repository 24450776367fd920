"""End to end against real controller processes: up, CRUD, apply twice, restart, down. Marked slow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from avictl.context import load_context
from avictl.nodes import pid_alive

pytest.importorskip("cluster.schema")
pytestmark = pytest.mark.slow

MANIFEST = """\
kind: pool
name: web-pool
lb_algorithm: round_robin
servers: [{ip: {addr: 127.0.0.1, type: V4}, port: 9001}]
health_monitor_refs: [System-TCP]
---
kind: vsvip
name: web-vsvip
vip: [{vip_id: "1", ip_address: {addr: 127.10.0.9, type: V4}}]
---
kind: vs
name: web
vsvip_ref: web-vsvip
pool_ref: web-pool
services: [{port: 8080}]
application_profile_name: System-L4-Application
"""


def avictl(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert 0 == result.exit_code, result.stderr
    return result


def test_three_node_cluster_round_trip(home: Path, tmp_path: Path) -> None:
    """A real 3-node cluster: apply creates, re-apply changes nothing, a restarted node rejoins, down stops all."""
    try:
        avictl("cluster", "up", "--nodes", "3")
        manifest = tmp_path / "app.yaml"
        manifest.write_text(MANIFEST)
        assert ["created pool web-pool", "created vsvip web-vsvip", "created virtualservice web"] == \
            avictl("apply", "-f", str(manifest)).stdout.splitlines()
        revision = json.loads(avictl("events", "-o", "json").stdout)[-1]["revision"]
        assert ["unchanged pool web-pool", "unchanged vsvip web-vsvip", "unchanged virtualservice web"] == \
            avictl("apply", "-f", str(manifest)).stdout.splitlines()
        # The re-apply wrote nothing. The leader's reconciler may add its own events meanwhile
        # (placing the new VS on the local cloud), so only object events count here.
        later = [e for e in json.loads(avictl("events", "-o", "json").stdout) if e["revision"] > revision]
        assert [] == [e for e in later if e["type"] in ("ObjectCreated", "ObjectUpdated", "ObjectDeleted")], later

        avictl("pool", "update", "web-pool", "--algorithm", "least_connections")
        shown = json.loads(avictl("pool", "show", "web-pool", "-o", "json").stdout)
        assert "LB_ALGORITHM_LEAST_CONNECTIONS" == shown["lb_algorithm"]

        refused = CliRunner().invoke(cli, ["pool", "delete", "web-pool"])
        assert 1 == refused.exit_code and "in use" in refused.stderr

        context = load_context(home)
        assert context is not None
        avictl("cluster", "down")
        assert not any(pid_alive(n.pid, n.config) for n in context.nodes)
        avictl("cluster", "up")
        assert "web" == json.loads(avictl("vs", "show", "web", "-o", "json").stdout)["name"]
    finally:
        CliRunner().invoke(cli, ["cluster", "down", "--timeout", "5"])
