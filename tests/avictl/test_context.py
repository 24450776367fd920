"""The context file: round trip, permissions, and refusal of a broken file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from avictl.context import Context, ContextError, NodeEntry, avictl_home, context_path, load_context, save_context
from avictl.errors import EXIT_USAGE


def sample() -> Context:
    nodes = tuple(
        NodeEntry(id=f"n{i}", api=f"http://127.0.0.1:{7000 + i}", raft=f"127.0.0.1:{7100 + i}", pid=1000 + i,
                  data_dir=f"/h/nodes/n{i}/data", config=f"/h/nodes/n{i}/node.json", log=f"/h/nodes/n{i}/controller.log")
        for i in (1, 2, 3)
    )
    return Context(cluster_id="c0ffee", username="admin", password="pw", token="tok", nodes=nodes)


def test_round_trip(tmp_path: Path) -> None:
    """A saved context loads back equal."""
    save_context(sample(), tmp_path)
    assert sample() == load_context(tmp_path)


def test_file_shape(tmp_path: Path) -> None:
    """The file holds the documented keys."""
    save_context(sample(), tmp_path)
    doc = json.loads((tmp_path / "context.json").read_text())
    assert ["cluster_id", "username", "password", "token", "nodes"] == list(doc)
    assert ["id", "api", "raft", "pid", "data_dir", "config", "log"] == list(doc["nodes"][0])


def test_mode_0600_even_over_a_wider_file(tmp_path: Path) -> None:
    """The context holds credentials: mode 0600, also when a 0644 file was there before."""
    path = tmp_path / "context.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    save_context(sample(), tmp_path)
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


def test_absent_is_none(tmp_path: Path) -> None:
    """No file means no context, not an error."""
    assert load_context(tmp_path / "nowhere") is None


def test_null_pid_round_trips(tmp_path: Path) -> None:
    """A stopped node (pid null) round-trips."""
    ctx = sample()
    ctx = ctx.with_node(NodeEntry(**{**ctx.nodes[0].to_json(), "pid": None}))
    save_context(ctx, tmp_path)
    loaded = load_context(tmp_path)
    assert loaded is not None and loaded.nodes[0].pid is None and loaded.nodes[1].pid == 1002


@pytest.mark.parametrize("text", ["not json", "[]", '{"cluster_id": 1}', '{"cluster_id":"c","username":"a","password":"p","token":"t","nodes":[{"id":"n1"}]}'])
def test_broken_file_is_a_usage_error(tmp_path: Path, text: str) -> None:
    """A broken context is refused with the path in the message and exit code 2."""
    (tmp_path / "context.json").write_text(text)
    with pytest.raises(ContextError) as info:
        load_context(tmp_path)
    assert str(tmp_path / "context.json") in str(info.value)
    assert EXIT_USAGE == info.value.exit_code


def test_home_default_and_override() -> None:
    """AVICTL_HOME wins; otherwise ~/.avictl."""
    assert Path("/x/y") == avictl_home({"AVICTL_HOME": "/x/y"})
    assert Path("~/.avictl").expanduser() == avictl_home({})
    assert Path("/x/y/context.json") == context_path(Path("/x/y"))
