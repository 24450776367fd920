"""The REST API of a controller node (aiohttp): the real product's wire format on every node.

Handlers are thin: they parse, call ``decide`` through ``Controller.write`` or read the view, and
render. Every error leaves as JSON ``{"error": {"code", "message", "field"}}``; no traceback
reaches a client.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional
from urllib.parse import urlencode, urlsplit

import msgpack
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cluster import commands as c
from cluster import schema
from cluster.api.auth import Authenticator, LoginThrottle, RateLimit, new_enrolment_token
from cluster.api.bodies import check_text, parse_json
from cluster.api.openapi import build_openapi
from cluster.decide import CommandError, new_uuid, resolve_ref, visible_in
from cluster.node import Controller
from cluster.proposer import NoQuorum, OutcomeUnknown
from cluster.views import StoredObject, ref_uuid
from storage import codec
from storage.events import ObjectCreated, ObjectDeleted, ObjectUpdated

if TYPE_CHECKING:
    from cluster.reconciler import Reconciler

__all__ = ["make_app", "API_VERSION"]

API_VERSION = "30.2.1"
MAX_BODY_BYTES = 1024 * 1024
# Logins whose password hash is being checked at once (one thread); more are answered 429.
MAX_LOGINS_CHECKING = 8
REQUEST_LOGS_KEPT = 1000
# Seconds between heartbeat lines on a quiet slice stream: an SE that reads nothing for three of
# them (engine.agent) takes its stream as lost and moves on to another controller.
SLICE_HEARTBEAT = 1.0
# An SE's status report: its size, the size of one request log record in it, and how often.
MAX_STATUS_BYTES = 256 * 1024
MAX_LOG_RECORD_BYTES = 4096
SE_REPORTS_PER_S = 20.0
log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
    503: "no_quorum",
    504: "outcome_unknown",
}


def error_response(status: int, message: str, field: Optional[str] = None, *, retry_after: Optional[float] = None,
                   **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": _STATUS_CODES.get(status, f"http_{status}"), "message": message, "field": field}
    body.update(extra)
    if retry_after is None and status == 503:
        retry_after = 1.0
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": body}, status=status, headers=headers)


class Api:
    def __init__(self, node: Controller, reconciler: Optional["Reconciler"] = None) -> None:
        self.node = node
        self.reconciler = reconciler
        self.auth = Authenticator(node.config)
        self.throttle = LoginThrottle()
        self.se_reports = RateLimit(SE_REPORTS_PER_S, burst=40)
        self._logins_checking = 0
        self._login_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="login")
        self.closing = asyncio.Event()
        self.registry = CollectorRegistry()
        self.requests = Counter("avictl_api_requests_total", "API requests", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "avictl_api_request_seconds", "API request latency", ["method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        g = lambda name, doc, fn: Gauge(name, doc, registry=self.registry).set_function(fn)  # noqa: E731
        g("avictl_raft_commit_index", "Raft commit index", lambda: self.node.raft.status()["commit_index"])
        g("avictl_raft_term", "Raft term", lambda: self.node.raft.status()["term"])
        g("avictl_raft_is_leader", "1 when this node leads", lambda: 1 if self.node.raft.is_leader else 0)
        g("avictl_applied_revision", "Last revision applied to this node's view", lambda: self.node.view.revision)
        g("avictl_applied_raft_index", "Last raft index applied and synced", lambda: self.node.applied_raft_index)
        g("avictl_objects", "Objects in the config view", lambda: len(self.node.view))
        if reconciler is not None:
            g("avictl_reconcile_rounds", "Reconcile rounds completed while leading", lambda: reconciler.rounds)
            g("avictl_reconcile_rounds_failed", "Reconcile rounds that raised (a bug: see the log)", lambda: reconciler.failed_rounds)

    # -- middleware ----------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            denied = await self._authorize(request)
            if denied is not None:
                response: web.StreamResponse = denied
            else:
                response = await handler(request)
        except CommandError as exc:
            response = error_response(exc.code, exc.message, exc.field)
        except NoQuorum:
            response = error_response(503, "no leader with a quorum could be reached; retry later")
        except OutcomeUnknown as exc:
            response = error_response(
                504,
                "the leader was lost while committing: the write may or may not have been applied; "
                "retry with the same X-Avi-Command-Id to apply it at most once",
                command_id=exc.command_id,
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = exc.text or exc.reason
            if exc.status == 413:
                text = f"request body exceeds {MAX_BODY_BYTES} bytes"
            response = error_response(exc.status, text)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            # The client went away mid-answer (a watcher or SE stream closing): nothing to answer.
            log.debug("api_client_left", path=request.path, node_id=self.node.node_id)
            response = web.Response(status=499)
        except Exception:  # noqa: BLE001 - the last line of defence: log it, answer 500 without a traceback
            log.exception("api_unhandled", path=request.path, node_id=self.node.node_id)
            response = error_response(500, "internal error; see the controller log")
        status = response.status
        self.requests.labels(request.method, route, str(status)).inc()
        self.latency.labels(request.method).observe(time.perf_counter() - started)
        return response

    async def _authorize(self, request: web.Request) -> Optional[web.Response]:
        path = request.path
        if path in ("/login", "/logout", "/api/openapi.json", "/metrics", "/healthz"):
            return None
        header = request.headers.get("Authorization", "")
        if path.startswith("/internal/"):
            if header.startswith("Bearer ") and self.auth.is_internal(header[7:].strip()):
                return None
            return error_response(401, "internal endpoints need the cluster's internal token")
        if header.startswith("Bearer "):
            token = header[7:].strip()
            if not (token.isascii() and token.isprintable()):
                return error_response(401, "invalid token")
            if self.auth.check_bearer(token):
                return None
            identity = self.auth.read_se_token(token)
            if identity is None:
                return error_response(401, "invalid token")
            # An SE token is good for the SE routes of its own identity only (checked again in _se).
            if path == "/api/serviceengine/register" and request.method == "POST":
                request["se_identity"] = identity
                return None
            if identity.kind == "se" and path.startswith("/api/serviceengine/") and (path.endswith("/slice") or path.endswith("/status")):
                if self.node.view.se_deleted(identity.value) is not None:
                    return error_response(410, "this service engine was deleted; its process must stop")
                request["se_identity"] = identity
                return None
            return error_response(403, "a service engine token is good only for its own service engine routes")
        cookie = request.cookies.get("sessionid") or request.cookies.get("avi-sessionid")
        session = self.auth.check_session(cookie) if cookie else None
        if session is not None:
            assert cookie is not None
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                csrf = request.headers.get("X-CSRFToken", "")
                if not csrf or csrf != self.auth.csrf_for(cookie):
                    return error_response(401, "a session write needs a matching X-CSRFToken header", "X-CSRFToken")
                referer = request.headers.get("Referer")
                if not referer:
                    return error_response(401, "a session write needs a Referer header", "Referer")
                if not self._same_origin(request, referer):
                    return error_response(403, "a session write's Referer must be this controller's own address", "Referer")
            if not _stale(request):
                # A logout through any node must bind here at once: look it up in a view that has
                # caught up with the leader (the read's own barrier, taken early).
                await self.node.barrier(timeout=5.0)
                request["caught_up"] = True
            if self.node.view.session_ended(session.session_id):
                return error_response(401, "this session was ended by /logout; log in again")
            return None
        return error_response(401, "authentication required: POST /login, or send Authorization: Bearer <token>")

    # -- helpers -------------------------------------------------------------------------------

    def base_url(self, request: web.Request) -> str:
        """Where this node is, for every url and ref it answers: its configured address, never
        the request's Host header (a client could make the node name another site)."""
        return self.node.config.api_url

    def _same_origin(self, request: web.Request, url: str) -> bool:
        """``url`` (a Referer or Origin) names this node: the address the client reached (its Host
        header) or the node's configured address."""
        try:
            parts = urlsplit(url)
            origin = parts.netloc.lower()
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not origin:
            return False
        configured = urlsplit(self.node.config.api_url).netloc.lower()
        return origin in (configured, (request.host or "").lower())

    async def tenant(self, request: web.Request, body: Any = None) -> str:
        """The tenant a request acts in: ``X-Avi-Tenant`` (a name) or ``X-Avi-Tenant-UUID``, or the
        body's ``tenant_ref``; ``admin`` when none is given. An unknown tenant is 404 naming it;
        two of these naming different tenants is 400."""
        chosen: Optional[tuple[StoredObject, str]] = None  # (tenant, where it was named)
        name, uuid = request.headers.get("X-Avi-Tenant"), request.headers.get("X-Avi-Tenant-UUID")
        ref = body.get("tenant_ref") if isinstance(body, dict) else None
        for value, where in ((name, "X-Avi-Tenant"), (uuid, "X-Avi-Tenant-UUID"), (ref, "tenant_ref")):
            if value is None:
                continue
            tenant = await self._find_tenant(value, where)
            if chosen is not None and chosen[0].uuid != tenant.uuid:
                raise CommandError(400, f"{where} names tenant {tenant.name!r} but {chosen[1]} names {chosen[0].name!r}", where)
            chosen = (tenant, where)
        return chosen[0].name if chosen is not None else "admin"

    async def _find_tenant(self, value: Any, where: str) -> StoredObject:
        def find() -> Optional[StoredObject]:
            view = self.node.view
            if where == "X-Avi-Tenant":
                return view.by_name("tenant", value)
            if where == "X-Avi-Tenant-UUID":
                obj = view.get(value)
                return obj if obj is not None and obj.kind == "tenant" else None
            try:
                return view.get(resolve_ref(view, "tenant", value, "admin", where).rsplit("/", 1)[-1])
            except CommandError:
                return None

        if not isinstance(value, str) or not value:
            raise CommandError(400, f"{where} must name a tenant", where)
        found = find()
        if found is None:
            # Created through another node a moment ago, not applied here yet: catch up first.
            await self.node.barrier(timeout=5.0)
            found = find()
        if found is None:
            raise CommandError(404, f"tenant {value!r} ({where}) does not exist", where)
        return found

    def render(self, request: web.Request, obj: StoredObject) -> dict[str, Any]:
        base = self.base_url(request)
        view = self.node.view

        def to_url(target: str, value: Any) -> Any:
            if not value:
                return value
            uuid = ref_uuid(value)
            ref = view.get(uuid)
            suffix = f"#{ref.name}" if ref is not None else ""
            return f"{base}/api/{target}/{uuid}{suffix}"

        body = schema.redact(obj.kind, obj.body, to_url)
        tenant = view.by_name("tenant", obj.tenant)
        out: dict[str, Any] = {
            "url": f"{base}/api/{obj.kind}/{obj.uuid}",
            "uuid": obj.uuid,
            "name": obj.name,
            "tenant_ref": f"{base}/api/tenant/{tenant.uuid if tenant else obj.tenant}#{obj.tenant}",
            "_last_modified": str(obj.modified),
        }
        out.update({k: v for k, v in body.items() if k not in out})
        runtime = self.runtime(obj)
        if runtime is not None:
            out["runtime"] = runtime
        return out

    def runtime(self, obj: StoredObject) -> Optional[dict[str, Any]]:
        """Read-only state that is not configuration (ignored when a client sends it back)."""
        view = self.node.view
        if obj.kind == "serviceengine":
            status = self.node.se_status.get(obj.uuid, {})
            current = self.node.slices.get(obj.uuid)
            version = current["revision"] if current else 0
            applied = status.get("applied_revision")
            return {
                "virtualservices": sorted(v.name for v in (view.get(u) for u in view.placed_on(obj.uuid)) if v),
                "slice_revision": version,
                "applied_revision": applied,
                "applied_at": status.get("applied_at"),
                "acked_at": status.get("acked_at"),
                "lag": None if applied is None else max(0, version - applied),
                "nack": status.get("nack"),
                "vs_errors": status.get("vs_errors") or {},
                "last_heartbeat": status.get("time"),
                "oper_status": "down" if view.se_down(obj.uuid) is not None else "up",
                "down_reason": view.se_down(obj.uuid),
                "ha": status.get("ha") or {},
                "connected_to": status.get("connected_to"),
                "resources": status.get("se"),
                "telemetry": status.get("telemetry"),
            }
        if obj.kind == "virtualservice":
            placed = [view.get(u) for u in view.placement(obj.uuid)]
            ses = [se.name for se in placed if se is not None]
            roles = []
            for i, se in enumerate(placed):
                if se is None:
                    continue
                status = self.node.se_status.get(se.uuid) or {}
                ha = (status.get("ha") or {}).get(obj.uuid) or {}
                roles.append({
                    "se": se.name,
                    "role": "primary" if i == 0 else "secondary",
                    "reported_role": ha.get("role"),
                    "down": view.se_down(se.uuid),
                    # Why this SE does not serve the VS as configured (it NACKed this VS alone).
                    "error": (status.get("vs_errors") or {}).get(obj.name),
                })
            return {
                "serviceengines": ses,
                "placement_epoch": view.placement_revision(obj.uuid),
                "pinned": view.pinned(obj.uuid),
                "se_roles": roles,
            }
        if obj.kind == "serviceenginegroup":
            # Known on the leader, whose reconciler drives the cloud.
            error = self.reconciler.cloud_errors.get(obj.name) if self.reconciler is not None else None
            return {"cloud_error": error} if error else None
        if obj.kind == "pool":
            servers: dict[str, dict[str, str]] = {}
            for se_uuid, status in self.node.se_status.items():
                se = view.get(se_uuid)
                for key, up in ((status.get("servers") or {}).get(obj.uuid) or {}).items():
                    servers.setdefault(key, {})[se.name if se else se_uuid] = "UP" if up else "DOWN"
            return {"servers": servers}
        return None

    async def read_json(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise CommandError(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
        raw = await request.read()
        if not raw:
            raise CommandError(400, "the request needs a JSON body", "body")
        return parse_json(raw)

    async def consistent(self, request: web.Request) -> None:
        """Serve reads linearizably unless the client asked for ?stale=true."""
        if _stale(request) or request.get("caught_up"):
            return
        await self.node.barrier(timeout=5.0)

    def kind_of(self, request: web.Request) -> str:
        kind = request.match_info["kind"]
        if kind not in schema.KINDS:
            raise CommandError(404, f"unknown object kind {kind!r}; known: {', '.join(sorted(schema.KINDS))}")
        return kind

    def object_of(self, request: web.Request, kind: str, tenant: str) -> StoredObject:
        uuid = request.match_info["uuid"]
        obj = self.node.view.get(uuid)
        if obj is None or obj.kind != kind or not visible_in(obj, tenant):
            raise CommandError(404, f"{kind} {uuid} does not exist")
        return obj

    @staticmethod
    def command_id(request: web.Request) -> Optional[str]:
        value = request.headers.get("X-Avi-Command-Id")
        if value is not None and not (0 < len(value) <= 128 and value.isascii() and value.isprintable()):
            raise CommandError(400, "X-Avi-Command-Id must be 1 to 128 printable ASCII characters", "X-Avi-Command-Id")
        return value

    # -- auth routes ---------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        # A browser posting a form from another site says where from: such a login is refused.
        for header in ("Origin", "Referer"):
            value = request.headers.get(header)
            if value and value != "null" and not self._same_origin(request, value):
                return error_response(403, f"a login from another site ({header}) is refused", header)
        if request.content_type == "application/json":
            doc = await self.read_json(request)
            if not isinstance(doc, dict):
                raise CommandError(400, "the login body must be an object", "body")
        else:
            doc = dict(await request.post())
        username = doc.get("username")
        password, token = doc.get("password"), doc.get("token")
        if not isinstance(username, str) or not (isinstance(password, str) or isinstance(token, str)):
            raise CommandError(400, "login needs username and password (or token)", "username")
        for field, value in (("username", username), ("password", password), ("token", token)):
            if isinstance(value, str):
                check_text(value, field)
        source = request.remote or "unknown"
        wait = self.throttle.retry_after(username, source, time.monotonic())
        if wait > 0:
            return error_response(429, f"too many failed logins; retry in {wait:.0f} s", None, retry_after=wait)
        if self._logins_checking >= MAX_LOGINS_CHECKING:
            return error_response(429, "too many logins being checked; retry shortly", None, retry_after=1.0)
        self._logins_checking += 1
        try:
            # PBKDF2 takes tens of milliseconds: on its own thread, never on the loop.
            ok = await asyncio.get_running_loop().run_in_executor(
                self._login_executor, self.auth.check_credentials, username,
                password if isinstance(password, str) else None,
                token if isinstance(token, str) and not isinstance(password, str) else None,
            )
        finally:
            self._logins_checking -= 1
        if not ok:
            self.throttle.failed(username, source, time.monotonic())
            return error_response(401, "invalid credentials")
        self.throttle.succeeded(username, source)
        session, csrf = self.auth.issue_session(username)
        response = web.json_response(
            {
                "version": {"Version": API_VERSION, "Product": "avictl", "ProductName": "avictl controller"},
                "user": {"username": username, "name": username},
                "session_cookie_name": "sessionid",
            }
        )
        for name in ("sessionid", "avi-sessionid"):
            response.set_cookie(name, session, httponly=True, samesite="Lax", path="/")
        response.set_cookie("csrftoken", csrf, samesite="Lax", path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End the session: its cookie is refused on every node from now on (an event in the log)."""
        cookie = request.cookies.get("sessionid") or request.cookies.get("avi-sessionid")
        session = self.auth.check_session(cookie) if cookie else None
        if session is not None and not self.node.view.session_ended(session.session_id):
            await self.node.write(c.EndSession(session.session_id, session.user, session.expires), command_id=self.command_id(request))
        response = web.json_response({})
        for name in ("sessionid", "avi-sessionid", "csrftoken"):
            response.del_cookie(name, path="/")
        return response

    # -- objects -------------------------------------------------------------------------------

    async def list_objects(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        q = request.query
        _check_params(q, _LIST_PARAMS, _REF_FILTERS[kind])
        await self.consistent(request)
        tenant = await self.tenant(request)
        view = self.node.view
        objects = [o for o in view.list(kind) if o.tenant == tenant or o.created == 0]
        if "name" in q:
            objects = [o for o in objects if o.name == q["name"]]
        if "uuid" in q:
            wanted = set(q["uuid"].split(","))
            objects = [o for o in objects if o.uuid in wanted]
        if "refers_to" in q:
            target = _kind_and_uuid(q, "refers_to")
            objects = [o for o in objects if o.uuid in view.referrers(target)]
        if "referred_by" in q:
            source = view.get(_kind_and_uuid(q, "referred_by"))
            used = {ref_uuid(v) for _f, _t, v in schema.ref_fields(source.kind, source.body) if v} if source else set()
            objects = [o for o in objects if o.uuid in used]
        for key in [k for k in q if k.endswith(".uuid")]:
            field = key[: -len(".uuid")]
            objects = [o for o in objects if ref_uuid(o.body.get(field) or "") == q[key]]
        search = q.get("search")
        if search:
            objects = [o for o in objects if search.strip("()").split(",")[-1] in json.dumps(schema.redact(o.kind, o.body))]
        sort = q.get("sort", "name")
        reverse = sort.startswith("-")
        key = sort.lstrip("-")
        f = schema.KINDS[kind].fields.get(key)
        if key not in ("name", "uuid") and (f is None or f.write_only):
            raise CommandError(400, f"cannot sort {kind} by {key!r}: not a field of it", "sort")
        objects.sort(key=lambda o: (str(getattr(o, key, None) if key in ("name", "uuid") else o.body.get(key, "")), o.uuid), reverse=reverse)
        page_size = _int_param(q, "page_size", 25, 1, 200)
        page = _int_param(q, "page", 1, 1, 1_000_000)
        chunk = objects[(page - 1) * page_size : page * page_size]
        results = [self._shaped(request, o) for o in chunk]
        body: dict[str, Any] = {"count": len(objects), "results": results}
        if page * page_size < len(objects):
            params = dict(q)
            params["page"] = str(page + 1)
            body["next"] = f"{self.base_url(request)}{request.path}?{urlencode(params)}"
        return web.json_response(body)

    def _shaped(self, request: web.Request, obj: StoredObject) -> dict[str, Any]:
        """``render``, then the output-shaping parameters: ``skip_default``, ``fields``."""
        out = self.render(request, obj)
        if _bool_param(request.query, "skip_default"):
            out = schema.without_defaults(obj.kind, out)
        fields = request.query.get("fields")
        if fields:
            keep = set(fields.split(",")) | {"url", "uuid", "name"}
            out = {k: v for k, v in out.items() if k in keep}
        return out

    async def get_object(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        _check_params(request.query, _OBJECT_PARAMS)
        await self.consistent(request)
        obj = self.object_of(request, kind, await self.tenant(request))
        return web.json_response(self._shaped(request, obj))

    async def create_object(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        body = await self.read_json(request)
        tenant = await self.tenant(request, body)
        uuid = request.headers.get("Slug") or new_uuid(kind)
        if not _SLUG.match(uuid) or not uuid.startswith(f"{kind}-"):
            raise CommandError(400, f"Slug must be {kind}- and then 1 to 100 letters, digits, '-' or '_'", "Slug")
        decision, _ = await self.node.write(c.CreateObject(kind, body, tenant, uuid), command_id=self.command_id(request))
        obj = self.node.view.get(decision.uuid)
        if obj is None:
            raise CommandError(409, f"{kind} was created and deleted again before it could be shown")
        return web.json_response(self.render(request, obj), status=201)

    async def update_object(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise CommandError(400, "the request body must be a JSON object", "body")
        tenant = await self.tenant(request, body)
        command = c.UpdateObject(kind, request.match_info["uuid"], body, tenant, _revision_of(body.get("_last_modified")))
        await self.node.write(command, command_id=self.command_id(request))
        return web.json_response(self.render(request, self.object_of(request, kind, tenant)))

    async def patch_object(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        body = await self.read_json(request)
        tenant = await self.tenant(request)
        await self.node.write(c.PatchObject(kind, request.match_info["uuid"], body, tenant), command_id=self.command_id(request))
        return web.json_response(self.render(request, self.object_of(request, kind, tenant)))

    async def delete_object(self, request: web.Request) -> web.Response:
        kind = self.kind_of(request)
        tenant = await self.tenant(request)
        await self.node.write(c.DeleteObject(kind, request.match_info["uuid"], tenant), command_id=self.command_id(request))
        return web.Response(status=204)

    # -- macro ---------------------------------------------------------------------------------

    async def _macro_body(self, request: web.Request) -> tuple[Any, Any]:
        _check_params(request.query, frozenset({"dry_run"}))
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise CommandError(400, "the request body must be a JSON object: {model_name, data}", "body")
        extra = sorted(set(body) - {"model_name", "data"})
        if extra:
            raise CommandError(422, f"unknown field {extra[0]!r}: a macro body holds model_name and data", extra[0])
        return body.get("model_name"), body.get("data")

    async def _macro(self, request: web.Request, command: c.Command) -> Optional[tuple[Any, Any]]:
        """Commit ``command``, or with ``?dry_run=true`` decide it on a caught-up view and commit
        nothing (the same checks, so the same refusals); None for a dry run, after answering it."""
        if _bool_param(request.query, "dry_run"):
            await self.consistent(request)
            decision = c.decide(self.node.view, command, time.time(), seal=self.node.sealer)
            request["dry_run_answer"] = web.json_response({"dry_run": True, "results": self._report(request, decision)})
            return None
        return await self.node.write(command, command_id=self.command_id(request))

    def _report(self, request: web.Request, decision: Any) -> list[dict[str, Any]]:
        """A macro decision's per-object outcome, refs as URLs and secrets left out."""
        entries = list(decision.report) or [
            {"action": {"ObjectCreated": "created", "ObjectUpdated": "updated", "ObjectDeleted": "deleted"}[type(e).__name__],
             "kind": e.kind, "name": e.name, "uuid": e.uuid}
            for e in decision.events if isinstance(e, (ObjectCreated, ObjectUpdated, ObjectDeleted))
        ]
        base = self.base_url(request)
        out = []
        for entry in entries:
            kind = entry["kind"]
            shown = {k: entry[k] for k in ("action", "kind", "name", "uuid")}
            shown["url"] = f"{base}/api/{kind}/{entry['uuid']}"
            changes = {}
            for field, change in (entry.get("changes") or {}).items():
                sides = {side: schema.redact(kind, {field: value}, self._ref_url(request)).get(field, _SECRET) for side, value in change.items()}
                changes[field] = sides
            if changes:
                shown["changes"] = changes
            out.append(shown)
        return out

    def _ref_url(self, request: web.Request) -> Callable[[str, Any], Any]:
        base, view = self.base_url(request), self.node.view

        def to_url(target: str, value: Any) -> Any:
            if not value:
                return value
            ref = view.get(ref_uuid(value))
            return f"{base}/api/{target}/{ref_uuid(value)}" + (f"#{ref.name}" if ref is not None else "")

        return to_url

    async def macro_create(self, request: web.Request) -> web.Response:
        model_name, data = await self._macro_body(request)
        done = await self._macro(request, c.CreateHierarchy(model_name, data, await self.tenant(request)))
        if done is None:
            return request["dry_run_answer"]
        decision, _ = done
        created = [self.node.view.get(e.uuid) for e in decision.events if isinstance(e, ObjectCreated)]
        return web.json_response([self.render(request, obj) for obj in created if obj is not None], status=201)

    async def macro_apply(self, request: web.Request) -> web.Response:
        """``PUT /api/macro``: create what is absent, update what differs, all or nothing."""
        model_name, data = await self._macro_body(request)
        done = await self._macro(request, c.ApplyHierarchy(model_name, data, await self.tenant(request)))
        if done is None:
            return request["dry_run_answer"]
        decision, accepted = done
        return web.json_response({"results": self._report(request, decision), "revision": accepted.last_revision})

    async def macro_delete(self, request: web.Request) -> web.Response:
        model_name, data = await self._macro_body(request)
        done = await self._macro(request, c.DeleteHierarchy(model_name, data, await self.tenant(request)))
        if done is None:
            return request["dry_run_answer"]
        return web.Response(status=204)

    # -- service engines -----------------------------------------------------------------------

    async def register_se(self, request: web.Request) -> web.Response:
        """An SE registers (or again, after losing its stream); the answer carries its own
        credential, the one token it uses from then on."""
        body = await self.read_json(request)
        identity = request.get("se_identity")
        proof = "admin" if identity is None else f"{identity.kind}:{identity.value}"
        command = c.RegisterServiceEngine(body, new_uuid("serviceengine"), proof)
        decision, _ = await self.node.write(command, command_id=self.command_id(request))
        obj = self.node.view.get(decision.uuid)
        if obj is None:
            raise CommandError(409, "the service engine was deleted while registering")
        return web.json_response({**self.render(request, obj), "credential": self.auth.se_credential(obj.uuid)}, status=200)

    async def issue_enrolment(self, request: web.Request) -> web.Response:
        """``POST /api/serviceengine/enrolment {name?, ttl?}``: a single-use token that registers one
        new SE (``avictl se run --enrol-token``); shown once, the log keeps only its hash."""
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise CommandError(400, "the request body must be a JSON object", "body")
        extra = sorted(set(body) - {"name", "ttl"})
        if extra:
            raise CommandError(422, f"unknown field {extra[0]!r}: an enrolment takes name and ttl", extra[0])
        name = body.get("name") or ""
        if not isinstance(name, str):
            raise CommandError(422, "name must be a string", "name")
        token, token_hash = new_enrolment_token()
        ttl = body.get("ttl", 3600)
        await self.node.write(c.IssueSeEnrolment(token_hash, name, ttl), command_id=self.command_id(request))
        return web.json_response({"token": token, "name": name or None, "ttl": ttl}, status=201)

    async def _se(self, request: web.Request) -> StoredObject:
        ref = request.match_info["uuid"]

        def find() -> Optional[StoredObject]:
            obj = self.node.view.get(ref) or self.node.view.by_name("serviceengine", ref)
            return obj if obj is not None and obj.kind == "serviceengine" else None

        obj = find()
        if obj is None:
            # Registered through another node a moment ago, not applied here yet: catch up first.
            await self.node.barrier(timeout=5.0)
            obj = find()
        if obj is None:
            raise CommandError(404, f"serviceengine {ref} does not exist")
        identity = request.get("se_identity")
        if identity is not None and (identity.kind != "se" or identity.value != obj.uuid):
            raise CommandError(403, "a service engine's credential is good for its own routes only")
        return obj

    async def se_slice(self, request: web.Request) -> web.StreamResponse:
        """The SE's slice; with ?watch=true a stream of slices (NDJSON), each newer than ?version=."""
        se = await self._se(request)
        version = _int_param(request.query, "version", -1, -1, 2**62)
        if request.query.get("watch", "").lower() not in ("1", "true", "yes"):
            await self.consistent(request)
            return web.json_response(self.node.slices.get(se.uuid) or {"revision": 0, "se_name": se.name, "virtual_services": []})
        if self._cut_off():
            raise CommandError(503, "this controller is cut off from the cluster's majority; stream from another")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        quiet_since = time.monotonic()
        try:
            while not self.closing.is_set():
                current = await self.node.wait_for_slice(se.uuid, version, timeout=SLICE_HEARTBEAT)
                if current is None:
                    if self.node.view.get(se.uuid) is None:
                        break
                    if self._cut_off():
                        # A node without the majority gets no new slices: the SE must move on to
                        # one that does (it reconnects to its next controller at once).
                        log.info("slice_watch_ended_cut_off", se=se.name, node_id=self.node.node_id)
                        break
                    if time.monotonic() - quiet_since >= SLICE_HEARTBEAT:
                        await response.write(b"{\"heartbeat\": true}\n")
                        quiet_since = time.monotonic()
                    continue
                encoded = self.node.slices.encoded(se.uuid)
                if encoded is None:
                    break
                version, line = encoded
                await response.write(line)
                quiet_since = time.monotonic()
        except ConnectionResetError:
            log.debug("slice_watch_client_left", se=se.name, version=version, node_id=self.node.node_id)
        return response

    def _cut_off(self) -> bool:
        """This node has seen no reachable leader for longer than an election takes."""
        return self.node.leaderless_for() > self.node.no_leader_grace

    async def se_status(self, request: web.Request) -> web.Response:
        se = await self._se(request)
        if request.content_length is not None and request.content_length > MAX_STATUS_BYTES:
            raise CommandError(413, f"a status report is at most {MAX_STATUS_BYTES} bytes", "body")
        wait = self.se_reports.wait(se.uuid, time.monotonic())
        if wait > 0:
            return error_response(429, f"status reports come at most {SE_REPORTS_PER_S:g} a second", None, retry_after=wait)
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise CommandError(400, "the status report must be a JSON object", "body")
        applied = body.get("applied_revision")
        if applied is not None and not isinstance(applied, int):
            raise CommandError(422, "applied_revision must be an integer", "applied_revision")
        body["time"] = time.time()
        previous = self.node.se_status.get(se.uuid) or {}
        # When this node first heard of the SE applying this revision: the ACK's arrival.
        same = previous.get("applied_revision") == applied and previous.get("acked_at") is not None
        body["acked_at"] = previous["acked_at"] if same else body["time"]
        logs = body.pop("request_logs", None) or {}
        if isinstance(logs, dict):
            placed = self.node.view.placed_on(se.uuid)
            for vs_uuid, records in logs.items():
                # An SE reports logs of the VSs placed on it, in bounded records; the rest is dropped.
                if isinstance(records, list) and str(vs_uuid) in placed:
                    kept = self.node.request_logs.setdefault(str(vs_uuid), collections.deque(maxlen=REQUEST_LOGS_KEPT))
                    kept.extend(dict(r, se=se.name) for r in records[:REQUEST_LOGS_KEPT]
                                if isinstance(r, dict) and len(r) <= 32 and len(json.dumps(r)) <= MAX_LOG_RECORD_BYTES)
        # A full report replaces what the SE said before; an ACK only updates its fields.
        self.node.se_status[se.uuid] = {**previous, **body}
        return web.json_response({"ok": True})

    async def vs_logs(self, request: web.Request) -> web.Response:
        """The newest client request logs of a VS (from every SE serving it), newest last."""
        vs = self.object_of(request, "virtualservice", await self.tenant(request))
        limit = _int_param(request.query, "limit", 50, 1, REQUEST_LOGS_KEPT)
        logs = list(self.node.request_logs.get(vs.uuid, ()))[-limit:]
        return web.json_response({"count": len(logs), "results": logs})

    async def place_vs(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        if not isinstance(body, dict) or "serviceengine_refs" not in body:
            raise CommandError(422, "the body names serviceengine_refs", "serviceengine_refs")
        tenant = await self.tenant(request)
        command = c.PlaceVirtualService(request.match_info["uuid"], body["serviceengine_refs"], tenant)
        await self.node.write(command, command_id=self.command_id(request))
        return web.json_response(self.render(request, self.object_of(request, "virtualservice", tenant)))

    async def vs_action(self, request: web.Request) -> web.Response:
        """``POST /api/virtualservice/{uuid}/scaleout|scalein|migrate|switchover``, as the real product names them."""
        raw = await request.read()
        try:
            body = parse_json(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise CommandError(400, f"the body is not valid JSON: {exc}", "body") from None
        tenant = await self.tenant(request)
        command = c.ActOnVirtualService(request.match_info["uuid"], request.match_info["action"], body, tenant)
        await self.node.write(command, command_id=self.command_id(request))
        return web.json_response(self.render(request, self.object_of(request, "virtualservice", tenant)))

    # -- cluster, events, watch ----------------------------------------------------------------

    async def cluster(self, request: web.Request) -> web.Response:
        nodes = [self.node.status()]
        http = await self.node.http()

        async def peer_status(peer: Any) -> dict[str, Any]:
            try:
                async with http.get(
                    f"{peer.api_url}/internal/status",
                    headers={"Authorization": f"Bearer {self.auth.internal_token}"},
                    timeout=_timeout(1.0),
                ) as resp:
                    if resp.status == 200:
                        return await resp.json()
            except (OSError, asyncio.TimeoutError, ValueError, Exception):  # noqa: BLE001 - a down peer is a status
                pass
            return {"id": peer.node_id, "api": peer.api_url, "raft": peer.raft_addr, "role": "unreachable"}

        nodes += await asyncio.gather(*(peer_status(p) for p in self.node.config.peers))
        leaders = [n for n in nodes if n.get("role") == "leader"]
        leader = max(leaders, key=lambda n: n.get("term", 0))["id"] if leaders else None
        up = sum(1 for n in nodes if n.get("role") not in ("unreachable",))
        if leader is None:
            state = "CLUSTER_DOWN"
        elif up == len(nodes):
            state = "CLUSTER_UP_HA_ACTIVE" if len(nodes) > 1 else "CLUSTER_UP_NO_HA"
        else:
            state = "CLUSTER_UP_HA_COMPROMISED"
        return web.json_response({"leader": leader, "state": state, "nodes": nodes})

    async def internal_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def internal_records(self, request: web.Request) -> web.Response:
        after = _int_param(request.query, "after_raft_index", 0, 0, 2**62)
        limit = _int_param(request.query, "limit", 1000, 1, 10_000)
        records = self.node.store.read_after_raft_index(after, limit)
        body = msgpack.packb([[r.raft_index, r.first_revision, r.count, r.payload] for r in records], use_bin_type=True)
        return web.Response(body=body, content_type="application/msgpack")

    def _events_since(self, since: int, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for record in self.node.store.read_from_revision(since, limit=limit):
            revision = record.first_revision
            for command in codec.decode(record.payload).commands:
                for event in command.events:
                    if revision >= since:
                        tag, _version, data = codec.encode_value(event)
                        if isinstance(event, (ObjectCreated, ObjectUpdated)):
                            # Secrets (write-only fields) leave the cluster in no output, events included.
                            data = dict(data, body=schema.redact(event.kind, event.body))
                        out.append({"revision": revision, "type": tag, "time": command.time, "command_id": command.command_id, "data": data})
                        if len(out) >= limit:
                            return out
                    revision += 1
        return out

    async def events(self, request: web.Request) -> web.Response:
        _check_params(request.query, frozenset({"since", "limit", "stale"}))
        since = _int_param(request.query, "since", 1, 0, 2**62)
        limit = _int_param(request.query, "limit", 100, 1, 10_000)
        if since and since < self.node.store.first_revision:
            raise CommandError(410, f"revision {since} was compacted; the log starts at {self.node.store.first_revision}", "since")
        await self.consistent(request)
        events = self._events_since(max(since, 1), limit)
        return web.json_response({"count": len(events), "results": events, "revision": self.node.view.revision})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        _check_params(request.query, frozenset({"since"}))
        since = _int_param(request.query, "since", self.node.view.revision + 1, 0, 2**62)
        if since and since < self.node.store.first_revision:
            raise CommandError(410, f"revision {since} was compacted; the log starts at {self.node.store.first_revision}", "since")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        next_revision = max(since, 1)
        quiet_since = time.monotonic()
        try:
            # Ends when the server shuts down, so a connected watcher never delays a stop.
            while not self.closing.is_set():
                events = self._events_since(next_revision, 1000)
                for event in events:
                    await response.write(json.dumps(event).encode() + b"\n")
                    next_revision = event["revision"] + 1
                if events:
                    quiet_since = time.monotonic()
                    continue
                if not await self.node.wait_for_revision(next_revision, timeout=1.0):
                    if time.monotonic() - quiet_since >= 15.0:
                        await response.write(b"{\"heartbeat\": true}\n")
                        quiet_since = time.monotonic()
        except ConnectionResetError:
            log.debug("watch_client_left", next_revision=next_revision, node_id=self.node.node_id)
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(build_openapi(request.app.router, API_VERSION))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": self.node.node_id})


def _stale(request: web.Request) -> bool:
    return _bool_param(request.query, "stale")


# What a client-chosen uuid may be: the kind, a dash and a short token (never a path segment).
_SLUG = re.compile(r"^[a-z]+-[A-Za-z0-9_-]{1,100}$")

# A write-only value in a change report: it changed, or may have; its value is never shown.
_SECRET = "(write-only: not shown)"

# Query parameters GET accepts; anything else is refused by name (400), never ignored: a filter
# silently dropped would return the whole collection to, say, a cleanup script. include_name and
# join_subresources are accepted because what they ask for is always done (refs carry #name,
# objects carry their runtime); docs/operations.md lists them.
_OBJECT_PARAMS = frozenset({"stale", "fields", "skip_default", "include_name", "join_subresources"})
_LIST_PARAMS = _OBJECT_PARAMS | {"name", "uuid", "search", "sort", "page", "page_size", "refers_to", "referred_by"}


def _check_params(query: Any, allowed: frozenset[str], ref_filters: frozenset[str] = frozenset()) -> None:
    """400 naming the first query parameter that is neither in ``allowed`` nor a ``<ref>.uuid`` filter in ``ref_filters``."""
    for key in query:
        if key in allowed or key in ref_filters:
            continue
        if key.endswith(".uuid"):
            offered = ", ".join(sorted(ref_filters)) or "none"
            raise CommandError(400, f"cannot filter on {key}: not a ref field here (ref filters: {offered})", key)
        raise CommandError(400, f"unknown query parameter {key!r}; accepted here: {', '.join(sorted(allowed))}", key)
    if query.get("join_subresources", "runtime") != "runtime":
        raise CommandError(400, "join_subresources supports runtime only", "join_subresources")
    for key in ("stale", "skip_default", "include_name"):
        if key in query:
            _bool_param(query, key)


# kind -> the "<ref field>.uuid" filters it offers: one per top-level ref field.
_REF_FILTERS = {
    kind: frozenset(f"{name}.uuid" for name, f in spec.fields.items() if f.type == "ref")
    for kind, spec in schema.KINDS.items()
}


def _bool_param(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    value = raw.lower()
    if value in ("", "1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise CommandError(400, f"{name} must be true or false", name)


def _kind_and_uuid(query: Any, name: str) -> str:
    """``kind:uuid`` (the real product's form of refers_to / referred_by) -> the uuid; 400 when malformed."""
    kind, sep, uuid = query[name].partition(":")
    if not sep or kind not in schema.KINDS or not uuid:
        raise CommandError(400, f"{name} must be <kind>:<uuid>, e.g. pool:pool-…; kinds: {', '.join(sorted(schema.KINDS))}", name)
    return uuid


def _timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CommandError(400, f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise CommandError(400, f"{name} must be between {low} and {high}", name)
    return value


def _revision_of(value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        raise CommandError(422, "_last_modified must be the revision string this API returned", "_last_modified") from None


def make_app(node: Controller, *, reconciler: Optional["Reconciler"] = None) -> web.Application:
    api = Api(node, reconciler)
    app = web.Application(middlewares=[api.middleware], client_max_size=MAX_BODY_BYTES)
    app["api"] = api

    async def on_shutdown(_app: web.Application) -> None:
        api.closing.set()

    app.on_shutdown.append(on_shutdown)
    r = app.router
    r.add_post("/login", api.login)
    r.add_post("/logout", api.logout)
    r.add_get("/healthz", api.healthz)
    r.add_get("/metrics", api.metrics)
    r.add_get("/api/openapi.json", api.openapi)
    r.add_get("/api/cluster", api.cluster)
    r.add_get("/api/events", api.events)
    r.add_get("/api/watch", api.watch)
    r.add_get("/internal/status", api.internal_status)
    r.add_get("/internal/records", api.internal_records)
    r.add_post("/api/serviceengine/register", api.register_se)
    r.add_post("/api/serviceengine/enrolment", api.issue_enrolment)
    r.add_get("/api/serviceengine/{uuid}/slice", api.se_slice)
    r.add_post("/api/serviceengine/{uuid}/status", api.se_status)
    r.add_post("/api/virtualservice/{uuid}/placement", api.place_vs)
    r.add_post("/api/virtualservice/{uuid}/{action:scaleout|scalein|migrate|switchover}", api.vs_action)
    r.add_get("/api/virtualservice/{uuid}/logs", api.vs_logs)
    r.add_post("/api/macro", api.macro_create)
    r.add_put("/api/macro", api.macro_apply)
    r.add_delete("/api/macro", api.macro_delete)
    r.add_get("/api/{kind}", api.list_objects)
    r.add_post("/api/{kind}", api.create_object)
    r.add_get("/api/{kind}/{uuid}", api.get_object)
    r.add_put("/api/{kind}/{uuid}", api.update_object)
    r.add_patch("/api/{kind}/{uuid}", api.patch_object)
    r.add_delete("/api/{kind}/{uuid}", api.delete_object)
    return app
