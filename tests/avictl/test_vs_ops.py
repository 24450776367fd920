"""vs scale-out, scale-in, migrate and switchover against the fake API: route, body, output, exit codes."""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from tests.avictl.fake_api import FakeApi, _err

ACTIONS = ("scaleout", "scalein", "migrate", "switchover")


class ActionApi(FakeApi):
    """The fake API plus the VS action routes: answers 200 with the VS, or a scripted error."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: Optional[tuple[int, str, Optional[str]]] = None  # (status, message, field)

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any, host: str,
               command_id: Optional[str]) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in path.split("/") if p]
        if method == "POST" and len(parts) == 4 and parts[:2] == ["api", "virtualservice"] and parts[3] in ACTIONS:
            obj = self.objects.get(parts[2])
            if obj is None:
                return 404, _err(404, f"virtualservice {parts[2]} does not exist"), {}
            if self.refuse is not None:
                status, message, field = self.refuse
                return status, _err(status, message, field), {}
            return 200, self.render(obj, host), {}
        return super()._route(method, path, query, headers, body, host, command_id)


@pytest.fixture
def api() -> Iterator[ActionApi]:
    server = ActionApi()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def vs(api: ActionApi) -> dict[str, Any]:
    return api.seed("virtualservice", {"name": "web", "services": [{"port": 8080}]})


def posted(api: FakeApi) -> list[tuple[str, Any]]:
    return [(r.path, r.body) for r in api.writes()]


@pytest.mark.parametrize(
    ("args", "action", "body"),
    [
        (["scale-out"], "scaleout", {"vip_id": "0"}),
        (["scale-out", "--to", "Avi-2"], "scaleout", {"vip_id": "0", "to_se_ref": "Avi-2"}),
        (["scale-in"], "scalein", {"vip_id": "0"}),
        (["scale-in", "--se", "Avi-1"], "scalein", {"vip_id": "0", "se_ref": "Avi-1"}),
        (["migrate", "--to", "Avi-3"], "migrate", {"vip_id": "0", "to_se_ref": "Avi-3"}),
        (["migrate", "--to", "/api/serviceengine/se-3", "--from", "Avi-1"], "migrate",
         {"vip_id": "0", "to_se_ref": "/api/serviceengine/se-3", "from_se_ref": "Avi-1"}),
        (["switchover"], "switchover", {"vip_id": "0"}),
    ],
)
def test_action_posts_route_and_body(run: Any, api: ActionApi, vs: dict[str, Any], args: list[str], action: str,
                                     body: dict[str, Any]) -> None:
    """Each command POSTs its body to the VS's action route, SEs as given, and prints the VS row."""
    verb, *rest = args
    result = run("vs", verb, "web", *rest)
    assert 0 == result.exit_code, result.stderr
    assert [(f"/api/virtualservice/{vs['uuid']}/{action}", body)] == posted(api)
    lines = result.stdout.splitlines()
    assert "NAME" == lines[0].split()[0] and "web" == lines[1].split()[0]
    assert 2 == len(lines)


def test_action_prints_like_vs_place(run: Any, api: ActionApi, vs: dict[str, Any]) -> None:
    """-o json prints the answered VS as vs place does: a list of one object."""
    result = run("virtualservice", "switchover", "web", "-o", "json")
    assert 0 == result.exit_code, result.stderr
    shown = json.loads(result.stdout)
    assert ["web"] == [o["name"] for o in shown]
    assert vs["uuid"] == shown[0]["uuid"]


def test_missing_vs_is_refused_without_a_post(run: Any, api: ActionApi) -> None:
    """An unknown VS is one line on stderr, exit 1, and nothing is posted."""
    result = run("vs", "scale-out", "nope")
    assert 1 == result.exit_code
    assert ["error: virtualservice 'nope' does not exist"] == result.stderr.strip().splitlines()
    assert [] == posted(api)


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [(409, 1), (404, 1), (422, 2), (400, 2)],
)
def test_refusal_is_one_line_with_exit_code(run: Any, api: ActionApi, vs: dict[str, Any], status: int, exit_code: int) -> None:
    """A 4xx answer is one error line with the server's message; invalid input exits 2, a refusal 1."""
    api.refuse = (status, "no other SE in group Default-Group can take it", "to_se_ref")
    result = run("vs", "migrate", "web", "--to", "Avi-9")
    assert exit_code == result.exit_code
    assert ["error: no other SE in group Default-Group can take it (field: to_se_ref)"] == result.stderr.strip().splitlines()
    assert "" == result.stdout
    assert "Traceback" not in result.output


def test_migrate_needs_to(run: Any, api: ActionApi, vs: dict[str, Any]) -> None:
    """migrate without --to is bad usage (exit 2) and posts nothing."""
    result = run("vs", "migrate", "web")
    assert 2 == result.exit_code
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines) and lines[0].startswith("error: ") and "--to" in lines[0]
    assert [] == posted(api)


def test_commands_are_listed_in_help() -> None:
    """vs --help lists the four actions next to place."""
    result = CliRunner().invoke(cli, ["vs", "--help"])
    assert 0 == result.exit_code
    for verb in ("place", "scale-out", "scale-in", "migrate", "switchover"):
        assert verb in result.stdout
