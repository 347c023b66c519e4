"""The root resource of the gateway's one port: the WebSocket upgrade at ``/``, the liveness
check, and the mount points of the HTTP APIs. Unknown paths get a 404 in the OpenAI error
shape; nothing here knows how agents run.
"""
from __future__ import annotations

import json

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .openai.errors import APIError, method_not_allowed, not_found, write_error

HEALTH_BODY = json.dumps({"ok": True}).encode("utf-8")


class GatewayWeb:
    """Routes of the gateway port. ``ws_resource`` answers WebSocket upgrades at ``/``;
    ``api`` (optional) is a Klein app object whose resource serves ``/v1/...``."""

    app = Klein()
    log = Logger()

    def __init__(self, ws_resource, api_resource=None, cors=None):
        self.ws_resource = ws_resource
        self.api_resource = api_resource
        self.cors = cors

    def resource(self):
        return self.app.resource()

    @app.route("/", methods=["GET"])
    def root(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket":
            return self.ws_resource
        request.setHeader(b"upgrade", b"websocket")
        return write_error(request, APIError(
            426, "this path serves the WebSocket control protocol; send an Upgrade request",
            code="upgrade_required"))

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return HEALTH_BODY

    @app.route("/v1/", branch=True, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                             "OPTIONS"])
    def v1(self, request):
        if self.api_resource is None:
            raise NotFound()
        if self.cors is not None and self.cors.apply(request):
            return b""  # a preflight, answered without auth as browsers require
        return self.api_resource

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request, failure):
        return method_not_allowed(request, failure.value.valid_methods)
