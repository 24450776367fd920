"""``avictl cluster init`` on one host and ``cluster join`` on two others form one cluster: three
controller processes on three addresses (127.0.0.2-4 stand for three hosts), each host with its own
AVICTL_HOME, no secret typed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from avictl.nodes import free_ports
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def avictl(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVICTL_")}
    env["AVICTL_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "avictl", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    made = {host: tmp_path / f"host-{host}" for host in HOSTS}
    try:
        yield made
    finally:
        for home in made.values():
            if (home / "context.json").exists():
                avictl(home, "cluster", "down", "--timeout", "5")


def _ports() -> tuple[int, int]:
    """An API and a Raft port free on every one of the three addresses."""
    while True:
        api, raft = free_ports(2, HOSTS[0])
        if all(_free_on(h, api) and _free_on(h, raft) for h in HOSTS):
            return api, raft


def _free_on(host: str, port: int) -> bool:
    from avictl.nodes import port_free

    return port_free(port, host)


def test_init_and_join_form_a_three_host_cluster(homes: dict[str, Path]) -> None:
    """init prints a join line per peer; each peer joins with it; the three elect one leader, a
    write on one is read on another, and every host's context lists all three nodes."""
    api, raft = _ports()
    first, second, third = (homes[h] for h in HOSTS)
    init = avictl(first, "cluster", "init", "--listen", HOSTS[0], "--peer", HOSTS[1], "--peer", HOSTS[2],
                  "--api-port", str(api), "--raft-port", str(raft))
    assert init.returncode == 0, init.stderr
    joins = [line for line in init.stdout.splitlines() if line.startswith("avictl cluster join ")]
    assert len(joins) == 2
    secret = json.loads((first / "nodes" / "n1" / "node.json").read_text())["cluster_secret"]
    assert secret not in init.stderr
    for home, host, line in ((second, HOSTS[1], joins[0]), (third, HOSTS[2], joins[1])):
        argv = line.split()[1:]
        done = avictl(home, *argv, "--listen", host)
        assert done.returncode == 0, done.stderr
        assert "leader" in done.stdout
    for home in (first, second, third):
        context = json.loads((home / "context.json").read_text())
        assert sorted(n["api"] for n in context["nodes"]) == sorted(f"http://{h}:{api}" for h in HOSTS)

    def one_leader() -> Any:
        done = avictl(second, "cluster", "status", "-o", "json")
        doc = json.loads(done.stdout) if done.returncode == 0 else {}
        return doc if doc.get("leader") and all(n.get("role") in ("leader", "follower") for n in doc["nodes"]) else None

    status = wait_until(one_leader, 30, interval=0.5, what="one leader and two followers")
    assert sum(n["role"] == "leader" for n in status["nodes"]) == 1
    made = avictl(first, "pool", "create", "joined-pool", "--server", "10.1.1.1:80")
    assert made.returncode == 0, made.stderr
    shown = avictl(third, "pool", "show", "joined-pool", "-o", "json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "joined-pool"


def test_a_damaged_or_misplaced_token_is_a_usage_error(homes: dict[str, Path]) -> None:
    api, raft = _ports()
    first, second = homes[HOSTS[0]], homes[HOSTS[1]]
    init = avictl(first, "cluster", "init", "--listen", HOSTS[0], "--peer", HOSTS[1], "--peer", HOSTS[2],
                  "--api-port", str(api), "--raft-port", str(raft))
    token = next(line for line in init.stdout.splitlines() if line.startswith("avictl cluster join ")).split("--token ")[1]
    wrong_host = avictl(second, "cluster", "join", "--token", token, "--listen", HOSTS[2])
    assert wrong_host.returncode == 2 and f"for the node on {HOSTS[1]}" in wrong_host.stderr
    damaged = avictl(second, "cluster", "join", "--token", token[:-12])
    assert damaged.returncode == 2 and "damaged" in damaged.stderr
    assert avictl(second, "cluster", "init", "--listen", HOSTS[1], "--peer", HOSTS[0]).returncode == 2
