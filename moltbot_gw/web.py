"""The root resource of the gateway's one port: the WebSocket upgrade at ``/``, the liveness
check, the Prometheus metrics and the mount point of the HTTP API under ``/v1``. Unknown
paths get a 404 in the OpenAI error shape; nothing here knows how agents run.

A plain ``twisted.web`` resource tree rather than a second Klein app: the root only picks
one of three children, and routing every request twice cost measurable CPU.
"""
from __future__ import annotations

import json
from typing import Optional
from urllib.parse import unquote_to_bytes, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .auth import BadForwardedFor
from .auth_refusal import forwarded_for_refusal, origin_refusal
from .http_auth import refusal_error, request_client_address, require_auth
from .openai.errors import APIError, method_not_allowed, not_found, write_error

HEALTH_BODY = json.dumps({"ok": True}).encode("utf-8")


def is_websocket_upgrade(request) -> bool:
    """Whether ``request`` asks to switch to the WebSocket protocol (``Upgrade: websocket``,
    any case, surrounding whitespace ignored). The site and the root resource both ask."""
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


class _Leaf(Resource):
    isLeaf = True


class NotFoundResource(_Leaf):
    def render(self, request):
        return not_found(request)


class HealthResource(_Leaf):
    """``GET /health``: liveness only, no auth, nothing else revealed. With the Redis session
    store (``health_check``: a ``RedisHealth``) it also says whether Redis answers: 503
    ``{"ok": false, "redis": "<reason>"}`` when it does not."""

    def __init__(self, health_check=None):
        super().__init__()
        self.health_check = health_check

    def render(self, request):
        if request.postpath not in ([], [b""]):
            return not_found(request)
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET", "HEAD"])
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if self.health_check is None:
            return HEALTH_BODY
        gone: list = []
        request.notifyFinish().addErrback(gone.append)   # the client left before the answer
        self.health_check.problem().addCallback(self._answer, request, gone)
        return NOT_DONE_YET

    def _answer(self, problem, request, gone: list) -> None:
        if gone:
            return
        if problem is None:
            body = HEALTH_BODY
        else:
            request.setResponseCode(503)
            body = json.dumps({"ok": False, "redis": problem}).encode("utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)   # twisted.web drops the body of a HEAD itself
        request.finish()


class MetricsResource(_Leaf):
    """``GET /metrics``: the gateway's Prometheus metrics, behind gateway auth unless the
    config makes them public. Mounted only when ``gateway.metrics.enabled``."""

    def __init__(self, gateway_metrics, auth, public: bool):
        super().__init__()
        self.gateway_metrics = gateway_metrics
        self.auth = auth
        self.public = public

    def render(self, request):
        if request.postpath not in ([], [b""]):
            return not_found(request)
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET", "HEAD"])
        if not self.public:
            try:
                require_auth(request, self.auth)
            except APIError as e:
                return write_error(request, e)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self.gateway_metrics.exposition()


class WebSocketEntry(Resource):
    """``/``: WebSocket upgrades go to ``ws_resource`` when their ``Origin`` may connect; a
    plain GET learns what to send."""

    def __init__(self, ws_resource, auth=None, cors=None):
        super().__init__()
        self.ws_resource = ws_resource
        self.auth = auth    # the gateway's auth (trusted proxies for X-Forwarded-For)
        self.cors = cors    # allowed browser origins besides this host's own pages

    def render(self, request):
        if is_websocket_upgrade(request):
            refusal = self._refusal(request)
            if refusal is not None:
                return write_error(request, refusal)
            return self.ws_resource.render(request)
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET"])
        request.setHeader(b"upgrade", b"websocket")
        return write_error(request, APIError(
            426, "this path serves the WebSocket control protocol; send an Upgrade request",
            code="upgrade_required"))

    def _refusal(self, request) -> Optional[APIError]:
        """Why an upgrade is refused, or ``None``. Browsers let any page open a WebSocket
        to any host, sending the page's ``Origin``: only pages of this host (same host and
        port) or of ``gateway.http.cors.allowedOrigins`` may connect; clients that send no
        ``Origin`` (not browsers) may."""
        try:
            if self.auth is not None:
                request_client_address(request, self.auth)
        except BadForwardedFor as error:
            return refusal_error(forwarded_for_refusal(error))
        origin = request.getHeader(b"origin")
        if origin is None:
            return None
        origin_text = origin.decode("latin-1")
        cors = self.cors
        if cors is not None and cors.allows(origin_text):
            return None
        if _same_host(origin_text, (request.getHeader(b"host") or b"").decode("latin-1")):
            return None
        return refusal_error(origin_refusal())


class GatewayRoot(Resource):
    """The tree: ``/`` (WebSocket), ``/health``, ``/metrics`` (when enabled), ``/v1/...``
    (the API, after CORS). Built from one config; a reload builds a new one."""

    def __init__(self, ws_resource, *, auth=None, api_resource=None, cors=None,
                 metrics_resource=None, health_check=None):
        super().__init__()
        self.metrics_resource = metrics_resource
        self.entry = WebSocketEntry(ws_resource, auth, cors)
        self.health = HealthResource(health_check)
        self.api_resource = api_resource
        self.cors = cors
        self.missing = NotFoundResource()
        self.bad_path = BadPathResource()

    def getChild(self, name, request):
        if name == b"" and not request.postpath:
            return self.entry
        if name == b"health":
            return self.health
        if name == b"metrics" and self.metrics_resource is not None:
            return self.metrics_resource
        if name == b"v1" and request.postpath and self.api_resource is not None:
            if self.cors is not None and self.cors.apply(request):
                return _Answered()  # a preflight, answered without auth as browsers require
            if not _is_utf8_path(request.path):
                return self.bad_path  # Klein would answer in text/html and log a traceback
            return self.api_resource
        return self.missing


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _same_host(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the host and port of the
    ``Host`` header (the address the client connected to)."""
    try:
        page = urlsplit(origin.strip())
        page_port = page.port or _DEFAULT_PORTS.get(page.scheme.lower())
        target = urlsplit("//" + host.strip())
        target_port = target.port or _DEFAULT_PORTS.get(page.scheme.lower())
    except ValueError:  # a port that is not a number, or out of range
        return False
    if not page.hostname or not target.hostname or page.scheme.lower() not in _DEFAULT_PORTS:
        return False
    return page.hostname == target.hostname and page_port == target_port


def _is_utf8_path(path: bytes) -> bool:
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class BadPathResource(_Leaf):
    def render(self, request):
        return write_error(request, APIError(400, "the URL path is not valid UTF-8 once "
                                                  "percent-decoded", code="invalid_path"))


class _Answered(_Leaf):
    def render(self, request):
        return b""
