"""A scriptable web server standing in for a remote site an image or page is fetched from:
real Twisted HTTP on a loopback address of the test's choosing. It counts connections and
body bytes written, records request headers, and can redirect, trickle or stream a huge body.

    origin = await Origin.start(reactor, "127.0.0.2")
    origin.route("/a", redirect="/b", body_bytes=50_000_000, set_cookie="sid=1")
    origin.route("/b", body=PNG, content_type="image/png")
    origin.route("/slow", trickle=0.2)     # 1 byte every 0.2 s, forever
    origin.connections, origin.bytes_written, origin.requests[-1].getHeader("cookie")
    await origin.ended[-1]     # fires when that request finished or its client went away
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

CHUNK = b"x" * 65_536


@dataclass
class _Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    redirect: Optional[str] = None
    body_bytes: int = 0          # stream this many filler bytes instead of ``body``
    trickle: float = 0.0         # seconds between single bytes, forever
    set_cookie: Optional[str] = None
    chunked: bool = False        # stream ``body_bytes`` without a content-length


class _Streamer:
    """A pull producer writing filler until ``remaining`` is spent or the client leaves."""

    def __init__(self, origin: "Origin", request, remaining: int):
        self.origin, self.request, self.remaining = origin, request, remaining

    def resumeProducing(self) -> None:
        if self.remaining <= 0:
            self.request.unregisterProducer()
            self.request.finish()
            return
        piece = CHUNK[:self.remaining]
        self.remaining -= len(piece)
        self.origin.bytes_written += len(piece)
        self.request.write(piece)

    def stopProducing(self) -> None:
        self.remaining = 0


class _Pages(Resource):
    isLeaf = True

    def __init__(self, origin: "Origin"):
        super().__init__()
        self.origin = origin

    def render_GET(self, request):
        self.origin.requests.append(request)
        self.origin.ended.append(request.notifyFinish().addErrback(lambda _: None))
        route = self.origin.routes.get(request.path.decode(), _Route(status=404, body=b"no"))
        request.setResponseCode(route.status)
        request.setHeader(b"content-type", route.content_type.encode())
        if route.set_cookie:
            request.setHeader(b"set-cookie", route.set_cookie.encode())
        if route.redirect:
            request.setHeader(b"location", route.redirect.encode())
        if route.trickle:
            request.setHeader(b"content-length", b"1000000")
            beat = LoopingCall(self._beat, request)
            beat.clock = self.origin.reactor
            beat.start(route.trickle)
            request.notifyFinish().addBoth(lambda _: beat.stop())
            return NOT_DONE_YET
        if route.body_bytes:
            if not route.chunked:
                request.setHeader(b"content-length", str(route.body_bytes).encode())
            streamer = _Streamer(self.origin, request, route.body_bytes)
            request.notifyFinish().addErrback(lambda _: streamer.stopProducing())
            request.registerProducer(streamer, False)
            return NOT_DONE_YET
        self.origin.bytes_written += len(route.body)
        return route.body

    def _beat(self, request) -> None:
        self.origin.bytes_written += 1
        request.write(b"x")


class _CountingSite(Site):
    def __init__(self, origin: "Origin"):
        super().__init__(_Pages(origin))
        self.origin = origin

    def buildProtocol(self, addr):
        self.origin.connections += 1
        return super().buildProtocol(addr)


class Origin:
    def __init__(self, reactor, interface: str):
        self.reactor = reactor
        self.interface = interface
        self.routes: dict[str, _Route] = {}
        self.requests: list = []
        self.ended: list[defer.Deferred] = []
        self.connections = 0
        self.bytes_written = 0
        self.port = None

    @classmethod
    async def start(cls, reactor, interface: str = "127.0.0.1") -> "Origin":
        origin = cls(reactor, interface)
        origin.listener = reactor.listenTCP(0, _CountingSite(origin), interface=interface)
        origin.port = origin.listener.getHost().port
        return origin

    def route(self, path: str, **kwargs) -> None:
        self.routes[path] = _Route(**kwargs)

    async def stop(self) -> None:
        await defer.maybeDeferred(self.listener.stopListening)
