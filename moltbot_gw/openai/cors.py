"""CORS for browser clients of ``/v1/*``: preflights from allowed origins get 204 with the
``Access-Control-*`` headers, responses to them carry ``Access-Control-Allow-Origin``; other
origins get no CORS headers at all (so the browser refuses)."""
from __future__ import annotations

from typing import Iterable

from ..names import GATEWAY_HEADERS

ALLOWED_METHODS = b"GET, POST, OPTIONS"
BASE_ALLOWED_HEADERS = ("authorization", "content-type",
                        *(name.decode("ascii") for name in GATEWAY_HEADERS))
PREFLIGHT_MAX_AGE = b"600"


class CorsPolicy:
    def __init__(self, allowed_origins: Iterable[str], session_headers: Iterable[str] = ()):
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.any_origin = "*" in self.allowed_origins
        headers = list(BASE_ALLOWED_HEADERS) + [h.lower() for h in session_headers]
        self.allowed_headers = ", ".join(dict.fromkeys(headers)).encode("ascii")

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/") in self.allowed_origins

    def apply(self, request) -> bool:
        """Add CORS headers for an allowed origin; return True when ``request`` was a
        preflight that is now fully answered (204, empty body)."""
        origin = request.getHeader(b"origin")
        preflight = (request.method == b"OPTIONS"
                     and request.getHeader(b"access-control-request-method") is not None)
        if origin is not None and self.allows(origin.decode("latin-1")):
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")
            if preflight:
                request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
                request.setHeader(b"access-control-allow-headers", self.allowed_headers)
                request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
            else:
                request.setHeader(b"access-control-expose-headers", b"retry-after")
        if preflight:
            request.setResponseCode(204)
        return preflight
