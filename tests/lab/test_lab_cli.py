"""``avictl lab up|status|env|exec|cut|heal|down`` as a user runs them: the lab outlives the
command that made it, avictl reaches its controllers, and down leaves nothing. Real processes; root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulations.lab import leftovers, load_state
from simulations.netns import namespace_names
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.slow


def avictl(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AVICTL_")}
    return subprocess.run([sys.executable, "-m", "avictl", *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, "AVICTL_HOME": str(home), **(env or {})})


def _lab_processes(lab_dir: Path) -> list[str]:
    """Command lines of live processes naming the lab's directory (controllers, SEs, the keeper)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(lab_dir) in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_lab_up_status_env_cut_heal_and_down_from_the_command_line(tmp_path: Path) -> None:
    """up returns with the lab running (leader, three SEs up); status shows nine hosts; avictl
    pointed at the lab by 'lab env' reads the cluster; a cut host is unreachable from the client
    until healed; down removes every namespace, link, nftables table and process."""
    require_lab()
    home = tmp_path / "home"
    lab_dir = home / "lab"
    state = None
    try:
        up = avictl(home, "lab", "up", "-o", "json")
        assert up.returncode == 0, up.stderr
        state = load_state(lab_dir)
        assert state is not None and os.stat(lab_dir / "state.json").st_mode & 0o077 == 0
        again = avictl(home, "lab", "up")
        assert again.returncode == 1 and "already up" in again.stderr

        status = avictl(home, "lab", "status", "-o", "json")
        assert status.returncode == 0, status.stderr
        doc: dict[str, Any] = json.loads(status.stdout)
        assert [h["host"] for h in doc["hosts"]] == ["c1", "c2", "c3", "s1", "s2", "s3", "client", "b1", "b2"]
        assert all(h["present"] and all(p["alive"] for p in h["processes"]) for h in doc["hosts"]), doc
        assert doc["owner_alive"] and doc["cluster"]["leader"] in ("n1", "n2", "n3"), doc["cluster"]
        assert sorted((se["name"], se["oper_status"]) for se in doc["cluster"]["serviceengines"]) == [("s1", "up"), ("s2", "up"), ("s3", "up")]
        table = avictl(home, "lab", "status")
        assert table.returncode == 0 and "10.99." in table.stdout and "leader n" in table.stdout, table.stdout

        exports = avictl(home, "lab", "env").stdout
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        env = {k: v.strip("'") for k, v in env.items()}
        assert set(env) == {"AVICTL_API", "AVICTL_TOKEN"} and env["AVICTL_API"].count("http://10.99.") == 3
        cluster = avictl(tmp_path / "elsewhere", "cluster", "status", "-o", "json", env=env)
        assert cluster.returncode == 0, cluster.stderr
        assert json.loads(cluster.stdout)["leader"] == doc["cluster"]["leader"]

        c1 = next(h["address"] for h in doc["hosts"] if h["host"] == "c1")
        probe = ["exec", "client", "--", sys.executable, "-c",
                 f"import socket; socket.create_connection(('{c1}', 7001), timeout=0.5).close()"]
        assert avictl(home, "lab", *probe).returncode == 0
        assert avictl(home, "lab", "cut", "c1").returncode == 0
        assert avictl(home, "lab", *probe).returncode != 0
        assert "avictl_lab" in avictl(home, "lab", "exec", "c1", "--", "nft", "list", "tables").stdout
        assert avictl(home, "lab", "heal").returncode == 0
        assert avictl(home, "lab", *probe).returncode == 0
        assert avictl(home, "lab", "cut", "c1", "--from", "c2").returncode == 0  # left in place: down removes it

        down = avictl(home, "lab", "down")
        assert down.returncode == 0, down.stderr
        assert leftovers(state) == []
        assert not [ns for ns in namespace_names() if ns.startswith(f"avl-{state.owner_pid}-")]
        assert _lab_processes(lab_dir) == []
        assert load_state(lab_dir) is None
        assert avictl(home, "lab", "status").returncode == 1
        assert (lab_dir / "controllers" / "n1" / "controller.log").exists()  # logs stay
    finally:
        if state is not None and load_state(lab_dir) is not None:
            avictl(home, "lab", "down")
