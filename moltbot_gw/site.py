"""The ``twisted.web`` Site of the gateway: body-size limit, in-flight request tracking and
draining for a graceful stop. Routing lives in ``web.py``; this module only guards the door.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request, Site

from .openai.errors import ERROR_TYPES, error_body


class GatewayRequest(Request):
    """A Request that refuses oversized bodies before buffering them."""

    log = Logger()
    _too_large = False

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

    def process(self):
        site = self.channel.site
        if site.draining:
            self.setResponseCode(503)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"retry-after", b"5")
            self.setHeader(b"connection", b"close")
            self.write(error_body("the gateway is shutting down", ERROR_TYPES[503], None,
                                  "shutting_down"))
            self.finish()
            return
        if not _is_websocket_upgrade(self):
            # An upgraded connection outlives its request; WS clients are closed separately.
            site.track(self)
        super().process()


def _is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


class GatewaySite(Site):
    """Counts requests in flight so a stop can wait for them (up to a grace period)."""

    requestFactory = GatewayRequest

    def __init__(self, resource, max_body_bytes: int, **kwargs):
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self._inflight: set[Request] = set()
        self._idle_waiters: list[defer.Deferred] = []

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
