"""cluster up / status / down with stand-in controller processes (no real cluster needed)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

import avictl.nodes
from avictl.cli import cli
from avictl.context import load_context
from avictl.nodes import pid_alive

FAKE = str(Path(__file__).with_name("fake_controller.py"))


@pytest.fixture
def fake_controllers(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(avictl.nodes, "controller_command",
                        lambda config: [sys.executable, FAKE, "controller", "run", "--config", config])
    yield
    context = load_context(home)
    for node in context.nodes if context else ():
        if pid_alive(node.pid, node.config):
            os.kill(node.pid, signal.SIGKILL)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_up_three_nodes_writes_configs_and_context(home: Path, fake_controllers: None) -> None:
    """up --nodes 3 writes three node.json, starts three processes, waits, prints status, saves the context."""
    result = invoke("cluster", "up", "--nodes", "3")
    assert 0 == result.exit_code, result.stderr
    assert "leader n1 after" in result.stderr and "started n3 pid" in result.stderr
    assert "leader: n1" in result.stdout
    context = load_context(home)
    assert context is not None and ["n1", "n2", "n3"] == [n.id for n in context.nodes]
    assert 0o600 == stat.S_IMODE((home / "context.json").stat().st_mode)
    assert all(pid_alive(n.pid, n.config) for n in context.nodes)
    config = json.loads((home / "nodes" / "n2" / "node.json").read_text())
    assert "n2" == config["node_id"] and str(home / "nodes" / "n2" / "data") == config["data_dir"]
    assert ["n1", "n3"] == [p["node_id"] for p in config["peers"]]
    assert context.nodes[0].api == config["peers"][0]["api_url"]
    assert 64 == len(config["cluster_secret"]) and context.password not in json.dumps(config)
    assert (home / "nodes" / "n1" / "controller.log").read_text().startswith('{"event": "fake_controller_serving"')
    # the context's token works for status
    status = invoke("cluster", "status", "-o", "json")
    assert "n1" == json.loads(status.stdout)["leader"]


def test_up_again_restarts_only_dead_nodes_and_down_stops_all(home: Path, fake_controllers: None) -> None:
    """A second up keeps live nodes and restarts dead ones; down stops everything and keeps the data."""
    assert 0 == invoke("cluster", "up", "--nodes", "3").exit_code
    before = load_context(home)
    assert before is not None
    os.kill(before.nodes[1].pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(before.nodes[1].pid, before.nodes[1].config) and time.monotonic() < deadline:
        time.sleep(0.02)
    result = invoke("cluster", "up")
    assert 0 == result.exit_code, result.stderr
    after = load_context(home)
    assert after is not None
    assert before.nodes[0].pid == after.nodes[0].pid and before.nodes[2].pid == after.nodes[2].pid
    assert before.nodes[1].pid != after.nodes[1].pid and pid_alive(after.nodes[1].pid, after.nodes[1].config)
    assert "n1 already running" in result.stderr and "started n2" in result.stderr

    result = invoke("cluster", "down")
    assert 0 == result.exit_code, result.stderr
    assert not any(pid_alive(n.pid, n.config) for n in after.nodes)
    stopped = load_context(home)
    assert stopped is not None and [None] * 3 == [n.pid for n in stopped.nodes]
    assert (home / "nodes" / "n1" / "node.json").exists()


def test_up_reports_a_node_that_exits(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller that dies at start is reported in one line with its log, exit 1."""
    monkeypatch.setattr(avictl.nodes, "controller_command",
                        lambda config: [sys.executable, "-c", "import sys; print('boom: port in use'); sys.exit(3)", "--config", config])
    result = invoke("cluster", "up")
    assert 1 == result.exit_code
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: n1 exited with code 3 before serving: boom: port in use (log: ")


def test_base_port(home: Path, fake_controllers: None) -> None:
    """--base-port assigns API BASE+2i and Raft BASE+2i+1."""
    # A base whose neighbour is free too (the kernel picks the first; a few tries always suffice).
    base = next(
        (b for b in (avictl.nodes.free_ports(1)[0] for _ in range(50)) if avictl.nodes.port_free(b + 1)),
        None,
    )
    assert base is not None, "no free pair of adjacent ports in 50 tries"
    result = invoke("cluster", "up", "--base-port", str(base))
    assert 0 == result.exit_code, result.stderr
    context = load_context(home)
    assert context is not None
    assert f"http://127.0.0.1:{base}" == context.nodes[0].api and f"127.0.0.1:{base + 1}" == context.nodes[0].raft
