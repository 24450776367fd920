"""The REST API behaviours the CLI relies on, checked against the fake API and a real controller.

Every test takes ``api_under_test``: once :class:`~tests.avictl.fake_api.FakeApi` (what the CLI
tests run against) and once a real single-node controller (marked slow). The real API is the
reference: when the two disagree, the fake is what gets fixed. Both stand for the whole module, so
each test makes objects with names of its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid as uuidlib
from pathlib import Path
from typing import Any, Iterator, Optional

import attrs
import pytest

from simulations.local_cluster import LocalCluster
from tests.avictl.fake_api import FakeApi

ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 412: "precondition_failed",
               422: "validation_failed"}


@attrs.frozen
class Answer:
    status: int
    body: Any


@attrs.frozen
class ApiUnderTest:
    """One API endpoint and its admin token; ``call`` sends one request, no retry."""

    url: str
    token: str

    def call(self, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None,
             token: Optional[str] = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return Answer(resp.status, json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return Answer(exc.code, json.loads(raw) if raw else None)

    def create(self, kind: str, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
        answer = self.call("POST", f"/api/{kind}", body, headers)
        assert 201 == answer.status, answer.body
        return dict(answer.body)

    def get(self, kind: str, uuid: str) -> dict[str, Any]:
        answer = self.call("GET", f"/api/{kind}/{uuid}")
        assert 200 == answer.status, answer.body
        return dict(answer.body)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def pool_body(name: str) -> dict[str, Any]:
    return {"name": name, "servers": [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80}]}


@pytest.fixture(scope="module")
def fake_api() -> Iterator[ApiUnderTest]:
    server = FakeApi().start()
    try:
        yield ApiUnderTest(server.url, server.token)
    finally:
        server.close()


@pytest.fixture(scope="module")
def real_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiUnderTest]:
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("contract")), nodes=1)
    try:
        cluster.start_all(timeout=30)
        yield ApiUnderTest(cluster.api("n1"), cluster.token)
    finally:
        cluster.close()


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def api_under_test(request: pytest.FixtureRequest) -> ApiUnderTest:
    api: ApiUnderTest = request.getfixturevalue(f"{request.param}_api")
    return api


# -- lists ---------------------------------------------------------------------------------------


def test_list_pages_carry_count_results_and_next(api_under_test: ApiUnderTest) -> None:
    """Each page has the total count and at most page_size results; next is there exactly while a page follows."""
    made = {api_under_test.create("tenant", {"name": unique("t")})["name"] for _ in range(3)}
    seen: list[str] = []
    page = 1
    while True:
        doc = api_under_test.call("GET", f"/api/tenant?page_size=2&sort=name&page={page}").body
        assert {"count", "results"} <= set(doc) <= {"count", "results", "next"}
        assert len(doc["results"]) <= 2
        seen.extend(r["name"] for r in doc["results"])
        if "next" not in doc:
            break
        assert doc["next"].startswith(f"{api_under_test.url}/api/tenant?")
        assert {"page_size=2", "sort=name", f"page={page + 1}"} <= set(doc["next"].split("?", 1)[1].split("&"))
        page += 1
    assert made <= set(seen) and doc["count"] == len(seen) == len(set(seen))


def test_name_query_finds_that_object(api_under_test: ApiUnderTest) -> None:
    """?name= answers a list holding only the object of that name."""
    name = unique("pool")
    made = api_under_test.create("pool", pool_body(name))
    doc = api_under_test.call("GET", f"/api/pool?name={name}").body
    assert (1, [made["uuid"]]) == (doc["count"], [r["uuid"] for r in doc["results"]])


def test_name_query_for_an_absent_name_is_an_empty_list(api_under_test: ApiUnderTest) -> None:
    """?name= of no object answers 200 with count 0, not 404."""
    answer = api_under_test.call("GET", f"/api/pool?name={unique('absent')}")
    assert (200, 0, []) == (answer.status, answer.body["count"], answer.body["results"])


# -- create --------------------------------------------------------------------------------------


def test_post_answers_201_with_uuid_url_and_last_modified(api_under_test: ApiUnderTest) -> None:
    """A created object comes back with a <kind>- uuid, its own URL, a revision string and the admin tenant."""
    name = unique("pool")
    answer = api_under_test.call("POST", "/api/pool", pool_body(name))
    assert 201 == answer.status
    obj = answer.body
    assert name == obj["name"] and obj["uuid"].startswith("pool-")
    assert f"{api_under_test.url}/api/pool/{obj['uuid']}" == obj["url"]
    assert isinstance(obj["_last_modified"], str) and obj["_last_modified"].isdigit()
    assert obj["tenant_ref"].startswith(f"{api_under_test.url}/api/tenant/") and obj["tenant_ref"].endswith("#admin")


def test_post_with_a_slug_creates_that_uuid(api_under_test: ApiUnderTest) -> None:
    """The Slug header chooses the new object's uuid (the CLI's retry-safe create)."""
    slug = f"pool-{uuidlib.uuid4()}"
    assert slug == api_under_test.create("pool", pool_body(unique("pool")), {"Slug": slug})["uuid"]


def test_a_slug_not_of_the_kind_is_400(api_under_test: ApiUnderTest) -> None:
    """A Slug that does not start with <kind>- is refused, naming the Slug header."""
    answer = api_under_test.call("POST", "/api/pool", pool_body(unique("pool")), {"Slug": f"vsvip-{uuidlib.uuid4()}"})
    assert (400, "Slug") == (answer.status, answer.body["error"]["field"])


def test_server_defaults_are_filled_in(api_under_test: ApiUnderTest) -> None:
    """Fields a pool and a health monitor leave out come back with the server's defaults."""
    pool = api_under_test.create("pool", {"name": unique("pool")})
    hm = api_under_test.create("healthmonitor", {"name": unique("hm"), "type": "HEALTH_MONITOR_TCP"})
    assert {"lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS", "default_server_port": 80, "graceful_disable_timeout": 1,
            "servers": [], "health_monitor_refs": []}.items() <= pool.items()
    assert {"send_interval": 10, "receive_timeout": 4, "successful_checks": 2, "failed_checks": 2}.items() <= hm.items()


