"""A small stand-in for a controller's REST API: in-memory objects, recorded requests, scripted failures.

It speaks the wire format the CLI relies on: list responses ``{count, results, next}``, refs
returned as URLs with ``#name``, ``_last_modified`` checked on PUT (412 when stale), errors as
``{"error": {"code", "message", "field"}}``, and server defaults filled into stored objects (so
the CLI's subset comparison is exercised). Kinds and their top-level fields are the real schema's
(:data:`cluster.schema.KINDS`); a referenced object is not deleted (409).

``tests/avictl/test_api_contract.py`` runs the same checks against this fake and a real
controller: where they differ, this fake is wrong.
"""

from __future__ import annotations

import json
import threading
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs

from cluster.schema import KINDS

# What the server computes: dropped from a written body (``runtime`` is read-only state).
SERVER_FIELDS = ("uuid", "url", "_last_modified", "tenant_ref", "runtime")
DEFAULTS: dict[str, dict[str, Any]] = {
    "pool": {"lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS", "default_server_port": 80, "graceful_disable_timeout": 1,
             "health_monitor_refs": []},
    "healthmonitor": {"send_interval": 10, "receive_timeout": 4, "successful_checks": 2, "failed_checks": 2},
    "virtualservice": {"enabled": True, "type": "VS_TYPE_NORMAL"},
}


