"""The root resource of the gateway's one port: the WebSocket upgrade at ``/``, the liveness
check, the Prometheus metrics and the mount point of the HTTP API under ``/v1``. Unknown
paths get a 404 in the OpenAI error shape; nothing here knows how agents run.

A plain ``twisted.web`` resource tree rather than a second Klein app: the root only picks
one of three children, and routing every request twice cost measurable CPU.
"""
from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource

from .http_auth import require_auth
from .openai.errors import APIError, method_not_allowed, not_found, write_error

HEALTH_BODY = json.dumps({"ok": True}).encode("utf-8")


class _Leaf(Resource):
    isLeaf = True


class NotFoundResource(_Leaf):
    def render(self, request):
        return not_found(request)


class HealthResource(_Leaf):
    """``GET /health``: liveness only, no auth, nothing else revealed."""

    def render(self, request):
        if request.postpath not in ([], [b""]):
            return not_found(request)
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET", "HEAD"])
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return HEALTH_BODY


class MetricsResource(_Leaf):
    """``GET /metrics``: the gateway's Prometheus metrics, behind gateway auth unless the
    config makes them public. Mounted only when ``gateway.metrics.enabled``."""

    def __init__(self, metrics, auth, public: bool):
        super().__init__()
        self.metrics = metrics
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
        return self.metrics.exposition()


class WebSocketEntry(Resource):
    """``/``: WebSocket upgrades go to ``ws_resource``; a plain GET learns what to send."""

    def __init__(self, ws_resource):
        super().__init__()
        self.ws_resource = ws_resource

    def render(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket":
            return self.ws_resource.render(request)
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, ["GET"])
        request.setHeader(b"upgrade", b"websocket")
        return write_error(request, APIError(
            426, "this path serves the WebSocket control protocol; send an Upgrade request",
            code="upgrade_required"))


class GatewayRoot(Resource):
    """The tree: ``/`` (WebSocket), ``/health``, ``/metrics`` (when enabled), ``/v1/...``
    (the API, after CORS)."""

    def __init__(self, ws_resource, api_resource=None, cors=None, metrics_resource=None):
        super().__init__()
        self.metrics = metrics_resource
        self.entry = WebSocketEntry(ws_resource)
        self.health = HealthResource()
        self.api_resource = api_resource
        self.cors = cors
        self.missing = NotFoundResource()
        self.bad_path = BadPathResource()

    def getChild(self, name, request):
        if name == b"" and not request.postpath:
            return self.entry
        if name == b"health":
            return self.health
        if name == b"metrics" and self.metrics is not None:
            return self.metrics
        if name == b"v1" and request.postpath and self.api_resource is not None:
            if self.cors is not None and self.cors.apply(request):
                return _Answered()  # a preflight, answered without auth as browsers require
            if not _is_utf8_path(request.path):
                return self.bad_path  # Klein would answer in text/html and log a traceback
            return self.api_resource
        return self.missing


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
