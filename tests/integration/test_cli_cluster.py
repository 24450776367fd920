"""avictl cluster up / kill -9 of every node / avictl cluster up: nothing acknowledged is missing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from simulations.writers import Writer

pytestmark = pytest.mark.slow


def avictl(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AVICTL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "avictl", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cluster_up_after_kill_of_every_node_keeps_3000_acknowledged_writes(tmp_path: Path) -> None:
    """3 000 writes acknowledged, kill -9 of all three controllers, `avictl cluster up`: all 3 000 are there."""
    home = tmp_path / "home"
    try:
        up = avictl(home, "cluster", "up", "--nodes", "3")
        assert up.returncode == 0, up.stderr
        context: dict[str, Any] = json.loads((home / "context.json").read_text())
        urls = [n["api"] for n in context["nodes"]]
        writer = Writer(urls, context["token"], prefix="cli")
        asyncio.run(writer.run(concurrency=32, count=3000))
        acked = {r.name for r in writer.acked}
        assert len(acked) == 3000, Counter(r.outcome for r in writer.results)

        for node in context["nodes"]:
            os.kill(node["pid"], signal.SIGKILL)
        again = avictl(home, "cluster", "up")
        assert again.returncode == 0, again.stderr

        listed = avictl(home, "pool", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        names = {p["name"] for p in json.loads(listed.stdout)}
        assert acked <= names, f"lost {len(acked - names)} acknowledged writes"
        status = avictl(home, "cluster", "status", "-o", "json")
        assert json.loads(status.stdout)["leader"] is not None
    finally:
        avictl(home, "cluster", "down", timeout=60)
