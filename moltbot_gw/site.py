"""The ``twisted.web`` Site of the gateway: body-size limit, in-flight request tracking,
draining for a graceful stop, request ids, the access log and per-request metrics. Routing
lives in ``web.py``; this module only guards the door.
"""
from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request, Site

from .openai.errors import ERROR_TYPES, error_body
from .request_log import (REQUEST_ID_HEADER, current_request, log_request, request_id_for,
                          route_of)

CLIENT_CLOSED = 499  # nginx's status for a request the client abandoned before the answer


class GatewayRequest(Request):
    """A Request that refuses oversized bodies before buffering them."""

    log = Logger()
    _too_large = False
    request_id = b"-"
    moltbot_agent = None      # the agent that ran for this request, once known
    moltbot_tokens = None     # (prompt, completion) tokens of its run, once known
    _site = None
    _sse = False
    _logged = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.perf_counter()

    def gotLength(self, length):
        if length is not None and length > self.channel.site.max_body_bytes:
            self._refuse_too_large()
            return
        super().gotLength(length)
        self._received = 0

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self.channel.site.max_body_bytes:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self) -> None:
        # The body has not been read yet, so answer at the transport and close: reading
        # (or buffering) an oversized body is what the limit exists to prevent.
        self._too_large = True
        limit = self.channel.site.max_body_bytes
        body = error_body(f"request body is larger than the limit of {limit} bytes",
                          ERROR_TYPES[413], None, "request_too_large")
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Connection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
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
        upgrade = _is_websocket_upgrade(self)
        if not upgrade:
            # An upgraded connection outlives its request; WS clients are closed separately.
            site.track(self)
        token = current_request.set(self)
        try:
            super().process()
        finally:
            current_request.reset(token)
        if upgrade and self.channel is not None and self.channel.transport is None:
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
        seconds = time.perf_counter() - self._started
        metrics = self._site.metrics if self._site is not None else None
        if metrics is not None:
            metrics.request_finished(route_of(self.path), status, seconds)
            if self._sse:
                metrics.sse_streams_active.dec()
        log_request(self, status, seconds)


def _is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


class GatewaySite(Site):
    """Counts requests in flight so a stop can wait for them (up to a grace period)."""

    requestFactory = GatewayRequest

    def __init__(self, resource, max_body_bytes: int, metrics=None, **kwargs):
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.draining = False
        self._inflight: set[Request] = set()
        self._idle_waiters: list[defer.Deferred] = []

    def log(self, request) -> None:
        """No Common Log Format line: ``GatewayRequest`` logs each request itself (with its
        request id, agent and duration), also those the client abandoned."""

    def track(self, request: Request) -> None:
        self._inflight.add(request)
        request.notifyFinish().addBoth(self._finished, request)

    def _finished(self, _result, request) -> None:
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
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def abort_inflight(self) -> None:
        for request in list(self._inflight):
            request.channel.transport.abortConnection()
