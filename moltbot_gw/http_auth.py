"""Gateway auth for HTTP requests: reads the bearer credential and the client address off a
``twisted.web`` request and turns refusals (worded in ``auth_refusal.py``) into 400 / 401 /
403 / 429 errors. Works on a request whose headers have arrived but whose body has not
(``site.py``).
"""
from __future__ import annotations

from typing import Optional

from .auth import (
    NOT_EXEMPTABLE_HEADERS,
    Authenticator,
    BadForwardedFor,
    bearer_credential,
    client_address,
)
from .auth_refusal import (
    BAD_FORWARDED_FOR,
    LOCKED_OUT,
    MISSING_CREDENTIAL,
    ORIGIN_NOT_ALLOWED,
    WRONG_CREDENTIAL,
    AuthRefusal,
    credential_refusal,
    forwarded_for_refusal,
)
from .openai.errors import APIError

HOW_TO_SEND = "Authorization: Bearer <token>"   # the hint for a request that sent no secret


def request_client_address(request, auth: Authenticator) -> str:
    """The client's address (``BadForwardedFor`` when a trusted proxy names garbage).
    Worked out once per request and ``auth``: the door check, the route's auth and the
    per-client run slots all ask."""
    known = getattr(request, "moltbot_client_address", None)
    if known is not None and known[0] is auth:
        return known[1]
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    forwarded = request.getHeader(b"x-forwarded-for")
    address = client_address(host, forwarded.decode("latin-1") if forwarded else None,
                             auth.trusted_proxies)
    request.moltbot_client_address = (auth, address)
    return address


# How HTTP answers each refusal (auth_refusal.REASONS): status, OpenAI error code, param.
REFUSALS = {
    MISSING_CREDENTIAL: (401, "invalid_api_key", None),
    WRONG_CREDENTIAL: (401, "invalid_api_key", None),
    LOCKED_OUT: (429, "rate_limit_exceeded", None),
    BAD_FORWARDED_FOR: (400, "invalid_forwarded_for", "X-Forwarded-For"),
    ORIGIN_NOT_ALLOWED: (403, "origin_not_allowed", "Origin"),
}


def refusal_error(refusal: AuthRefusal) -> APIError:
    """The OpenAI-shaped error of a refusal (``WWW-Authenticate`` on a 401, ``Retry-After``
    on a 429)."""
    status, code, param = REFUSALS[refusal.reason]
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="moltbot-gw"'
    if refusal.retry_after_seconds is not None:
        headers["Retry-After"] = str(refusal.retry_after_seconds)
    return APIError(status, refusal.message, param=param, code=code, headers=headers)


def auth_error(request, auth: Authenticator) -> Optional[APIError]:
    """The error to answer unless the request carries the gateway secret, else ``None``."""
    try:
        address = request_client_address(request, auth)
    except BadForwardedFor as error:
        return refusal_error(forwarded_for_refusal(error))
    header = request.getHeader(b"authorization")
    presented = bearer_credential(header.decode("latin-1") if header else None)
    exemptable = not any(request.requestHeaders.hasHeader(name)
                         for name in NOT_EXEMPTABLE_HEADERS)
    outcome = auth.authenticate(address, presented, exemptable=exemptable)
    refusal = credential_refusal(outcome, presented, HOW_TO_SEND)
    if refusal is not None:
        return refusal_error(refusal)
    request.moltbot_authenticated_by = auth
    return None


def require_auth(request, auth: Authenticator) -> None:
    """Raise ``APIError`` (400, 401 or 429) unless the request carries the gateway secret.
    A request ``auth`` already let in at its headers (``site.py``'s door check, for one
    with a body) is not checked twice: same secret, same limiter, nothing new to learn."""
    if getattr(request, "moltbot_authenticated_by", None) is auth:
        return
    error = auth_error(request, auth)
    if error is not None:
        raise error
