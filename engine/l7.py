"""The L7 (HTTP/1.1) reverse proxy: httptools parsers on asyncio Protocols.

A client connection (``L7Connection``) parses requests with ``httptools.HttpRequestParser`` and
proxies them one at a time, in order, to a backend picked per request; pipelined requests wait in
a queue (bounded: reading pauses when it is full). Backend connections (``_Upstream``) come from a
per-pool ``engine.upstreams.UpstreamPool`` of idle keep-alive connections and go back to it when a
response ends cleanly. Bodies are streamed both ways, never buffered whole: Content-Length bodies
pass through as they are, chunked ones are re-chunked (trailers are dropped). Back-pressure runs
both ways (``pause_writing`` on one side pauses reading on the other).

Contracts worth knowing:
- ``should_keep_alive()`` is read inside ``on_message_complete`` (and ``on_headers_complete``):
  once ``feed_data`` returns, httptools has reset and says False.
- A connection goes back to the idle pool only after ``feed_data`` returns, so a callback never
  hands a parser that is still running to another request.
- 502 when no server is up or the backend fails before the response starts; a response that
  breaks after it started is cut by closing the client connection.
- A reused idle connection that dies before answering a request without a body is retried once on
  a fresh pick (the server closed it while it sat idle).
- Writes to the client made while one backend read is parsed go out as one bytes (head and body
  joined; ``writelines`` for a read over ``JOIN_MAX``). A Content-Length body of ``BYPASS_MIN``
  bytes or more is relayed as it is read, past the parser, which is replaced when the body ends.
- Small sends are held until the loop has run every callback of the current poll (``_Flusher``):
  the response of a backend read up to ``JOIN_MAX`` and the head of a request without a body. Any
  other write to that client sends what is held first, and so does closing it, so the order on
  each connection is unchanged. Sending in bursts, as HAProxy does, lets the peers on the other CPU
  take several messages per wake-up instead of one (each wake-up of an idle vCPU is an IPI).
- The request's HTTP version is taken from ``should_keep_alive()`` when the client sent no
  Connection or Proxy-Connection header (llhttp then keeps alive exactly the HTTP/1.1 requests):
  ``get_http_version()`` formats a str per call.
- Responses carry the standard reason phrase for their status; the backend's phrase is not kept.
- Idle client connections are closed by the data plane's sweep (``close_if_idle``); nothing on the
  hot path arms a timer.

Hostile input (the VS's ``engine.config.HttpLimits``, read when a connection is accepted; a
response with more fields than ``max_header_count`` is a broken one too, answered 502):
- A request head is bounded while it is read, as HAProxy and nginx bound theirs: the request target
  and each field against ``max_header_size`` (414, 431), the fields' count and the whole head
  against ``max_header_count`` and ``head_size`` (431), each counted on the pieces the parser hands
  over. httptools joins the pieces of one field across reads before it shows it, so the bytes of
  reads that end inside a head are counted too, and the head is refused as soon as they pass
  ``head_size``: a client streaming an endless head costs one read past the limit, never a stall.
- A head still incomplete after a read gets a timer, once, for ``header_timeout`` from that read
  (408); a head read whole in one read (nearly all of them) arms nothing.
- Framing is checked before anything is forwarded (RFC 9112 6.1, 6.3): Transfer-Encoding must be a
  single ``chunked`` in an HTTP/1.1 request, llhttp refuses Content-Length with Transfer-Encoding,
  duplicate or malformed Content-Length and bad chunk sizes. A request starts going to a backend
  only once the read that completed its head has been parsed whole, so a request refused anywhere
  in that read sends nothing at all; one refused in a later read (its body) has its backend
  connection aborted, never reused.
- A refused request is answered (400, 408, 414, 431) after the responses to the requests before
  it, with ``Connection: close``; then the write side is shut and what the client still sends is
  read and dropped for up to ``LINGER_TIME`` or ``LINGER_BYTES`` (closing over unread bytes would
  reset the connection, and the client could lose the answer), then the connection is closed.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import httptools

if TYPE_CHECKING:
    from engine.listener import Listener
    from engine.runtime import PoolRuntime
    from engine.upstreams import UpstreamPool

__all__ = ["L7Connection"]

CONNECT_ATTEMPTS = 3
MAX_PIPELINE = 32  # queued requests per client connection before reading pauses
MAX_BUFFERED = 256 * 1024  # request body bytes held while a backend connects, before reading pauses
BYPASS_MIN = 64 * 1024  # a Content-Length response body at least this long is relayed without the parser
JOIN_MAX = 16 * 1024  # a backend read up to this long goes to the client as one joined bytes (else writelines)
LINGER_TIME = 1.0  # after a refusal: seconds to drop what the client still sends before closing
LINGER_BYTES = 256 * 1024  # ... or bytes

_PAUSE_UPSTREAM = 1  # the backend's write buffer is full
_PAUSE_BACKLOG = 2  # too many queued requests or buffered body bytes
_PAUSE_REFUSED = 4  # a request was refused: nothing more is read until the ones before it are answered

# Lower-cased header names the proxy rewrites; the length set is a cheap pre-filter.
_REQ_SPECIAL = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"upgrade", b"x-forwarded-for", b"content-length"}
)
_RESP_SPECIAL = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"content-length"})
_REQ_LENGTHS = frozenset(len(n) for n in _REQ_SPECIAL)
_RESP_LENGTHS = frozenset(len(n) for n in _RESP_SPECIAL)

_502_BODY = b"<html><body><h1>502 Bad Gateway</h1>\nNo server is available to handle this request.\n</body></html>\n"
_502_HEAD = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: %d\r\n" % len(_502_BODY)
_502_KEEP = _502_HEAD + b"\r\n" + _502_BODY
_502_CLOSE = _502_HEAD + b"Connection: close\r\n\r\n" + _502_BODY


def _refusal(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode())


_400 = _refusal(400)
_408 = _refusal(408)
_414 = _refusal(414)
_431 = _refusal(431)
_NO_COUNT_LIMIT = sys.maxsize  # max_header_count 0
_CRLF = b"\r\n"


def _status_lines() -> list[bytes]:
    lines = []
    for code in range(600):
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        lines.append(f"HTTP/1.1 {code} {phrase}\r\n".encode())
    return lines


# Responses go out with the standard reason phrase: the backend's is not kept (one parser callback less).
_STATUS_LINES = _status_lines()
_LAST_CHUNK = b"0\r\n\r\n"


class _Flusher:
    """Small writes held back until the loop has run the callbacks of the current poll, then sent.

    HAProxy's pattern: read everything that is ready, then send. A backend or client woken by the
    first send of a burst is still running when the next ones arrive, instead of being woken (an
    IPI to its sleeping CPU) once per request. Holds request heads to backends (``heads``:
    transport, bytes, ...) and client connections with a response waiting (``L7Connection._later``).
    One per event loop; ``run`` goes on the loop's ready queue once per batch.
    """

    __slots__ = ("loop_ref", "heads", "conns", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref: Any = weakref.ref(loop)  # weak: the registry below is keyed by the loop
        self.heads: list[Any] = []
        self.conns: list[L7Connection] = []
        self.scheduled = False

    def schedule(self) -> None:
        loop = self.loop_ref()
        if loop is not None:
            self.scheduled = True
            loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        heads = self.heads
        if heads:
            self.heads = []
            it = iter(heads)
            for transport, data in zip(it, it, strict=False):
                if not transport.is_closing():
                    try:
                        transport.write(data)
                    except Exception:  # noqa: BLE001 - one broken transport must not starve the others
                        transport.abort()
        conns = self.conns
        if conns:
            self.conns = []
            for conn in conns:
                later = conn._later  # conn._flush_later(), inlined
                if later is not None:
                    conn._later = None
                    if not conn._closed:
                        transport = conn.transport
                        if not transport.is_closing():
                            try:
                                transport.write(later)
                            except Exception:  # noqa: BLE001
                                transport.abort()


_FLUSHERS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher]" = weakref.WeakKeyDictionary()


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _FLUSHERS.get(loop)
    if flusher is None:
        flusher = _FLUSHERS[loop] = _Flusher(loop)
    return flusher


class _Request:
    """One client request from its head until its response has been sent."""

    __slots__ = (
        "head",
        "pending",
        "chunked",
        "has_body",
        "http11",
        "keep_alive",
        "head_only",
        "complete",
        "started",
        "pool",
        "counter",
        "server_key",
        "upstream",
        "connecting",
        "retried",
        "status",
        "response_started",
        "response_done",
        "out_chunked",
        "until_close",
        "method",
        "url",
        "ended",
    )

    def __init__(self, head: bytes, chunked: bool, has_body: bool, http11: bool, keep_alive: bool, head_only: bool, started: float) -> None:
        self.head = head
        self.pending: Optional[list[bytes]] = None  # body bytes that arrived before a backend was attached
        self.chunked = chunked
        self.has_body = has_body
        self.http11 = http11
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.complete = False  # the whole request has been read from the client
        self.started = started
        self.pool: Optional[PoolRuntime] = None
        self.counter: Any = None  # the open-connection counter of ``server_key`` (the Balancer's), released once
        self.server_key: Optional[str] = None  # set while the request counts against a server
        self.upstream: Optional[_Upstream] = None
        self.connecting: Optional[asyncio.Task[None]] = None
        self.retried = False
        self.status = 0
        self.response_started = False
        self.response_done = False
        self.out_chunked = False
        self.until_close = False
        self.method = b""
        self.url = b""
        self.ended = 0.0  # loop time the response ended (0 until then); reused for the pool and idle clocks


class _Refused(Exception):
    """Raised by a parser callback to stop parsing; the answer is in ``L7Connection._refusal``."""


class L7Connection(asyncio.Protocol):
    """One client connection of an HTTP virtual service."""

    __slots__ = (
        "_listener",
        "_loop",
        "_stats",
        "transport",
        "_parser",
        "_client_ip",
        "_xff",
        "_xff_tails",
        "_queue",
        "_parsing",
        "_url",
        "_head",
        "_xff_in",
        "_conn_hdr",
        "_chunked",
        "_has_body",
        "_paused",
        "_write_paused",
        "_out",
        "_outbuf",
        "_later",
        "_flusher",
        "_buffered",
        "_closed",
        "_broken",
        "_draining",
        "_idle_since",
        "_max_field",
        "_max_head",
        "_max_fields",
        "_header_timeout",
        "_head_used",
        "_hidden",
        "_head_bytes",
        "_timer",
        "_starting",
        "_refusal",
        "_final",
        "_linger_left",
    )

    def __init__(self, listener: "Listener") -> None:
        self._listener = listener
        self._loop = listener.loop
        self._stats = listener.vs.stats
        self.transport: Any = None
        self._parser = httptools.HttpRequestParser(self)
        self._client_ip = ""
        self._xff = b""
        self._queue: deque[_Request] = deque()
        self._parsing: Optional[_Request] = None
        # The request being parsed: its head is built as the headers arrive, as
        # [method, " ", url, " HTTP/1.x\r\n", headers..., X-Forwarded-For and end], joined once complete.
        self._url = b""
        self._head: list[bytes] = [b"", b" ", b"", b""]
        self._xff_in: Optional[bytes] = None
        self._conn_hdr = False  # a Connection or Proxy-Connection header: ask the parser for the version
        self._xff_tails: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        self._chunked = False
        self._has_body = False
        self._paused = 0
        self._write_paused = False
        self._out: Optional[list[bytes]] = None  # set while a backend's bytes are parsed: writes are batched
        self._outbuf: list[bytes] = []
        self._later: Optional[bytes] = None  # response bytes held for the flusher (sent before anything else)
        self._flusher = _flusher(self._loop)
        self._buffered = 0
        self._closed = False
        self._broken = False  # no more requests will be read (parse error, EOF, upgrade)
        self._draining = False
        self._idle_since = 0.0  # when the last response ended (or the connection was accepted); 0 while busy
        # Limits (set when the connection is made) and what the head being read has used of them.
        self._max_field = self._max_head = self._max_fields = 0
        self._header_timeout = 0.0
        self._head_used = 0  # request target and fields so far (each field with 4 for ": " and CRLF)
        self._hidden = 0  # fields read but not put into the head for the backend (hop-by-hop, X-Forwarded-For)
        # Bytes of the reads that started between requests or inside a head (or, in a chunked body,
        # since its last data): 0 again once the head is complete, so non-zero after a read means a head
        # (or a chunked body's size lines and trailers) is unfinished.
        self._head_bytes = 0
        self._timer: Optional[asyncio.TimerHandle] = None  # the head deadline, or the end of lingering
        self._starting: Optional[_Request] = None  # goes to a backend once the current read is parsed
        self._refusal: Optional[bytes] = None  # the answer a parser callback refused the request with
        self._final: Optional[bytes] = None  # a refusal sent once the requests before it are answered
        self._linger_left = 0  # bytes still dropped before closing, once refused (0: not lingering)

    # -- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        stats = self._stats
        stats.open_connections += 1
        stats.total_connections += 1
        self._listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if peer else ""
        self._xff = xff = self._client_ip.encode()
        # The end of every request head to this client's backends (HTTP/1.1, 1.1 chunked, 1.0), precomputed.
        self._xff_tails = (
            b"X-Forwarded-For: " + xff + b"\r\n\r\n",
            b"X-Forwarded-For: " + xff + b"\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"X-Forwarded-For: " + xff + b"\r\nConnection: keep-alive\r\n\r\n",
        )
        self._idle_since = self._loop.time()
        self._draining = self._listener.draining
        limits = self._listener.vs.config.http_limits
        self._max_field = limits.max_header_size
        self._max_head = limits.head_size
        # Compared with len(head) // 4 (4 parts per field, after the 4 of the request line) + _hidden.
        self._max_fields = (limits.max_header_count or _NO_COUNT_LIMIT) + 1
        self._header_timeout = limits.header_timeout

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self._stats.bytes_in += n
        if self._broken:
            if self._linger_left:
                left = self._linger_left - n
                self._linger_left = max(left, 0)
                if left <= 0:
                    self.transport.abort()
            return
        req = self._parsing
        if req is None:
            self._head_bytes += n
        elif req.chunked:
            self._head_bytes += n  # reset by on_body: counts only size lines and trailers
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request before the upgrade is proxied as a plain request; nothing after it is read.
            self._stop_reading()
        except httptools.HttpParserError:
            self._refuse(self._refusal or _400)
        else:
            if self._head_bytes:
                self._head_unfinished()
        req = self._starting
        if req is not None:
            self._starting = None
            self._begin(req)

    def eof_received(self) -> bool:
        # A client may half-close after its last request; answer what is queued, then close. A
        # request whose body it had not finished never will be: it is refused (its backend
        # connection aborted) rather than left holding a backend connection.
        if self._parsing is not None and not self._broken:
            self._refuse(_400)
        self._broken = True
        return bool(self._queue)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stats.open_connections -= 1
        self._listener.connections.discard(self)
        for req in self._queue:
            if req.connecting is not None:
                req.connecting.cancel()
                req.connecting = None
            upstream = req.upstream
            if upstream is not None:
                self._detach(req, upstream)
                upstream.transport.abort()
            self._release_slot(req)
        self._queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._queue:
            upstream = self._queue[0].upstream
            if upstream is not None and not upstream.paused:
                upstream.paused = True
                upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._queue:
            upstream = self._queue[0].upstream
            if upstream is not None and upstream.paused:
                upstream.paused = False
                upstream.transport.resume_reading()

    def drain(self) -> None:
        """The listener is being removed: finish the request in flight, then close."""
        self._draining = True
        if not self._queue:
            self._close()

    def abort(self) -> None:
        self.transport.abort()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url
        self._url = url
        # A request begins: its head's size so far, and no field yet.
        used = self._head_used = len(url)
        self._hidden = 0
        if used > self._max_field:
            self._refuse_with(_414)

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        size = n + len(value)
        used = self._head_used + size + 4
        self._head_used = used
        if size > self._max_field or used > self._max_head:
            self._refuse_with(_431)
        if self._parsing is not None:
            # A trailer field of a chunked request (its head was already taken): dropped, as a
            # recipient that removes the chunked coding may (RFC 9112 7.1.2), never carried into
            # the next request's head. They count with the head against its limits.
            self._hidden += 1
            if self._hidden > self._max_fields:
                self._refuse_with(_431)
            return
        if n in _REQ_LENGTHS:
            lname = name.lower()
            if lname in _REQ_SPECIAL:
                if lname == b"content-length":
                    self._has_body = value.strip() != b"0"
                elif lname == b"x-forwarded-for":
                    self._hidden += 1
                    self._xff_in = value if self._xff_in is None else self._xff_in + b", " + value
                    return
                else:
                    self._hidden += 1
                    if lname == b"transfer-encoding":
                        # RFC 9112 6.1: chunked must be the final coding, and we frame nothing else
                        # (the body is re-chunked); Transfer-Encoding in a 1.0 request is refused (the
                        # coding's bytes would reach the backend as the next request). llhttp itself
                        # refuses Content-Length alongside.
                        if self._chunked or value.strip().lower() != b"chunked" or self._parser.get_http_version() != "1.1":
                            self._refuse_with(_400)
                        self._chunked = True
                    elif lname == b"connection" or lname == b"proxy-connection":
                        self._conn_hdr = True
                    return  # hop-by-hop
        self._head += (name, b": ", value, _CRLF)

    def on_headers_complete(self) -> None:
        head = self._head
        fields = (len(head) >> 2) + self._hidden  # 1 + the fields read (trailers, if any, add to it)
        if fields > self._max_fields:
            self._refuse_with(_431)
        self._hidden = fields
        self._head_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        parser = self._parser
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        if self._conn_hdr:
            self._conn_hdr = False
            http11 = parser.get_http_version() == "1.1"
        else:
            # Without a Connection header llhttp keeps alive exactly the HTTP/1.1 requests
            # (get_http_version formats a str: ~0.8 us).
            http11 = keep_alive
        xff_in = self._xff_in
        chunked = self._chunked
        url = self._url
        head[0] = method
        head[2] = url
        if http11:
            head[3] = b" HTTP/1.1\r\n"
            if xff_in is None:
                head.append(self._xff_tails[1] if chunked else self._xff_tails[0])
            else:
                head += (b"X-Forwarded-For: ", xff_in, b", ", self._xff, b"\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n\r\n")
        else:
            # Kept at 1.0 (it may lack Host, which 1.1 requires), asking the backend for keep-alive.
            head[3] = b" HTTP/1.0\r\n"
            if xff_in is None:
                head.append(self._xff_tails[2])
            else:
                head += (b"X-Forwarded-For: ", xff_in, b", ", self._xff, b"\r\nConnection: keep-alive\r\n\r\n")
        req = _Request(
            b"".join(head),
            chunked,
            chunked or self._has_body,
            http11,
            keep_alive,
            method == b"HEAD",
            self._loop.time(),
        )
        req.method = method
        req.url = url
        del head[4:]
        self._url = b""
        self._xff_in = None
        self._chunked = self._has_body = False
        self._stats.requests += 1
        self._idle_since = 0.0
        self._parsing = req
        queue = self._queue
        queue.append(req)
        if len(queue) == 1:
            self._starting = req  # begun when the whole read is parsed: a refusal in it forwards nothing
        elif len(queue) > MAX_PIPELINE:
            self._pause(_PAUSE_BACKLOG)

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is None:
            return
        chunked = req.chunked
        if chunked:
            self._head_bytes = 0  # chunk data: what data_received counted was not only size lines and trailers
        if req.response_done:
            return  # the response went out already (an error or an early answer): the rest is dropped
        upstream = req.upstream
        if upstream is not None:
            if chunked:
                upstream.transport.writelines((b"%x\r\n" % len(body), body, _CRLF))
            else:
                upstream.transport.write(body)
            return
        if chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        if req.pending is None:
            req.pending = [body]
        else:
            req.pending.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_BUFFERED:
            self._pause(_PAUSE_BACKLOG)

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is None:
            return
        self._parsing = None
        if req.chunked:
            self._head_bytes = 0
            if req.keep_alive:
                # Trailers may have said Connection: close. Must be read here: after feed_data
                # returns the parser has reset and reports False.
                req.keep_alive = self._parser.should_keep_alive()
        req.complete = True
        if req.response_done:
            if req.upstream is None:
                self._finish(req)
            return
        if req.chunked:
            upstream = req.upstream
            if upstream is not None:
                upstream.transport.write(_LAST_CHUNK)
            elif req.pending is None:
                req.pending = [_LAST_CHUNK]
            else:
                req.pending.append(_LAST_CHUNK)

    # -- refusals --------------------------------------------------------------------------------

    def _refuse_with(self, response: bytes) -> NoReturn:
        """From a parser callback: stop parsing; ``data_received`` refuses the request with ``response``."""
        self._refusal = response
        raise _Refused

    def _head_unfinished(self) -> None:
        """After a read that left a head (or a chunked body's size lines and trailers) unfinished."""
        if self._head_bytes > self._max_head:
            self._refuse(_431)
        elif self._timer is None and self._parsing is None:
            self._timer = self._loop.call_later(self._header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._timer = None
        if not self._closed and not self._broken and self._parsing is None and self._head_bytes:
            self._refuse(_408)

    def _refuse(self, response: bytes) -> None:
        """Refuse the request being read: nothing more of it goes to a backend, nothing after it is
        read; ``response`` goes out after the answers to the requests before it, then the connection
        closes."""
        self._broken = True
        queue = self._queue
        req = self._parsing
        if req is not None and queue and queue[-1] is req:
            # Its head was taken and its body is bad (or too long to wait for).
            self._parsing = None
            queue.pop()
            if self._starting is req:
                self._starting = None  # never begun: the backend saw nothing
            else:
                if req.connecting is not None:
                    req.connecting.cancel()
                    req.connecting = None
                upstream = req.upstream
                if upstream is not None:
                    # The head (and part of the body) went out in an earlier read: the backend must
                    # never take what it got for a whole request, nor see the connection again.
                    self._detach(req, upstream)
                    upstream.transport.abort()
                self._release_slot(req)
            if req.pending is not None and self._buffered:
                self._buffered -= sum(len(p) for p in req.pending)
            req.pending = None
            if req.response_started or req.response_done:
                # It was answered (in part) already: only closing tells the client.
                self._flush_later()
                self.transport.close()
                return
        if queue:
            self._final = response
            self._pause(_PAUSE_REFUSED)
        else:
            self._linger(response)

    def _linger(self, response: bytes) -> None:
        """Send ``response``, shut the write side, drop what the client still sends, then close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        if self._closed or transport.is_closing():
            return
        self._write(response)
        try:
            transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            transport.close()
            return
        self._linger_left = LINGER_BYTES
        self._timer = self._loop.call_later(LINGER_TIME, transport.abort)
        if self._paused:
            self._paused = 0
            transport.resume_reading()

    # -- exchange --------------------------------------------------------------------------------

    def _begin(self, req: _Request) -> None:
        pool = self._listener.vs.pool
        if pool is None:
            self._fail(req)
            return
        member = pool.balancer.pick_member(self._client_ip)
        if member is None:
            self._fail(req)
            return
        counter = member.counter  # Balancer.opened, inlined
        counter.open += 1
        req.counter = counter
        req.server_key = key = member.key
        req.pool = pool
        upstreams = pool.upstreams
        idle = upstreams._idle.get(key)  # UpstreamPool.take, inlined (once per request)
        while idle:
            upstream = idle.pop()
            transport = upstream.transport
            if transport.is_closing():
                continue
            if req.started - upstream.idle_since > upstreams.idle_timeout:
                transport.close()
                continue
            if req.pending is not None or req.has_body or self._write_paused:
                self._attach(req, upstream, True)
                return
            # _attach, inlined for a request without a body: the head waits for the flusher
            req.upstream = upstream
            upstream.owner = self
            upstream.req = req
            upstream.reused = True
            upstream.got_bytes = upstream.finished = False
            upstream.keep = True
            flusher = self._flusher
            flusher.heads += (transport, req.head)
            if not flusher.scheduled:
                flusher.schedule()
            return
        req.connecting = self._loop.create_task(self._connect(req, pool, member.server))

    async def _connect(self, req: _Request, pool: "PoolRuntime", server: Any) -> None:
        loop = self._loop
        attempts = 0
        while True:
            key = server.key
            try:
                async with asyncio.timeout(pool.connect_timeout):
                    _, upstream = await loop.create_connection(lambda: _Upstream(pool.upstreams, key), server.ip, server.port)  # noqa: B023
            except (OSError, TimeoutError):
                self._stats.connect_failures += 1
                self._release_slot(req)
                attempts += 1
                member = pool.balancer.pick_member(self._client_ip) if attempts < CONNECT_ATTEMPTS and not self._closed else None
                if member is None:
                    req.connecting = None
                    if not self._closed:
                        self._fail(req)
                    return
                member.counter.open += 1
                req.counter = member.counter
                req.server_key = member.key
                server = member.server
                continue
            req.connecting = None
            if self._closed:
                upstream.transport.close()
                return
            self._attach(req, upstream, False)
            return

    def _attach(self, req: _Request, upstream: "_Upstream", reused: bool) -> None:
        req.upstream = upstream
        upstream.owner = self
        upstream.req = req
        upstream.reused = reused
        upstream.got_bytes = False
        upstream.finished = False
        upstream.keep = True
        if self._write_paused:
            upstream.paused = True
            upstream.transport.pause_reading()
        transport = upstream.transport
        if req.pending is None and not req.has_body:
            flusher = self._flusher  # nothing else goes to this backend before the response: hold it
            flusher.heads += (transport, req.head)
            if not flusher.scheduled:
                flusher.schedule()
            return
        transport.write(req.head)
        if req.pending is not None:
            transport.writelines(req.pending)
            if self._buffered:
                self._buffered -= sum(len(p) for p in req.pending)
            req.pending = None
            if self._paused & _PAUSE_BACKLOG and self._buffered <= MAX_BUFFERED and len(self._queue) <= MAX_PIPELINE:
                self._resume(_PAUSE_BACKLOG)

    def _detach(self, req: _Request, upstream: "_Upstream") -> None:
        upstream.owner = None
        upstream.req = None
        req.upstream = None
        if upstream.paused:
            upstream.paused = False
            upstream.transport.resume_reading()
        if self._paused & _PAUSE_UPSTREAM:
            self._resume(_PAUSE_UPSTREAM)

    def _release_slot(self, req: _Request) -> None:
        if req.server_key is not None:
            counter = req.counter  # Balancer.closed, inlined
            if counter.open > 0:
                counter.open -= 1
            req.server_key = None

    def _response_chunk(self, body: bytes) -> None:
        self._write(b"%x\r\n" % len(body))
        self._write(body)
        self._write(_CRLF)

    def _response_complete(self, upstream: "_Upstream", keep_alive: bool) -> None:
        req = upstream.req
        assert req is not None
        if req.out_chunked:
            self._write(_LAST_CHUNK)
        req.response_done = True
        upstream.finished = True
        upstream.keep = keep_alive and upstream.keep
        req.ended = now = self._loop.time()
        self._stats.exchange(self._client_ip, req.method, req.url, req.status, now - req.started, req.server_key)

    def _exchange_done(self, upstream: "_Upstream") -> None:
        """Called once the backend's parser has returned: release the backend, then move on."""
        req = upstream.req
        assert req is not None
        upstream.owner = None
        upstream.req = None
        req.upstream = None
        if upstream.paused:
            upstream.paused = False
            upstream.transport.resume_reading()
        if self._paused:
            self._resume(_PAUSE_UPSTREAM)
        if req.server_key is not None:
            counter = req.counter  # Balancer.closed, inlined
            if counter.open > 0:
                counter.open -= 1
            req.server_key = None
        transport = upstream.transport
        if upstream.keep and req.complete and not transport.is_closing():
            # UpstreamPool.put, inlined (once per request)
            upstreams = upstream.pool
            key = upstream.key
            idle = upstreams._idle.get(key)
            keys = upstreams._keys
            if (keys is not None and key not in keys) or (idle is not None and len(idle) >= upstreams.max_idle_per_server):
                transport.close()
            else:
                if idle is None:
                    idle = upstreams._idle[key] = []
                upstream.idle_since = req.ended or self._loop.time()
                idle.append(upstream)
        else:
            transport.close()
        if req.complete:
            queue = self._queue  # _finish, inlined for a kept-alive connection with nothing queued behind
            if req.keep_alive and len(queue) == 1 and queue[0] is req and not self._draining and not self._broken and not self._paused:
                queue.popleft()
                self._idle_since = req.ended or self._loop.time()
            else:
                self._finish(req)

    def _upstream_lost(self, upstream: "_Upstream") -> None:
        req = upstream.req
        assert req is not None
        if upstream.finished:
            self._exchange_done(upstream)
            return
        if not req.response_started:
            self._detach(req, upstream)
            self._release_slot(req)
            if upstream.reused and not upstream.got_bytes and not req.has_body and not req.retried:
                req.retried = True
                self._begin(req)
            else:
                self._fail(req)
            return
        if req.until_close:
            self._response_complete(upstream, False)
            self._exchange_done(upstream)
            return
        # The response was cut mid-body: only closing tells the client (after what was held for it).
        self._detach(req, upstream)
        self._release_slot(req)
        self._flush_later()
        self.transport.close()

    def _fail(self, req: _Request) -> None:
        """Answer 502 for ``req`` (the head of the queue)."""
        self._release_slot(req)
        req.pending = None
        req.status = 502
        req.response_done = True
        keep = req.keep_alive and not self._draining and not self._broken
        req.keep_alive = keep
        self._write(_502_KEEP if keep else _502_CLOSE)
        req.ended = now = self._loop.time()
        self._stats.exchange(self._client_ip, req.method, req.url, 502, now - req.started, req.server_key)
        if req.complete:
            self._finish(req)

    def _finish(self, req: _Request) -> None:
        queue = self._queue
        if not queue or queue[0] is not req:
            return
        queue.popleft()
        if not req.keep_alive or self._draining or (self._broken and not queue):
            if self._final is not None and req.until_close and not req.out_chunked:
                self._final = None  # the body ends where the connection does: nothing may follow it
            self._close()
            return
        if self._paused & _PAUSE_BACKLOG and len(queue) <= MAX_PIPELINE and self._buffered <= MAX_BUFFERED:
            self._resume(_PAUSE_BACKLOG)
        if queue:
            self._begin(queue[0])
        else:
            self._idle_since = req.ended or self._loop.time()

    def close_if_idle(self, now: float, timeout: float) -> None:
        """Close the connection if no request is in flight and none has started for ``timeout`` seconds.

        Also bounds how long a client may take to send a request head (the clock runs until it is complete).
        """
        if not self._queue and now - self._idle_since > timeout:
            self._close()

    # -- helpers ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(data)  # counted in bytes_out when the batch is sent
        else:
            self._stats.bytes_out += len(data)
            if self._later is not None:
                self._flush_later()  # what was held goes first
            self.transport.write(data)

    def _flush_batch(self) -> None:
        """One send for everything written while a backend read was parsed (head and body together)."""
        out = self._out
        self._out = None
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            self._stats.bytes_out += len(data)
            if self._later is not None:
                self._flush_later()
            if not self._closed:
                self.transport.write(data)

    def _flush_later(self) -> None:
        """Send what the flusher held for this client (also before anything that must follow it)."""
        later = self._later
        if later is not None:
            self._later = None
            if not self._closed and not self.transport.is_closing():
                self.transport.write(later)

    def _pause(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed and not self._broken:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self._broken = True
        if not self._queue:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            if self._later is not None:
                self._flush_later()
            final = self._final
            if final is not None:
                self._final = None
                self._linger(final)
                return
            self.transport.close()


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend server; owned by at most one request at a time."""

    __slots__ = (
        "pool",
        "key",
        "transport",
        "parser",
        "owner",
        "req",
        "head",
        "in_body",
        "has_length",
        "length",
        "chunked",
        "body_left",
        "bypass_keep",
        "idle_since",
        "reused",
        "got_bytes",
        "finished",
        "keep",
        "paused",
    )

    def __init__(self, pool: UpstreamPool[_Upstream], key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.owner: Optional[L7Connection] = None
        self.req: Optional[_Request] = None
        self.head: list[bytes] = [b""]  # the response head for the client, built as headers arrive
        self.in_body = False  # between a response's head and its end: header callbacks are trailers
        self.has_length = False
        self.length = 0
        self.chunked = False
        self.body_left = 0  # body bytes still to relay for a large Content-Length response (bypass)
        self.bypass_keep = False
        self.idle_since = 0.0
        self.reused = False
        self.got_bytes = False
        self.finished = False  # the owner's response is complete; released once feed_data returns
        self.keep = True
        self.paused = False  # reading paused because the client's write buffer is full

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None or self.finished:
            self.transport.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        if self.body_left:
            self._relay_body(owner, data)
            return
        self.got_bytes = True
        owner._out = out = owner._outbuf
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.keep = False
            if not self.finished:
                owner._flush_batch()
                self.transport.abort()  # connection_lost reports it to the owner
                return
        owner._out = None
        if out:
            # One bytes for one write(2): a joined copy of a few small parts costs less than
            # writelines (uvloop builds an iovec context for writev); big reads keep writelines.
            if len(data) <= JOIN_MAX:
                joined = b"".join(out) if len(out) > 1 else out[0]
                out.clear()
                owner._stats.bytes_out += len(joined)
                if not owner._closed:
                    later = owner._later  # held for the flusher: sent after this poll's callbacks
                    if later is None:
                        owner._later = joined
                        flusher = owner._flusher
                        flusher.conns.append(owner)
                        if not flusher.scheduled:
                            flusher.schedule()
                    else:
                        owner._later = later + joined
            else:
                owner._stats.bytes_out += sum(map(len, out))
                if owner._later is not None:
                    owner._flush_later()
                if not owner._closed:
                    owner.transport.writelines(out)
                out.clear()
        if self.finished:
            owner._exchange_done(self)

    def _relay_body(self, owner: L7Connection, data: bytes) -> None:
        """The body of a large Content-Length response: straight to the client, no parsing, no copy.

        The parser is left mid-body and replaced by a fresh one when the body ends.
        """
        left = self.body_left
        n = len(data)
        if n < left:
            self.body_left = left - n
            owner._write(data)
            return
        self.body_left = 0
        owner._write(data if n == left else data[:left])
        self.parser = httptools.HttpResponseParser(self)
        self.in_body = False
        owner._response_complete(self, self.bypass_keep and n == left)  # bytes past the body: do not reuse
        owner._exchange_done(self)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        owner = self.owner
        if owner is not None:
            owner._upstream_lost(self)
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner._pause(_PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner._resume(_PAUSE_UPSTREAM)

    # -- parser callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            return  # a trailer field of a chunked response: dropped, never put into the next head
        if len(name) in _RESP_LENGTHS:
            lname = name.lower()
            if lname in _RESP_SPECIAL:
                if lname == b"content-length":
                    self.has_length = True
                    # llhttp has checked it is digits; only a length of BYPASS_MIN or more is used
                    self.length = int(value) if len(value) > 4 else 0
                else:
                    if lname == b"transfer-encoding":
                        self.chunked = True
                    return  # hop-by-hop
        self.head += (name, b": ", value, _CRLF)

    def on_headers_complete(self) -> None:
        owner = self.owner
        if self.finished or owner is None:
            self.keep = False  # a second response in one read: never reuse this connection
        else:
            if len(self.head) >> 2 >= owner._max_fields:
                # More fields than max_header_count (hop-by-hop ones aside): a broken response, 502.
                raise _Refused
            self._response_head(owner, self.parser.get_status_code())
        del self.head[1:]
        self.has_length = self.chunked = False
        self.in_body = True

    def _response_head(self, owner: L7Connection, status: int) -> None:
        """The response head for the client, from the backend's (hop-by-hop headers replaced)."""
        req = self.req
        assert req is not None
        parts = self.head
        if status < 200:
            if req.http11 and status != 101:
                parts[0] = _STATUS_LINES[status]
                parts.append(_CRLF)
                owner._write(b"".join(parts))
            return
        req.status = status
        req.response_started = True
        parts[0] = _STATUS_LINES[status] if status < 600 else b"HTTP/1.1 %d \r\n" % status
        has_length = self.has_length
        chunked = self.chunked
        if (chunked or not has_length) and not (req.head_only or status == 204 or status == 304):
            req.until_close = not chunked
            if req.http11:
                req.out_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                req.keep_alive = False  # an HTTP/1.0 client reads the body until the connection closes
        if not req.keep_alive or owner._draining:
            req.keep_alive = False
            parts.append(b"Connection: close\r\n")
        elif not req.http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        out = owner._out
        if out is not None:
            out += parts  # joined with the body when the read has been parsed
        else:
            owner._write(b"".join(parts))
        if req.head_only:
            # httptools cannot be told the request was HEAD, so it would wait for a body: the
            # exchange ends here and the backend connection is not reused.
            owner._response_complete(self, False)
        elif has_length and not chunked and self.length >= BYPASS_MIN:
            self.body_left = self.length  # on_body counts down what this read already holds
            self.bypass_keep = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        owner = self.owner
        if self.finished or owner is None:
            return
        if self.body_left:
            self.body_left -= len(body)
        if self.req.out_chunked:  # type: ignore[union-attr]
            owner._response_chunk(body)
            return
        out = owner._out
        if out is not None:
            out.append(body)  # counted when the batch is sent
        else:
            owner._write(body)

    def on_message_complete(self) -> None:
        self.body_left = 0
        self.in_body = False
        owner = self.owner
        if self.finished or owner is None:
            return
        req = self.req
        assert req is not None
        if req.status == 0:
            return  # an informational (1xx) response; the final one follows
        # owner._response_complete, inlined. should_keep_alive must be read here: after feed_data
        # returns the parser has reset and reports False.
        if req.out_chunked:
            owner._write(_LAST_CHUNK)
        req.response_done = True
        self.finished = True
        self.keep = self.keep and self.parser.should_keep_alive()
        req.ended = now = owner._loop.time()
        owner._stats.exchange(owner._client_ip, req.method, req.url, req.status, now - req.started, req.server_key)