@attrs.define
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeApi:
    def __init__(self, node_id: str = "n1") -> None:
        self.node_id = node_id
        self.objects: dict[str, dict[str, Any]] = {}  # uuid -> stored (refs as /api/kind/uuid)
        self.kinds: dict[str, str] = {}
        self.revision = 0
        self.events: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self.script: list[int] = []  # statuses to answer before handling anything (e.g. [503])
        self.lose_answers: list[int] = []  # statuses to answer AFTER applying a write (a lost reply)
        self.dedupe = True  # apply a command id at most once (the real API does)
        self.applied_command_ids: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.token = "secret-token"
        self.watch_lines: list[bytes] = []
        handler = self._handler_class()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeApi":
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- state helpers for tests ---------------------------------------------------------------

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    def by_name(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        return next((o for u, o in self.objects.items() if self.kinds[u] == kind and o["name"] == name), None)

    def seed(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        status, obj = self._create(kind, dict(body), None, f"{kind}-{uuidlib.uuid4()}")
        assert status == 201, obj
        return obj

    # -- semantics -----------------------------------------------------------------------------

    def _event(self, kind: str, typ: str, obj: dict[str, Any], command_id: Optional[str]) -> None:
        self.revision += 1
        self.events.append({"revision": self.revision, "type": typ, "time": 1700000000.0 + self.revision,
                            "command_id": command_id, "data": {"kind": kind, "name": obj["name"], "uuid": obj["uuid"]}})

    def _resolve(self, field: str, value: Any) -> tuple[Optional[str], Any]:
        """A ref as sent -> (error, stored ref)."""
        if not isinstance(value, str):
            return None, value
        base = value.split("#", 1)[0]
        parts = urlsplit(base)
        names = parse_qs(parts.query).get("name")
        target = parts.path.rstrip("/").split("/")[2] if parts.path.startswith("/api/") else None
        if names and target:
            obj = self.by_name(target, names[0])
            if obj is None:
                return f"{target} named {names[0]!r} does not exist", None
            return None, f"/api/{target}/{obj['uuid']}"
        uuid = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if uuid not in self.objects:
            return f"{uuid} does not exist", None
        return None, f"/api/{self.kinds[uuid]}/{uuid}"

    def _normalize(self, kind: str, body: dict[str, Any]) -> tuple[Optional[tuple[str, str]], dict[str, Any]]:
        body = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
        unknown = sorted(set(body) - set(KINDS[kind].fields))
        if unknown:
            return ("unknown field (not supported by avictl)", unknown[0]), body
        out = {**DEFAULTS.get(kind, {}), **body}
        for field, value in list(out.items()):
            if field.endswith("_ref"):
                err, out[field] = self._resolve(field, value)
                if err:
                    return (err, field), out
            elif field.endswith("_refs") and isinstance(value, list):
                resolved = []
                for i, v in enumerate(value):
                    err, r = self._resolve(field, v)
                    if err:
                        return (err, f"{field}[{i}]"), out
                    resolved.append(r)
                out[field] = resolved
        if kind == "pool":
            out["servers"] = [{"ratio": 1, "enabled": True, **s} for s in out.get("servers", [])]
        return None, out

    def _create(self, kind: str, body: dict[str, Any], command_id: Optional[str], uuid: str) -> tuple[int, Any]:
        if not isinstance(body.get("name"), str) or not body["name"]:
            return 422, _err(422, "name is required: a non-empty string", "name")
        if self.by_name(kind, body["name"]) is not None:
            return 409, _err(409, f"{kind} named {body['name']!r} already exists", "name")
        problem, stored = self._normalize(kind, body)
        if problem:
            return 422, _err(422, problem[0], problem[1])
        stored["uuid"] = uuid
        self._event(kind, "ObjectCreated", stored, command_id)
        stored["_rev"] = self.revision
        self.objects[uuid] = stored
        self.kinds[uuid] = kind
        return 201, stored

    def render(self, obj: dict[str, Any], host: str) -> dict[str, Any]:
        kind = self.kinds[obj["uuid"]]
        out: dict[str, Any] = {
            "url": f"http://{host}/api/{kind}/{obj['uuid']}",
            "uuid": obj["uuid"],
            "name": obj["name"],
            "tenant_ref": f"http://{host}/api/tenant/tenant-admin#admin",
            "_last_modified": str(obj["_rev"]),
        }

        def url(ref: Any) -> Any:
            if isinstance(ref, str) and ref.startswith("/api/"):
                target = self.objects.get(ref.rsplit("/", 1)[-1])
                return f"http://{host}{ref}" + (f"#{target['name']}" if target else "")
            return ref

        for k, v in obj.items():
            if k in out or k == "_rev":
                continue
            if k.endswith("_ref"):
                v = url(v)
            elif k.endswith("_refs") and isinstance(v, list):
                v = [url(x) for x in v]
            out[k] = v
        return out

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any, host: str) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            if self.script:
                status = self.script.pop(0)
                extra = {"Retry-After": "1"} if status == 503 else {}
                return status, _err(status, f"scripted {status}"), extra
            if path == "/healthz":
                return 200, {"ok": True, "node": self.node_id}, {}
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401, _err(401, "invalid token"), {}
            command_id = headers.get("x-avi-command-id")
            if self.dedupe and method != "GET" and command_id and command_id in self.applied_command_ids:
                return self.applied_command_ids[command_id]
            result = self._route(method, path, query, headers, body, host, command_id)
            if method != "GET" and command_id and result[0] < 300:
                self.applied_command_ids[command_id] = result
            if method != "GET" and self.lose_answers:
                status = self.lose_answers.pop(0)
                return status, _err(status, f"scripted {status} after applying"), {}
            return result

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any, host: str,
               command_id: Optional[str]) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in path.split("/") if p]
        if path == "/api/cluster":
            return 200, {"leader": "n1", "state": "CLUSTER_UP_NO_HA", "nodes": [
                {"id": "n1", "api": self.url, "raft": "127.0.0.1:1", "role": "leader", "term": 2, "commit_index": 7,
                 "applied_index": 7, "applied_revision": self.revision, "leader": "127.0.0.1:1", "has_quorum": True}]}, {}
        if path == "/api/events":
            since = int(query.get("since", ["1"])[0])
            limit = int(query.get("limit", ["100"])[0])
            results = [e for e in self.events if e["revision"] >= max(since, 1)][:limit]
            return 200, {"count": len(results), "results": results, "revision": self.revision}, {}
        if len(parts) < 2 or parts[0] != "api":
            return 404, _err(404, f"no route {path}"), {}
        kind = parts[1]
        if kind not in KINDS:
            return 404, _err(404, f"unknown object kind {kind!r}; known: {', '.join(sorted(KINDS))}"), {}
        if len(parts) == 2 and method == "GET":
            items = [o for u, o in self.objects.items() if self.kinds[u] == kind]
            if "name" in query:
                items = [o for o in items if o["name"] == query["name"][0]]
            items.sort(key=lambda o: o["name"])
            page = int(query.get("page", ["1"])[0])
            size = int(query.get("page_size", ["25"])[0])
            chunk = items[(page - 1) * size: page * size]
            doc: dict[str, Any] = {"count": len(items), "results": [self.render(o, host) for o in chunk]}
            if page * size < len(items):
                doc["next"] = f"http://{host}/api/{kind}?" + urlencode({**{k: v[0] for k, v in query.items()}, "page": str(page + 1)})
            return 200, doc, {}
        if len(parts) == 2 and method == "POST":
            if not isinstance(body, dict):
                return 400, _err(400, "the request body must be a JSON object"), {}
            uuid = headers.get("slug") or f"{kind}-{uuidlib.uuid4()}"
            if not uuid.startswith(f"{kind}-") or len(uuid) > 128:
                return 400, _err(400, f"Slug must be a uuid starting with {kind}-", "Slug"), {}
            status, obj = self._create(kind, body, command_id, uuid)
            return status, (self.render(obj, host) if status == 201 else obj), {}
        if len(parts) == 3:
            obj = self.objects.get(parts[2])
            if obj is None or self.kinds[parts[2]] != kind:
                return 404, _err(404, f"{kind} {parts[2]} does not exist"), {}
            if method == "GET":
                return 200, self.render(obj, host), {}
            if method == "DELETE":
                users = sorted(f"{self.kinds[u]} {o['name']!r}" for u, o in self.objects.items() if _refers_to(o, obj["uuid"]))
                if users:
                    return 409, _err(409, f"{kind} {obj['name']!r} is in use by {', '.join(users)}"), {}
                del self.objects[parts[2]]
                self._event(kind, "ObjectDeleted", obj, command_id)
                return 204, None, {}
            if method == "PUT":
                if not isinstance(body, dict):
                    return 400, _err(400, "the request body must be a JSON object", "body"), {}
                stale = body.get("_last_modified")
                if stale is not None and str(stale) != str(obj["_rev"]):
                    return 412, _err(412, f"{kind} {obj['name']!r} was modified at revision {obj['_rev']}, not {stale}",
                                     "_last_modified"), {}
                problem, stored = self._normalize(kind, {**body, "name": body.get("name", obj["name"])})
                if problem:
                    return 422, _err(422, problem[0], problem[1]), {}
                stored["uuid"] = obj["uuid"]
                current = {k: v for k, v in obj.items() if k != "_rev"}
                if stored == current:
                    return 200, self.render(obj, host), {}
                self._event(kind, "ObjectUpdated", stored, command_id)
                stored["_rev"] = self.revision
                self.objects[obj["uuid"]] = stored
                return 200, self.render(stored, host), {}
        return 405, _err(405, "method not allowed"), {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                if parts.path == "/api/watch" and method == "GET":
                    self._watch(headers)
                    return
                status, doc, extra = api.handle(method, parts.path, parse_qs(parts.query), headers, body, self.headers.get("Host", "x"))
                data = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, headers: dict[str, str]) -> None:
                with api.lock:
                    api.requests.append(Recorded("GET", "/api/watch", parse_qs(urlsplit(self.path).query), headers, None))
                    since = int(parse_qs(urlsplit(self.path).query).get("since", ["1"])[0])
                    lines = [line for line in api.watch_lines if json.loads(line).get("revision", since) >= since]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._serve("DELETE")

            def do_PATCH(self) -> None:  # noqa: N802
                self._serve("PATCH")

        return Handler


def _refers_to(obj: dict[str, Any], uuid: str) -> bool:
    """Whether a stored object's top-level refs (``/api/<kind>/<uuid>``) name ``uuid``."""
    for field, value in obj.items():
        refs = [value] if field.endswith("_ref") else value if field.endswith("_refs") and isinstance(value, list) else []
        if any(isinstance(r, str) and r.rsplit("/", 1)[-1] == uuid for r in refs):
            return True
    return False


def _err(status: int, message: str, field: Optional[str] = None) -> dict[str, Any]:
    codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 412: "precondition_failed",
             422: "validation_failed", 503: "no_quorum", 504: "outcome_unknown"}
    return {"error": {"code": codes.get(status, f"http_{status}"), "message": message, "field": field}}
