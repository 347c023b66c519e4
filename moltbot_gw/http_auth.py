"""Gateway auth for HTTP requests: reads the bearer credential and the client address off a
``twisted.web`` request and turns the verdict of ``GatewayAuth`` into 401 / 429 errors.
"""
from __future__ import annotations

import math

from .auth import GatewayAuth, bearer_credential, client_address
from .openai.errors import APIError


def request_client_address(request, auth: GatewayAuth) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    forwarded = request.getHeader(b"x-forwarded-for")
    return client_address(host, forwarded.decode("latin-1") if forwarded else None,
                          auth.trusted_proxies)


def require_auth(request, auth: GatewayAuth) -> None:
    """Raise ``APIError`` (401 or 429) unless the request carries the gateway secret."""
    header = request.getHeader(b"authorization")
    presented = bearer_credential(header.decode("latin-1") if header else None)
    outcome = auth.authenticate(request_client_address(request, auth), presented)
    if outcome.ok:
        return
    if outcome.rate_limited:
        seconds = max(1, math.ceil(outcome.retry_after))
        raise APIError(429, f"too many failed authentication attempts; retry in {seconds} s",
                       code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
    message = ("missing bearer token: send Authorization: Bearer <token>" if presented is None
               else "invalid gateway token or password")
    raise APIError(401, message, code="invalid_api_key",
                   headers={"WWW-Authenticate": 'Bearer realm="moltbot-gw"'})
