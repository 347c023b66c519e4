"""Gateway auth for HTTP requests: reads the bearer credential and the client address off a
``twisted.web`` request and turns the verdict of ``GatewayAuth`` into 400 / 401 / 429 errors.
Works on a request whose headers have arrived but whose body has not (``site.py``).
"""
from __future__ import annotations

import math
from typing import Optional

from .auth import (NOT_EXEMPTABLE_HEADERS, BadForwardedFor, GatewayAuth, bearer_credential,
                   client_address)
from .openai.errors import APIError


def request_client_address(request, auth: GatewayAuth) -> str:
    """The client's address (``BadForwardedFor`` when a trusted proxy names garbage)."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    forwarded = request.getHeader(b"x-forwarded-for")
    return client_address(host, forwarded.decode("latin-1") if forwarded else None,
                          auth.trusted_proxies)


def auth_error(request, auth: GatewayAuth) -> Optional[APIError]:
    """The error to answer unless the request carries the gateway secret, else ``None``."""
    try:
        address = request_client_address(request, auth)
    except BadForwardedFor as error:
        return APIError(400, str(error), param="X-Forwarded-For",
                        code="invalid_forwarded_for")
    header = request.getHeader(b"authorization")
    presented = bearer_credential(header.decode("latin-1") if header else None)
    exemptable = not any(request.requestHeaders.hasHeader(name)
                         for name in NOT_EXEMPTABLE_HEADERS)
    outcome = auth.authenticate(address, presented, exemptable=exemptable)
    if outcome.ok:
        return None
    if outcome.rate_limited:
        seconds = max(1, math.ceil(outcome.retry_after))
        return APIError(429, f"too many failed authentication attempts; retry in {seconds} s",
                        code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
    message = ("missing bearer token: send Authorization: Bearer <token>" if presented is None
               else "invalid gateway token or password")
    return APIError(401, message, code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="moltbot-gw"'})


def require_auth(request, auth: GatewayAuth) -> None:
    """Raise ``APIError`` (400, 401 or 429) unless the request carries the gateway secret."""
    error = auth_error(request, auth)
    if error is not None:
        raise error
