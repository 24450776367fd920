"""Fixtures for the CLI tests: a fake API on 127.0.0.1, an isolated AVICTL_HOME, a click runner."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from tests.avictl.fake_api import FakeApi


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "avictl-home"
    monkeypatch.setenv("AVICTL_HOME", str(path))
    for var in ("AVICTL_API", "AVICTL_TOKEN", "AVICTL_OUTPUT", "AVICTL_DEADLINE", "AVICTL_TENANT"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def run(api: FakeApi, home: Path) -> Any:
    """Run avictl against the fake API; returns click's Result (stdout, stderr, exit_code)."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, deadline: str = "2") -> Any:
        return runner.invoke(cli, ["--api", api.url, "--token", api.token, "--deadline", deadline, *args], input=input)

    return invoke
