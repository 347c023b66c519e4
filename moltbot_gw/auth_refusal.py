"""Why a client is refused at the door (no credential, a wrong one, locked out, a garbled
``X-Forwarded-For``, a browser page of another origin), worded once for HTTP and WebSocket.
Transport-free: ``http_auth.py`` and ``ws/protocol.py`` map each reason to their own status,
error and close codes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .auth import AuthOutcome, BadForwardedFor
from .retry_after import TellsRetryAfter, retry_after_seconds

MISSING_CREDENTIAL = "missing_credential"
WRONG_CREDENTIAL = "wrong_credential"
LOCKED_OUT = "locked_out"
BAD_FORWARDED_FOR = "bad_forwarded_for"
ORIGIN_NOT_ALLOWED = "origin_not_allowed"
REASONS = (MISSING_CREDENTIAL, WRONG_CREDENTIAL, LOCKED_OUT, BAD_FORWARDED_FOR,
           ORIGIN_NOT_ALLOWED)


@dataclass(frozen=True)
class AuthRefusal(TellsRetryAfter):
    """One refusal: a ``reason`` (one of ``REASONS``), the client's message and, when
    locked out, the seconds until the client may try again."""

    reason: str
    message: str
    retry_after: Optional[float] = None


def credential_refusal(outcome: AuthOutcome, presented: Optional[str],
                       how_to_send: str) -> Optional[AuthRefusal]:
    """Why ``GatewayAuth.authenticate`` refused a client, ``None`` if it did not.
    ``how_to_send`` is the transport's hint for a client that sent no secret
    (``Authorization: Bearer <token>``, a ``connect`` request's ``auth``)."""
    if outcome.ok:
        return None
    if outcome.rate_limited:
        assert outcome.retry_after is not None  # which is what rate_limited means
        return AuthRefusal(LOCKED_OUT, "too many failed authentication attempts; retry in "
                                       f"{retry_after_seconds(outcome.retry_after)} s",
                           retry_after=outcome.retry_after)
    if presented is None:
        return AuthRefusal(MISSING_CREDENTIAL,
                           f"missing gateway token or password: send {how_to_send}")
    return AuthRefusal(WRONG_CREDENTIAL, "invalid gateway token or password")


def forwarded_for_refusal(error: BadForwardedFor) -> AuthRefusal:
    """A trusted proxy's ``X-Forwarded-For`` names a hop that is not an IP address."""
    return AuthRefusal(BAD_FORWARDED_FOR, str(error))


def origin_refusal() -> AuthRefusal:
    """A WebSocket upgrade from a browser page this gateway does not serve."""
    return AuthRefusal(ORIGIN_NOT_ALLOWED, "WebSocket connections from this Origin are not "
                                           "allowed; add it to gateway.http.cors.allowedOrigins")
