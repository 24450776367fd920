"""A small synchronous client for the controllers' REST API (``http.client``, no dependency).

Contract: a logical request is tried against the context's nodes in turn until a deadline. A
refused or timed-out connection, 503 (no quorum) or 504 (leader lost mid-commit, outcome unknown)
moves on to the next node, with backoff after each full round. Every attempt of one logical write
carries the SAME ``X-Avi-Command-Id``, so the cluster applies it at most once however many times
it is sent. Any other HTTP error is the cluster's answer and is raised at once as :class:`ApiError`.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlencode, urlsplit

from avictl.errors import Refused, UsageFault

__all__ = ["ApiError", "Client", "RETRY_STATUSES", "Unavailable", "WRITE_METHODS", "new_command_id"]

RETRY_STATUSES = frozenset({503, 504})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
USER_AGENT = "avictl"


class ApiError(Refused):
    """An error answer of the API: ``{"error": {"code", "message", "field"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: Optional[str] = None,
        field: Optional[str] = None,
        command_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        self.command_id = command_id
        # The request itself was wrong (malformed or invalid input): bad usage, like a CLI typo.
        if status in (400, 413, 422):
            self.exit_code = 2

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message


class Unavailable(Refused):
    """No controller answered before the deadline."""


def new_command_id() -> str:
    return uuid.uuid4().hex


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


def _error_from(status: int, reason: str, raw: bytes, command_id: Optional[str]) -> ApiError:
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        field = err.get("field")
        return ApiError(
            status,
            err["message"],
            code=err.get("code") if isinstance(err.get("code"), str) else None,
            field=field if isinstance(field, str) and field else None,
            command_id=command_id,
        )
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
    return ApiError(status, f"HTTP {status} {reason}" + (f": {text}" if text else ""), command_id=command_id)


class _Connection:
    """One HTTP exchange with one endpoint."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageFault(f"API URL {endpoint!r} must look like http://HOST:PORT")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.prefix = parts.path.rstrip("/")
        self.conn = cls(parts.hostname, parts.port, timeout=timeout)

    def send(self, method: str, path_qs: str, data: Optional[bytes], headers: Mapping[str, str]) -> http.client.HTTPResponse:
        self.conn.request(method, self.prefix + path_qs, body=data, headers=dict(headers))
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()


class Client:
    """Talks to one cluster through any of its nodes; see the module docstring for the retry contract."""

    def __init__(
        self,
        endpoints: Sequence[str],
        token: Optional[str] = None,
        *,
        deadline: float = 15.0,
        timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        tenant: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints if e]
        if not self.endpoints:
            raise UsageFault("no controller to talk to: run 'avictl cluster up' or pass --api URL (AVICTL_API)")
        self.token = token
        self.deadline = deadline
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.tenant = tenant
        self.clock = clock
        self.sleep = sleep
        self.last_attempts = 0
        self._current = 0

    # -- plumbing ------------------------------------------------------------------------------

    def _headers(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.tenant:
            headers["X-Avi-Tenant"] = self.tenant
        headers.update(extra or {})
        return headers

    def _advance(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        command_id: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> Any:
        """Send one logical request; return the decoded JSON body (``None`` when empty)."""
        method = method.upper()
        extra = dict(headers or {})
        if method in WRITE_METHODS:
            command_id = command_id or new_command_id()
        if command_id:
            extra["X-Avi-Command-Id"] = command_id
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            extra["Content-Type"] = "application/json"
        hdrs = self._headers(extra)
        path_qs = path + ("?" + urlencode(query, doseq=True) if query else "")
        budget = self.deadline if deadline is None else deadline
        limit = self.clock() + budget
        delay = self.backoff_initial
        attempts = 0
        last_conn_error = ""
        last_retry_error: Optional[ApiError] = None
        while True:
            for _ in range(len(self.endpoints)):
                remaining = limit - self.clock()
                if attempts and remaining <= 0:
                    break
                endpoint = self.endpoints[self._current]
                attempts += 1
                conn = _Connection(endpoint, max(0.05, min(self.timeout, remaining)))
                try:
                    resp = conn.send(method, path_qs, data, hdrs)
                    status, reason, raw = resp.status, resp.reason, resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    last_conn_error = f"{endpoint}: {_describe(exc)}"
                    last_retry_error = None
                    self._advance()
                    continue
                finally:
                    conn.close()
                if status in RETRY_STATUSES:
                    last_retry_error = _error_from(status, reason, raw, command_id)
                    self._advance()
                    continue
                self.last_attempts = attempts
                if status >= 400:
                    raise _error_from(status, reason, raw, command_id)
                if not raw:
                    return None
                try:
                    return json.loads(raw)
                except ValueError:
                    raise Refused(f"{endpoint} answered {method} {path} with a body that is not JSON") from None
            if self.clock() >= limit:
                break
            self.sleep(max(0.0, min(delay, limit - self.clock())))
            delay = min(delay * 2, self.backoff_max)
        self.last_attempts = attempts
        if last_retry_error is not None:
            last_retry_error.message += f" (gave up after {budget:g} s and {attempts} attempts)"
            raise last_retry_error
        raise Unavailable(f"no controller answered within {budget:g} s (last: {last_conn_error}); is the cluster up?")

    # -- conveniences --------------------------------------------------------------------------

    def get(self, path: str, query: Optional[Mapping[str, Any]] = None, **kw: Any) -> Any:
        return self.request("GET", path, query=query, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def find(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        """The object of ``kind`` named ``name``, or ``None``."""
        doc = self.get(f"/api/{kind}", {"name": name})
        results = doc.get("results") if isinstance(doc, dict) else None
        return results[0] if results else None

    def list_all(self, kind: str, page_size: int = 200) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            doc = self.get(f"/api/{kind}", {"page": page, "page_size": page_size})
            results = (doc or {}).get("results") or []
            out.extend(results)
            if not (doc or {}).get("next") or not results:
                return out
            page += 1

    def probe(self, endpoint: str, path: str, timeout: float = 1.0) -> tuple[int, Any]:
        """One GET to one endpoint, no retry: ``(status, json-or-None)``; raises OSError when unreachable."""
        conn = _Connection(endpoint.rstrip("/"), timeout)
        try:
            resp = conn.send("GET", path, None, self._headers())
            raw = resp.read()
        except http.client.HTTPException as exc:
            raise ConnectionError(str(exc)) from None
        finally:
            conn.close()
        try:
            return resp.status, (json.loads(raw) if raw else None)
        except ValueError:
            return resp.status, None

    def watch(
        self,
        since: int,
        *,
        idle_timeout: float = 45.0,
        on_retry: Optional[Callable[[str], None]] = None,
    ) -> Iterator[dict[str, Any]]:
        """Events from ``since`` on, for ever: ``GET /api/watch`` NDJSON, resumed on another node after a break.

        Heartbeat lines are dropped. A break resumes from the revision after the last one yielded,
        so no event is skipped or repeated.
        """
        next_revision = since
        delay = self.backoff_initial
        while True:
            endpoint = self.endpoints[self._current]
            conn = _Connection(endpoint, idle_timeout)
            reason = "the stream ended"
            try:
                resp = conn.send("GET", "/api/watch?" + urlencode({"since": next_revision}), None, self._headers())
                if resp.status != 200:
                    error = _error_from(resp.status, resp.reason, resp.read(), None)
                    if resp.status not in RETRY_STATUSES:
                        raise error
                    reason = f"{endpoint}: {error}"
                else:
                    while True:
                        line = resp.readline()
                        if not line:
                            break
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            item = json.loads(line)
                        except ValueError:
                            continue
                        if not isinstance(item, dict) or item.get("heartbeat"):
                            delay = self.backoff_initial
                            continue
                        revision = item.get("revision")
                        if isinstance(revision, int):
                            next_revision = revision + 1
                        delay = self.backoff_initial
                        yield item
            except (OSError, http.client.HTTPException) as exc:
                reason = f"{endpoint}: {_describe(exc)}"
            finally:
                conn.close()
            if on_retry is not None:
                on_retry(f"{reason}; resuming from revision {next_revision}")
            self._advance()
            self.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
