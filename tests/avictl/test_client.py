"""The client: node failover with the same command id, error decoding, deadlines, watch."""

from __future__ import annotations

import json

import pytest

from avictl.client import ApiError, Client, Unavailable
from tests.avictl.fake_api import FakeApi


def client(*urls: str, token: str = "secret-token", deadline: float = 5.0) -> Client:
    return Client(list(urls), token, deadline=deadline, timeout=2.0, backoff_initial=0.01, backoff_max=0.05)


def test_refused_connection_moves_to_next_node(api: FakeApi, dead_url: str) -> None:
    """A node that refuses connections is skipped; the write lands once on the next node."""
    c = client(dead_url, api.url)
    obj = c.post("/api/pool", {"name": "web"})
    assert "web" == obj["name"]
    assert 2 == c.last_attempts
    assert 1 == len(api.writes())


def test_503_retries_with_the_same_command_id(dead_url: str) -> None:
    """503 on one node, refused on another, success later: every attempt carries one command id."""
    first, second = FakeApi("n1").start(), FakeApi("n2").start()
    try:
        first.script = [503, 503]
        second.script = [503]
        c = client(first.url, dead_url, second.url)
        c.post("/api/pool", {"name": "web"}, command_id=None)
        ids = {r.headers["x-avi-command-id"] for r in first.writes() + second.writes()}
        assert 1 == len(ids)
        assert 32 == len(ids.pop())  # uuid4 hex
        attempts = len(first.writes()) + len(second.writes())
        assert 4 == attempts  # 503, 503(second), 503(first again), then applied on the second
        assert 1 == len(second.objects) + len(first.objects)
    finally:
        first.close()
        second.close()


def test_504_retry_is_applied_at_most_once(api: FakeApi) -> None:
    """After a 504 (outcome unknown) the retry reuses the command id; the server applies once."""
    api.script = [504]
    c = client(api.url)
    c.post("/api/pool", {"name": "web"})
    ids = [r.headers["x-avi-command-id"] for r in api.writes()]
    assert 2 == len(ids) and ids[0] == ids[1]
    assert 1 == len(api.objects)


def test_each_logical_write_has_its_own_command_id(api: FakeApi) -> None:
    """Two writes, two ids; reads carry none."""
    c = client(api.url)
    c.post("/api/pool", {"name": "a"})
    c.post("/api/pool", {"name": "b"})
    c.get("/api/pool")
    ids = [r.headers.get("x-avi-command-id") for r in api.requests]
    assert ids[0] != ids[1] and ids[2] is None


def test_api_error_is_decoded_with_field(api: FakeApi) -> None:
    """A 422 comes back as ApiError naming the field, without retry."""
    c = client(api.url)
    with pytest.raises(ApiError) as info:
        c.post("/api/pool", {"name": "web", "bogus": 1})
    assert (422, "validation_failed", "bogus") == (info.value.status, info.value.code, info.value.field)
    assert "unknown field (not supported by avictl) (field: bogus)" == str(info.value)
    assert 1 == len(api.writes())


def test_401_is_not_retried(api: FakeApi) -> None:
    """A wrong token is the cluster's answer, not an outage."""
    c = client(api.url, token="wrong")
    with pytest.raises(ApiError, match="invalid token"):
        c.get("/api/pool")
    assert 1 == len(api.requests)


def test_deadline_on_dead_nodes(dead_url: str) -> None:
    """With every node down the client gives up at the deadline with one clear message."""
    c = client(dead_url, deadline=0.2)
    with pytest.raises(Unavailable, match="no controller answered within 0.2 s.*connection refused"):
        c.get("/api/pool")
    assert c.last_attempts >= 2


def test_deadline_on_persistent_503(api: FakeApi) -> None:
    """Persistent 503 ends as that error, marked as given up."""
    api.script = [503] * 1000
    c = client(api.url, deadline=0.2)
    with pytest.raises(ApiError, match="scripted 503 .gave up after 0.2 s") as info:
        c.post("/api/pool", {"name": "web"})
    assert 503 == info.value.status


def test_non_json_error_body(dead_url: str) -> None:
    """A non-API error page still becomes one readable line."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(502)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"bad gateway")

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        with pytest.raises(ApiError, match="HTTP 502 Bad Gateway: bad gateway"):
            client(f"http://127.0.0.1:{server.server_address[1]}").get("/x")
    finally:
        server.shutdown()
        server.server_close()


def test_list_all_follows_pages(api: FakeApi) -> None:
    """list_all reads every page."""
    for i in range(5):
        api.seed("tenant", {"name": f"t{i}"})
    assert [f"t{i}" for i in range(5)] == [o["name"] for o in client(api.url).list_all("tenant", page_size=2)]


def test_watch_skips_heartbeats_and_resumes_after_the_last_revision(api: FakeApi) -> None:
    """Heartbeats are dropped; after the stream ends the next request asks from the next revision."""
    api.watch_lines = [json.dumps({"revision": 5, "type": "ObjectCreated"}).encode() + b"\n",
                       b'{"heartbeat": true}\n',
                       json.dumps({"revision": 6, "type": "ObjectDeleted"}).encode() + b"\n"]
    c = client(api.url)
    retries: list[str] = []
    stream = c.watch(5, on_retry=retries.append)
    got = [next(stream)["revision"], next(stream)["revision"]]
    api.watch_lines.append(json.dumps({"revision": 7, "type": "ObjectCreated"}).encode() + b"\n")
    got.append(next(stream)["revision"])
    stream.close()
    assert [5, 6, 7] == got
    watches = [r for r in api.requests if r.path == "/api/watch"]
    assert ["5", "7"] == [w.query["since"][0] for w in watches[:2]]
    assert retries and "resuming from revision 7" in retries[0]


def test_lost_answer_is_retried_and_applied_once(api: FakeApi) -> None:
    """A write applied but answered 504 is retried with its command id; the server dedupes it."""
    api.lose_answers = [504]
    obj = client(api.url).post("/api/pool", {"name": "web"})
    assert "web" == obj["name"]
    assert 1 == len(api.objects) and 1 == api.revision