def test_virtual_service_defaults_are_filled_in(api_under_test: ApiUnderTest) -> None:
    """A virtual service that leaves out enabled and type comes back enabled and of the normal type."""
    vip = f"127.10.{uuidlib.uuid4().int % 250 + 1}.{uuidlib.uuid4().int % 250 + 1}"
    vsvip = api_under_test.create("vsvip", {"name": unique("vsvip"), "vip": [{"vip_id": "1", "ip_address": {"addr": vip, "type": "V4"}}]})
    vs = api_under_test.create("virtualservice", {"name": unique("vs"), "vsvip_ref": vsvip["url"], "services": [{"port": 8080}]})
    assert {"enabled": True, "type": "VS_TYPE_NORMAL"}.items() <= vs.items()


def test_server_fills_in_each_server(api_under_test: ApiUnderTest) -> None:
    """A pool's servers come back with ratio 1 and enabled."""
    pool = api_under_test.create("pool", pool_body(unique("pool")))
    assert [{"ip": {"addr": "10.0.0.1", "type": "V4"}, "port": 80, "ratio": 1, "enabled": True}] == pool["servers"]


def test_refs_come_back_as_urls_ending_in_the_name(api_under_test: ApiUnderTest) -> None:
    """A ref sent by name is answered as <api>/api/<kind>/<uuid>#<name>."""
    hm = api_under_test.create("healthmonitor", {"name": unique("hm"), "type": "HEALTH_MONITOR_TCP"})
    pool = api_under_test.create("pool", {**pool_body(unique("pool")), "health_monitor_refs": [f"/api/healthmonitor?name={hm['name']}"]})
    assert [f"{api_under_test.url}/api/healthmonitor/{hm['uuid']}#{hm['name']}"] == pool["health_monitor_refs"]


def test_a_ref_to_a_missing_object_is_422_naming_the_ref(api_under_test: ApiUnderTest) -> None:
    """A ref naming no object is refused; the field names the ref, with its index in a list."""
    missing = unique("hm")
    answer = api_under_test.call("POST", "/api/pool", {**pool_body(unique("pool")), "health_monitor_refs": [f"/api/healthmonitor?name={missing}"]})
    assert (422, "health_monitor_refs[0]") == (answer.status, answer.body["error"]["field"])
    assert f"healthmonitor named {missing!r} does not exist" == answer.body["error"]["message"]


def test_unknown_field_is_422_naming_it(api_under_test: ApiUnderTest) -> None:
    """A field the kind does not have is refused, and the error names the field."""
    answer = api_under_test.call("POST", "/api/pool", {**pool_body(unique("pool")), "min_servers_up": 1})
    assert (422, "validation_failed", "min_servers_up") == (answer.status, answer.body["error"]["code"], answer.body["error"]["field"])
    assert "unknown field (not supported by avictl)" == answer.body["error"]["message"]


def test_missing_name_is_422(api_under_test: ApiUnderTest) -> None:
    """An object without a name is refused, naming the name field."""
    answer = api_under_test.call("POST", "/api/tenant", {"description": "no name"})
    assert (422, "name") == (answer.status, answer.body["error"]["field"])


