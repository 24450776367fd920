"""The command line against the fake API: CRUD, flags, output formats, errors and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from click.testing import CliRunner

from avictl.cli import cli
from avictl.context import Context, NodeEntry, save_context
from tests.avictl.fake_api import FakeApi


def one_line_error(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# -- CRUD ----------------------------------------------------------------------------------------


def test_pool_create_with_flags(run: Any, api: FakeApi) -> None:
    """Pool flags become wire fields; --field adds more; the row is printed."""
    api.seed("healthmonitor", {"name": "System-TCP", "type": "HEALTH_MONITOR_TCP"})
    result = run("pool", "create", "web-pool", "--server", "127.0.0.1:9001", "--server", "127.0.0.1:9002",
                 "--algorithm", "consistent_hash", "--monitor", "System-TCP", "--field", "graceful_disable_timeout=2")
    assert 0 == result.exit_code, result.stderr
    body = api.writes()[0].body
    assert {
        "name": "web-pool",
        "servers": [{"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": 9001}, {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": 9002}],
        "lb_algorithm": "LB_ALGORITHM_CONSISTENT_HASH",
        "lb_algorithm_hash": "LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS",
        "health_monitor_refs": ["/api/healthmonitor?name=System-TCP"],
        "graceful_disable_timeout": 2,
    } == body
    assert api.writes()[0].headers["slug"].startswith("pool-")
    lines = result.stdout.splitlines()
    assert "NAME" == lines[0].split()[0] and "web-pool" == lines[1].split()[0]


def test_list_and_show_in_every_format(run: Any, api: FakeApi) -> None:
    """list and show honour -o table|json|yaml; aliases work."""
    api.seed("healthmonitor", {"name": "hm1", "type": "HEALTH_MONITOR_PING"})
    table = run("hm", "list")
    assert ["hm1", "ping", "10", "4"] == [c for i, c in enumerate(table.stdout.splitlines()[1].split()) if i != 1]
    as_json = json.loads(run("healthmonitor", "list", "-o", "json").stdout)
    assert ["hm1"] == [o["name"] for o in as_json]
    shown = yaml.safe_load(run("hm", "show", "hm1", "-o", "yaml").stdout)
    assert "HEALTH_MONITOR_PING" == shown["type"] and shown["uuid"].startswith("healthmonitor-")
    assert "FIELD" == run("hm", "show", "hm1").stdout.split()[0]


def test_output_from_environment(run: Any, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """AVICTL_OUTPUT sets the default format."""
    monkeypatch.setenv("AVICTL_OUTPUT", "json")
    assert [] == json.loads(run("tenant", "list").stdout)


def test_vs_create_makes_the_vsvip(run: Any, api: FakeApi) -> None:
    """vs create --vip makes <vs>-vsvip first, then the vs referring to it by name."""
    api.seed("pool", {"name": "web-pool"})
    result = run("vs", "create", "web", "--vip", "127.10.0.1", "--port", "8080", "--pool", "web-pool")
    assert 0 == result.exit_code, result.stderr
    posts = [(r.path, r.body) for r in api.writes()]
    assert ("/api/vsvip", {"name": "web-vsvip", "vip": [{"vip_id": "1", "ip_address": {"addr": "127.10.0.1", "type": "V4"}}]}) == posts[0]
    assert ("/api/virtualservice", {"vsvip_ref": "/api/vsvip?name=web-vsvip", "services": [{"port": 8080}],
                                    "pool_ref": "/api/pool?name=web-pool", "name": "web"}) == posts[1]
    assert "created vsvip web-vsvip" in result.stderr


def test_vs_create_refused_removes_its_vsvip(run: Any, api: FakeApi) -> None:
    """If the vs is refused, the vsvip made for it is deleted again."""
    result = run("vs", "create", "web", "--vip", "127.10.0.1", "--port", "8080", "--pool", "missing-pool")
    assert 2 == result.exit_code
    assert "error: pool named 'missing-pool' does not exist (field: pool_ref)" == one_line_error(result)
    assert ["POST", "POST", "DELETE"] == [r.method for r in api.writes()]
    assert api.by_name("vsvip", "web-vsvip") is None


def test_vs_delete_takes_its_own_vsvip(run: Any, api: FakeApi) -> None:
    """Deleting a vs made with --vip deletes <vs>-vsvip too."""
    api.seed("pool", {"name": "p"})
    run("vs", "create", "web", "--vip", "127.10.0.1", "--port", "80", "--pool", "p")
    result = run("vs", "delete", "web")
    assert 0 == result.exit_code, result.stderr
    assert ["deleted virtualservice web", "deleted vsvip web-vsvip"] == result.stdout.splitlines()
    assert api.by_name("vsvip", "web-vsvip") is None


def test_update_merges_and_sends_last_modified(run: Any, api: FakeApi) -> None:
    """update reads, merges the given fields, and PUTs with _last_modified."""
    pool = api.seed("pool", {"name": "web", "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80}]})
    result = run("pool", "update", "web", "--algorithm", "round_robin", "--field", "graceful_disable_timeout=2")
    assert 0 == result.exit_code, result.stderr
    put = [r for r in api.writes() if r.method == "PUT"][0]
    assert str(pool["_rev"]) == put.body["_last_modified"]
    assert "LB_ALGORITHM_ROUND_ROBIN" == put.body["lb_algorithm"] and 2 == put.body["graceful_disable_timeout"]
    assert [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80, "ratio": 1, "enabled": True}] == put.body["servers"]


def test_update_unchanged_does_not_write(run: Any, api: FakeApi) -> None:
    """An update that changes nothing sends no PUT."""
    api.seed("serviceenginegroup", {"name": "g", "ha_mode": "HA_MODE_SHARED_PAIR"})
    result = run("segroup", "update", "g", "--ha-mode", "active_active")
    assert 0 == result.exit_code
    assert "serviceenginegroup g unchanged" in result.stderr
    assert [] == api.writes()


def test_update_retries_after_a_concurrent_write(run: Any, api: FakeApi) -> None:
    """A 412 (someone wrote in between) is answered by re-reading and merging again."""
    api.seed("serviceenginegroup", {"name": "g", "max_se": 3})
    original = api.handle

    def interfere(method: str, path: str, *a: Any) -> Any:
        if method == "PUT" and not getattr(interfere, "done", False):
            interfere.done = True  # type: ignore[attr-defined]
            obj = api.by_name("serviceenginegroup", "g")
            obj["_rev"] += 100  # type: ignore[index]
        return original(method, path, *a)

    api.handle = interfere  # type: ignore[method-assign]
    result = run("segroup", "update", "g", "--max-se", "5")
    assert 0 == result.exit_code, result.stderr
    assert 2 == len([r for r in api.writes() if r.method == "PUT"])
    assert 5 == api.by_name("serviceenginegroup", "g")["max_se"]  # type: ignore[index]


def test_update_needs_something(run: Any, api: FakeApi) -> None:
    """update without fields is a usage error."""
    api.seed("tenant", {"name": "t"})
    result = run("tenant", "update", "t")
    assert 2 == result.exit_code
    assert "nothing to update" in one_line_error(result)


def test_applicationprofile_create_with_http_limits(run: Any, api: FakeApi) -> None:
    """An application profile is created with a short type and nested http_profile fields."""
    result = run("appprofile", "create", "big-heads", "--field", "type=http", "--field", "http_profile.client_max_header_size=32",
                 "--field", "http_profile.client_header_timeout=5000")
    assert 0 == result.exit_code, result.stderr
    assert ("/api/applicationprofile", {"name": "big-heads", "type": "APPLICATION_PROFILE_TYPE_HTTP",
                                        "http_profile": {"client_max_header_size": 32, "client_header_timeout": 5000}}) == (
        api.writes()[0].path, api.writes()[0].body)


def test_serviceengine_is_read_only(run: Any) -> None:
    """serviceengine has list and show, no create."""
    result = run("serviceengine", "create", "x")
    assert 2 == result.exit_code


# -- errors and exit codes ----------------------------------------------------------------------


def test_invalid_input_is_one_line_exit_2(run: Any, api: FakeApi) -> None:
    """A 422 (the input was invalid) prints 'error: <message> (field: <field>)' and exits 2."""
    result = run("pool", "create", "web", "--field", "bogus=1")
    assert 2 == result.exit_code
    assert "error: unknown field (not supported by avictl) (field: bogus)" == one_line_error(result)


def test_conflict_exit_1(run: Any, api: FakeApi) -> None:
    """Creating a name twice is refused with exit 1."""
    run("tenant", "create", "t")
    result = run("tenant", "create", "t")
    assert 1 == result.exit_code
    assert "already exists" in one_line_error(result)


def test_missing_object_exit_1(run: Any) -> None:
    """show/delete of an absent name exits 1 naming it."""
    for args in (("pool", "show", "nope"), ("pool", "delete", "nope")):
        result = run(*args)
        assert 1 == result.exit_code
        assert "error: pool 'nope' does not exist" == one_line_error(result)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("pool", "create"), "Missing argument 'NAME'"),
        (("pool", "create", "x", "--bogus"), "No such option"),
        (("pool", "create", "x", "--algorithm", "fastest"), "Invalid value for '--algorithm'"),
        (("pool", "create", "x", "--field", "novalue"), "expected KEY=VALUE"),
        (("pool", "create", "x", "--server", "web:80"), "expected IP[:PORT]"),
        (("vs", "create", "x", "--vip", "1.2.3.4", "--vsvip", "y"), "not both"),
        (("vs", "create", "x", "--vip", "not-an-ip"), "expected an IP address"),
        (("widget", "list"), "No such command 'widget'"),
        (("apply", "-f", "/nonexistent.yaml"), "No such file"),
        (("events", "--since", "0"), "Invalid value for '--since'"),
    ],
)
def test_usage_errors_exit_2(run: Any, api: FakeApi, args: tuple[str, ...], fragment: str) -> None:
    """Bad usage is one line on stderr, exit 2, and nothing is written."""
    result = run(*args)
    assert 2 == result.exit_code, result.output
    assert fragment in one_line_error(result)
    assert [] == api.writes()


def test_no_context_is_a_usage_error(home: Path) -> None:
    """Without a context or --api the CLI says how to get one (exit 2)."""
    result = CliRunner().invoke(cli, ["pool", "list"])
    assert 2 == result.exit_code
    assert "run 'avictl cluster up' or pass --api" in one_line_error(result)


def test_unreachable_cluster_exit_1(home: Path, dead_url: str) -> None:
    """No node answering is a refused operation after the deadline (exit 1)."""
    result = CliRunner().invoke(cli, ["--api", dead_url, "--deadline", "0.2", "pool", "list"])
    assert 1 == result.exit_code
    assert "no controller answered within 0.2 s" in one_line_error(result)


def test_unexpected_exception_has_no_traceback(run: Any, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a bug surfaces as one line."""
    import avictl.render

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("kaput")

    monkeypatch.setattr(avictl.render, "render_objects", boom)
    result = run("pool", "list")
    assert 1 == result.exit_code
    assert "unexpected RuntimeError: kaput" in one_line_error(result)


