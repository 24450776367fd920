"""configure_logging's output, and local process liveness/stop rules."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import structlog

from avictl.nodes import free_ports, pid_alive, stop_processes, tail
from cluster.logsetup import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_lines_with_node_id_when_not_a_tty(restore_logging: None) -> None:
    """Off a terminal every event is one JSON line carrying the bound node id; stdlib loggers too."""
    stream = io.StringIO()
    configure_logging(node_id="n2", stream=stream)
    structlog.get_logger("t").info("raft_elected", term=3)
    logging.getLogger("aiohttp.access").warning("plain %s", "stdlib")
    structlog.get_logger("t").debug("hidden")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert 2 == len(lines)
    assert {"event": "raft_elected", "term": 3, "node_id": "n2", "level": "info"}.items() <= lines[0].items()
    assert {"event": "plain stdlib", "node_id": "n2", "level": "warning"}.items() <= lines[1].items()
    assert "timestamp" in lines[0]


def test_console_when_a_tty(restore_logging: None) -> None:
    """On a terminal the console renderer is used (not JSON)."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    configure_logging(node_id="n1", stream=stream)
    structlog.get_logger("t").info("hello", x=1)
    text = stream.getvalue()
    assert "hello" in text and "node_id" in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])


def test_pid_alive_needs_the_config_in_the_command_line(tmp_path: Path) -> None:
    """A live pid counts only while its argv names the config; a dead one never does."""
    config = str(tmp_path / "node.json")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--config", config])
    try:
        assert pid_alive(proc.pid, config)
        assert not pid_alive(proc.pid, config + ".other")
        assert not pid_alive(None, config)
        result = stop_processes([(proc.pid, config)], timeout=5)
        assert {proc.pid: "stopped"} == result
        proc.wait(5)
        assert not pid_alive(proc.pid, config)
    finally:
        proc.kill()
        proc.wait()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    """A process that ignores SIGTERM is killed after the timeout."""
    config = str(tmp_path / "node.json")
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--config", config], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and b"ready" in proc.stdout.readline()
        assert {proc.pid: "killed"} == stop_processes([(proc.pid, config)], timeout=0.2)
        assert -9 == proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_free_ports_are_distinct() -> None:
    """free_ports returns distinct ports."""
    ports = free_ports(6)
    assert 6 == len(set(ports))


def test_tail(tmp_path: Path) -> None:
    """tail gives the last non-empty lines of a log, or '' when it cannot read it."""
    path = tmp_path / "log"
    path.write_text("a\nb\n\nc\n\n")
    assert "c" == tail(str(path))
    assert "b | c" == tail(str(path), 2)
    assert "" == tail(str(tmp_path / "none"))