def test_duplicate_name_is_409(api_under_test: ApiUnderTest) -> None:
    """A second object of the same kind and name is refused, naming the name field."""
    name = unique("pool")
    api_under_test.create("pool", pool_body(name))
    answer = api_under_test.call("POST", "/api/pool", pool_body(name))
    assert (409, "name", f"pool named {name!r} already exists") == \
        (answer.status, answer.body["error"]["field"], answer.body["error"]["message"])


def test_unknown_kind_is_404(api_under_test: ApiUnderTest) -> None:
    """A collection of no known kind does not exist, for reading or creating."""
    assert [404, 404] == [api_under_test.call("GET", "/api/nosuchkind").status,
                          api_under_test.call("POST", "/api/nosuchkind", {"name": "x"}).status]


# -- update --------------------------------------------------------------------------------------


def test_put_of_the_object_as_read_changes_nothing(api_under_test: ApiUnderTest) -> None:
    """PUT of a GET's answer (refs as URLs, server fields included) answers 200 and keeps _last_modified."""
    hm = api_under_test.create("healthmonitor", {"name": unique("hm"), "type": "HEALTH_MONITOR_TCP"})
    made = api_under_test.create("pool", {**pool_body(unique("pool")), "health_monitor_refs": [hm["url"]]})
    read = api_under_test.get("pool", made["uuid"])
    answer = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", read)
    assert (200, read["_last_modified"]) == (answer.status, answer.body["_last_modified"])


def test_put_with_a_change_moves_last_modified(api_under_test: ApiUnderTest) -> None:
    """A PUT that changes a field answers the object with the change and a newer _last_modified."""
    made = api_under_test.create("pool", pool_body(unique("pool")))
    answer = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {**made, "default_server_port": 8080})
    assert (200, 8080) == (answer.status, answer.body["default_server_port"])
    assert int(answer.body["_last_modified"]) > int(made["_last_modified"])


def test_put_replaces_the_whole_object(api_under_test: ApiUnderTest) -> None:
    """A PUT body without a field resets it to its default (PUT replaces; the CLI merges first)."""
    made = api_under_test.create("pool", {**pool_body(unique("pool")), "default_server_port": 8080})
    answer = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {"name": made["name"]})
    assert (200, 80, []) == (answer.status, answer.body["default_server_port"], answer.body["servers"])


def test_put_with_a_stale_last_modified_is_412(api_under_test: ApiUnderTest) -> None:
    """A PUT carrying the _last_modified of an older version is refused, naming _last_modified."""
    made = api_under_test.create("pool", pool_body(unique("pool")))
    api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {**made, "default_server_port": 8080})
    answer = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {**made, "default_server_port": 9090})
    assert (412, "precondition_failed", "_last_modified") == \
        (answer.status, answer.body["error"]["code"], answer.body["error"]["field"])
    assert 8080 == api_under_test.get("pool", made["uuid"])["default_server_port"]


# -- missing objects, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_missing_object_is_404(api_under_test: ApiUnderTest, method: str) -> None:
    """GET, PUT and DELETE of a uuid that names no object answer 404 not_found."""
    missing = f"pool-{uuidlib.uuid4()}"
    answer = api_under_test.call(method, f"/api/pool/{missing}", {"name": "x"} if method == "PUT" else None)
    assert (404, "not_found", f"pool {missing} does not exist") == \
        (answer.status, answer.body["error"]["code"], answer.body["error"]["message"])


def test_delete_answers_204_and_the_object_is_gone(api_under_test: ApiUnderTest) -> None:
    """DELETE answers 204 without a body; the name no longer lists."""
    made = api_under_test.create("pool", pool_body(unique("pool")))
    answer = api_under_test.call("DELETE", f"/api/pool/{made['uuid']}")
    assert (204, None) == (answer.status, answer.body)
    assert 0 == api_under_test.call("GET", f"/api/pool?name={made['name']}").body["count"]


def test_delete_of_a_referenced_object_is_409(api_under_test: ApiUnderTest) -> None:
    """An object another one refers to is not deleted; the error names who uses it."""
    hm = api_under_test.create("healthmonitor", {"name": unique("hm"), "type": "HEALTH_MONITOR_TCP"})
    pool = api_under_test.create("pool", {**pool_body(unique("pool")), "health_monitor_refs": [hm["url"]]})
    answer = api_under_test.call("DELETE", f"/api/healthmonitor/{hm['uuid']}")
    assert (409, "conflict", f"healthmonitor {hm['name']!r} is in use by pool {pool['name']!r}") == \
        (answer.status, answer.body["error"]["code"], answer.body["error"]["message"])
    assert hm["uuid"] == api_under_test.get("healthmonitor", hm["uuid"])["uuid"]


# -- errors --------------------------------------------------------------------------------------