# -- context, env and global options -------------------------------------------------------------


def test_context_supplies_nodes_and_token(home: Path, api: FakeApi, dead_url: str) -> None:
    """With a context, commands use its nodes (skipping a dead one) and its token."""
    nodes = tuple(NodeEntry(id=i, api=u, raft="127.0.0.1:1", pid=None, data_dir="d", config="c", log="l")
                  for i, u in (("n1", dead_url), ("n2", api.url)))
    save_context(Context("c", "admin", "pw", api.token, nodes), home)
    result = CliRunner().invoke(cli, ["tenant", "create", "blue"])
    assert 0 == result.exit_code, result.stderr
    assert api.by_name("tenant", "blue") is not None


def test_env_overrides_context(home: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """AVICTL_API and AVICTL_TOKEN override the context."""
    save_context(Context("c", "admin", "pw", "stale", (NodeEntry("n1", "http://127.0.0.1:1", "r", None, "d", "c", "l"),)), home)
    monkeypatch.setenv("AVICTL_API", api.url)
    monkeypatch.setenv("AVICTL_TOKEN", api.token)
    result = CliRunner().invoke(cli, ["tenant", "list"])
    assert 0 == result.exit_code, result.stderr
    assert api.requests[0].headers["authorization"] == f"Bearer {api.token}"


def test_wrong_token_exit_1(home: Path, api: FakeApi) -> None:
    """A rejected token is one line, exit 1."""
    result = CliRunner().invoke(cli, ["--api", api.url, "--token", "nope", "tenant", "list"])
    assert 1 == result.exit_code
    assert "error: invalid token" == one_line_error(result)


# -- cluster and events ------------------------------------------------------------------------


def test_cluster_status(run: Any) -> None:
    """cluster status renders /api/cluster."""
    result = run("cluster", "status")
    assert 0 == result.exit_code
    assert ["ID", "API", "ROLE", "TERM", "COMMIT", "APPLIED"] == result.stdout.splitlines()[0].split()
    assert "leader: n1  state: CLUSTER_UP_NO_HA" == result.stdout.splitlines()[-1]
    assert "n1" == json.loads(run("cluster", "status", "-o", "json").stdout)["leader"]


def test_cluster_down_without_context(home: Path) -> None:
    """down with nothing to stop is not an error."""
    result = CliRunner().invoke(cli, ["cluster", "down"])
    assert 0 == result.exit_code
    assert "nothing to stop" in result.stderr


def test_a_stopped_local_cluster_is_reported_at_once(home: Path, dead_url: str) -> None:
    """With every controller process of the context gone, a command says so at once (exit 1)
    instead of retrying for its 15 s deadline; a context whose nodes were not started here
    (no pid) is still tried as usual."""
    import subprocess
    import time

    gone = subprocess.Popen(["true"])
    gone.wait()
    nodes = tuple(NodeEntry(f"n{i}", dead_url, "r", gone.pid, "d", f"/nonexistent/n{i}/node.json", "l") for i in (1, 2, 3))
    save_context(Context("c", "admin", "pw", "t", nodes), home)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["pool", "list"])
    assert time.monotonic() - started < 2.0
    assert 1 == result.exit_code
    assert "is not running" in result.stderr and "avictl cluster up" in result.stderr
    save_context(Context("c", "admin", "pw", "t", tuple(attrs.evolve(n, pid=None) for n in nodes)), home)
    result = CliRunner().invoke(cli, ["--deadline", "0.3", "pool", "list"])
    assert 1 == result.exit_code and "no controller answered" in result.stderr


