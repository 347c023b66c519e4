"""The ``twisted.web`` Site of the gateway: body-size limit, in-flight request tracking,
draining for a graceful stop, request ids, the access log and per-request metrics. Routing
lives in ``web.py``; this module only guards the door.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.server import Request, Site

from .http_auth import auth_error
from .openai.errors import ERROR_TYPES, error_body, note_refusal
from .request_log import REQUEST_ID_HEADER, current_request, log_request, request_id_for, route_of
from .web import is_websocket_upgrade

CLIENT_CLOSED = 499  # nginx's status for a request the client abandoned before the answer
# The largest body accepted on a path that reads none (GatewayRequest._body_limit).
NO_USE_BODY_BYTES = 16 * 1024
# Statuses Twisted has no phrase for (it would send "Unknown Status"), and 413 by its
# current name (RFC 9110).
EXTRA_REASONS = {413: b"Payload Too Large", 426: b"Upgrade Required", 429: b"Too Many Requests",
                 CLIENT_CLOSED: b"Client Closed Request"}


def reason_phrase(status: int) -> bytes:
    return EXTRA_REASONS.get(status) or RESPONSES.get(status) or b"Unknown Status"


class GatewayRequest(Request):
    """A Request that refuses oversized bodies before buffering them."""

    log = Logger()
    channel: GatewayChannel   # what GatewaySite's channels are
    _too_large = False
    request_id = b"-"
    moltbot_agent = None      # the agent that ran for this request, once known
    moltbot_tokens = None     # (prompt, completion, source) tokens of its run, once known
    _site = None
    _sse = False
    _logged = False
    _limit = None             # the body limit of this request, once known

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.perf_counter()

    def setResponseCode(self, code, message=None):
        super().setResponseCode(code, message if message is not None else reason_phrase(code))

    def gotLength(self, length):
        if self._too_large:
            return  # refused at the headers (GatewayChannel.allHeadersReceived)
        if length is not None and length > self._body_limit():
            self._refuse_too_large()
            return
        super().gotLength(length)
        self._received = 0

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self._body_limit():
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _body_limit(self) -> int:
        """``maxBodyBytes`` where a body can be of use (the API, behind auth); elsewhere
        (``/health``, ``/``, unknown paths, CORS preflights) no body is ever read, so a
        small cap keeps anyone from making the gateway buffer megabytes for nothing."""
        if self._limit is None:
            channel = self.channel
            site = channel.site
            self._limit = site.door.max_body_bytes
            if not site.takes_body(channel.request_method, channel.request_path,
                                   self.requestHeaders):
                self._limit = min(site.door.max_body_bytes, NO_USE_BODY_BYTES)
        return self._limit

    def _refuse_too_large(self) -> None:
        # The body has not been read yet, so answer at the transport and close: reading
        # (or buffering) an oversized body is what the limit exists to prevent.
        self._too_large = True
        limit = self._body_limit()
        transport = self.channel.transport
        assert transport is not None  # the request is still being received
        transport.write(_raw_error_response(
            413, f"request body is larger than the limit of {limit} bytes",
            "request_too_large"))
        self.log.info("Refused a request body over {limit} bytes", limit=limit)
        transport.loseConnection()

    def render(self, resrc):
        self.setHeader(b"server", b"moltbot-gw")  # no framework version to the world
        super().render(resrc)

    def requestReceived(self, command, path, version):
        if self._too_large:
            return
        super().requestReceived(command, path, version)

    def write(self, data):
        if not self.startedWriting and not self._sse:
            ctype = self.responseHeaders.getRawHeaders(b"content-type")
            if ctype and ctype[0].startswith(b"text/event-stream"):
                self._sse = True
                if self._site is not None and self._site.metrics is not None:
                    self._site.metrics.sse_streams_active.inc()
        super().write(data)

    def process(self):
        site = self._site = self.channel.site
        self.request_id = request_id_for(self.getHeader(REQUEST_ID_HEADER))
        self.setHeader(REQUEST_ID_HEADER, self.request_id)
        self.notifyFinish().addBoth(self._completed)
        if site.draining:
            self.setResponseCode(503)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"retry-after", b"5")
            self.setHeader(b"connection", b"close")
            self.write(error_body("the gateway is shutting down", ERROR_TYPES[503], None,
                                  "shutting_down"))
            self.finish()
            return
        upgrade = is_websocket_upgrade(self)
        if not upgrade:
            # An upgraded connection outlives its request; WS clients are closed separately.
            site.track(self)
        token = current_request.set(self)
        try:
            super().process()
        finally:
            current_request.reset(token)
        channel = getattr(self, "channel", None)  # gone once a refused upgrade finished
        if upgrade and channel is not None and channel.transport is None:
            # The WebSocket protocol took the connection over: this request never finishes,
            # so it is logged now, as switched.
            self._completed(None, status=101)

    def _completed(self, result, status=None) -> None:
        """Log and count the request once: finished, or abandoned by the client."""
        if self._logged:
            return
        self._logged = True
        if status is None:
            status = self.code if result is None else CLIENT_CLOSED
        try:
            seconds = time.perf_counter() - self._started
            metrics = self._site.metrics if self._site is not None else None
            if metrics is not None:
                metrics.request_finished(route_of(self.path), status, seconds)
                if self._sse:
                    metrics.sse_streams_active.dec()
            log_request(self, status, seconds)
        finally:
            if self._site is not None:   # after its log line: a drain may end the process
                self._site.untrack(self)


def _raw_error_response(status: int, message: str, code: Optional[str],
                        param: Optional[str] = None,
                        headers: Optional[dict] = None) -> bytes:
    """A whole ``Connection: close`` error response, for writing straight to the transport
    when no Request can answer (the request has not been fully received)."""
    body = error_body(message, ERROR_TYPES[status], param, code)
    extra = b"".join(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))
                     for name, value in (headers or {}).items())
    return (b"HTTP/1.1 %d %s\r\nServer: moltbot-gw\r\nContent-Type: application/json\r\n"
            b"%sConnection: close\r\nContent-Length: %d\r\n\r\n"
            % (status, reason_phrase(status), extra, len(body))) + body


class GatewayChannel(HTTPChannel):
    """An HTTP connection with deadlines on *receiving* a request.

    The idle timeout (``Site.timeout``) restarts with every byte, so alone it lets a client
    hold a connection forever by trickling its headers or body; these deadlines do not move.
    They start with a request's first byte, stop once all of it has arrived, and on expiry
    answer 408 and close.
    """

    log = Logger()
    site: GatewaySite   # set by Site.buildProtocol
    _headers_timer = None
    _request_timer = None
    _answering = False   # a whole request has arrived and is being answered
    # The request line of the request being received, for decisions made before its
    # Request knows it (at the headers): kept here rather than read off HTTPChannel's
    # private attributes.
    request_method = b""
    request_target = b""

    @property
    def request_path(self) -> bytes:
        """The request target without its query string."""
        return self.request_target.split(b"?", 1)[0]

    def lineReceived(self, line):
        received = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > received:   # that was a request line (a new Request)
            parts = line.split(b" ")
            if len(parts) == 3:             # else HTTPChannel has answered 400
                self.request_method, self.request_target = parts[0], parts[1]

    def dataReceived(self, data):
        if not self._answering and self._request_timer is None and data.strip():
            door = self.site.door
            # TimeoutMixin's callLater(period, func) passes no arguments on: a partial
            self._headers_timer = self.callLater(door.headers_timeout, partial(
                self._timed_out, "the request headers", door.headers_timeout))
            self._request_timer = self.callLater(door.request_timeout, partial(
                self._timed_out, "the whole request", door.request_timeout))
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._cancel_timer("_headers_timer")
        if self._refused_before_body():
            return  # no gotLength, no "100 Continue": the body is never read
        super().allHeadersReceived()

    def _refused_before_body(self) -> bool:
        """Answer 400/401/429 now, from the headers, when a request that needs the gateway
        secret comes with a body but without the secret: reading (and buffering) up to
        ``maxBodyBytes`` for someone who cannot use it is what this prevents. Requests
        without a body take the ordinary path (request id, CORS, access log)."""
        request = self.requests[-1]
        headers = request.requestHeaders
        if not ((self.length or 0) > 0 or headers.hasHeader(b"transfer-encoding")):
            return False
        if (self.length or 0) > self.site.door.max_body_bytes:
            return False  # refused as too large, unread, whoever sends it (gotLength)
        path = self.request_path
        if not self.site.needs_auth(self.request_method, path, headers):
            return False
        error = auth_error(request, self.site.door.auth)
        if error is None:
            return False
        request._too_large = True  # nothing more is read or processed for it
        # What the access log and the metrics need of a request that is never processed.
        request.method, request.uri, request.path = (self.request_method,
                                                     self.request_target, path)
        request.request_id = request_id_for(request.getHeader(REQUEST_ID_HEADER))
        request._site = self.site
        response_headers = {"X-Request-Id": request.request_id.decode("ascii"), **error.headers}
        origin = headers.getRawHeaders(b"origin", [None])[0]
        cors = self.site.cors
        if origin is not None and cors is not None and cors.allows(origin.decode("latin-1")):
            response_headers.update({"Access-Control-Allow-Origin": origin.decode("latin-1"),
                                     "Vary": "Origin"})
        transport = self.transport
        assert transport is not None  # the request's headers are still arriving
        transport.write(_raw_error_response(error.status, error.message, error.code,
                                            error.param, response_headers))
        note_refusal(request, error)
        request._completed(None, status=error.status)
        transport.loseConnection()
        return True

    def allContentReceived(self):
        self._cancel_timers()
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request):
        # Before the base class replays pipelined data into dataReceived: the next
        # request's deadlines start with its first byte.
        self._answering = False
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        super().connectionLost(reason)

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            setattr(self, name, None)
            if timer.active():
                timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel_timer("_headers_timer")
        self._cancel_timer("_request_timer")

    def _timed_out(self, what: str, seconds: float) -> None:
        self._cancel_timers()  # the one that fired is no longer active
        if self.transport is None or self._answering:
            return
        self.transport.write(_raw_error_response(
            408, f"{what} did not arrive within {seconds:g} s", "request_timeout"))
        self.log.info("Closed a connection from {peer}: {what} did not arrive within"
                      " {seconds} s", peer=str(self.transport.getPeer()), what=what,
                      seconds=seconds)
        self.timeoutConnection()  # closes; aborts if the client will not let go


@dataclass(frozen=True)
class DoorPolicy:
    """What the site enforces before any resource sees a request, from one config; a
    reload hands the site a new one (connections accepted earlier keep their idle timeout)."""

    auth: Any                 # the HTTP ``CountingAuth`` (``needs_auth`` paths), or None
    max_body_bytes: int
    closed_paths: frozenset   # /v1 paths of disabled endpoints
    idle_timeout: float       # seconds without a byte before an idle connection closes
    headers_timeout: float    # seconds from a request's first byte to its last header
    request_timeout: float    # seconds from a request's first byte to its last byte


class GatewaySite(Site):
    """Counts requests in flight so a stop can wait for them (up to a grace period)."""

    requestFactory = GatewayRequest
    # Twisted types ``protocol`` as its HTTP/2-negotiating factory function, but a Site may
    # build any HTTPChannel subclass (Site.buildProtocol only calls it).
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False   # never a traceback to a client

    def __init__(self, resource, door: DoorPolicy, metrics=None, **kwargs):
        # Every body here is JSON: parsing form uploads into request.args would only cost
        # memory and time (Twisted builds an email.message per POST to read its type).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, timeout=door.idle_timeout, **kwargs)
        self.door = door
        self.metrics = metrics   # a GatewayMetrics, or None
        self.draining = False
        self._inflight: set[Request] = set()
        self._idle_waiters: list[defer.Deferred] = []

    def reconfigure(self, resource, door: DoorPolicy) -> None:
        """A config reload: requests from now on go to ``resource`` behind ``door``;
        requests in flight keep the resource they were routed to."""
        self.resource = resource
        self.door = door
        self.timeOut = door.idle_timeout  # for connections accepted from now on

    @property
    def cors(self):
        return getattr(self.resource, "cors", None)

    def takes_body(self, method: bytes, path: bytes, headers) -> bool:
        """Whether a request may have a body of use: only the API under ``/v1/``, except
        CORS preflights and switched-off endpoints (they answer 404 to anyone)."""
        return (path.startswith(b"/v1/") and path not in self.door.closed_paths
                and not (method == b"OPTIONS"
                         and headers.hasHeader(b"access-control-request-method")))

    def needs_auth(self, method: bytes, path: bytes, headers) -> bool:
        """Whether a request for ``path`` is answered only with the gateway secret: the API
        under ``/v1/`` (except CORS preflights) and a non-public ``/metrics``."""
        if self.door.auth is None:
            return False
        if path.startswith(b"/v1/"):
            return self.takes_body(method, path, headers)
        if path == b"/metrics":
            metrics = getattr(self.resource, "metrics_resource", None)
            return metrics is not None and not metrics.public
        return False

    def log(self, request) -> None:
        """No Common Log Format line: ``GatewayRequest`` logs each request itself (with its
        request id, agent and duration), also those the client abandoned."""

    def track(self, request: Request) -> None:
        """Count ``request`` in flight until it calls ``untrack`` (``GatewayRequest`` does
        once finished or abandoned: one finish notification per request, not two)."""
        self._inflight.add(request)

    def untrack(self, request: Request) -> None:
        if request not in self._inflight:
            return
        self._inflight.discard(request)
        if not self._inflight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def wait_idle(self) -> defer.Deferred:
        """Fires when no request is in flight."""
        if not self._inflight:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def abort_inflight(self) -> None:
        for request in list(self._inflight):
            cast(ITCPTransport, request.channel.transport).abortConnection()  # TCP: ours