def test_wrong_token_is_401(api_under_test: ApiUnderTest) -> None:
    """A request with a token the cluster did not issue is refused as unauthorized."""
    answer = api_under_test.call("GET", "/api/pool", token="not-the-token")
    assert (401, "unauthorized") == (answer.status, answer.body["error"]["code"])


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/pool", [1], 400),
        ("POST", "/api/tenant", {"name": 1}, 422),
        ("GET", "/api/pool/pool-00000000-0000-4000-8000-000000000000", None, 404),
        ("POST", "/api/tenant", {"name": "admin-dup", "bogus": 1}, 422),
    ],
)
def test_every_error_is_code_message_field(api_under_test: ApiUnderTest, method: str, path: str, body: Any, status: int) -> None:
    """An error answer is exactly {"error": {code, message, field}}, the code naming the status."""
    answer = api_under_test.call(method, path, body)
    assert status == answer.status
    assert ["error"] == list(answer.body) and {"code", "message", "field"} == set(answer.body["error"])
    error = answer.body["error"]
    assert ERROR_CODES[status] == error["code"] and isinstance(error["message"], str) and error["message"]
    assert error["field"] is None or isinstance(error["field"], str)


# -- command ids ---------------------------------------------------------------------------------


def test_a_retried_create_is_applied_once(api_under_test: ApiUnderTest) -> None:
    """A POST sent again with the same X-Avi-Command-Id answers the object made the first time, not 409."""
    name, command = unique("pool"), {"X-Avi-Command-Id": uuidlib.uuid4().hex}
    first = api_under_test.call("POST", "/api/pool", pool_body(name), command)
    again = api_under_test.call("POST", "/api/pool", pool_body(name), command)
    assert (201, 201, first.body["uuid"]) == (first.status, again.status, again.body["uuid"])
    assert 1 == api_under_test.call("GET", f"/api/pool?name={name}").body["count"]


def test_a_retried_update_is_applied_once(api_under_test: ApiUnderTest) -> None:
    """A PUT sent again with the same X-Avi-Command-Id (and so its now stale _last_modified) answers 200, not 412."""
    made = api_under_test.create("pool", pool_body(unique("pool")))
    command = {"X-Avi-Command-Id": uuidlib.uuid4().hex}
    first = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {**made, "default_server_port": 8080}, command)
    again = api_under_test.call("PUT", f"/api/pool/{made['uuid']}", {**made, "default_server_port": 8080}, command)
    assert (200, 200) == (first.status, again.status)
    assert first.body["_last_modified"] == api_under_test.get("pool", made["uuid"])["_last_modified"]


def test_a_retried_delete_is_applied_once(api_under_test: ApiUnderTest) -> None:
    """A DELETE sent again with the same X-Avi-Command-Id answers 204 again, not 404."""
    made = api_under_test.create("pool", pool_body(unique("pool")))
    command = {"X-Avi-Command-Id": uuidlib.uuid4().hex}
    statuses = [api_under_test.call("DELETE", f"/api/pool/{made['uuid']}", headers=command).status for _ in range(2)]
    assert [204, 204] == statuses


def test_a_write_names_its_command_id_in_the_log(api_under_test: ApiUnderTest) -> None:
    """/api/events lists the write's event with its revision, type, time, command id and object."""
    head = api_under_test.call("GET", "/api/events?since=0&limit=1").body["revision"]
    command_id = uuidlib.uuid4().hex
    made = api_under_test.create("pool", pool_body(unique("pool")), {"X-Avi-Command-Id": command_id})
    doc = api_under_test.call("GET", f"/api/events?since={head + 1}&limit=100").body
    assert {"count", "results", "revision"} <= set(doc) and doc["revision"] > head
    ours = [e for e in doc["results"] if e["command_id"] == command_id]
    assert ["ObjectCreated"] == [e["type"] for e in ours]
    assert {"revision", "type", "time", "command_id", "data"} <= set(ours[0])
    assert (made["uuid"], made["name"], "pool") == (ours[0]["data"]["uuid"], ours[0]["data"]["name"], ours[0]["data"]["kind"])


# -- cluster -------------------------------------------------------------------------------------


def test_cluster_names_its_leader_state_and_nodes(api_under_test: ApiUnderTest) -> None:
    """/api/cluster answers the leader's id, the cluster state, and each node's role, term and progress."""
    doc = api_under_test.call("GET", "/api/cluster").body
    assert {"leader", "state", "nodes"} == set(doc)
    assert "CLUSTER_UP_NO_HA" == doc["state"] and [doc["leader"]] == [n["id"] for n in doc["nodes"]]
    node = doc["nodes"][0]
    assert {"id", "api", "raft", "role", "term", "commit_index", "applied_index", "applied_revision", "leader", "has_quorum"} == set(node)
    assert ("leader", api_under_test.url, True) == (node["role"], node["api"], node["has_quorum"])
    assert all(isinstance(node[k], int) for k in ("term", "commit_index", "applied_index", "applied_revision"))