def test_cluster_down_purge_removes_context_and_nodes(home: Path) -> None:
    """down --purge deletes nodes/ and the context, nothing else in AVICTL_HOME."""
    (home / "nodes" / "n1" / "data").mkdir(parents=True)
    (home / "keep.txt").write_text("x")
    save_context(Context("c", "admin", "pw", "t", (NodeEntry("n1", "http://127.0.0.1:1", "r", None, "d", "c", "l"),)), home)
    result = CliRunner().invoke(cli, ["cluster", "down", "--purge"])
    assert 0 == result.exit_code, result.stderr
    assert ["keep.txt"] == os.listdir(home)


def test_cluster_up_refuses_a_different_node_count(home: Path) -> None:
    """up --nodes 3 over a 1-node context is a usage error."""
    save_context(Context("c", "admin", "pw", "t", (NodeEntry("n1", "http://127.0.0.1:1", "r", None, "d", "c", "l"),)), home)
    result = CliRunner().invoke(cli, ["cluster", "up", "--nodes", "3"])
    assert 2 == result.exit_code
    assert "has 1 node(s), not 3" in one_line_error(result)


def test_controller_run_with_bad_config_exit_2(tmp_path: Path) -> None:
    """controller run with a missing or broken config is a usage error naming the file."""
    result = CliRunner().invoke(cli, ["controller", "run", "--config", str(tmp_path / "none.json")])
    assert 2 == result.exit_code
    assert "none.json: no such file" in one_line_error(result)
    (tmp_path / "bad.json").write_text('{"node_id": "n1"}')
    result = CliRunner().invoke(cli, ["controller", "run", "--config", str(tmp_path / "bad.json")])
    assert 2 == result.exit_code
    assert "missing field" in one_line_error(result)


def test_events_list(run: Any, api: FakeApi) -> None:
    """events shows the last --limit events by default, or from --since."""
    for name in "abcd":
        api.seed("tenant", {"name": name})
    result = run("events", "--limit", "2")
    assert ["3", "4"] == [line.split()[0] for line in result.stdout.splitlines()[1:]]
    since = json.loads(run("events", "--since", "2", "-o", "json").stdout)
    assert [2, 3, 4] == [e["revision"] for e in since]


def test_events_follow_prints_and_stops_on_ctrl_c(run: Any, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """--follow streams events as NDJSON (heartbeats skipped) and Ctrl-C exits 0 quietly."""
    api.watch_lines = [b'{"revision": 1, "type": "ObjectCreated", "time": 1.0, "data": {}}\n', b'{"heartbeat": true}\n',
                       b'{"revision": 2, "type": "ObjectCreated", "time": 2.0, "data": {}}\n']
    import avictl.client

    def interrupt(self: Any, seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(avictl.client.Client, "watch", _watch_then_interrupt(avictl.client.Client.watch))
    result = run("events", "--follow", "--since", "1", "-o", "json")
    assert 0 == result.exit_code, result.stderr
    assert [1, 2] == [json.loads(line)["revision"] for line in result.stdout.splitlines()]


def _watch_then_interrupt(watch: Any) -> Any:
    def wrapped(self: Any, since: int, **kw: Any) -> Any:
        def on_retry(reason: str) -> None:
            raise KeyboardInterrupt  # the first stream ended: play the user's Ctrl-C

        yield from watch(self, since, on_retry=on_retry)

    return wrapped


def test_help_and_version_of_aliases(run: Any) -> None:
    """`avictl vs --help` works and shows vs in the usage line."""
    result = run("vs", "create", "--help")
    assert 0 == result.exit_code
    assert "Usage: cli vs create" in result.stdout or "Usage: avictl vs create" in result.stdout


def test_create_retry_that_finds_its_own_object_succeeds(run: Any, api: FakeApi) -> None:
    """Even without server-side dedupe, a retried create that meets 'already exists' with its own uuid succeeds."""
    api.dedupe = False
    api.lose_answers = [504]
    result = run("tenant", "create", "blue")
    assert 0 == result.exit_code, result.stderr
    assert 1 == len(api.objects)
    slug = api.writes()[0].headers["slug"]
    assert [slug, slug] == [r.headers["slug"] for r in api.writes()]


def test_delete_retry_that_finds_it_gone_succeeds(run: Any, api: FakeApi) -> None:
    """A retried delete answered 404 (the first attempt did it) is a success."""
    api.seed("tenant", {"name": "blue"})
    api.dedupe = False
    api.lose_answers = [503]
    result = run("tenant", "delete", "blue")
    assert 0 == result.exit_code, result.stderr
    assert "deleted tenant blue" == result.stdout.strip()


def test_tenant_header(api: FakeApi, home: Path) -> None:
    """--tenant sends X-Avi-Tenant."""
    CliRunner().invoke(cli, ["--api", api.url, "--token", api.token, "--tenant", "blue", "pool", "list"])
    assert "blue" == api.requests[0].headers["x-avi-tenant"]
